"""Schedule rules for int8 x int8 -> int32 kernels: the target's dot-product instruction, from CpuInfo.

Which instruction (edgekit.compile.schedules.int8_intrinsics), decided from the target's
features, never from the compiling machine:

| target                       | activations | instruction                 | lanes x group |
|------------------------------|-------------|-----------------------------|---------------|
| x86 AVX512-VNNI              | uint8       | vpdpbusd (dot_16x4_vnni)    | 16 x 4        |
|                              | int8        | vpdpbusd on a^0x80, minus 128*sum(w) | 16 x 4 |
| x86 AVX-512                  | any         | vpmaddwd zmm on int16 pairs | 16 x 2        |
| x86 AVX2                     | any         | vpmaddwd ymm on int16 pairs | 8 x 2         |
| aarch64 dotprod (rpi5)       | int8        | sdot                        | 4 x 4         |
|                              | uint8       | sdot on a^0x80, plus 128*sum(w)      | 4 x 4 |
| NEON without dotprod (rpi4, armv7) | any   | smlal/smlal2 on int16       | 8 x 4         |

Every result is exact: integer products summed in int32, as the fake-quantized torch model sums
the same integers in float.
"""

from __future__ import annotations

from edgekit.compile.tvm_env import import_tvm


def rules(cpu) -> list:
    """The int8 rules for ``cpu`` (edgekit.compile.schedules.CpuInfo), most specific first."""
    import_tvm()
    return [_conv_rule_class()(cpu)]


def choose_intrinsic(cpu, act_dtype: str, in_channels: int, out_channels: int):
    """The dot-product intrinsic for a conv on ``cpu``, or None when none fits the shape or dtypes."""
    from edgekit.compile.schedules import int8_intrinsics as intrinsics

    candidates = []
    if cpu.arch == "x86_64":
        # 256-bit registers on AVX-512 targets too: with the 512-bit intrinsics (intrinsics.vnni_16x4,
        # int16_pairs(512)) LLVM's code generation for a 4-conv test model took over 3 minutes of CPU
        # on a 2-core host, against 21 s at 256 bits.  VNNI at 256 bits (vpdpbusd ymm: AVX512-VL with
        # VNNI, or AVX-VNNI) where the target has it, else int16 pairs (vpmaddwd, AVX2).
        if (cpu.avx512 and cpu.avx512_vnni) or cpu.avx_vnni:
            candidates.append(lambda: intrinsics.vnni_8x4(act_dtype))
        if cpu.avx2:
            candidates.append(lambda: intrinsics.int16_pairs(256, act_dtype))
    else:
        if cpu.arch == "aarch64" and cpu.dotprod:
            candidates.append(lambda: intrinsics.sdot_4x4(act_dtype))
        if cpu.neon:
            candidates.append(lambda: intrinsics.neon_smlal(act_dtype))
    for make in candidates:
        intrin = make()
        if out_channels % intrin.lanes == 0 and in_channels % intrin.group == 0:
            return intrin
    return None


def vector_registers(cpu) -> int:
    if cpu.arch == "x86_64":
        return 32 if cpu.avx512 else 16
    return 32 if cpu.arch == "aarch64" else 16


_CLASSES: dict[str, type] = {}


def _conv_rule_class():
    """The rule class, defined on first use (its base class lives in TVM, imported lazily)."""
    if "conv" in _CLASSES:
        return _CLASSES["conv"]
    from tvm import s_tir
    from tvm.s_tir.dlight.cpu.base import CPUScheduleRule

    from edgekit.compile.schedules.int8_conv import find_conv, schedule_conv

    class Int8Conv2D(CPUScheduleRule):
        """int8/uint8 x int8 -> int32 NHWC conv2d with its fused requantize epilogue."""

        def __init__(self, cpu):
            self.cpu = cpu

        def apply(self, func, target, _tunable):
            if not self.is_target_available(target):
                return None
            sch = s_tir.Schedule(func)
            kernel = find_conv(sch)
            if kernel is None:
                return None
            intrin = choose_intrinsic(self.cpu, kernel.act_dtype, kernel.in_channels, kernel.out_channels)
            if intrin is None:
                return None
            try:
                schedule_conv(sch, kernel, intrin, registers=vector_registers(self.cpu))
            except Exception:  # noqa: BLE001 - a primitive refused: leave the kernel to the other rules
                if _STRICT:
                    raise
                return None
            return sch

    _CLASSES["conv"] = Int8Conv2D
    return Int8Conv2D


_STRICT = False  # tests set it to see why a primitive refused
