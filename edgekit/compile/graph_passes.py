"""Graph-level rewrites edgekit adds before TVM's default pipeline (measured in tools/bench_speed.py).

Layout: PyTorch graphs arrive NCHW.  At edge sizes the output width is 7 or 14, which
no 8-lane AVX2 (or 4-lane NEON) vector divides, while channel counts (16, 24, 48, ...)
usually are multiples of the vector width.  NHWC puts the channels innermost, so tuned
convolutions vectorize over output channels with contiguous loads.  The weight
transposes this needs are folded into constants at compile time; only the network's
input and output get a transpose at run time.
"""

from __future__ import annotations

import numpy as np

from edgekit.compile.tvm_env import import_tvm

# NHWC activations, HWIO weights for CPU.  The default schedules (edgekit.compile.schedules.conv)
# vectorize over output channels: with HWIO a register tile's weights W[kh, kw, ic, oc:oc+16]
# are one contiguous load; with OHWI they are 16 loads KH*KW*IC floats apart.  Depthwise weights
# become (KH, KW, 1, C): contiguous over channels too.  conv1d (keyword-spotting nets) likewise
# goes to NWC activations with WIO weights.
CPU_CONV_LAYOUT = ("NHWC", "HWIO")
CPU_CONV1D_LAYOUT = ("NWC", "WIO")


def conv_layout(target) -> tuple[str, str] | None:
    """The conv2d layout edgekit compiles ``target`` with; None keeps the model's own (NCHW)."""
    return CPU_CONV_LAYOUT if target.kind.name == "llvm" else None


def layout_passes(target) -> list:
    """ConvertLayout, then fold the weight transposes it leaves into the constants.

    Run it after BatchNorm folding and constant folding: TVM 0.27's ConvertLayout crashes
    (segfault) on a conv2d whose weight is still an expression rather than a constant.
    ``clip`` (ReLU6, hard-swish) has no layout rule in 0.27, so ConvertLayout would wrap
    every ReLU6 in a transpose pair that also splits the conv from its epilogue; it is
    spelled as maximum/minimum first, which do have one.
    """
    import_tvm()
    from tvm import relax

    layout = conv_layout(target)
    if layout is None:
        return []
    # Transposed convs stay NCHW/NCW: TVM 0.27 legalizes conv2d_transpose only as NCHW with IOHW weights
    # (and conv1d_transpose as NCW), yet ConvertLayout would hand it the NHWC layout of its producer,
    # which then reaches the VM code generator unlowered ("CodeGenVM cannot emit this Relax operator").
    desired = {"relax.nn.conv2d": list(layout), "relax.nn.conv1d": list(CPU_CONV1D_LAYOUT),
               "relax.nn.conv2d_transpose": ["NCHW", "IOHW"], "relax.nn.conv1d_transpose": ["NCW", "IOW"]}
    from edgekit.compile.const_fold import FoldConstantsWithNumpy

    return [clip_as_min_max(), squeeze_axes_non_negative(), relax.transform.ConvertLayout(desired),
            FoldConstantsWithNumpy(), relax.transform.FoldConstant(), relax.transform.CanonicalizeBindings()]


def _relax_function_pass(name: str, rewrite_function):
    """A module pass: ``rewrite_function`` (relax.Function -> relax.Function) on every Relax function.

    It writes into a copy: assigning into the module given would change the caller's in place
    (tuning keeps its tasks' modules and looks records up by them).
    """
    tvm = import_tvm()
    from tvm import relax

    @tvm.transform.module_pass(opt_level=0, name=name)
    def _pass(mod, _ctx):
        updates = {gv: rewrite_function(func) for gv, func in mod.functions.items() if isinstance(func, relax.Function)}
        mod = mod.clone()
        for gv, func in updates.items():
            mod[gv] = func
        return mod

    return _pass


