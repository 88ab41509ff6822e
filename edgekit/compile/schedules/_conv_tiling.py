"""The register-tiled NHWC convolution schedule that conv.py and depthwise.py both apply.

A fused conv kernel, as LegalizeOps + FuseOps write it, is ``pad_temp`` (a copy or a
zero-padding block), one reduction block ``conv2d_nhwc``/``group_conv2d_nhwc``/``conv1d_nwc``
(iterations n, [oh], ow, oc | [kh], kw, ic) and an elementwise epilogue (bias, ReLU,
clip, hard-swish, residual add), the last block writing the output.

The schedule (DESIGN.md section 11's probe, 1.08-1.21x ONNX Runtime on Zen 5):

    for oh, ow_o, oc_o:                      # (oc_o, oh, ow_o) when the weights outweigh the input
        acc[ow_i, oc_t, lane] = 0            # a tile of tw x ct vector registers
        for kh, kw, ic:
            for ow_i, oc_t (unrolled), lane (vectorized):
                acc += x[oh*s + kh*d, (ow_o*tw + ow_i)*s + kw*d, ic] * w[kh, kw, ic, oc]
        out[...] = epilogue(acc)             # vectorized, fused: the accumulator never leaves registers

A squeeze-excitation conv (1x1 spatial, MobileNetV3's SE) may end in a broadcasting tail, the
multiply that scales the feature map by the excitation: the conv is tiled as above and the
tail runs as one vectorized elementwise nest over the feature map.

With HWIO weights (edgekit.compile.graph_passes) the weights of one tile are ct contiguous
vector loads, the input one broadcast per ow_i: tw*ct FMAs for tw+ct loads.  Depthwise
convolutions vectorize the same way over channels (the input is then a vector load, not a
broadcast) with kh and kw unrolled as well.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgekit.compile.schedules._common import (PARALLEL_MIN_MACS, BlockFacts, block_facts, debug_schedules,
                                               inline_into_last, largest_divisor, pack_at_compile_time,
                                               register_budget, schedule_elementwise_nest, vector_lanes)
from edgekit.compile.tvm_env import import_tvm


@dataclass(frozen=True)
class ConvKernel:
    """What the schedule needs to know about one fused conv PrimFunc."""

    sch: object
    pad: BlockFacts | None
    conv: BlockFacts
    epilogue: list[BlockFacts]
    spatial: list[int]      # n, [oh], ow, oc
    reduce: list[int]       # [kh], kw, ic (per group)
    in_channels: int        # all groups
    weight_bytes: int
    input_bytes: int
    tail: list[BlockFacts] = ()  # elementwise blocks over a larger (broadcast) shape after the epilogue

    @property
    def out_channels(self) -> int:
        return self.spatial[-1]

    @property
    def groups(self) -> int:
        return max(1, self.in_channels // self.reduce[-1])

    @property
    def macs(self) -> int:
        total = 1
        for e in self.spatial + self.reduce:
            total *= e
        return total


def match_conv(func) -> ConvKernel | None:
    """The conv kernel in ``func``, or None when it is not one this schedule knows."""
    tvm = import_tvm()
    sch = tvm.s_tir.Schedule(func)
    facts = block_facts(sch)
    if not facts:
        return None
    reductions = [i for i, f in enumerate(facts) if "R" in f.kinds]
    if len(reductions) != 1:
        return None
    at = reductions[0]
    conv = facts[at]
    if conv.kinds not in ("SSSSRRR", "SSSRR") or "conv" not in conv.name:
        return None
    prologue, epilogue = facts[:at], facts[at + 1:]
    if len(prologue) > 1 or any("R" in f.kinds for f in prologue + epilogue):
        return None
    n_spatial = conv.kinds.count("S")
    spatial, reduce = conv.extents[:n_spatial], conv.extents[n_spatial:]
    if spatial[0] != 1:
        return None  # batch > 1: not an edge kernel this tiling was measured on
    pad = prologue[0] if prologue else None
    data = pad.reads[0].source if pad is not None else conv.reads[0].source
    in_shape = [int(s) for s in data.shape]
    weight = conv.reads[-1].source
    weight_elems = 1
    for s in weight.shape:
        weight_elems *= int(s)
    in_elems = 1
    for s in in_shape:
        in_elems *= s
    # The epilogue covers the conv's output element for element, up to a broadcasting tail: a
    # squeeze-excitation conv (1x1 spatial) fused with the multiply that scales the feature map.
    same = 0
    while same < len(epilogue) and epilogue[same].extents == spatial:
        same += 1
    epilogue, tail = epilogue[:same], epilogue[same:]
    if tail and any(len(f.extents) != len(spatial) or f.extents[-1] != spatial[-1] for f in tail):
        return None  # the tail must keep the channels innermost
    return ConvKernel(sch, pad, conv, epilogue, spatial, reduce, in_channels=in_shape[-1],
                      weight_bytes=4 * weight_elems, input_bytes=4 * in_elems, tail=tail)


@dataclass(frozen=True)
class Tile:
    lanes: int     # vector lanes over output channels
    ct: int        # vectors per register tile
    tw: int        # output columns per register tile


def channel_lanes(kernel: ConvKernel, cpu, *, depthwise: bool) -> int:
    """Vector lanes over output channels: see choose_tile."""
    return vector_lanes(kernel.out_channels // (1 if depthwise else kernel.groups), cpu.f32_lanes)


def valid_tiles(kernel: ConvKernel, cpu, *, depthwise: bool) -> list[Tile]:
    """Every register tile the schedule can take for this kernel (the knob search's space)."""
    ow = kernel.spatial[-2]
    lanes = channel_lanes(kernel, cpu, depthwise=depthwise)
    vectors = kernel.out_channels // (1 if depthwise else kernel.groups) // lanes
    budget = register_budget(cpu)
    return [Tile(lanes, ct, tw) for ct in (1, 2, 3, 4) for tw in (1, 2, 3, 4, 5, 6, 7, 8)
            if not vectors % ct and not ow % tw and tw * ct <= budget and not (depthwise and ct > 2)]


def choose_tile(kernel: ConvKernel, cpu, *, depthwise: bool) -> Tile:
    """The register tile: maximize FMAs per load (tw*ct / (tw+ct)) within the register file.

    Channel vectors never straddle a group (grouped convs), and never need a tail: a channel
    count the lane count does not divide (3, 10, 1000 = 8 x 125 ...) gets the largest power-of-
    two vector that does, and when that is under 4 lanes (pruned widths: 45, 22) the widest
    vector of any length that divides it (45 = 3 x 15): LLVM splits a 15-lane vector into native
    ones, and the 45-channel conv ran 6x slower as the scalar loop a 1-lane tile is.
    """
    best, best_score = Tile(channel_lanes(kernel, cpu, depthwise=depthwise), 1, 1), -1.0
    for tile in valid_tiles(kernel, cpu, depthwise=depthwise):
        ct, tw = tile.ct, tile.tw
        # Depthwise: no reuse of the input across channels, so only tw counts (the weight
        # vector is shared across the tw columns); keep 1-2 channel vectors per tile.
        score = tw / (1 + 1 / ct) if depthwise else tw * ct / (tw + ct)
        # Ties go to the probe's shape (ct = 2, tw = 4).
        score += 0.01 * (ct == 2) + 0.005 * (tw == 4)
        if score > best_score:
            best, best_score = tile, score
    return best


def schedule_conv(kernel: ConvKernel, cpu, *, depthwise: bool, tile: Tile | None = None,
                  weights_outer: bool | None = None, ic_unroll: int = 1):
    """Apply the register-tiled schedule; raises on a shape the primitives refuse (callers catch).

    ``tile``, ``weights_outer`` and ``ic_unroll`` (input channels per straight-line step of the
    reduction) are the schedule's knobs: left as they are, the rule's own choice (what a build
    without tuning records ships); the knob search (edgekit.compile.knob_search) tries others
    and keeps a measured winner as a tuning record.
    """
    sch, conv = kernel.sch, kernel.conv.rv
    tile = tile or choose_tile(kernel, cpu, depthwise=depthwise)
    if not depthwise:
        _pack_weights(sch, conv, tile.ct * tile.lanes)

    if kernel.epilogue:
        if not inline_into_last(sch, kernel.epilogue):
            return None
        out = kernel.epilogue[-1].rv
    else:
        out = sch.cache_write(conv, 0, "global")  # a consumer to fuse the accumulator into
    sch.set_scope(conv, 0, "local")

    loops = sch.get_loops(conv)
    n_spatial = len(kernel.spatial)
    sp, rd = loops[:n_spatial], loops[n_spatial:]
    n, rows, ow, oc = sp[0], sp[1:-2], sp[-2], sp[-1]
    if weights_outer is None:
        weights_outer = default_weights_outer(kernel, depthwise=depthwise)
    # Rows outermost: the zero padding is computed per chunk of output rows, into a buffer that stays
    # in L2.  Per single row, a 3x3 conv padded every input row three times.
    pads = kernel.pad is not None and not depthwise and not _is_copy(sch, kernel.pad.rv)
    chunk = padded_row_chunk(kernel) if pads and not weights_outer else 1
    if rows and chunk > 1:
        rows = [*sch.split(rows[0], [None, chunk]), *rows[1:]]
    parallel_rows = rows[:1] if chunk > 1 else rows  # the padding runs per chunk: the rows under it stay serial
    ow_o, ow_i = sch.split(ow, [None, tile.tw])
    oc_o, oc_t, oc_v = sch.split(oc, [None, tile.ct, tile.lanes])

    # Weights that outweigh the input (1x1 and deep 3x3 convs at 7x7/14x14: ResNet-18's last stage
    # has 9.4 MB of weights for a 100 KB input) are streamed once with oc_o outermost; otherwise
    # rows outermost keep the padded input rows hot while all output channels are computed.
    outer = [oc_o, n, *rows, ow_o] if weights_outer else [n, *rows, ow_o, oc_o]
    inner = [ow_i, oc_t, oc_v]
    if ic_unroll > 1 and not depthwise and kernel.reduce[-1] % ic_unroll == 0:
        ic_o, ic_i = sch.split(rd[-1], [None, ic_unroll])
        rd, inner = [*rd[:-1], ic_o], [ic_i, *inner]
        sch.unroll(ic_i)
    sch.reorder(*outer, *rd, *inner)
    sch.reverse_compute_at(out, outer[-1], preserve_unit_loops=True)

    # Padding: per chunk of output rows when rows lead (the rows a tile needs stay hot); otherwise once.
    # A depthwise conv reads the input in place, its taps at the border selected to zero: each input
    # element feeds only kh*kw products, so copying it into a padded buffer first cost more than the
    # products (every depthwise kernel of MobileNetV2, V3-Small and EfficientNet-Lite0 ran 1.3-3.6x
    # faster inlined, 2.8 -> 1.9 ms in EfficientNet-Lite0); a dense conv reuses each element ic-fold
    # and runs faster from the padded copy.
    if kernel.pad is not None:
        if not pads:
            sch.compute_inline(kernel.pad.rv)
        elif rows and not weights_outer:
            sch.compute_at(kernel.pad.rv, rows[0], preserve_unit_loops=True)
            _vectorize_innermost(sch, kernel.pad.rv, cpu)

    for loop in (ow_i, oc_t):
        sch.unroll(loop)
    if tile.lanes > 1:
        sch.vectorize(oc_v)
    if depthwise:
        for loop in rd[:-1]:  # kh, kw: all taps straight-line (the ic loop of a depthwise conv is 1)
            sch.unroll(loop)

    # The epilogue: its channel loop is the tile's ct*lanes channels, split and vectorized.
    out_loops = sch.get_loops(out)
    if tile.lanes > 1:
        _, lane = sch.split(out_loops[-1], [None, tile.lanes])
        sch.vectorize(lane)

    if kernel.macs >= PARALLEL_MIN_MACS and cpu.num_cores > 1:
        sch.parallel(outer[0] if weights_outer else _fuse_batch_rows(sch, n, parallel_rows))

    # After the vectorize/unroll annotations: decompose_reduction before them leaves an update
    # block that vectorize refuses ("does not have compact dataflow").
    init = sch.decompose_reduction(conv, rd[0])
    init_loops = sch.get_loops(init)
    if tile.lanes > 1:
        sch.vectorize(init_loops[-1])
    if kernel.tail and not _schedule_tail(sch, kernel.tail, cpu):
        return None
    return sch


def _pack_weights(sch, conv, block: int) -> None:
    """HWIO -> [O/block][KH][KW][I][block]: the weights of one register tile's output channels, contiguous.

    In HWIO a tile's weights are a 4*block-byte slice every O*4 bytes: walking the reduction
    steps across the whole weight tensor, a page or two per step (ResNet-18's 7x7x512 convs ran
    at a fifth of the 56x56 stage's GFLOP/s, bound by TLB misses and a prefetcher that never
    locks on).  Blocked, each tile streams one contiguous run, packed once at compile time.
    """
    rank = len(sch.get(conv).reads[1].source.shape)  # the operand pack_at_compile_time reads (index 1)
    if rank == 4:
        pack_at_compile_time(sch, conv, 1, lambda kh, kw, i, o: (o // block, kh, kw, i, o % block))
    elif rank == 3:
        pack_at_compile_time(sch, conv, 1, lambda kw, i, o: (o // block, kw, i, o % block))
    else:
        raise ValueError(f"weights of rank {rank}: not a conv this schedule packs")


# The padded input rows one chunk of output rows reads: within the L2 of every CPU profile (256 KB per
# core on a Cortex-A72, 512 KB on an A76, 1-2 MB on x86).
PAD_CHUNK_BYTES = 256 * 1024


def padded_row_chunk(kernel: ConvKernel) -> int:
    """Output rows per padding step (a divisor of the output height): their padded input rows fit in
    PAD_CHUNK_BYTES.  1 for a conv without a padding stage."""
    if kernel.pad is None or len(kernel.spatial) != 4:
        return 1
    _, padded_h, padded_w, channels = kernel.pad.extents
    out_h, kh = kernel.spatial[1], kernel.reduce[0]
    row_bytes = 4 * padded_w * channels
    # chunk output rows read about chunk * padded_h / out_h + kh padded rows
    fit = int((PAD_CHUNK_BYTES // row_bytes - kh) * out_h / padded_h)
    best = 1
    for chunk in range(1, min(fit, out_h) + 1):
        if out_h % chunk == 0:
            best = chunk
    return best


def default_weights_outer(kernel: ConvKernel, *, depthwise: bool) -> bool:
    return kernel.weight_bytes > kernel.input_bytes and not depthwise


def _schedule_tail(sch, tail, cpu) -> bool:
    """The broadcasting tail as one vectorized elementwise loop nest (its work is the feature map's)."""
    if not inline_into_last(sch, tail):
        return False
    schedule_elementwise_nest(sch, tail[-1], cpu)
    return True


def _fuse_batch_rows(sch, n, rows):
    return sch.fuse(n, *rows) if rows else n


def _is_copy(sch, block_rv) -> bool:
    """True when a pad_temp block pads nothing (1x1 and 'valid' convs): then it is inlined."""
    return "if_then_else" not in str(sch.get(block_rv).body)


def _vectorize_innermost(sch, block_rv, cpu) -> None:
    loops = sch.get_loops(block_rv)
    extent = sch.get(loops[-1]).extent
    try:
        extent = int(extent)
    except TypeError:
        return
    lanes = largest_divisor(extent, cpu.f32_lanes)
    if lanes > 1:
        _, lane = sch.split(loops[-1], [None, lanes])
        sch.vectorize(lane)


def conv_rule_apply(func, cpu, *, depthwise: bool):
    """Match and schedule; None for anything else, or for a shape the primitives refuse."""
    tvm = import_tvm()
    if not isinstance(func, tvm.tirx.PrimFunc):
        return None
    try:
        kernel = match_conv(func)
        if kernel is None or is_depthwise(kernel) != depthwise:
            return None
        return schedule_conv(kernel, cpu, depthwise=depthwise)
    except Exception:  # noqa: BLE001  (a schedule error on an unexpected shape: the kernel is logged unscheduled)
        if debug_schedules():
            raise
        return None


def is_depthwise(kernel: ConvKernel) -> bool:
    """One input channel per group, one output channel per input channel (MobileNet's depthwise)."""
    return (kernel.reduce[-1] == 1 and kernel.groups > 1 and kernel.out_channels == kernel.in_channels
            and len(kernel.spatial) == 4)
