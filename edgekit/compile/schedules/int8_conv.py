"""The int8 conv2d schedule: NHWC activations x packed weights, one dot-product instruction per step.

The kernel this schedules is what edgekit.compile.graph_passes.integer_quantized_ops leaves
after ConvertLayout, LegalizeOps and FuseTIR: ``pad_temp`` (optional), a ``conv2d_nhwc`` block

    acc[n, y, x, o] += int32(pad[n, y*s + ky*d, x*s + kx*d, i]) * int32(w[o, ky, kx, i])   # w OHWI (or HWIO) int8

and the fused requantize epilogue (cast to float, scale, bias, ReLU, the next layer's rounding).

Shape of the schedule (the register-tiled NHWC schedule of DESIGN.md section 11, integer):
- weights repacked OHWI -> [O/lanes][KH][KW][I/group][lanes][group] so one intrinsic call reads
  one contiguous vector of weights; activations stay NHWC, where the ``group`` input channels an
  intrinsic reduces are already contiguous.  The repacking is a stage of the kernel (a copy of
  the weights per call, about 1/(OH*OW) of the multiply work): the schedule rule cannot fold a
  constant, see the report for the graph pass that would.
- loops (y, x_outer, o_outer, ky, kx, i_outer, x_tile, o_tile, [lanes x group] = intrinsic): the
  accumulators of an x_tile x o_tile block stay in registers across the whole reduction.
- the epilogue runs on each finished register tile, vectorized, so the int32 sums never go to
  memory.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgekit.compile.schedules._common import pack_at_compile_time
from edgekit.compile.schedules.int8_intrinsics import DotIntrin


@dataclass(frozen=True)
class ConvKernel:
    """What the rule found in a fused PrimFunc."""

    conv: str              # name of the int32 accumulation block
    act_dtype: str         # "uint8" or "int8"
    act_producer: str | None   # the pad block, or None when the conv reads a parameter directly
    out_channels: int
    in_channels: int
    out_width: int
    epilogue: tuple[str, ...]  # the blocks after the conv, in order
    weight_layout: str = "OHWI"  # "HWIO" after edgekit's CPU layout pass, "OHWI" as the int8 pass emits it


def find_conv(sch) -> ConvKernel | None:
    """The int8 x int8 -> int32 NHWC conv2d in ``sch``'s function, or None."""
    from tvm.tirx import expr as tirx, stmt as tirx_stmt

    try:
        root = sch.get_sblock("root")
    except Exception:  # noqa: BLE001  (an opaque kernel with no block tree, e.g. searchsorted)
        return None
    blocks = [sch.get(b) for b in sch.get_child_blocks(root)]
    for index, block in enumerate(blocks):
        store = block.body
        if not isinstance(store, tirx_stmt.BufferStore) or str(store.buffer.dtype) != "int32" or block.init is None:
            continue
        if len(block.iter_vars) != 7 or [int(v.iter_type) for v in block.iter_vars] != [0, 0, 0, 0, 2, 2, 2]:
            continue
        product = _integer_product(store)
        if product is None:
            continue
        act, weight = product
        vs = [v.var for v in block.iter_vars]
        # Weights read at exactly (o, ky, kx, i) (OHWI) or (ky, kx, i, o) (HWIO); activations with i innermost.
        layouts = {"OHWI": (vs[3], vs[4], vs[5], vs[6]), "HWIO": (vs[4], vs[5], vs[6], vs[3])}
        weight_layout = next((name for name, order in layouts.items() if len(weight.indices) == 4
                              and all(_is_var(e, v) for e, v in zip(weight.indices, order))), None)
        if weight_layout is None:
            continue
        if len(act.indices) != 4 or not _is_var(act.indices[3], vs[6]):
            continue
        if not all(_is_var(e, v) for e, v in zip(store.indices, vs[:4])):
            continue
        producer = next((b.name_hint for b in blocks[:index]
                         if any(load_buffer(w).same_as(load_buffer(act)) for w in b.writes)), None)
        out_shape = [int(x) for x in store.buffer.shape]
        in_channels = int(load_buffer(act).shape[3])
        return ConvKernel(conv=block.name_hint, act_dtype=str(load_buffer(act).dtype), act_producer=producer,
                          out_channels=out_shape[3], in_channels=in_channels, out_width=out_shape[2],
                          epilogue=tuple(b.name_hint for b in blocks[index + 1:]), weight_layout=weight_layout)
    return None


