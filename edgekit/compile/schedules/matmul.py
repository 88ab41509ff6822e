"""Schedule rules for the matmul kernel family: dense (GEMV and token GEMMs) and batch_matmul.

LegalizeOps writes every one of them as one reduction block
``C[b.., i, j] += A[b.., i, k] * B[b.., k, j]`` (nn.Linear's weight transpose is folded
into a constant ``[K, N]`` by FoldConstant, so dense arrives as "NN"), followed by the fused
epilogue blocks (bias add, GELU, residual add, reshape).  One rule covers them all:

- a register tile of ``rows x (tiles * lanes)`` outputs, kept in a ``local`` cache_write
  buffer that LLVM promotes to vector registers; ``k`` is the loop just outside the tile,
  so each step is ``rows`` broadcasts of A, ``tiles`` contiguous vector loads of B and
  ``rows * tiles`` FMAs;
- loop order ``(batch, j_outer, i_outer, k, i_tile, j_tile, j_lane)``: a ``K x tile`` panel of
  B stays in L1 while every row block of A streams past it;
- the epilogue chain is inlined into one block computed at ``i_outer``, so bias/GELU/
  residual are applied to the tile while it is still in registers (no second pass over C).

TVM's ``dl.cpu.GEMV`` is not used: it returns None for nn.Linear 1x1280->1000 as it arrives
here (weight folded to ``[K, N]``; it wants the reduction on B's contiguous axis).  The tile
below with one row and 4 vectors ran that GEMV at 0.7-0.9x ONNX Runtime.

Columns off the vector grid (attention's 197 keys) are padded to whole tiles with
``pad_einsum``: a predicate on the vector lanes scalarized the tile (20x ORT), the padded
copy costs a few percent.

A "NT" operand (``B[.., j, k]``, e.g. q @ k^T when the transpose was not materialized) is
first copied into a ``[.., k, j]`` buffer so the inner loop reads it contiguously.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgekit.compile.tvm_env import import_tvm

_tvm = import_tvm()
from tvm import tirx  # noqa: E402
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule  # noqa: E402

from edgekit.compile.schedules import dense_analysis as util  # noqa: E402
from edgekit.compile.schedules._common import largest_divisor  # noqa: E402


@dataclass(frozen=True)
class MatmulTile:
    """Register tile of one target: rows of A x (tiles x lanes) columns of B."""

    lanes: int      # f32 lanes of a vector register
    rows: int       # rows of the output tile (broadcasts of A per k step)
    tiles: int      # vectors of the output tile per row
    gemv_tiles: int  # vectors per row when M == 1 (no rows to reuse B over)


def tile_for(cpu) -> MatmulTile:
    """AVX2 has 16 ymm registers: 4 rows x 3 vectors = 12 accumulators + 3 B vectors + 1 broadcast.
    NEON and AVX-512 have 32: 4 x 4 = 16 accumulators, 4 B vectors, room for the A broadcasts.
    GEMV (M == 1) has no row reuse; 4 independent vector accumulators hide the FMA latency."""
    lanes = max(cpu.f32_lanes, 4)
    if cpu.arch == "x86_64" and not cpu.avx512:
        return MatmulTile(lanes=lanes, rows=4, tiles=3, gemv_tiles=4)
    return MatmulTile(lanes=lanes, rows=4, tiles=4, gemv_tiles=4)


@dataclass
class _MatmulShape:
    block: object           # SBlockRV of the reduction block
    batch: list[int]        # loop positions of the batch iters
    i: int | None           # loop position of the row iter (None: GEMV without a row axis)
    j: int                  # loop position of the column iter (last dim of C and of B)
    k: int                  # loop position of the reduction iter
    m: int
    n: int
    kdim: int
    nt_buffer_index: int | None  # read index of a B[.., j, k] operand to repack, else None


def _match_matmul(sch) -> _MatmulShape | None:
    """The single multiply-accumulate reduction block of the function, and its axes."""
    blocks = util.root_blocks(sch)
    reductions = [b for b in blocks if util.is_reduction(sch, b)]
    if len(reductions) != 1:
        return None
    block_rv = reductions[0]
    block = sch.get(block_rv)
    store = block.body
    if not isinstance(store, tirx.BufferStore) or block.init is None:
        return None
    iters = list(block.iter_vars)
    reduce_iters = [n for n, it in enumerate(iters) if it.iter_type == tirx.IterVar.CommReduce]
    if len(reduce_iters) != 1 or not util.loops_match_iters(sch, block_rv):
        return None
    k_var = iters[reduce_iters[0]].var
    products = util.multiply_accumulate_operands(store)
    if products is None:
        return None
    a_load, b_load = products
    out_idx = list(store.indices)
    if not all(isinstance(x, tirx.Var) for x in out_idx):
        return None
    j_var = out_idx[-1]
    i_var = out_idx[-2] if len(out_idx) >= 2 else None
    # B is the operand indexed by j.  A is the other one (indexed by i, or by neither for GEMV).
    if util.uses_var(a_load, j_var):
        a_load, b_load = b_load, a_load
    if not util.uses_var(b_load, j_var) or not util.uses_var(b_load, k_var) or util.uses_var(a_load, j_var):
        return None
    def position(var):
        for n, it in enumerate(iters):
            if it.var.same_as(var):
                return n
        return None

    j, k = position(j_var), reduce_iters[0]
    i = position(i_var) if i_var is not None and util.uses_var(a_load, i_var) else None
    batch = [n for n, it in enumerate(iters) if n not in (i, j, k) and it.iter_type == tirx.IterVar.DataPar]
    extents = [util.const_int(it.dom.extent) for it in iters]
    if any(e is None for e in extents):
        return None
    b_last = b_load.indices[-1]
    if isinstance(b_last, tirx.Var) and b_last.same_as(j_var):
        nt_index = None
    elif isinstance(b_last, tirx.Var) and b_last.same_as(k_var):
        nt_index = util.read_index(block, b_load.source)
    else:
        return None
    return _MatmulShape(block=block_rv, batch=batch, i=i, j=j, k=k, m=extents[i] if i is not None else 1,
                        n=extents[j], kdim=extents[k], nt_buffer_index=nt_index)


class Matmul(util.Float32Rule, CPUScheduleRule):
    """Register-tiled dense / matmul / batch_matmul with the fused epilogue applied in registers."""

    # The int8 Linear of a quantized model (u8/i8 x i8, int32 sums, a float requantize epilogue) takes
    # the same tiling: the int32 accumulators are as wide as float32 ones, and LLVM widens the loads.
    MASK_DTYPES = ("int8", "uint8", "int32")

    def __init__(self, cpu):
        self.cpu = cpu
        self.tile = tile_for(cpu)

    def _schedule(self, sch):
        shape = _match_matmul(sch)
        if shape is None:
            return None
        tile = self.tile
        lanes = tile.lanes
        rows = tile.rows if shape.m > 1 else 1
        tiles = tile.tiles if shape.m > 1 else tile.gemv_tiles
        block = shape.block
        if shape.m == 1 and not shape.batch and shape.nt_buffer_index is None and shape.n % 4 == 0:
            return _schedule_gemv(sch, shape, lanes, self.cpu)
        if shape.n % lanes == 0:
            # GEMV: one row, so the tile's vectors are the only independent FMA chains; 1000 columns
            # (125 vectors) would fall to 1 chain (latency-bound) without trying 5.
            choices = (tiles, 5, 6, 8, 3, 2, 1) if shape.m == 1 else range(tiles, 0, -1)
            tiles = next(t for t in choices if shape.n % (t * lanes) == 0)
        else:
            # Off the vector grid (attention's 197 keys): pad the columns to whole tiles.  A predicate
            # on the vector lanes instead scalarized the tile (bmm 3x197x64x197: 20x ORT vs ~1x padded).
            tiles = max(1, min(tiles, -(-shape.n // lanes)))
            padding = [1] * len(sch.get(block).iter_vars)
            padding[shape.j] = tiles * lanes
            sch.pad_einsum(block, padding)
        rows = min(rows, shape.m)
        loops = sch.get_loops(block)
        jo, jt, jl = sch.split(loops[shape.j], factors=[None, tiles, lanes])
        if shape.i is not None:
            io, ii = sch.split(loops[shape.i], factors=[None, rows])
        else:
            io = ii = None
        kl = loops[shape.k]
        batch = [loops[p] for p in shape.batch]
        order = [*batch, jo] + ([io] if io is not None else []) + [kl] + ([ii] if ii is not None else []) + [jt, jl]
        sch.reorder(*order)
        batch_size = util.prod(util.const_int(sch.get(lp).extent) for lp in batch)
        if self.cpu.num_cores > 1 and shape.m * shape.n * shape.kdim * batch_size >= util.PARALLEL_MIN_MACS:
            # Before decompose_reduction: parallel needs the block to still be a reduction block.
            sch.parallel(sch.fuse(*batch, jo) if batch else jo)
        anchor = io if io is not None else jo
        if shape.nt_buffer_index is not None:
            # B[.., j, k]: copy the K x (tiles*lanes) panel transposed at jo, so the k loop reads it contiguously.
            packed = sch.cache_read(block, shape.nt_buffer_index, "global")
            sch.compute_at(packed, jo)
            buf_ndim = len(sch.get(packed).writes[0].source.shape)
            sch.transform_layout(packed, ("write", 0), util.swap_last_two(buf_ndim))
        last = _accumulate_in_registers(sch, block)
        sch.reverse_compute_at(last, anchor, preserve_unit_loops=True)
        util.vectorize_inner(sch, last, lanes)
        if ii is not None:
            sch.unroll(ii)
        sch.unroll(jt)
        return _vectorize_and_split_init(sch, block, kl, jl, lanes)


def _vectorize_and_split_init(sch, block, reduction_loop, lane_loop, lanes: int):
    """The lane loop vectorized, then the zeroing split off at ``reduction_loop`` and vectorized too.

    In this order: decompose_reduction before the vectorize leaves an update block that vectorize
    refuses ("does not have compact dataflow")."""
    if lanes > 1:
        sch.vectorize(lane_loop)
    init = sch.decompose_reduction(block, reduction_loop)
    util.vectorize_inner(sch, init, lanes)
    return sch


def _accumulate_in_registers(sch, block):
    """Sums in a ``local`` buffer, the epilogue chain inlined into one block that writes them out: that block."""
    accumulator = sch.cache_write(block, 0, "local")
    epilogue = [b for b in util.root_blocks(sch) if util.is_after(sch, b, accumulator)]
    consumers = [accumulator, *epilogue]
    for b in consumers[:-1]:
        sch.compute_inline(b)
    return consumers[-1]


# k steps per pass over the accumulator row in the GEMV schedule: each accumulator vector is loaded
# and stored once per GEMV_K_UNROLL FMAs.
GEMV_K_UNROLL = 4


def _schedule_gemv(sch, shape, lanes, cpu):
    """Batch-1 dense ``y[j] = sum_k x[k] * W[k, j]`` streamed row by row of W.

    The weight ([K, N] once folded) is read once, front to back, as DRAM and the prefetcher like
    best: for each group of GEMV_K_UNROLL rows, the whole row of N accumulators (4 KB for 1000
    classes: it stays in L1) is updated, a vector at a time.  The column-panel order of the tiled
    rule instead strode through W with N*4-byte steps, 62 times over for 1000 columns, and ran the
    1x1280->1000 classifier at 3-4x ONNX Runtime on AVX-512 (now 0.9-1.0x).  Columns off the vector
    grid (1000 on 16 lanes) take narrower vectors rather than a padded copy of the weight on every call;
    a column count that 4 does not divide goes to the padded tile.
    """
    lanes = largest_divisor(shape.n, lanes)  # at least 4: the rule sends other column counts to the padded tile
    block = shape.block
    loops = sch.get_loops(block)
    unroll = next(u for u in (GEMV_K_UNROLL, 2, 1) if shape.kdim % u == 0)
    parallel = cpu.num_cores > 1 and shape.n * shape.kdim >= util.PARALLEL_MIN_MACS \
        and shape.n % (cpu.num_cores * lanes) == 0
    chunks = cpu.num_cores if parallel else 1
    jp, jo, jl = sch.split(loops[shape.j], factors=[chunks, None, lanes])
    ko, ki = sch.split(loops[shape.k], factors=[None, unroll])
    rest = [loops[p] for p in range(len(loops)) if p not in (shape.j, shape.k)]  # the unit row loop
    sch.reorder(*rest, jp, ko, jo, ki, jl)
    if parallel:
        sch.parallel(jp)  # each thread streams its own column slice of every row
    util.vectorize_inner(sch, _accumulate_in_registers(sch, block), lanes)
    sch.unroll(ki)
    return _vectorize_and_split_init(sch, block, ko, jl, lanes)


def rules(cpu) -> list:
    """The matmul rules for cpu (edgekit.compile.schedules.CpuInfo), most specific first."""
    return [Matmul(cpu)]
