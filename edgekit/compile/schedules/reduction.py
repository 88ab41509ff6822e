"""Schedule rules for the reduction kernel family: softmax, layer norm, pooling, mean/sum/max/min.

Two shapes of kernel come out of LegalizeOps:

- *row reductions*: several reduction and elementwise blocks over the same rows (softmax:
  max -> exp -> sum -> divide; layer norm: sum -> mean -> var -> normalize).  These go to
  ``norm.RowReduction`` (edgekit.compile.schedules.norm).
- *one reduction block* with optional injective prologue (pool padding) and epilogue
  (mean's divide): pooling, global average pool, adaptive pool, sum/max/min/mean over
  any dims.  ``pooling.SpatialReduction`` keeps the output's last axis innermost and
  runs the reduction loops outside it, so each step is a vector (or an unrolled group of
  independent scalars) of accumulators instead of one serial chain.
- adaptive pooling with uneven windows (a nested block per output): ``pooling.VariableWindowPool``.
"""

from __future__ import annotations


def rules(cpu) -> list:
    """The reduction rules for cpu (edgekit.compile.schedules.CpuInfo), most specific first."""
    from edgekit.compile.schedules.norm import RowReduction
    from edgekit.compile.schedules.pooling import SpatialReduction, VariableWindowPool

    return [SpatialReduction(cpu), RowReduction(cpu), VariableWindowPool(cpu)]
