"""Schedule rules for stand-alone elementwise/injective kernels.

What FuseOps leaves on its own: the NCHW<->NHWC transposes at a network's ends, reshapes,
residual adds that did not fuse into a conv, hard-swish, concat, padding.  All blocks are
spatial; every block but the last is inlined into the last, whose loops are fused into
one, split into vector lanes (vectorized) and a serial or parallel outer loop.  A transpose
gathers in its inner loop; LLVM scalarizes such loads but the stores stay vector.
"""

from __future__ import annotations

from edgekit.compile.schedules._common import (PARALLEL_MIN_ELEMENTS, block_facts, debug_schedules,
                                               inline_into_last, largest_divisor)
from edgekit.compile.tvm_env import import_tvm


def schedule_injective(func, cpu):
    """The schedule, or None when ``func`` is not purely injective or a primitive refuses."""
    tvm = import_tvm()
    if not isinstance(func, tvm.tirx.PrimFunc):
        return None
    try:
        sch = tvm.s_tir.Schedule(func)
        facts = block_facts(sch)
        if not facts or any("R" in f.kinds for f in facts):
            return None
        if not inline_into_last(sch, facts):
            return None
        out = facts[-1].rv
        loops = sch.get_loops(out)
        if not loops:
            return sch  # a scalar
        extents = facts[-1].extents
        total = 1
        for e in extents:
            total *= e
        # Vectorize over the innermost dimension only (fusing across dims would put a div/mod
        # into every index); its largest power-of-two factor up to the lane count.
        lanes = largest_divisor(extents[-1], cpu.f32_lanes) if extents else 1
        if lanes > 1:
            _, lane = sch.split(loops[-1], [None, lanes])
            sch.vectorize(lane)
        if total >= PARALLEL_MIN_ELEMENTS and cpu.num_cores > 1 and len(loops) > 1:
            sch.parallel(sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0])
        return sch
    except Exception:  # noqa: BLE001  (an unexpected shape: logged unscheduled, never a crash)
        if debug_schedules():
            raise
        return None


def rules(cpu) -> list:
    """The elementwise rules for cpu (edgekit.compile.schedules.CpuInfo), most specific first."""
    import_tvm()
    from tvm.s_tir.dlight.cpu.base import CPUScheduleRule

    class Injective(CPUScheduleRule):
        """Any all-spatial kernel: inlined into one block, innermost dimension vectorized."""

        def apply(self, func, target, _tunable):
            if not self.is_target_available(target):
                return None
            return schedule_injective(func, cpu)

    return [Injective()]
