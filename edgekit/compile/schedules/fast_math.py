"""Vectorizable exp and erf for llvm targets (softmax, GELU, sigmoid/SiLU epilogues).

TVM 0.27 lowers ``T.exp`` to ``llvm.exp.f32`` and ``T.erf`` to a call of libm's ``erff``.
LLVM has no vector library here, so a vectorized softmax or GELU epilogue is split back
into one scalar libm call per lane: measured, GELU doubled the time of a 197x192x768
GEMM and softmax 3x197x197 ran at 5.9x ONNX Runtime.  These lowerings replace both with
polynomials of plain arithmetic that LLVM vectorizes (the same approximations as TVM's
``topi.fast_exp`` / ``topi.fast_erf``; about 1e-7 relative error on float32).

edgekit.compile.build.cpu_pipeline (and the tuning builder) enable them for every CPU build.
Registering them changes every llvm build in the process, and they clamp the argument
(exp(-inf) gives about 6e-39, not 0, so a masked softmax weight is ~1e-39 instead of 0; NaN
is not propagated through exp): accepted for inference, as ONNX Runtime's MLAS does the
same kind of approximation.  tools/bench_dense_kernels.py measures it.
"""

from __future__ import annotations

from edgekit.compile.tvm_env import import_tvm

_ENABLED = False
# Above TVM's own registrations (level 10 for llvm, 99 for "default"), so these win.
_LEVEL = 120


def _fast_exp(x, dtype):
    from tvm import tirx

    f32 = "float32"
    lanes = dtype[len("float32"):]  # "" or "x8": a vectorized call

    def c(v):
        return tirx.const(v, f32)

    x = tirx.max(tirx.min(x, c(88.3762626647950)), c(-88.3762626647949))
    n = tirx.floor(x * c(1.44269504088896341) + c(0.5))
    g = x - n * c(0.693359375) - n * c(-2.12194440e-4)
    p = c(1.9875691500e-4)
    for coefficient in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1):
        p = p * g + c(coefficient)
    p = p * g * g + g + c(1.0)
    exponent = tirx.reinterpret(dtype, tirx.shift_left(tirx.Cast("int32" + lanes, n) + tirx.const(127, "int32"),
                                                       tirx.const(23, "int32")))
    return p * exponent


def _fast_erf(x, _dtype):
    from tvm import tirx

    f32 = "float32"

    def c(v):
        return tirx.const(v, f32)

    x = tirx.max(tirx.min(x, c(4.0)), c(-4.0))
    x2 = x * x
    p = c(-2.72614225801306e-10)
    for coefficient in (2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05,
                        -7.34990630326855e-04, -2.95459980854025e-03, -1.60960333262415e-02):
        p = p * x2 + c(coefficient)
    q = c(-1.45660718464996e-05)
    for coefficient in (-2.13374055278905e-04, -1.68282697438203e-03, -7.37332916720468e-03,
                        -1.42647390514189e-02):
        q = q * x2 + c(coefficient)
    return x * p / q


def _dtype(expr) -> str:
    ty = getattr(expr, "ty", None)
    return str(getattr(ty, "dtype", None) or getattr(expr, "dtype", ""))


def _lowering(fast, llvm_intrinsic):
    def lower(call):
        from tvm import tirx

        arg = call.args[0]
        dtype = _dtype(call) or _dtype(arg)
        if dtype.startswith("float32"):
            return fast(arg, dtype)
        # Other types: what TVM's own llvm rule does (this registration replaced it).
        return tirx.call_llvm_pure_intrin(dtype, llvm_intrinsic, tirx.const(1, "uint32"), arg)

    return lower


def enable() -> None:
    """Register the polynomial exp/erf lowerings for llvm and nearbyint as vectorizable (idempotent, process-wide)."""
    global _ENABLED
    if _ENABLED:
        return
    import_tvm()
    from tvm.tirx.op import register_intrin_lowering

    register_intrin_lowering("tirx.exp", target="llvm", f=_lowering(_fast_exp, "llvm.exp"), level=_LEVEL)
    register_intrin_lowering("tirx.erf", target="llvm", f=_lowering(_fast_erf, "llvm.erf"), level=_LEVEL)
    # TVM 0.27 marks round, floor, exp ... vectorizable but not nearbyint, the rounding of every int8
    # requantize: its vectorizer then scalarized each loop holding one, and LLVM re-vectorized an outer
    # loop with gathers and byte-wise scatters (MobileNetV3's 16->16 int8 conv: 4.5x its float kernel).
    # llvm.nearbyint has vector forms (vroundps, frintx) on every CPU target edgekit builds for.
    tvm = import_tvm()
    if tvm.ir.Op.get("tirx.nearbyint").get_attr("TVectorizable") is None:
        tvm.ir.register_op_attr("tirx.nearbyint", "TVectorizable", True)
    _ENABLED = True
