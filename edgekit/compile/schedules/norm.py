"""Row reductions: softmax, layer norm, RMS norm and other chains of reduction and elementwise
blocks over the same rows.

DLight's ``cpu.Reduction`` moves every block under one loop over the rows (so a row is read
from L1, not memory, by each stage) and vectorizes the elementwise stages, but leaves each
reduction a serial scalar chain: a 192-wide layer norm row costs two 192-long add chains.
It cannot rfactor after compute_at (rfactor wants the block first under its loop), so this
rule rfactors *first*, at the root: ``k -> (ko, ki=lanes)``, the ``ki`` partials become a
vector accumulator, and one lanes-wide horizontal step finishes each row.  Then the chain
is computed at the row loop as DLight does.  Rows whose length is off the vector grid
(attention's 197) keep the serial chain, split and unrolled.
"""

from __future__ import annotations

from edgekit.compile.tvm_env import import_tvm

_tvm = import_tvm()
from tvm import tirx  # noqa: E402
from tvm.s_tir.dlight.analysis import normalize_prim_func  # noqa: E402
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule  # noqa: E402

from edgekit.compile.schedules import dense_analysis as util  # noqa: E402


def _is_contraction(block) -> bool:
    """``C += A * B`` over two different buffers (a matmul); ``sum(x * x)`` of a norm is not one."""
    operands = util.multiply_accumulate_operands(block.body)
    return operands is not None and not operands[0].source.same_as(operands[1].source)


def _leading_spatial(dom_kind: str) -> int:
    return len(dom_kind) - len(dom_kind.lstrip("S"))


class RowReduction(util.Float32Rule, CPUScheduleRule):
    """Softmax / layer norm: all stages at the row loop, reductions rfactored into vectors."""

    MASK_DTYPES = ("bool", "int8")

    def _schedule(self, sch):
        infos = normalize_prim_func(sch)
        if infos is None or len(infos) < 2 or infos[-1].is_reduction() or not any(b.is_reduction() for b in infos):
            return None
        kinds = [b.dom_kind() for b in infos]
        if any(not k or k[0] != "S" for k in kinds):
            return None
        rows_axes = min(_leading_spatial(k) for k in kinds)
        # Every reduction must reduce only trailing axes of the rows (dom_kind S..SR..R).
        if any(b.is_reduction() and kinds[n][rows_axes:].strip("R") for n, b in enumerate(infos)):
            return None
        if any(b.is_reduction() and _is_contraction(sch.get(b.block_rv)) for b in infos):
            return None  # a matmul with its epilogue is the Matmul rule's, even when that rule declined
        lanes = self.cpu.f32_lanes
        partials = {}  # rfactor block name -> its lanes axis in the partial buffer
        for info in infos:
            if info.is_reduction():
                rf = self._rfactor_row(sch, info.block_rv, rows_axes, lanes)
                if rf is not None:
                    partials[sch.get(rf).name_hint] = rows_axes  # factor_axis of the rfactor
        blocks = util.root_blocks(sch)
        last = blocks[-1]
        loops = sch.get_loops(last)
        rows = sch.fuse(*loops[:rows_axes]) if rows_axes > 1 else loops[0]
        elements = util.prod(util.const_int(sch.get(lp).extent) for lp in sch.get_loops(last))
        if self.cpu.num_cores > 1 and elements >= util.PARALLEL_MIN_ELEMENTS:
            sch.parallel(rows)
        util.vectorize_inner(sch, last, lanes)
        for block in reversed(blocks[:-1]):
            sch.compute_at(block, rows, preserve_unit_loops=True)
        for block in blocks[:-1]:
            self._inner_loop(sch, block, lanes, partials)
        return sch

    @staticmethod
    def _rfactor_row(sch, block, rows_axes, lanes):
        """The rfactor block (lanes partial accumulators over ko) of a row reduction, or None."""
        loops = sch.get_loops(block)
        if len(loops) != rows_axes + 1:
            return None  # several reduction axes: leave the chain serial
        extent = util.const_int(sch.get(loops[-1]).extent)
        if extent is None or extent % lanes or extent < 2 * lanes:
            return None
        _, ki = sch.split(loops[-1], factors=[None, lanes])
        return sch.rfactor(ki, factor_axis=rows_axes)

    @staticmethod
    def _inner_loop(sch, block, lanes, partials: dict):
        """Vectorize what is elementwise along the row and the rfactor partials (innermost loop:
        their lanes axis); split and unroll a serial reduction chain."""
        loops = sch.get_loops(block)
        if not loops:
            return
        inner = loops[-1]
        if sch.get(block).name_hint in partials:
            # compute_at regenerated one loop per block iter, in iter order; the lanes iter is the one
            # indexing the partial buffer at the factor axis.  Put it innermost, under ko, and vectorize.
            stmt = sch.get(block)
            iters = list(stmt.iter_vars)
            sub = loops[len(loops) - len(iters):]
            lane_var = stmt.body.indices[partials[stmt.name_hint]]
            lane = next(n for n, it in enumerate(iters) if it.var.same_as(lane_var))
            reduce = [n for n, it in enumerate(iters) if it.iter_type == tirx.IterVar.CommReduce]
            sch.reorder(*[sub[n] for n in reduce], sub[lane])
            sch.vectorize(sub[lane])
        elif util.is_reduction(sch, block):
            extent = util.const_int(sch.get(inner).extent)
            if extent is None or extent % lanes:
                return  # a predicate in every step of the chain cost more than the unroll saved (softmax 197)
            if extent > lanes:
                _, inner = sch.split(inner, factors=[None, lanes])
            sch.annotate(inner, ann_key="pragma_auto_unroll_max_step", ann_val=lanes)
            sch.annotate(inner, ann_key="pragma_unroll_explicit", ann_val=1)
        else:
            util.vectorize_inner(sch, block, lanes)
