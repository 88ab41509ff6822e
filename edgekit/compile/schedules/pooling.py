"""One reduction block with injective prologue/epilogue: pooling, global/adaptive average pool,
sum/max/min/mean over any dims.

The naive nest runs the reduction innermost: one serial dependency chain per output
(max or add latency, 3-4 cycles each).  Here the output's last axis goes innermost, split
into a vector of ``lanes`` accumulators (or, where the input is not contiguous along that
axis, an unrolled group of independent scalar accumulators), with the reduction loops
outside it.  NHWC pooling and mean over H,W are then plain vector max/add over channels.
The accumulator lives in a ``local`` cache_write buffer; the epilogue (mean's divide) is
applied to it at the tile; the padding prologue is inlined as a select.
"""

from __future__ import annotations

from edgekit.compile.tvm_env import import_tvm

_tvm = import_tvm()
from tvm import sym, tirx  # noqa: E402
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule  # noqa: E402

from edgekit.compile.schedules import dense_analysis as util  # noqa: E402


def _is_unit_stride(expr, var) -> bool:
    """expr == var + constant."""
    if not any(v.same_as(var) for v in tirx.analysis.undefined_vars(expr)):
        return False
    rest = sym.Analyzer().simplify(expr - var)
    return not tirx.analysis.undefined_vars(rest)


def _is_padding(sch, block_rv) -> bool:
    """A pad block: spatial only, its value a bounds select."""
    stmt = sch.get(block_rv)
    return (isinstance(stmt.body, tirx.BufferStore) and not util.is_reduction(sch, block_rv)
            and "if_then_else" in str(stmt.body.value)[:200])


class SpatialReduction(util.Float32Rule, CPUScheduleRule):
    """Vectorize (or unroll) a single reduction over the output's innermost axis."""

    # bool/int8: the "any finite in the row" reduction of torch's safe softmax; int8/uint8 also: an int8
    # model quantizes a pooled value in the same kernel (squeeze-excitation's global pool), which ran as
    # naive loops, 0.03 ms for MobileNetV3-Small's first one.
    MASK_DTYPES = ("bool", "int8", "uint8")

    # Independent scalar accumulators when the axis is strided in the input: enough to cover
    # the add latency (4 cycles x 2 ports) without spilling.
    scalar_group = 8

    def _schedule(self, sch):
        blocks = util.root_blocks(sch)
        reductions = [b for b in blocks if util.is_reduction(sch, b)]
        if len(reductions) != 1:
            return None
        block = reductions[0]
        if not isinstance(sch.get(block).body, tirx.BufferStore):
            return None  # a nested window (adaptive pool): VariableWindowPool
        if util.multiply_accumulate_operands(sch.get(block).body) is not None:
            return None  # a matmul: the matmul rule's
        position = [sch.get(b).name_hint for b in blocks].index(sch.get(block).name_hint)
        for prologue in blocks[:position]:
            if _is_padding(sch, prologue):
                # Materialized, not inlined: a 4-way bounds select in every step of the 3x3 window made
                # maxpool 112x112x64 4.5x slower than the naive nest (7.2 vs 1.5 ms).
                util.vectorize_inner(sch, prologue, self.cpu.f32_lanes)
            else:
                sch.compute_inline(prologue)  # reshape feeding the reduction: read through it
        if not util.loops_match_iters(sch, block):
            return None
        stmt = sch.get(block)
        store = stmt.body
        out_idx = list(store.indices)
        iters = list(stmt.iter_vars)
        spatial = [n for n, it in enumerate(iters) if it.iter_type == tirx.IterVar.DataPar]
        reduce = [n for n, it in enumerate(iters) if it.iter_type == tirx.IterVar.CommReduce]
        if not spatial or not out_idx or not isinstance(out_idx[-1], tirx.Var):
            return None
        inner_pos = next((n for n in spatial if iters[n].var.same_as(out_idx[-1])), None)
        if inner_pos is None:
            return None
        inner_var = iters[inner_pos].var
        sources = [r for r in stmt.reads if not r.source.same_as(store.buffer)]
        contiguous = bool(sources) and all(_is_unit_stride(r.region[-1].min, inner_var) for r in sources)
        loops = sch.get_loops(block)
        extent = util.const_int(iters[inner_pos].dom.extent)
        lanes = self.cpu.f32_lanes if contiguous else self.scalar_group
        group = next((f for f in (lanes, 4, 2) if extent % f == 0), 1) if extent > lanes else extent
        vo, vi = sch.split(loops[inner_pos], factors=[None, group])
        outer = [loops[n] for n in spatial if n != inner_pos]
        sch.reorder(*outer, vo, *[loops[n] for n in reduce], vi)
        elements = util.prod(util.const_int(it.dom.extent) for it in iters)
        if self.cpu.num_cores > 1 and elements >= util.PARALLEL_MIN_ELEMENTS:
            # The outermost non-unit loop only: fusing all of them put div/mod index math in every step.
            candidates = [*outer, vo]
            sch.parallel(next((lp for lp in candidates if util.const_int(sch.get(lp).extent) != 1), vo))
        accumulator = sch.cache_write(block, 0, "local")
        consumers = [accumulator, *[b for b in util.root_blocks(sch) if util.is_after(sch, b, accumulator)]]
        for b in consumers[:-1]:
            sch.compute_inline(b)
        last = consumers[-1]
        sch.reverse_compute_at(last, vo, preserve_unit_loops=True)
        if contiguous and group > 1:
            sch.vectorize(vi)
            util.vectorize_inner(sch, last, group)
        elif group > 1:
            sch.unroll(vi)
        if reduce:
            init = sch.decompose_reduction(block, loops[reduce[0]])
            if contiguous:
                util.vectorize_inner(sch, init, group)
        return sch


class VariableWindowPool(util.Float32Rule, CPUScheduleRule):
    """Adaptive pooling to a size that does not divide the input (7 -> 2): LegalizeOps writes an
    outer block per output with an inner loop whose extent varies with the window.  No
    vector axis runs through it; the schedule computes the epilogue (the divide by the window
    size) at the output element, so the sums never round-trip through memory."""

    def _schedule(self, sch):
        blocks = util.root_blocks(sch)
        nested = [b for b in blocks if not isinstance(sch.get(b).body, tirx.BufferStore)]
        if len(nested) != 1 or not util.is_reduction(sch, nested[0]) or len(sch.get_child_blocks(nested[0])) != 1:
            return None
        block = nested[0]
        stmt = sch.get(block)
        spatial = sum(1 for it in stmt.iter_vars if it.iter_type == tirx.IterVar.DataPar)
        loops = sch.get_loops(block)
        consumers = [b for b in blocks if util.is_after(sch, b, block)]
        if not consumers or spatial == 0:
            return None
        for b in consumers[:-1]:
            sch.compute_inline(b)
        sch.reverse_compute_at(consumers[-1], loops[spatial - 1], preserve_unit_loops=True)
        return sch
