"""What tuning bought over edgekit's default schedules, kernel by kernel; records that lose are kept out.

For every task of the model that has a record, two builds of the same workload are measured
in one batch, with the tuning runner (this machine, or the device over the tunnel), so under
the same conditions: the default schedule (edgekit's rules, exactly what a build without the
record ships) and the best record applied the way a build applies it (its trace, or for an
anchor-block match, the anchor trace transferred).  A record slower than the default goes
into ``slower_than_default.json`` and builds do not apply it, so tuning never makes a build
slower.  Times (the fastest of several repeats) are cached in ``kernel_times.json`` by the
text of the scheduled kernel: a rule change or a new record is measured again, beside its
default, and nothing else is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgekit.compile.tuning_db import (KERNEL_TIMES_FILE, SLOWER_THAN_DEFAULT_FILE, best_record, module_key,
                                       open_database, read_json, record_key, record_us, write_json)
from edgekit.compile.tvm_env import import_tvm


@dataclass
class KernelGain:
    name: str
    weight: float
    default_us: float | None  # edgekit's default schedule, measured now
    tuned_us: float | None  # the best record, applied as a build applies it, measured now
    record_us: float  # what MetaSchedule measured for the record while tuning
    applied: bool  # False: slower than the default (or failed to build), builds keep the default
    error: str | None = None

    @property
    def gain_us(self) -> float:
        """Time saved per inference (weight x per-call saving); 0 when the record is not applied."""
        if not self.applied or self.default_us is None or self.tuned_us is None:
            return 0.0
        return self.weight * (self.default_us - self.tuned_us)

    def to_dict(self) -> dict:
        return {"name": self.name, "weight": self.weight, "default_us": _round(self.default_us),
                "tuned_us": _round(self.tuned_us), "record_us": _round(self.record_us), "applied": self.applied,
                "gain_us": round(self.gain_us, 3), "error": self.error}


def _round(value):
    return None if value is None else round(value, 3)


def default_schedule(mod, tvm_target):
    """``mod`` (one kernel) as a build without tuning records schedules it."""
    from edgekit.compile.schedules import ApplySchedules

    with tvm_target:
        return ApplySchedules(tvm_target)(mod)


def apply_record(mod, record, tvm_target):
    """``mod`` scheduled by ``record`` as MetaScheduleApplyDatabase does it (meta_schedule.cc)."""
    import_tvm()
    import tvm_ffi
    from tvm import s_tir
    from tvm.s_tir.meta_schedule.trace_apply import schedule_using_anchor_trace

    if tvm_ffi.structural_equal(mod, record.workload.mod):
        sch = s_tir.Schedule(record.workload.mod)
        record.trace.apply_to_schedule(sch, remove_postproc=False)
    else:
        sch = s_tir.Schedule(mod)
        schedule_using_anchor_trace(sch, record.trace, tvm_target)
    return sch.mod


class DefaultSchedules:
    """Each task's default schedule, made once per tuning run (the search and the gain both need it)."""

    def __init__(self, tvm_target):
        self.tvm_target = tvm_target
        self._by_name: dict[str, object] = {}

    def of(self, task):
        if task.task_name not in self._by_name:
            self._by_name[task.task_name] = default_schedule(task.dispatched[0], self.tvm_target)
        return self._by_name[task.task_name]


def measure_default_times(tasks, db_path: Path, tvm_target, measurer, say,
                          defaults: DefaultSchedules | None = None) -> dict[str, float | None]:
    """Each task's time under edgekit's default schedule (us per call; None when it failed to build or run).

    Cached with the gain measurements (``kernel_times.json``), so a kernel is measured once per
    rule version, whichever of the two asks first.
    """
    times = read_json(db_path / KERNEL_TIMES_FILE)
    defaults = defaults or DefaultSchedules(tvm_target)
    scheduled = {task.task_name: defaults.of(task) for task in tasks}
    keys = {name: module_key(mod) for name, mod in scheduled.items()}
    mods = {keys[name]: mod for name, mod in scheduled.items() if keys[name] not in times}
    if mods:
        say(f"measuring the default schedules of {len(mods)} kernels, to spend the budget where the time is")
        _measure(mods, tvm_target, measurer, times, {})
        write_json(db_path / KERNEL_TIMES_FILE, times)
    return {name: times.get(key) for name, key in keys.items()}


