"""Winograd convolution for 3x3 stride-1 fp32 convs on CPU: the same result with 2.25-4x fewer multiplies.

A direct 3x3 conv already runs near the core's FMA peak under the default schedules (ResNet-18 at
~90% of a measured 112 GFLOP/s on one Zen 5 core), so no schedule of it can go much faster.
Winograd's minimal filtering F(m x m, 3 x 3) (Lavin & Gray, 2015) computes each m x m output tile
from an (m+2) x (m+2) input tile with (m+2)^2 multiplies per channel pair instead of 9 m^2:

    V = B^T d B   per input tile and channel        (input transform: adds only, vectorized over channels)
    U = G g G^T   per filter                        (done here, at compile time, on the constant weight)
    M = V @ U     (m+2)^2 independent GEMMs [tiles x C] @ [C x K]    (edgekit's matmul rule)
    Y = A^T M A   per tile and output channel       (output transform, fused with the conv's epilogue)

The rewrite happens in the graph, after the NHWC layout pass: the conv becomes three TE kernels
(transforms and a batched GEMM), which the default schedule rules (edgekit.compile.schedules.winograd,
.matmul) and tuning (the GEMM's register tile is a knob) handle like any other kernel.  The output
transform is fused like a conv: the conv's bias, activation and residual add become its epilogue.

Which m, if any: a cost model (``tile_size``) in MAC-equivalents, counting the transformed weights,
(m+2)^2/9 times larger than the conv's, as streamed from DRAM: F(4x4) on ResNet-18's 56x56 and 28x28
stages, F(2x2) at 14x14, and its 7x7x512 convs stay direct (their weights already dominate).  A map
m does not divide is padded to whole tiles.  The matrices are Lavin's, interpolation points 0, +-1,
+-2 and infinity for F(4x4); G's 1/6 and 1/24 are applied in float64 at compile time.  fp32 error is
~1e-6 of the output's scale (tests/test_winograd.py, tools/bench_winograd.py).  x86 only for now
(edgekit.compile.build.optimize_graph): the ARM profiles keep direct convs until measured on a board.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgekit.compile.graph_passes import _static_shape
from edgekit.compile.tvm_env import import_tvm

# (B^T, G, A^T) of F(m x m, 3 x 3), by m.
MATRICES = {
    2: (np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64),
        np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=np.float64),
        np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float64)),
    4: (np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                  [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], dtype=np.float64),
        np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                  [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], dtype=np.float64),
        np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
                 dtype=np.float64)),
}

# Below this many input or output channels the batched GEMM is too narrow for a full register tile and
# the layer too small to matter (8 -> 8 channels at 56x56 did run 1.4x faster, 0.12 -> 0.08 ms, but such
# layers are rare outside stems, which have 3): they keep the direct conv and its tuning knobs.
MIN_CHANNELS = 16

# The names the kernels carry, so the schedule rules know them (and reports name them).
INPUT_TRANSFORM = "winograd_input_transform"
GEMM = "winograd_gemm"  # its own name, not "matmul": the cost card counts a model's matmuls by name
OUTPUT_TRANSFORM = "winograd_output_transform"
OUT_ELEMWISE_FUSABLE = 4  # relax's OpPatternKind.kOutEWiseFusable


@dataclass(frozen=True)
class WinogradConv:
    """A conv2d the rewrite takes: NHWC data (N, H, W, C), HWIO weight (3, 3, C, K), zero padding."""

    n: int
    h: int
    w: int
    c: int
    k: int
    pad_top: int
    pad_left: int
    out_h: int
    out_w: int
    m: int  # output tile size: 4 or 2

    @property
    def alpha(self) -> int:
        return self.m + 2

    @property
    def tiles_h(self) -> int:
        return -(-self.out_h // self.m)

    @property
    def tiles_w(self) -> int:
        return -(-self.out_w // self.m)

    @property
    def tiles(self) -> int:
        return self.n * self.tiles_h * self.tiles_w


# What one byte of weight costs, in multiply-accumulates, when it streams from DRAM (a model's weights
# do not stay in cache between inferences: ResNet-18's are 45 MB).  One Zen 5 core: 56 G fp32 MAC/s
# against ~14 GB/s.  Transform buffers (V, M) are read back from L2/L3: 1 MAC a byte.
WEIGHT_BYTE_MACS = 4.0
TRANSFORM_BYTE_MACS = 1.0


def direct_cost(out_h: int, out_w: int, c: int, k: int, n: int = 1) -> float:
    """The direct conv's cost in MAC-equivalents: its 9 MACs per output overlap the weight stream."""
    return max(n * out_h * out_w * 9 * c * k, WEIGHT_BYTE_MACS * 9 * c * k * 4)


