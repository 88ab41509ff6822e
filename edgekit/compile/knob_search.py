"""Tuning by edgekit's own schedule knobs: the default rules' other choices, measured, the winner kept as a record.

The default rules pick one register tile per kernel from a model of the machine (FMAs per
load within the register file).  That choice is good, not best: on ResNet-18 the measured
best tile of the same schedule was 5-40% faster on 6 of its 8 heaviest kernels.  MetaSchedule's
own search space (multi-level tiling from scratch) needs thousands of trials to reach the default
schedules at 224x224, so a short tuning budget is better spent here first: every tile and loop
order the rule can take (10-30 per conv kernel), built and measured in one batch per kernel.
A variant faster than the default schedule goes into the database as an ordinary MetaSchedule
tuning record (its schedule trace), so builds and the slower-than-default veto of
edgekit.compile.tune_gain treat it like any other record.  One exception: TVM's trace replay
does not carry these traces over to a conv with another fused epilogue (anchor-block sharing),
so builds keep such a record out there (tuning_db.plan_build) and the twin keeps its default.

    space = knob_space(kernel_mod, cpu)           # ConvSpace | MatmulSpace | None
    schedules_of(space, space.first_round())      # {ConvKnobs(ct=2, tw=7, ...): traced Schedule}
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from edgekit.compile.tvm_env import import_tvm

# A variant must beat the default by this much to be recorded: the runner's spread on a quiet
# core is 1-2%, and a record that wins by noise only makes the veto measurement flip later.
MIN_GAIN = 0.03


@dataclass
class KnobResult:
    name: str
    weight: float
    variants: int           # variants built and measured
    default_us: float | None
    best_us: float | None
    best_knobs: str | None  # the winning variant's label, when one beat the default by MIN_GAIN
    recorded: bool

    @property
    def gain_us(self) -> float:
        if not self.recorded or self.default_us is None or self.best_us is None:
            return 0.0
        return self.weight * (self.default_us - self.best_us)

    def to_dict(self) -> dict:
        return {"name": self.name, "weight": self.weight, "variants": self.variants,
                "default_us": _round(self.default_us), "best_us": _round(self.best_us),
                "best_knobs": self.best_knobs, "recorded": self.recorded, "gain_us": round(self.gain_us, 3)}


def _round(value):
    return None if value is None else round(value, 3)


# -------------------------------------------------------------------------------- the knob spaces


@dataclass(frozen=True)
class ConvKnobs:
    """One setting of the conv schedule's knobs (edgekit.compile.schedules._conv_tiling.schedule_conv)."""

    ct: int             # channel vectors per register tile
    tw: int             # output columns per register tile
    weights_outer: bool  # output-channel blocks outermost (weights streamed once) or rows outermost
    ic_unroll: int = 1  # input channels per straight-line reduction step

    @property
    def label(self) -> str:
        order = "oc-outer" if self.weights_outer else "rows-outer"
        return f"ct{self.ct} tw{self.tw} {order}" + (f" ic-unroll{self.ic_unroll}" if self.ic_unroll > 1 else "")


class ConvSpace:
    """The conv rule's knobs for one kernel: every register tile and both loop orders, then the
    reduction's unrolling around the winner (a second round: the product would double the first)."""

    IC_UNROLLS = (2, 4, 8)

    def __init__(self, func, cpu, kernel):
        from edgekit.compile.schedules._conv_tiling import is_depthwise

        self.func, self.cpu = func, cpu
        self.depthwise = is_depthwise(kernel)
        self.kernel = kernel

    def first_round(self) -> list[ConvKnobs]:
        from edgekit.compile.schedules._conv_tiling import default_weights_outer, valid_tiles

        default_order = default_weights_outer(self.kernel, depthwise=self.depthwise)
        orders = (default_order,) if self.depthwise else (default_order, not default_order)
        return [ConvKnobs(t.ct, t.tw, order) for t in valid_tiles(self.kernel, self.cpu, depthwise=self.depthwise)
                for order in orders]

    def refinements(self, best: ConvKnobs) -> list[ConvKnobs]:
        if self.depthwise:
            return []  # one input channel per output channel: nothing to unroll
        channels = self.kernel.reduce[-1]
        return [ConvKnobs(best.ct, best.tw, best.weights_outer, u) for u in self.IC_UNROLLS
                if channels % u == 0 and channels > u]

    def schedule(self, knobs: ConvKnobs):
        from edgekit.compile.schedules._conv_tiling import Tile, channel_lanes, match_conv, schedule_conv

        kernel = match_conv(self.func)
        tile = Tile(channel_lanes(kernel, self.cpu, depthwise=self.depthwise), knobs.ct, knobs.tw)
        return schedule_conv(kernel, self.cpu, depthwise=self.depthwise, tile=tile,
                             weights_outer=knobs.weights_outer, ic_unroll=knobs.ic_unroll)


@dataclass(frozen=True)
class MatmulKnobs:
    rows: int   # rows of A per register tile
    tiles: int  # vectors of B per register tile

    @property
    def label(self) -> str:
        return f"rows{self.rows} tiles{self.tiles}"


