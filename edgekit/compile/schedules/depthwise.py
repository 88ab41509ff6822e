"""Schedule rules for the depthwise kernel family (MobileNet/EfficientNet depthwise 3x3, 5x5, 7x7, stride 1 and 2).

Same tiling as the dense convs (edgekit.compile.schedules._conv_tiling), vectorized over
channels with every tap unrolled: DESIGN.md section 11 measured 1.09-1.39x ONNX Runtime
for it against 1.3-2.5x for TVM's unscheduled loop.
"""

from __future__ import annotations

from edgekit.compile.schedules._conv_tiling import conv_rule_apply
from edgekit.compile.tvm_env import import_tvm


def rules(cpu) -> list:
    """The depthwise rules for cpu (edgekit.compile.schedules.CpuInfo), most specific first."""
    import_tvm()
    from tvm.s_tir.dlight.cpu.base import CPUScheduleRule

    class DepthwiseNHWC(CPUScheduleRule):
        """Depthwise conv2d NHWC, channels in vectors, output columns in register tiles, taps unrolled."""

        def apply(self, func, target, _tunable):
            if not self.is_target_available(target):
                return None
            return conv_rule_apply(func, cpu, depthwise=True)

    return [DepthwiseNHWC()]