def winograd_cost(out_h: int, out_w: int, c: int, k: int, m: int, n: int = 1) -> float:
    """F(m x m)'s cost: the GEMMs' MACs, plus its (m+2)^2 / 9 times larger weights, which a batch of few
    tiles reuses too little to hide (ResNet-18's 7x7x512 convs ran 0.7-0.9x direct), plus V and M."""
    alpha2 = (m + 2) ** 2
    tiles = n * -(-out_h // m) * -(-out_w // m)  # a batch reuses the weights n times more
    return (tiles * alpha2 * c * k + WEIGHT_BYTE_MACS * alpha2 * c * k * 4
            + TRANSFORM_BYTE_MACS * 2 * 4 * alpha2 * tiles * (c + k))


def tile_size(out_h: int, out_w: int, c: int, k: int, n: int = 1) -> int | None:
    """The cheapest m by the cost model, or None where the direct conv is cheaper.  A map that m does not
    divide is padded to whole tiles (7x7 as 8x8)."""
    costs = {m: winograd_cost(out_h, out_w, c, k, m, n) for m in sorted(MATRICES) if min(out_h, out_w) >= m}
    if not costs:
        return None
    best = min(costs, key=costs.get)
    return best if costs[best] < direct_cost(out_h, out_w, c, k, n) else None


def match_winograd_conv(call) -> WinogradConv | None:
    """The conv ``call`` describes, when the Winograd rewrite applies to it; else None."""
    tvm = import_tvm()
    from tvm import relax

    if not isinstance(call, relax.Call) or getattr(call.op, "name", "") != "relax.nn.conv2d":
        return None
    attrs = call.attrs
    data, weight = call.args
    if (str(attrs.data_layout), str(attrs.kernel_layout), str(attrs.out_layout)) != ("NHWC", "HWIO", "NHWC"):
        return None
    if any(int(v) != 1 for v in (*attrs.strides, *attrs.dilation)) or int(attrs.groups) != 1:
        return None
    if not isinstance(weight, tvm.ir.GenericConst):  # relax.Constant, named GenericConst in 0.27
        return None
    weight_value = weight.value
    shape = _static_shape(data)
    if shape is None or len(shape) != 4 or str(data.ty.dtype) != "float32":
        return None
    if str(weight_value.dtype) != "float32" or str(attrs.out_dtype) not in ("float32", "", "void", "None"):
        return None  # (an unset out_dtype prints as one of the last three, by how the call was made)
    kh, kw, c, k = (int(v) for v in weight_value.shape)
    if (kh, kw) != (3, 3) or c != shape[3] or min(c, k) < MIN_CHANNELS:
        return None
    top, left, bottom, right = (int(v) for v in attrs.padding)
    n, h, w, _ = shape
    out_h, out_w = h + top + bottom - 2, w + left + right - 2
    m = tile_size(out_h, out_w, c, k, n)
    if m is None:
        return None
    return WinogradConv(n, h, w, c, k, top, left, out_h, out_w, m)


def transformed_weight(weight: np.ndarray, m: int) -> np.ndarray:
    """U[(i, j), c, k] = (G g G^T)[i, j] for every filter g = weight[:, :, c, k] (HWIO), float32."""
    g_matrix = MATRICES[m][1]
    u = np.einsum("iu,uvck,jv->ijck", g_matrix, weight.astype(np.float64), g_matrix)
    alpha = m + 2
    return u.reshape(alpha * alpha, *weight.shape[2:]).astype(np.float32)


def _terms(coefficients: np.ndarray, values) -> object:
    """sum(c * v) over the non-zero coefficients, with no multiply for +-1 (the transforms are mostly adds)."""
    from tvm import tirx

    total = None
    for c, v in zip(coefficients.ravel(), values):
        if c == 0:
            continue
        term = v if c == 1 else -v if c == -1 else v * tirx.const(float(c), "float32")
        total = term if total is None else total + term
    return total if total is not None else tirx.const(0.0, "float32")


def _select_by(index, cases: list):
    """cases[index] for a loop index the schedule unrolls: a Select chain that folds to one case per copy."""
    from tvm import tirx

    expr = cases[-1]
    for i in range(len(cases) - 2, -1, -1):
        expr = tirx.Select(index == i, cases[i], expr)
    return expr


def input_transform(data, conv: WinogradConv):
    """V[(i, j), p, c] = (B^T d_p B)[i, j]: d_p the zero-padded (m+2)^2 input tile p, channel c.

    Two separable stages (rows, then columns) of (m+2) cases each: the one-stage form, a Select
    over (m+2)^2 cases of up to (m+2)^2 terms, took TVM's simplifier ~7 s per conv.
    """
    from tvm import te, tirx

    bt = MATRICES[conv.m][0]
    alpha, m = conv.alpha, conv.m
    per_image = conv.tiles_h * conv.tiles_w

    def pixel(p, u, v, c):
        n, th, tw = p // per_image, (p % per_image) // conv.tiles_w, p % conv.tiles_w
        y, x = th * m + u - conv.pad_top, tw * m + v - conv.pad_left
        inside = tirx.all(y >= 0, y < conv.h, x >= 0, x < conv.w)
        # The load is clamped into the image: a vectorized select may read both of its sides.
        y_in, x_in = tirx.max(tirx.min(y, conv.h - 1), 0), tirx.max(tirx.min(x, conv.w - 1), 0)
        return tirx.if_then_else(inside, data[n, y_in, x_in, c], tirx.const(0.0, "float32"))

    rows = te.compute(
        (alpha, alpha, conv.tiles, conv.c),
        lambda i, v, p, c: _select_by(i, [_terms(bt[i_], [pixel(p, u, v, c) for u in range(alpha)])
                                          for i_ in range(alpha)]),
        name="winograd_input_rows")
    return te.compute(
        (alpha * alpha, conv.tiles, conv.c),
        lambda e, p, c: _select_by(e % alpha, [_terms(bt[j], [rows[e // alpha, v, p, c] for v in range(alpha)])
                                               for j in range(alpha)]),
        name="winograd_input")


def batched_gemm(tiles, weight):
    """M[e, p, k] = sum_c V[e, p, c] U[e, c, k]: the (m+2)^2 independent GEMMs (edgekit's matmul rule)."""
    from tvm import te

    channels = te.reduce_axis((0, int(tiles.shape[2])), name="c")
    return te.compute((tiles.shape[0], tiles.shape[1], weight.shape[2]),
                      lambda e, p, k: te.sum(tiles[e, p, channels] * weight[e, channels, k], axis=channels),
                      name="winograd_gemm")


def output_transform(product, conv: WinogradConv):
    """Y[n, y, x, k] = (A^T M_p A)[y % m, x % m]: M_p the (m+2)^2 products of the tile p holding (y, x).

    Separable like the input transform: rows (A^T M), then columns (. A).
    """
    from tvm import te

    at = MATRICES[conv.m][2]
    alpha, m = conv.alpha, conv.m

    rows = te.compute(
        (m, alpha, conv.tiles, conv.k),
        lambda r, v, p, k: _select_by(r, [_terms(at[r_], [product[u * alpha + v, p, k] for u in range(alpha)])
                                          for r_ in range(m)]),
        name="winograd_output_rows")

    def compute(n, y, x, k):
        p = (n * conv.tiles_h + y // m) * conv.tiles_w + x // m
        return _select_by(x % m, [_terms(at[s], [rows[y % m, v, p, k] for v in range(alpha)]) for s in range(m)])

    return te.compute((conv.n, conv.out_h, conv.out_w, conv.k), compute, name="winograd_output")


def winograd_convs():
    """A module pass: every conv2d ``match_winograd_conv`` takes becomes input transform, batched GEMM,
    output transform.  Run it after the NHWC layout pass (it needs HWIO constant weights)."""
    tvm = import_tvm()
    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    @mutator
    class _Rewriter(PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            conv = match_winograd_conv(call)
            if conv is None:
                return call
            weight = relax.const(transformed_weight(call.args[1].value.numpy(), conv.m))
            tiles = self.builder_.emit_te(lambda d: input_transform(d, conv), call.args[0],
                                          primfunc_name_hint=INPUT_TRANSFORM)
            product = self.builder_.emit_te(batched_gemm, tiles, weight, primfunc_name_hint=GEMM)
            # Fused like a conv (kOutEWiseFusable): the conv's bias, activation and residual add
            # become its epilogue, rather than separate kernels or producers fused into the next layer.
            return self.builder_.emit_te(lambda mm: output_transform(mm, conv), product,
                                         primfunc_name_hint=OUTPUT_TRANSFORM,
                                         primfunc_attrs={"op_pattern": OUT_ELEMWISE_FUSABLE})

    @tvm.transform.module_pass(opt_level=0, name="EdgekitWinogradConvs")
    def _pass(mod, _ctx):
        rewriter = _Rewriter(mod)
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
        return rewriter.builder_.get()

    return _pass

