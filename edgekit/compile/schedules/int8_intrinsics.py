"""Tensor intrinsics for the int8 kernels: one integer dot-product step per target ISA.

Each intrinsic computes ``C[l] += sum_k int32(A[k]) * int32(B[l, k])`` for ``lanes`` output
channels and a reduction group of ``group`` input channels: A is ``group`` activations (one
pixel, contiguous input channels), B the packed weights (lanes x group, contiguous), C the
int32 accumulators of one vector register.

Why edgekit registers its own instead of importing ``tvm.s_tir.tensor_intrin``: importing that
package registers every CUDA/Hexagon/Metal intrinsic as well and takes 30-120 s on this kind of
machine, on every compile.  The VNNI and sdot bodies below are TVM's own
(s_tir/tensor_intrin/x86.py ``dot_16x4_vnni``, arm_cpu.py ``get_dotprod_intrin``), registered
under edgekit names; the int16-pair intrinsic is edgekit's, for x86 without VNNI.

Why int16 pairs (``vpmaddwd``) and not ``vpmaddubsw`` on AVX2: vpmaddubsw adds two u8 x s8
products into an int16 with saturation, and with edgekit's grids (activations 0..255, weights
-127..127) one pair reaches 2 * 255 * 127 = 64770 > 32767, so it is not exact.  The exact
variants (weights split into two 7-bit halves, or vpsignb per product pair) double the
multiplies: 32 products per 4 multiply uops, no better than fp32 FMA.  vpmaddwd on activations
and weights widened to int16 is exact for every int8/uint8 value (|a * w| <= 32640 per product,
pair sums in int32) and does 16 products per multiply uop, the same rate as an unsaturated
vpmaddubsw + vpmaddwd pair (32 products per 2 uops), so nothing is given up.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgekit.compile.tvm_env import import_tvm


@dataclass(frozen=True)
class DotIntrin:
    """A registered intrinsic and the operand types and tile the schedule must produce for it."""

    name: str
    lanes: int          # output channels per call (one int32 vector)
    group: int          # input channels reduced per call (contiguous in memory)
    act_dtype: str      # dtype of the activation buffer the intrinsic reads
    weight_dtype: str   # dtype of the packed weight buffer
    # For int16 pairs: the 8-bit types the widened buffers hold.  The schedule widens with
    # unsafe_set_dtype, which keeps a cast back to them in the reading block; the description
    # says the same, so tensorize matches it (and it is the truth: the values fit 8 bits).
    narrow_act: str | None = None
    narrow_weight: str | None = None
    # Weights stored [group][lanes] (one vector of lanes per reduction element) instead of
    # [lanes][group]: for the multiply-accumulate-by-element form (smlal), no dot product.
    k_major: bool = False

    @property
    def instructions(self) -> tuple[str, ...]:
        return _INSTRUCTIONS[self.family]

    @property
    def family(self) -> str:
        return self.name.rsplit("_", 1)[0] if self.narrow_act else self.name


AVX2_PAIRS = "edgekit_i16x2_pmaddwd_avx2"    # + "_u8" / "_i8": what the activations were
AVX512_PAIRS = "edgekit_i16x2_pmaddwd_avx512"
VNNI_16X4 = "edgekit_u8i8_16x4_vnni"
VNNI_16X4_S8 = "edgekit_i8i8_16x4_vnni"   # signed activations: flipped to u8, corrected
VNNI_8X4 = "edgekit_u8i8_8x4_vnni"       # the 256-bit form (AVX512-VL + VNNI, or AVX-VNNI)
VNNI_8X4_S8 = "edgekit_i8i8_8x4_vnni"
_VNNI_U8, _VNNI_S8 = (VNNI_16X4, VNNI_8X4), (VNNI_16X4_S8, VNNI_8X4_S8)
SDOT_4X4 = "edgekit_i8i8_4x4_sdot"
SDOT_4X4_U8 = "edgekit_u8i8_4x4_sdot"     # unsigned activations: flipped to s8, corrected
NEON_SMLAL = "edgekit_i16_8x4_smlal_neon"  # + "_u8" / "_i8"

_INSTRUCTIONS = {AVX2_PAIRS: ("vpmaddwd",), AVX512_PAIRS: ("vpmaddwd",), VNNI_16X4: ("vpdpbusd",),
                 VNNI_16X4_S8: ("vpdpbusd",), VNNI_8X4: ("vpdpbusd",), VNNI_8X4_S8: ("vpdpbusd",), SDOT_4X4: ("sdot",), SDOT_4X4_U8: ("sdot",),
                 NEON_SMLAL: ("smlal",)}

_REGISTERED: dict[str, DotIntrin] = {}


def int16_pairs(vector_bits: int, act_dtype: str) -> DotIntrin:
    """x86 without VNNI: 8-bit values widened to int16, pairs summed into int32 (vpmaddwd), 256 or 512 bit."""
    suffix = "_u8" if act_dtype == "uint8" else "_i8"
    if vector_bits >= 512:
        return _register(DotIntrin(AVX512_PAIRS + suffix, 16, 2, "int16", "int16", act_dtype, "int8"),
                         "llvm.x86.avx512.pmaddw.d.512")
    return _register(DotIntrin(AVX2_PAIRS + suffix, 8, 2, "int16", "int16", act_dtype, "int8"),
                     "llvm.x86.avx2.pmadd.wd")


def vnni_16x4(act_dtype: str = "uint8") -> DotIntrin:
    """AVX512-VNNI: u8 x s8 groups of 4 accumulated in int32 (vpdpbusd), TVM's dot_16x4_vnni.

    Signed activations go through the same instruction flipped to unsigned (a + 128, an XOR of
    the sign bit) and the call subtracts 128 * sum(w) again: exact in int32.
    """
    name = VNNI_16X4 if act_dtype == "uint8" else VNNI_16X4_S8
    return _register(DotIntrin(name, 16, 4, act_dtype, "int8"), "llvm.x86.avx512.vpdpbusd.512")


def vnni_8x4(act_dtype: str = "uint8") -> DotIntrin:
    """vpdpbusd on 256-bit registers (AVX512-VL with VNNI, or AVX-VNNI): 8 lanes x groups of 4.

    Twice the products per instruction of the int16 pairs, and the 256-bit code generation that
    the 512-bit form lacks (see edgekit.compile.schedules.int8.choose_intrinsic).
    """
    name = VNNI_8X4 if act_dtype == "uint8" else VNNI_8X4_S8
    return _register(DotIntrin(name, 8, 4, act_dtype, "int8"), "llvm.x86.avx512.vpdpbusd.256")


def sdot_4x4(act_dtype: str = "int8") -> DotIntrin:
    """Armv8.2 dotprod: s8 x s8 groups of 4 accumulated in int32 (sdot), TVM's dot_4x4_i8i8s32_sdot.

    Unsigned activations (ReLU outputs, 0..255; sdot has no u8 x s8 form without i8mm) are
    flipped to signed (a - 128, an XOR of the sign bit) and the call adds 128 * sum(w) back,
    computed by one more sdot of the same weights that LLVM shares across the register tile's
    columns (same operands): exact in int32.
    """
    name = SDOT_4X4 if act_dtype == "int8" else SDOT_4X4_U8
    return _register(DotIntrin(name, 4, 4, act_dtype, "int8"), "llvm.aarch64.neon.sdot.v4i32.v16i8")


def neon_smlal(act_dtype: str) -> DotIntrin:
    """NEON without dotprod (Cortex-A72 rpi4, armv7 rpi3): int16 multiply-accumulate by element.

    Activations and weights are widened to int16 when they are staged (exact: |a * w| <= 32640),
    and each call adds ``group`` products of one activation with a vector of 8 weights into
    int32: plain widening vector arithmetic, which LLVM selects as smlal/smlal2 (no intrinsic
    call, so the same body serves aarch64 and armv7).
    """
    suffix = "_u8" if act_dtype == "uint8" else "_i8"
    return _register(DotIntrin(NEON_SMLAL + suffix, 8, 4, "int16", "int16", act_dtype, "int8", k_major=True), "")


def _register(intrin: DotIntrin, llvm_name: str) -> DotIntrin:
    if intrin.name not in _REGISTERED:
        from tvm.s_tir import TensorIntrin

        desc, impl = _desc_and_impl(intrin, llvm_name)
        TensorIntrin.register(intrin.name, desc, impl, override=True)
        _REGISTERED[intrin.name] = intrin
    return intrin


def _desc_and_impl(intrin: DotIntrin, llvm_name: str):
    import_tvm()
    from tvm.script import tirx as T

    lanes, group, a_dtype, b_dtype = intrin.lanes, intrin.group, intrin.act_dtype, intrin.weight_dtype
    a_narrow, b_narrow = intrin.narrow_act or a_dtype, intrin.narrow_weight or b_dtype
    a_bits = int(a_dtype.lstrip("uint"))
    total = lanes * group  # B elements: one vector register
    word = "int32"         # A's group, read as one 32-bit word and broadcast to every lane

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (group,), a_dtype, offset_factor=1)
        B = T.match_buffer(b, (lanes, group), b_dtype, offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:group], B[0:lanes, 0:group])
            T.writes(C[0:lanes])
            for i, k in T.grid(lanes, group):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.Cast("int32", A[vk]) * T.Cast("int32", B[vi, vk])

    @T.prim_func(s_tir=True)
    def desc_widened(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (group,), a_dtype, offset_factor=1)
        B = T.match_buffer(b, (lanes, group), b_dtype, offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:group], B[0:lanes, 0:group])
            T.writes(C[0:lanes])
            for i, k in T.grid(lanes, group):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.Cast("int32", T.Cast(a_narrow, A[vk])) * T.Cast(
                        "int32", T.Cast(b_narrow, B[vi, vk]))

    @T.prim_func(s_tir=True)
    def desc_k_major(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (group,), a_dtype, offset_factor=1)
        B = T.match_buffer(b, (group, lanes), b_dtype, offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:group], B[0:group, 0:lanes])
            T.writes(C[0:lanes])
            for i, k in T.grid(lanes, group):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.Cast("int32", T.Cast(a_narrow, A[vk])) * T.Cast(
                        "int32", T.Cast(b_narrow, B[vk, vi]))

    if intrin.k_major:
        return desc_k_major, _smlal_impl(intrin)
    if intrin.narrow_act:
        desc = desc_widened  # noqa: F811
    assert a_bits * group == 32, "A's group must be one 32-bit word"
    a_vec = f"{a_dtype}x{group}"
    a_lanes_all = f"{a_dtype}x{total}"
    b_vec = f"{b_dtype}x{total}"
    c_vec = f"int32x{lanes}"
    bytes_vec = f"int8x{total}"  # LLVM 20's vpdpbusd.512/.256 take <64|32 x i8> operands (older ones i32 words)

    if intrin.family in (AVX2_PAIRS, AVX512_PAIRS):
        @T.prim_func(s_tir=True)
        def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
            A = T.match_buffer(a, (group,), a_dtype, offset_factor=1)
            B = T.match_buffer(b, (lanes, group), b_dtype, offset_factor=1)
            C = T.match_buffer(c, (lanes,), "int32", offset_factor=1)
            with T.sblock("root"):
                T.reads(C[0:lanes], A[0:group], B[0:lanes, 0:group])
                T.writes(C[0:lanes])
                pair = T.reinterpret(A.vload([0], a_vec), dtype=word)
                a_all = T.reinterpret(T.broadcast(pair, lanes), dtype=a_lanes_all)
                C[T.ramp(T.int32(0), 1, lanes)] = C.vload([0], c_vec) + T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id(llvm_name), a_all, B.vload([0, 0], b_vec), dtype=c_vec)
    elif intrin.name in _VNNI_U8:  # vpdpbusd takes the u8 groups and the weights as int32 words
        @T.prim_func(s_tir=True)
        def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
            A = T.match_buffer(a, (group,), a_dtype, offset_factor=1)
            B = T.match_buffer(b, (lanes, group), b_dtype, offset_factor=1)
            C = T.match_buffer(c, (lanes,), "int32", offset_factor=1)
            with T.sblock("root"):
                T.reads(C[0:lanes], A[0:group], B[0:lanes, 0:group])
                T.writes(C[0:lanes])
                C[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id(llvm_name), C.vload([0], c_vec),
                    T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], a_vec), dtype=word), lanes),
                                  dtype=bytes_vec),
                    B.vload([0, 0], b_vec), dtype=c_vec)
    elif intrin.name in _VNNI_S8:  # (a + 128) x w, minus 128 x w
        @T.prim_func(s_tir=True)
        def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
            A = T.match_buffer(a, (group,), a_dtype, offset_factor=1)
            B = T.match_buffer(b, (lanes, group), b_dtype, offset_factor=1)
            C = T.match_buffer(c, (lanes,), "int32", offset_factor=1)
            with T.sblock("root"):
                T.reads(C[0:lanes], A[0:group], B[0:lanes, 0:group])
                T.writes(C[0:lanes])
                C[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id(llvm_name), C.vload([0], c_vec),
                    T.reinterpret(T.bitwise_xor(T.broadcast(T.reinterpret(A.vload([0], a_vec), dtype=word), lanes),
                                                T.broadcast(T.int32(-2139062144), lanes)),  # 0x80808080
                                  dtype=bytes_vec),
                    B.vload([0, 0], b_vec), dtype=c_vec) - T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id(llvm_name), T.broadcast(T.int32(0), lanes),
                    T.broadcast(T.int8(-128), total), B.vload([0, 0], b_vec), dtype=c_vec)
    elif intrin.name == SDOT_4X4_U8:  # (a - 128) x w, plus 128 x w (= minus sdot(-128, w))
        @T.prim_func(s_tir=True)
        def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
            A = T.match_buffer(a, (group,), a_dtype, offset_factor=1)
            B = T.match_buffer(b, (lanes, group), b_dtype, offset_factor=1)
            C = T.match_buffer(c, (lanes,), "int32", offset_factor=1)
            with T.sblock("root"):
                T.reads(C[0:lanes], A[0:group], B[0:lanes, 0:group])
                T.writes(C[0:lanes])
                C[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id(llvm_name), C.vload([0], c_vec),
                    T.reinterpret(T.bitwise_xor(T.broadcast(T.reinterpret(A.vload([0], a_vec), dtype=word), lanes),
                                                T.broadcast(T.int32(-2139062144), lanes)),
                                  dtype="int8x16"),
                    B.vload([0, 0], b_vec), dtype=c_vec) - T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id(llvm_name), T.broadcast(T.int32(0), lanes),
                    T.broadcast(T.int8(-128), 16), B.vload([0, 0], b_vec), dtype=c_vec)
    else:  # sdot takes 16 x i8 operands
        @T.prim_func(s_tir=True)
        def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
            A = T.match_buffer(a, (group,), a_dtype, offset_factor=1)
            B = T.match_buffer(b, (lanes, group), b_dtype, offset_factor=1)
            C = T.match_buffer(c, (lanes,), "int32", offset_factor=1)
            with T.sblock("root"):
                T.reads(C[0:lanes], A[0:group], B[0:lanes, 0:group])
                T.writes(C[0:lanes])
                C[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id(llvm_name), C.vload([0], c_vec),
                    T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], a_vec), dtype=word), lanes),
                                  dtype=a_lanes_all),
                    B.vload([0, 0], b_vec), dtype=c_vec)

    return desc, impl



def _smlal_impl(intrin: DotIntrin):
    from tvm.script import tirx as T

    lanes, group = intrin.lanes, intrin.group
    assert group == 4
    b_vec, c_vec = f"int16x{lanes}", f"int32x{lanes}"

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (group,), "int16", offset_factor=1)
        B = T.match_buffer(b, (group, lanes), "int16", offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:group], B[0:group, 0:lanes])
            T.writes(C[0:lanes])
            C[T.ramp(T.int32(0), 1, lanes)] = (
                C.vload([0], c_vec)
                + T.Cast(c_vec, B.vload([0, 0], b_vec)) * T.broadcast(T.Cast("int32", A[0]), lanes)
                + T.Cast(c_vec, B.vload([1, 0], b_vec)) * T.broadcast(T.Cast("int32", A[1]), lanes)
                + T.Cast(c_vec, B.vload([2, 0], b_vec)) * T.broadcast(T.Cast("int32", A[2]), lanes)
                + T.Cast(c_vec, B.vload([3, 0], b_vec)) * T.broadcast(T.Cast("int32", A[3]), lanes))

    return impl