def schedule_conv(sch, kernel: ConvKernel, intrin: DotIntrin, *, registers: int) -> None:
    """Schedule ``kernel`` in place for ``intrin``; raises if a primitive refuses (the rule then declines)."""
    lanes, group = intrin.lanes, intrin.group
    conv = sch.get_sblock(kernel.conv)

    # Activations: widen (int16 pairs) in the stage that pads them, or in a copy of the input.
    if intrin.act_dtype != kernel.act_dtype:
        stage = (sch.get_sblock(kernel.act_producer) if kernel.act_producer
                 else sch.cache_read(conv, 0, "global"))
        sch.unsafe_set_dtype(stage, 0, intrin.act_dtype)
        _vectorize_inner(sch, stage, 32)
    elif kernel.act_producer:
        _vectorize_inner(sch, sch.get_sblock(kernel.act_producer), 32)

    # Weights: OHWI -> [O/lanes][KH][KW][I/group][lanes][group] (and widened for int16 pairs), packed at
    # compile time.
    def pack(o, kh, kw, i):
        if intrin.k_major:
            return (o // lanes, kh, kw, i // group, i % group, o % lanes)
        return (o // lanes, kh, kw, i // group, o % lanes, i % group)

    packed = pack_at_compile_time(sch, conv, 1, (lambda kh, kw, i, o: pack(o, kh, kw, i))
                                  if kernel.weight_layout == "HWIO" else pack)
    if intrin.weight_dtype != "int8":
        sch.unsafe_set_dtype(packed, 0, intrin.weight_dtype)

    o_tile, x_tile = register_tile(kernel.out_channels // lanes, kernel.out_width, registers)
    n, y, x, o, ky, kx, i = sch.get_loops(conv)
    o_vec, o_lane = sch.split(o, [None, lanes])
    o_out, o_in = sch.split(o_vec, [None, o_tile])
    x_out, x_in = sch.split(x, [None, x_tile])
    i_out, i_grp = sch.split(i, [None, group])
    sch.reorder(n, y, x_out, o_out, ky, kx, i_out, x_in, o_in, o_lane, i_grp)

    _fuse_epilogue(sch, kernel, o_out, lanes)
    init = sch.decompose_reduction(conv, ky)
    sch.tensorize(o_lane, intrin.name)
    if kernel.epilogue:
        # The int32 sums live only inside one register tile: a "local" buffer there (a global one
        # would be a workspace allocation per tile).  After tensorize: the intrinsics' buffers are global.
        sch.set_scope(init, 0, "local")
    sch.unroll(x_in)
    sch.unroll(o_in)
    init_loops = sch.get_loops(init)
    sch.vectorize(init_loops[-1])


def register_tile(vectors: int, width: int, registers: int) -> tuple[int, int]:
    """(vectors of output channels, output columns) per register tile: as many accumulators as
    fit next to one weight vector per channel vector and an activation broadcast, whole divisors
    only (a tail would put a predicate on the tensorized block)."""
    best = (1, 1)
    for o_tile in (d for d in range(1, min(vectors, 4) + 1) if vectors % d == 0):
        for x_tile in (d for d in range(1, min(width, 8) + 1) if width % d == 0):
            if o_tile * x_tile + o_tile + 1 <= registers and o_tile * x_tile > best[0] * best[1]:
                best = (o_tile, x_tile)
    return best


def _fuse_epilogue(sch, kernel: ConvKernel, o_out, lanes: int) -> None:
    """Inline the elementwise chain after the conv into its last block and run that per register tile."""
    if not kernel.epilogue:
        return
    *middle, last = kernel.epilogue
    for name in middle:
        sch.compute_inline(sch.get_sblock(name))
    last_block = sch.get_sblock(last)
    sch.reverse_compute_at(last_block, o_out)
    inner = sch.get_loops(last_block)[-1]
    _, lane = sch.split(inner, [None, lanes])
    sch.vectorize(lane)


def _vectorize_inner(sch, block, max_lanes: int) -> None:
    loop = sch.get_loops(block)[-1]
    extent = int(sch.get(loop).extent)
    if extent <= max_lanes:
        sch.vectorize(loop)
    elif extent % max_lanes == 0:
        sch.vectorize(sch.split(loop, [None, max_lanes])[1])


def _integer_product(store):
    """(activation load, weight load) if ``store`` is ``acc + int32(a) * int32(w)`` over 8-bit a, int8 w."""
    from tvm.ir import TensorLoad  # 0.27: tirx.BufferLoad builds an ir.TensorLoad
    from tvm.tirx import expr as tirx

    value = store.value
    if not isinstance(value, tirx.Add) or not isinstance(value.a, TensorLoad):
        return None
    if not load_buffer(value.a).same_as(store.buffer) or not isinstance(value.b, tirx.Mul):
        return None
    loads = []
    for operand in (value.b.a, value.b.b):
        if not isinstance(operand, tirx.Cast) or not isinstance(operand.value, TensorLoad):
            return None
        loads.append(operand.value)
    act, weight = loads
    if str(load_buffer(act).dtype) not in ("uint8", "int8") or str(load_buffer(weight).dtype) != "int8":
        return None
    return act, weight


def _is_var(expr, var) -> bool:
    return expr.same_as(var)


def load_buffer(load):
    """The buffer a load reads (0.27's ir.TensorLoad calls it ``source``)."""
    buffer = getattr(load, "buffer", None)
    return buffer if buffer is not None else load.source