def squeeze_axes_non_negative():
    """A module pass: ``squeeze(x, axis=[-2])`` -> ``squeeze(x, axis=[rank - 2])`` (the same op).

    TVM 0.27's ConvertLayout crashes (``tvm.error.InternalError: std::bad_alloc``) on any squeeze
    with a negative axis, with or without a convolution in the graph.  Both frontends write them:
    torch's decompositions (adaptive_avg_pool1d is unsqueeze(-2), a 2-D pool, squeeze(-2)) and
    ONNX Squeeze nodes.  (edgekit.compile.frontend_fixes.normalize_squeeze_dims fixes the same in the
    FX graph, before decomposition; this pass catches every squeeze whichever route wrote it.)
    """
    import_tvm()
    from tvm import relax
    from tvm.relax.dpl import is_op, rewrite_call, wildcard

    pattern = is_op("relax.squeeze")(wildcard())

    def rewrite(expr, _matches):
        axis = expr.attrs.axis
        ndim = getattr(expr.args[0].ty, "ndim", -1)
        if axis is None or ndim is None or ndim < 1 or all(int(a) >= 0 for a in axis):
            return expr
        return relax.op.squeeze(expr.args[0], [int(a) % ndim for a in axis])

    return _relax_function_pass("EdgekitSqueezeAxesNonNegative", lambda func: rewrite_call(pattern, rewrite, func))


def clip_as_min_max():
    """A module pass: float ``clip(x, lo, hi)`` -> ``minimum(maximum(x, lo), hi)`` (same values)."""
    import_tvm()
    from tvm import relax
    from tvm.relax.dpl import is_op, rewrite_call, wildcard

    pattern = is_op("relax.clip")(wildcard(), wildcard(), wildcard())

    def rewrite(expr, _matches):
        x = expr.args[0]
        dtype = _float_dtype(x)
        low, high = _prim_float(expr.args[1]), _prim_float(expr.args[2])
        if not dtype or low is None or high is None:
            return expr
        return relax.op.minimum(relax.op.maximum(x, relax.const(low, dtype)), relax.const(high, dtype))

    return _relax_function_pass("EdgekitClipAsMinMax", lambda func: rewrite_call(pattern, rewrite, func))


def _float_dtype(expr) -> str:
    try:
        dtype = str(expr.ty.dtype)
    except (AttributeError, TypeError):
        return ""
    return dtype if dtype.startswith("float") else ""


