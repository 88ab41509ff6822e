"""Schedule rules for stand-alone elementwise/injective kernels.

What FuseOps leaves on its own: the NCHW<->NHWC transposes at a network's ends, reshapes,
residual adds that did not fuse into a conv, hard-swish, concat, padding.  All blocks are
spatial; every block but the last is inlined into the last, whose loops are fused into
one, split into vector lanes (vectorized) and a serial or parallel outer loop.  A transpose
gathers in its inner loop; LLVM scalarizes such loads but the stores stay vector.
"""

from __future__ import annotations

from edgekit.compile.schedules._common import (block_facts, debug_schedules, inline_into_last,
                                               schedule_elementwise_nest)
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
        schedule_elementwise_nest(sch, facts[-1], cpu)
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
