"""Schedules for the Winograd transform kernels (edgekit.compile.winograd writes them).

Both transforms are adds (and a few small constant multiplies) over one tile, the same for every
channel, so channels are the vector lanes:

- each transform is two separable stages (rows, then columns), computed per tile and channel
  vector; the first stage's (m+2) x (m+2) vectors stay in registers or L1;
- in each stage the loop its Select chain is over is unrolled (one case per copy, the Select
  folded away) inside the loop over what it reads, so one column's loads serve every row;
- the conv's epilogue (bias, ReLU, residual add) is inlined into the output's store.

Only one loop per stage is unrolled: unrolling all (m+2)^2 elements made LLVM's share of the
compile ~2 s per conv.
"""

from __future__ import annotations

from edgekit.compile.schedules._common import PARALLEL_MIN_ELEMENTS, debug_schedules, vector_lanes
from edgekit.compile.tvm_env import import_tvm


def _blocks_by_name(sch):
    from edgekit.compile.schedules import dense_analysis as util

    return {sch.get(b).name_hint: b for b in util.root_blocks(sch)}


def _two_stages(func, name):
    """(schedule, its blocks by name, the transform's second stage, its first: the rows), or None when
    ``func`` holds no such transform."""
    tvm = import_tvm()
    sch = tvm.s_tir.Schedule(func)
    blocks = _blocks_by_name(sch)
    if name not in blocks or f"{name}_rows" not in blocks:
        return None
    return sch, blocks, blocks[name], blocks[f"{name}_rows"]


def schedule_input_transform(func, cpu):
    stages = _two_stages(func, "winograd_input")
    if stages is None:
        return None
    sch, blocks, block, rows = stages
    for name, other in blocks.items():
        if name not in ("winograd_input", "winograd_input_rows"):
            sch.compute_inline(other)  # a fused producer (the previous layer's activation): read through
    e, p, c = sch.get_loops(block)
    alpha = int(sch.get(rows).iter_vars[0].dom.extent)
    lanes = vector_lanes(int(sch.get(c).extent), cpu.f32_lanes)
    c_outer, c_lane = sch.split(c, [None, lanes])
    row, column = sch.split(e, [alpha, alpha])
    sch.reorder(p, c_outer, row, column, c_lane)
    _tile_stage_at(sch, rows, c_outer)
    sch.unroll(column)  # the Select is over the column: one case per copy
    _vectorize(sch, c_lane)
    _parallel_if_large(sch, p, block, cpu)
    return sch


def schedule_output_transform(func, cpu):
    stages = _two_stages(func, "winograd_output")
    if stages is None:
        return None
    sch, blocks, block, rows = stages
    m = int(sch.get(rows).iter_vars[0].dom.extent)
    names = list(blocks)
    epilogue = [blocks[name] for name in names[names.index("winograd_output") + 1:]]
    for step in epilogue[:-1]:
        sch.compute_inline(step)  # into the last: SiLU reads its input twice, so it cannot go first
    consumer = None
    if epilogue:
        try:
            sch.reverse_compute_inline(epilogue[-1])  # applied before the store
        except Exception:  # noqa: BLE001  (TVM refuses some: the epilogue then runs per tile, from L1)
            consumer = epilogue[-1]
    n, y, x, k = sch.get_loops(block)
    lanes = vector_lanes(int(sch.get(k).extent), cpu.f32_lanes)
    tile_y, r = sch.split(y, [None, m])
    tile_x, s = sch.split(x, [None, m])
    k_outer, k_lane = sch.split(k, [None, lanes])
    sch.reorder(n, tile_y, tile_x, k_outer, r, s, k_lane)
    _tile_stage_at(sch, rows, k_outer)
    sch.unroll(s)  # the Select is over the output column: one case per copy
    _vectorize(sch, k_lane)
    if consumer is not None:
        sch.reverse_compute_at(consumer, k_outer)
        *_, lane_loop = sch.get_loops(consumer)
        _vectorize(sch, lane_loop)
    _parallel_if_large(sch, sch.fuse(n, tile_y), block, cpu)
    return sch


def _tile_stage_at(sch, stage, loop) -> None:
    """The first (row) stage computed per tile and channel vector, under ``loop``: its vectors stay in
    registers or L1 until the second stage reads them.  Its Select is over the row (its first loop),
    which is unrolled inside the column loop, so each column's loads serve every row."""
    sch.compute_at(stage, loop)
    loops = sch.get_loops(stage)
    own = loops[[sch.get(x).same_as(sch.get(loop)) for x in loops].index(True) + 1:]  # inside ``loop``
    row, column, *rest = own  # (row, column[, tile][, lane]): compute_at drops unit loops
    sch.reorder(column, row)
    sch.unroll(row)
    if rest:
        _vectorize(sch, rest[-1])


def _vectorize(sch, loop) -> None:
    if int(sch.get(loop).extent) > 1:  # a channel count with no divisor up to the vector width (17): scalar
        sch.vectorize(loop)


def _parallel_if_large(sch, loop, block, cpu) -> None:
    elements = 1
    for iv in sch.get(block).iter_vars:
        elements *= int(iv.dom.extent)
    if elements >= PARALLEL_MIN_ELEMENTS and cpu.num_cores > 1:
        sch.parallel(loop)


def rules(cpu) -> list:
    import_tvm()
    from tvm.s_tir.dlight.cpu.base import CPUScheduleRule

    class WinogradTransform(CPUScheduleRule):
        """The input and output transforms of a Winograd conv: tiles unrolled, channels vectorized."""

        def apply(self, func, target, _tunable):
            if not self.is_target_available(target):
                return None
            try:
                return schedule_input_transform(func, cpu) or schedule_output_transform(func, cpu)
            except Exception:  # noqa: BLE001  (an unforeseen fusion: the generic rules take it)
                if debug_schedules():
                    raise
                return None

    return [WinogradTransform()]