def measure_modules(mods: dict, tvm_target, measurer) -> tuple[dict, dict]:
    """(times in us, errors) of every module of ``mods`` (key -> scheduled one-kernel module), in one batch."""
    times, errors = {}, {}
    _measure(mods, tvm_target, measurer, times, errors)
    return times, errors


def _measure(mods: dict, tvm_target, measurer, times: dict, errors: dict) -> None:
    """Build and run every module of ``mods`` (key -> module) in one batch; fills ``times`` (us) and ``errors``."""
    import_tvm()
    from tvm.s_tir import meta_schedule as ms

    inputs = list(mods.items())
    built = measurer.builder.build([ms.builder.BuilderInput(m, tvm_target) for _, m in inputs])
    runs, keys = [], []
    for (key, m), result in zip(inputs, built):
        if result.error_msg:
            errors[key] = str(result.error_msg).strip().splitlines()[-1][:200]
            continue
        # The arguments of the kernel as built: the builder drops a weight-packing stage (it runs once, at
        # compile time), so the kernel takes the packed weight, as MetaSchedule's own candidates do.
        args = ms.arg_info.ArgInfo.from_entry_func(m, remove_preproc=True)
        runs.append(ms.runner.RunnerInput(result.artifact_path, "cpu", args))
        keys.append(key)
    for key, future in zip(keys, measurer.runner.run(runs)):
        result = future.result()
        if result.error_msg or not result.run_secs:
            errors[key] = str(result.error_msg).strip().splitlines()[-1][:200]
            continue
        times[key] = min(float(s) for s in result.run_secs) * 1e6  # the fastest repeat: see tune_workers.EVALUATOR


def measure_gains(tasks, db_path: Path, tvm_target, measurer, say,
                  defaults: DefaultSchedules | None = None) -> list[KernelGain]:
    """Default vs tuned time of every task with a record; updates the database's slower-than-default list."""
    # Read back from disk: a record still in the memory of the run that measured it gives another
    # record_key than the same record loaded (as plan_build loads it), so keys come from the file.
    database = open_database(db_path)
    defaults = defaults or DefaultSchedules(tvm_target)

    times = read_json(db_path / KERNEL_TIMES_FILE)
    slower = read_json(db_path / SLOWER_THAN_DEFAULT_FILE)
    plans = []  # (task, record, default mod, tuned mod)
    errors: dict[str, str] = {}
    for task in tasks:
        mod = task.dispatched[0]
        record = best_record(database, mod)
        if record is None:
            continue
        try:
            tuned = apply_record(mod, record, tvm_target)
        except Exception as exc:  # a trace that does not transfer: the build would fail on it too
            errors[task.task_name] = f"record does not apply: {str(exc).strip().splitlines()[-1][:200]}"
            tuned = None
        plans.append((task, record, defaults.of(task), tuned))

    # A pair is measured together, in one batch, whenever either side is new: a default time cached
    # from an earlier batch (say, during a load burst) must not decide against a record measured now.
    to_measure = {}
    for _, _, *mods in plans:
        pair = [m for m in mods if m is not None]
        if any(module_key(m) not in times for m in pair):
            to_measure.update({module_key(m): m for m in pair})
    if to_measure:
        say(f"measuring {len(to_measure)} kernels: default schedules vs the best records")
        _measure(to_measure, tvm_target, measurer, times, errors)
        write_json(db_path / KERNEL_TIMES_FILE, times)

    gains = []
    for task, record, default_mod, tuned_mod in plans:
        default_us = times.get(module_key(default_mod))
        tuned_us = times.get(module_key(tuned_mod)) if tuned_mod is not None else None
        key = record_key(record)
        # Kept out only on evidence: slower when both were measured, or a record that does not apply.
        losing = tuned_mod is None or (tuned_us is not None and default_us is not None and tuned_us > default_us)
        if losing:
            slower[key] = {"task": task.task_name, "default_us": default_us, "tuned_us": tuned_us}
        else:
            slower.pop(key, None)
        error = errors.get(task.task_name) or (errors.get(module_key(tuned_mod)) if tuned_mod is not None else None) \
            or errors.get(module_key(default_mod))
        gains.append(KernelGain(task.task_name, float(task.weight), default_us, tuned_us, record_us(record),
                                applied=not losing, error=error))
    write_json(db_path / SLOWER_THAN_DEFAULT_FILE, slower)
    return gains