def _prim_float(expr):
    """The float of a PrimValue/FloatImm/IntImm, or of a plain number (an op attribute such as pad_value)."""
    if isinstance(expr, (int, float)):
        return float(expr)
    value = getattr(expr, "value", None)
    value = getattr(value, "value", value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


# ------------------------------------------------------------------------------------------- int8

# Input channels below which an ungrouped int8 conv stays a float kernel: the dot-product
# intrinsics reduce groups of 4 (vpdpbusd, sdot, smlal) or 2 (vpmaddwd) contiguous channels.
# (Depthwise convs have one input channel per group and stay int8: their own rule vectorizes
# over channels.)
MIN_INT8_REDUCTION_GROUP = 4


# Taps of a depthwise window whose int8 products float32 sums exactly: 256 x 255 x 128 < 2^24.
MAX_FLOAT_SUM_TAPS = 256


def integer_quantized_ops(*, unsigned_activations: bool = False, float_depthwise: bool = False):
    """A module pass: fake-quantized conv2d/matmul -> int8 x int8 kernels with int32 accumulation.

    ``float_depthwise`` (x86): a depthwise conv reads its int8 activations and weights but multiplies
    and sums them as float32, which is exact for any window of at most MAX_FLOAT_SUM_TAPS taps
    (|sum| <= taps x 255 x 128 < 2^24, float32's exact integers).  A depthwise conv has no reduction
    over channels for a dot-product instruction, so its int32 kernel multiplied with ``vpmulld``, two
    uops of 10 cycles' latency on Intel cores: MobileNetV3-Small's int8 depthwise convs took 0.53 ms,
    float-accumulated 0.37 ms.

    ``unsigned_activations`` (targets whose dot product is u8 x s8: x86 VNNI): an unpadded conv with
    signed activations reads them shifted to unsigned, ``a + 128``, and subtracts ``128 x sum(w)``
    per output channel, a compile-time constant, once in its epilogue.  Left signed, the VNNI kernel
    made that correction inside its inner loop, a second dot product and a subtraction per
    accumulator and step: MobileNet's expansion convs ran at 1/2.6 the speed of its projections.
    (A padded conv keeps the in-loop correction: its zero border would read as -128.)

    edgekit.compress.quantize exports each int8 layer as float arithmetic that TVM would fold
    into an fp32 kernel:

        xq = clip(round(x * r_x), qmin, qmax)              # activation on the int8 grid, r_x = 1 / s_x
                                                            # (x / s_x in models quantized before r_x)
        w  = astype(W_int8, f32) * s_w                      # s_w per output channel, or a scalar
        y  = conv2d(xq, w) * s_x            (or matmul(xq, permute_dims(w)) * s_x)

    This pass rewrites each such chain into

        y  = astype(conv2d(astype(xq, u8|i8), W_int8, out_dtype=i32), f32) * (s_x * s_w)

    which is exact (integer products summed in int32; the float version sums the same
    integers), keeps the weights as int8 constants (4x smaller library), and moves int8
    activations through memory.  FuseOps then fuses the int32 conv with its requantize chain
    (scale, bias, ReLU, the next layer's round/clip/astype) into one kernel that reads int8
    and writes int8.  Layers whose activation is not quantized stay float.
    """
    import_tvm()
    from tvm import relax
    from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

    x = wildcard()
    x_scale = is_const()
    scaled = _activation_scaling(x, x_scale)
    quantized = is_op("relax.clip")(is_op("relax.round")(scaled), wildcard(), wildcard())
    w_int = is_const()
    w_scale = is_const()
    w_scale_reshaped = is_op("relax.reshape")(w_scale, wildcard())
    weight = is_op("relax.multiply")(is_op("relax.astype")(w_int), w_scale_reshaped | w_scale)
    conv = is_op("relax.nn.conv2d")(quantized, weight)
    matmul = is_op("relax.matmul")(quantized, is_op("relax.permute_dims")(weight))
    out_scale = is_const()
    pattern = is_op("relax.multiply")(conv | matmul, out_scale)

    def rewrite(expr, matches):
        clip = matches[quantized]
        low, high = _prim_int(clip.args[1]), _prim_int(clip.args[2])
        if low is None or high is None:
            return expr
        if low >= 0 and high <= 255:
            act_dtype = "uint8"
        elif low >= -128 and high <= 127:
            act_dtype = "int8"
        else:
            return expr  # not an 8-bit grid
        weights = _const_array(matches[w_int])
        if weights.dtype != np.int8:
            return expr
        s_x = float(_const_array(matches[out_scale]))
        if not _inverse_scales(matches[scaled], float(_const_array(matches[x_scale])), s_x):
            return expr  # the output is not rescaled by the same activation scale
        s_w = _const_array(matches[w_scale]).astype(np.float64).reshape(-1)
        act = relax.op.astype(_clamp(clip.args[0], low, high), act_dtype)
        if conv in matches and int(matches[conv].attrs.groups) == 1 and weights.shape[1] < MIN_INT8_REDUCTION_GROUP:
            # An RGB stem (3 input channels): no target's dot-product group fits, and its int8 kernel
            # ran 2x slower than the float one it replaces; the float kernel computes exactly what the
            # fake-quantized model does.
            return expr
        if conv in matches:
            call = matches[conv]
            attrs = call.attrs
            axis_shape = [1, weights.shape[0], 1, 1] if str(attrs.out_layout) == "NCHW" else None
            if axis_shape is None:
                return expr
            shift = unsigned_activations and act_dtype == "int8" and not any(int(p) for p in attrs.padding)
            if shift:
                act = relax.op.astype(relax.op.add(_clamp(clip.args[0], low, high), relax.const(128.0, "float32")),
                                      "uint8")
            taps = int(np.prod(weights.shape[1:]))
            float_sums = (float_depthwise and int(attrs.groups) > 1 and weights.shape[1] == 1
                          and taps <= MAX_FLOAT_SUM_TAPS)
            acc_dtype = "float32" if float_sums else "int32"
            acc = relax.op.nn.conv2d(act, relax.const(weights), strides=attrs.strides, padding=attrs.padding,
                                     dilation=attrs.dilation, groups=attrs.groups, data_layout=attrs.data_layout,
                                     kernel_layout=attrs.kernel_layout, out_layout=attrs.out_layout,
                                     out_dtype=acc_dtype)
            if shift:
                correction = 128 * weights.astype(np.int64).sum(axis=(1, 2, 3))
                acc = relax.op.subtract(acc, relax.const(correction.astype(acc_dtype).reshape(axis_shape)))
        else:
            acc = relax.op.matmul(act, relax.op.permute_dims(relax.const(weights), axes=[1, 0]), out_dtype="int32")
            axis_shape = [weights.shape[0]]
        combined = (s_x * s_w).astype(np.float32)
        scale = combined.reshape(axis_shape) if combined.size > 1 else combined.reshape(())
        return relax.op.multiply(relax.op.astype(acc, "float32"), relax.const(scale))

    return _relax_function_pass("EdgekitIntegerQuantizedOps", lambda func: rewrite_call(pattern, rewrite, func))


def explicit_pads_into_convs():
    """A module pass: a zero ``pad`` in front of a conv2d becomes the conv's own padding.

    TF-style "SAME" padding (EfficientNet-Lite's static padding, any ``nn.ZeroPad2d`` before a
    conv) arrives as its own op.  ConvertLayout has no NHWC rule for ``pad``, so every one became
    a transpose-pad-transpose kernel, and in an int8 model that kernel also quantized, as a
    strided scalar loop: 0.8 ms of EfficientNet-Lite0's 4.2 ms int8 kernels.  As the conv's
    padding it is the zero border the conv kernel writes anyway.

    The int8 form is ``conv2d(quantize(pad(x)))`` (quantize.py rounds the padded input): zero
    padding commutes with quantizing (a zero lands on zero when the clip range holds it), so the
    pad is first moved after the quantize, then merged.  Run before integer_quantized_ops, which
    expects the conv to read the quantized activation directly.
    """
    import_tvm()
    from tvm import relax
    from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

    padded = is_op("relax.nn.pad")(wildcard())
    scaled = _activation_scaling(padded, is_const())
    quantized = is_op("relax.clip")(is_op("relax.round")(scaled), wildcard(), wildcard())
    conv = is_op("relax.nn.conv2d")(padded, wildcard())

    def pad_after_quantize(expr, matches):
        pad = matches[padded]
        low, high = _prim_float(expr.args[1]), _prim_float(expr.args[2])
        if _spatial_zero_pad(pad) is None or low is None or high is None or not low <= 0.0 <= high:
            return expr
        scaling = matches[scaled]
        rescaled = relax.Call(scaling.op, [pad.args[0], scaling.args[1]], scaling.attrs)
        requantized = relax.op.clip(relax.op.round(rescaled), expr.args[1], expr.args[2])
        return relax.op.nn.pad(requantized, [int(v) for v in pad.attrs.pad_width], "constant", 0.0)

    def into_conv(expr, matches):
        pad = matches[padded]
        attrs = expr.attrs
        extra = _spatial_zero_pad(pad)
        if extra is None or str(attrs.data_layout) != "NCHW" or len(attrs.padding) != 4:
            return expr
        top, left, bottom, right = (int(v) for v in attrs.padding)
        padding = [top + extra[0], left + extra[1], bottom + extra[2], right + extra[3]]
        return relax.op.nn.conv2d(pad.args[0], expr.args[1], strides=attrs.strides, padding=padding,
                                  dilation=attrs.dilation, groups=attrs.groups, data_layout=attrs.data_layout,
                                  kernel_layout=attrs.kernel_layout, out_layout=attrs.out_layout,
                                  out_dtype=attrs.out_dtype)

    return _relax_function_pass("EdgekitExplicitPadsIntoConvs", lambda func: rewrite_call(
        conv, into_conv, rewrite_call(quantized, pad_after_quantize, func)))


def _activation_scaling(x, scale):
    """The pattern of quantize.py's activation scaling: ``x * (1 / s)``, or ``x / s`` (older models)."""
    from tvm.relax.dpl import is_op

    return is_op("relax.multiply")(x, scale) | is_op("relax.divide")(x, scale)


def _inverse_scales(scaling, factor: float, s_x: float) -> bool:
    """``scaling`` (x * factor, or x / factor) maps x to x / s_x, so the output's rescale by s_x undoes it."""
    if scaling.op.name == "relax.divide":
        return abs(factor - s_x) <= 1e-12 * max(1.0, abs(s_x))
    return abs(factor * s_x - 1.0) <= 1e-6  # 1 / s_x rounded to float32


def _spatial_zero_pad(pad) -> tuple[int, int, int, int] | None:
    """(top, left, bottom, right) of a constant-zero NCHW pad of H and W only; None for any other pad."""
    attrs = pad.attrs
    widths = [int(v) for v in attrs.pad_width]
    if str(attrs.pad_mode) != "constant" or _prim_float(attrs.pad_value) != 0.0 or len(widths) != 8 or any(widths[:4]):
        return None
    return widths[4], widths[6], widths[5], widths[7]


def _clamp(expr, low: int, high: int):
    """clip as maximum/minimum: ConvertLayout has no layout rule for relax.clip and would wrap each
    one in an NHWC->NCHW->NHWC transpose pair (two extra kernels per layer); the elementwise pair
    follows the conv's layout and fuses into the producing kernel's epilogue."""
    import_tvm()
    from tvm import relax

    # The quantized activations are float32: quantize.py exports round(x * (1 / s)) in float.
    return relax.op.minimum(relax.op.maximum(expr, relax.const(float(low), "float32")),
                            relax.const(float(high), "float32"))


def _prim_int(expr):
    value = getattr(expr, "value", None)
    value = getattr(value, "value", value)
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _const_array(const) -> np.ndarray:
    value = getattr(const, "data", None)  # relax.Constant before 0.27
    if value is None:
        value = const.value  # 0.27: tvm.ir.GenericConst
    return value.numpy()


def softmax_rows_on_the_vector_grid(lanes: int):
    """A module pass: a softmax whose rows are off the vector grid is computed on rows padded with -inf.

    Attention over 197 tokens (ViT at 224: 196 patches and the class token) has 197-long softmax rows,
    a prime: no vector divides them, so the max and sum reductions ran as serial scalar chains (310 us
    against 83 us for 208-long rows, ViT-Tiny's softmax 17% of the model).  Padded to a multiple of
    ``lanes`` with -inf, the rows vectorize; the pad adds nothing (exp(-inf - max) is 0, and a row
    that is all -inf stays NaN, as in torch) and the slice back is a copy.
    """
    import_tvm()
    from tvm import relax
    from tvm.relax.dpl import is_op, rewrite_call, wildcard

    pattern = is_op("relax.nn.softmax")(wildcard())

    def rewrite(expr, matches):
        softmax = matches[pattern]
        x = softmax.args[0]
        shape = _static_shape(x)
        if shape is None or _float_dtype(x) != "float32":
            return expr
        axis = int(softmax.attrs.axis) % len(shape)
        length = shape[axis]
        if axis != len(shape) - 1 or length % lanes == 0 or length < 2 * lanes:
            return expr
        widths = [0] * (2 * len(shape))
        widths[-1] = -length % lanes  # after the row's end, up to the next multiple of lanes
        rows = relax.op.nn.softmax(relax.op.nn.pad(x, widths, pad_value=float("-inf")), axis=-1)
        return relax.op.strided_slice(rows, axes=[axis], begin=[0], end=[length])

    return _relax_function_pass("EdgekitSoftmaxRowsOnTheVectorGrid", lambda func: rewrite_call(pattern, rewrite, func))


def _static_shape(expr) -> list[int] | None:
    """The static shape of a tensor expression; None when any dimension is symbolic or unknown."""
    try:
        return [int(d) for d in expr.ty.shape.values]
    except (AttributeError, TypeError):
        return None


# Elementwise ops of one tensor: f(reshape(x)) == reshape(f(x)).
_UNARY_ELEMENTWISE_OPS = ("relax.nn.gelu", "relax.nn.gelu_tanh", "relax.nn.relu", "relax.nn.silu", "relax.sigmoid",
                          "relax.tanh", "relax.exp", "relax.erf")


def elementwise_out_of_reshape_pairs():
    """A module pass: ``reshape(f(reshape(y, S)), shape(y))`` -> ``f(y)`` for an elementwise ``f``.

    torch's Linear on a [1, tokens, C] input arrives as reshape to 2-D, matmul, bias, reshape back to
    3-D, and the next Linear reshapes to 2-D again, so a GELU between two Linears sits between two
    reshapes.  FuseOps fuses no reshape into a matmul's epilogue, so the GELU ran as a kernel of its
    own over the 197 x 768 activations (ViT-Tiny's MLP: 0.85 ms a model).  Applied to the matmul's
    output directly, it becomes the matmul's epilogue, computed in registers.
    """
    import_tvm()
    from tvm import relax
    from tvm.relax.dpl import is_op, rewrite_call, wildcard

    y = wildcard()
    inner = is_op("relax.reshape")(y, wildcard())
    unary = is_op(_UNARY_ELEMENTWISE_OPS[0])(inner)
    for name in _UNARY_ELEMENTWISE_OPS[1:]:
        unary = unary | is_op(name)(inner)
    pattern = is_op("relax.reshape")(unary, wildcard())

    def rewrite(expr, matches):
        source, elementwise = matches[y], matches[unary]
        if _static_shape(source) is None or _static_shape(source) != _static_shape(matches[pattern]):
            return expr
        return relax.Call(elementwise.op, [source], elementwise.attrs)

    return _relax_function_pass("EdgekitElementwiseOutOfReshapePairs",
                                lambda func: rewrite_call(pattern, rewrite, func))