class MatmulSpace:
    """The matmul rule's register tile (token GEMMs and batch_matmul; the GEMV has its own schedule)."""

    def __init__(self, func, cpu, shape):
        self.func, self.cpu, self.shape = func, cpu, shape

    def first_round(self) -> list[MatmulKnobs]:
        from edgekit.compile.schedules._common import register_budget

        return [MatmulKnobs(rows, tiles) for rows in (1, 2, 3, 4, 6, 8) for tiles in (1, 2, 3, 4, 6)
                if rows * tiles <= register_budget(self.cpu) and rows <= self.shape.m]

    def refinements(self, _best) -> list:
        return []

    def schedule(self, knobs: MatmulKnobs):
        from tvm import s_tir

        from edgekit.compile.schedules.matmul import Matmul, MatmulTile, tile_for

        base = tile_for(self.cpu)
        rule = Matmul(self.cpu)
        rule.tile = MatmulTile(lanes=base.lanes, rows=knobs.rows, tiles=knobs.tiles, gemv_tiles=base.gemv_tiles)
        return rule._schedule(s_tir.Schedule(self.func))


def knob_space(mod, cpu):
    """The knob space of ``mod``'s kernel (one PrimFunc), or None for a kernel no knob-bearing rule takes.

    Elementwise, pooling and int8 kernels have none: they keep the default schedule (or
    MetaSchedule's search, when the budget reaches them).
    """
    from tvm import s_tir

    from edgekit.compile.schedules._conv_tiling import match_conv
    from edgekit.compile.schedules.dense_analysis import all_float32
    from edgekit.compile.schedules.matmul import _match_matmul

    func = mod["main"]
    kernel = _try(lambda: match_conv(func))
    if kernel is not None:
        # The int8 convs have their own (tensorized) rule, with no knobs yet.
        return ConvSpace(func, cpu, kernel) if all_float32(kernel.sch) else None
    sch = _try(lambda: s_tir.Schedule(func))
    shape = _try(lambda: _match_matmul(sch)) if sch is not None and all_float32(sch) else None
    if shape is None or shape.m == 1:
        return None
    return MatmulSpace(func, cpu, shape)


def schedules_of(space, knob_list) -> dict:
    """knobs -> traced Schedule, for every setting the schedule primitives accept."""
    scheduled = {}
    for knobs in knob_list:
        sch = _try(lambda: space.schedule(knobs))
        if sch is not None:
            scheduled[knobs] = sch
    return scheduled


def _try(make):
    try:
        return make()
    except Exception:  # noqa: BLE001  (a knob setting a primitive refuses is simply not a variant)
        return None


# -------------------------------------------------------------------------------- the search


def search_knobs(tasks, database, tvm_target, measurer, defaults, default_us: dict[str, float | None], say,
                 deadline: float | None = None) -> list[KnobResult]:
    """Measure every knob variant of each task (slowest first) and record the winners in ``database``.

    ``defaults`` (tune_gain.DefaultSchedules) gives each task's default schedule, measured in the
    same batch as the variants it is compared with: a load burst on a shared machine between two
    batches must not make a variant look faster than the default.  ``default_us`` (measured
    earlier) only orders the tasks.  Stops starting new kernels past ``deadline`` (time.monotonic()).
    """
    import_tvm()
    from tvm.s_tir import meta_schedule as ms

    from edgekit.compile.schedules.target_info import cpu_info

    cpu = cpu_info(tvm_target)
    ordered = sorted(tasks, key=lambda t: -float(t.weight) * (default_us.get(t.task_name) or 0.0))
    results = []
    for task in ordered:
        if deadline is not None and time.monotonic() > deadline:
            say(f"knob search: out of time before {task.task_name}")
            break
        mod = task.dispatched[0]
        space = knob_space(mod, cpu)
        if space is None:
            continue
        started = time.monotonic()
        schedules = schedules_of(space, space.first_round())
        times, default = _measure_schedules(schedules, defaults.of(task), tvm_target, measurer)
        if times:
            # Round two: the winner again, beside its refinements and the default.
            winner = min(times, key=times.get)
            refined = schedules_of(space, [winner, *space.refinements(winner)])
            if len(refined) > 1:
                schedules.update(refined)
                times, default = _measure_schedules(refined, defaults.of(task), tvm_target, measurer)
        best = min(times, key=times.get) if times else None
        best_us = times[best] if best is not None else None
        wins = best is not None and default is not None and best_us < default * (1 - MIN_GAIN)
        if wins:
            database.commit_tuning_record(ms.database.TuningRecord(
                trace=schedules[best].trace, workload=database.commit_workload(mod), run_secs=[best_us * 1e-6],
                target=tvm_target, args_info=ms.arg_info.ArgInfo.from_prim_func(mod["main"])))
        results.append(KnobResult(task.task_name, float(task.weight), len(schedules), default, best_us,
                                  best.label if wins else None, recorded=wins))
        say(f"knob search {task.task_name}: {len(schedules)} variants in {time.monotonic() - started:.0f} s, "
            + (f"best {best.label} {best_us:.1f} us vs default {default:.1f} us (recorded)" if wins else
               f"none beats the default ({default if default is None else round(default, 1)} us) by "
               f"{100 * MIN_GAIN:.0f}%"))
    return results


DEFAULT_LABEL = "default"


def _measure_schedules(schedules: dict, default_mod, tvm_target, measurer) -> tuple[dict, float | None]:
    """(knobs -> us for the settings that built and ran, the default schedule's us), in one batch."""
    tvm = import_tvm()
    from edgekit.compile.tune_gain import measure_modules

    mods = {knobs.label: tvm.IRModule({"main": sch.mod["main"].with_attr("tirx.is_scheduled", True)})
            for knobs, sch in schedules.items()}
    mods[DEFAULT_LABEL] = default_mod
    times, _errors = measure_modules(mods, tvm_target, measurer)
    return {knobs: times[knobs.label] for knobs in schedules if knobs.label in times}, times.get(DEFAULT_LABEL)
