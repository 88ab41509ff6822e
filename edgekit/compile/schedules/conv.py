"""Schedule rules for the conv kernel family: conv2d NHWC (1x1, kxk, strided, dilated, grouped) and conv1d NWC.

The schedule itself is edgekit.compile.schedules._conv_tiling (shared with depthwise.py);
this module says which kernels it takes.
"""

from __future__ import annotations

from edgekit.compile.schedules._conv_tiling import conv_rule_apply
from edgekit.compile.tvm_env import import_tvm


def rules(cpu) -> list:
    """The conv rules for cpu (edgekit.compile.schedules.CpuInfo), most specific first."""
    import_tvm()
    from tvm.s_tir.dlight.cpu.base import CPUScheduleRule

    class ConvNHWC(CPUScheduleRule):
        """Register-tiled NHWC conv2d/conv1d with its fused elementwise epilogue."""

        def apply(self, func, target, _tunable):
            if not self.is_target_available(target):
                return None
            return conv_rule_apply(func, cpu, depthwise=False)

    return [ConvNHWC()]
