"""Helpers the CPU rules share: reading a fused PrimFunc's blocks, inlining epilogues, tile choice."""

from __future__ import annotations

import os
from dataclasses import dataclass

from edgekit.compile.tvm_env import import_tvm

# Outer-loop work (multiply-accumulates, or elements for injective kernels) below which a
# `parallel` loop costs more than it saves: waking TVM's pool is ~5-20 us here, and a
# kernel of 4M MACs runs ~0.1 ms on one core.
PARALLEL_MIN_MACS = 4_000_000
PARALLEL_MIN_ELEMENTS = 1 << 18


@dataclass
class BlockFacts:
    """A block of the fused PrimFunc: its handle, name and iteration kinds ("S"/"R"), extents."""

    rv: object
    name: str
    kinds: str
    extents: list[int]
    reads: list       # BufferRegions
    writes: list


def block_facts(sch) -> list[BlockFacts] | None:
    """The root's child blocks, or None when something is not a plain static loop nest."""
    tvm = import_tvm()
    from tvm import tirx

    facts = []
    for rv in sch.get_child_blocks(sch.get_sblock("root") if _has_root(sch) else None):
        block = sch.get(rv)
        kinds, extents = "", []
        for iv in block.iter_vars:
            if iv.iter_type == tirx.IterVar.DataPar:
                kinds += "S"
            elif iv.iter_type == tirx.IterVar.CommReduce:
                kinds += "R"
            else:
                return None
            extent = iv.dom.extent
            if not isinstance(extent, tvm.tirx.IntImm):
                return None  # dynamic shapes: leave them to another rule
            extents.append(int(extent))
        facts.append(BlockFacts(rv, block.name_hint, kinds, extents, list(block.reads), list(block.writes)))
    return facts


def _has_root(sch) -> bool:
    try:
        sch.get_sblock("root")
        return True
    except Exception:  # noqa: BLE001  (no root block: a function TVM already lowered)
        return False


def inline_into_last(sch, blocks: list[BlockFacts]) -> bool:
    """Inline every injective block but the last into its consumer (the epilogue chain becomes one block).

    Returns False when one cannot be inlined (the caller then declines the function).
    """
    for fact in blocks[:-1]:
        try:
            sch.compute_inline(fact.rv)
        except Exception:  # noqa: BLE001
            return False
    return True


def schedule_elementwise_nest(sch, block: BlockFacts, cpu) -> None:
    """One all-spatial block: its innermost dimension split into vector lanes (vectorized), the outer
    loops fused into one parallel loop when the block is large enough to pay for waking threads.

    Only the innermost dimension is vectorized: fusing across dimensions would put a div/mod into
    every index.
    """
    loops = sch.get_loops(block.rv)
    if not loops:
        return  # a scalar
    lanes = largest_divisor(block.extents[-1], cpu.f32_lanes) if block.extents else 1
    if lanes > 1:
        _, lane = sch.split(loops[-1], [None, lanes])
        sch.vectorize(lane)
    elements = 1
    for e in block.extents:
        elements *= e
    if elements >= PARALLEL_MIN_ELEMENTS and cpu.num_cores > 1 and len(loops) > 1:
        sch.parallel(sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0])


def pack_at_compile_time(sch, block, read_index: int, index_map):
    """Read the block's ``read_index`` operand (a weight) through a copy in ``index_map``'s layout, packed once
    at compile time rather than on every call: the copy stage is marked ``meta_schedule.layout_rewrite_preproc``,
    so TVM's SplitLayoutRewritePreproc moves it out of the kernel and edgekit.compile.weight_prepack folds it on
    the constant weight.  Returns the copy stage (its dtype may still be changed)."""
    packed = sch.cache_read(block, read_index, "global")
    sch.transform_layout(packed, ("write", 0), index_map)
    sch.annotate(packed, "meta_schedule.layout_rewrite_preproc", 1)
    return packed


def largest_divisor(n: int, limit: int) -> int:
    """The largest power of two <= limit dividing n (a vector that needs no tail)."""
    v = 1
    while v * 2 <= limit and n % (v * 2) == 0:
        v *= 2
    return v


def vector_lanes(n: int, limit: int) -> int:
    """Lanes for a vector over ``n`` channels with no tail: the largest power of two dividing n, or where that
    is under 4 (a pruned width such as 45), the widest vector that divides n (45 = 3 x 15 lanes)."""
    lanes = largest_divisor(n, limit)
    if lanes < 4:
        lanes = max(d for d in range(1, limit + 1) if n % d == 0)
    return lanes


def first_divisor(n: int, candidates) -> int:
    for c in candidates:
        if c >= 1 and n % c == 0:
            return c
    return 1


def register_budget(cpu) -> int:
    """Vector registers a register tile may hold as accumulators (the rest: weights, broadcast)."""
    if cpu.arch == "aarch64":
        return 24   # 32 NEON q registers
    if cpu.avx512:
        return 24   # 32 zmm
    return 12       # 16 ymm (AVX2) or 16 q registers (armv7 NEON)


def debug_schedules() -> bool:
    """EDGEKIT_SCHEDULE_DEBUG=1: a rule that fails re-raises instead of declining (for rule authors)."""
    return os.environ.get("EDGEKIT_SCHEDULE_DEBUG", "") not in ("", "0")
