"""Block analysis and small schedule helpers shared by the matmul and reduction rules."""

from __future__ import annotations

import math

from edgekit.compile.tvm_env import import_tvm

_tvm = import_tvm()
from tvm import ir, tirx  # noqa: E402

Load = ir.TensorLoad  # what tirx.BufferLoad(...) builds in 0.27
from tvm.tirx import IndexMap  # noqa: E402

# Below this many multiply-accumulates a parallel loop costs more (waking the pool, ~5-10 us
# here) than it saves; above it the work splits well over 2-4 cores.
PARALLEL_MIN_MACS = 1 << 21
# Same idea for reductions and pooling, counted in elements read.
PARALLEL_MIN_ELEMENTS = 1 << 18


def prod(values) -> int:
    return math.prod(int(v) for v in values)


def const_int(expr) -> int | None:
    return int(expr.value) if isinstance(expr, tirx.IntImm) else None


def root_blocks(sch) -> list:
    """The blocks directly under the root, in program order."""
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def is_reduction(sch, block_rv) -> bool:
    return any(it.iter_type == tirx.IterVar.CommReduce for it in sch.get(block_rv).iter_vars)


def is_after(sch, block_rv, anchor_rv) -> bool:
    blocks = root_blocks(sch)
    names = [sch.get(b).name_hint for b in blocks]
    return names.index(sch.get(block_rv).name_hint) > names.index(sch.get(anchor_rv).name_hint)


def loops_match_iters(sch, block_rv) -> bool:
    """The block sits in a plain grid: one loop per block iter, bound 1:1 (as LegalizeOps writes them)."""
    loops = sch.get_loops(block_rv)
    iters = sch.get(block_rv).iter_vars
    if len(loops) != len(iters):
        return False
    return all(const_int(sch.get(lp).extent) == const_int(it.dom.extent) for lp, it in zip(loops, iters))


def _strip_cast(expr):
    while isinstance(expr, tirx.Cast):
        expr = expr.value
    return expr


def multiply_accumulate_operands(store):
    """(A, B) loads of ``C[..] = C[..] + A[..] * B[..]`` (either order), or None."""
    value = store.value
    if not isinstance(value, tirx.Add):
        return None
    acc, product = value.a, value.b
    if not _is_self_load(acc, store):
        acc, product = product, acc
    if not _is_self_load(acc, store):
        return None
    product = _strip_cast(product)
    if not isinstance(product, tirx.Mul):
        return None
    a, b = _strip_cast(product.a), _strip_cast(product.b)
    if not (isinstance(a, Load) and isinstance(b, Load)):
        return None
    return a, b


def _is_self_load(expr, store) -> bool:
    return isinstance(expr, Load) and expr.source.same_as(store.buffer)


def uses_var(expr, var) -> bool:
    return any(v.same_as(var) for index in expr.indices for v in tirx.analysis.undefined_vars(index))


def read_index(block, buffer) -> int:
    for n, region in enumerate(block.reads):
        if region.source.same_as(buffer):
            return n
    raise ValueError("buffer not read by the block")


def all_float32(sch, masks: tuple[str, ...] = ()) -> bool:
    """Every buffer every block reads or writes is float32 (integer kernels belong to the int8 rules),
    or of one of the ``masks`` dtypes, as long as some buffer is float32."""
    blocks = root_blocks(sch)
    dtypes = {str(r.source.dtype) for b in blocks for r in (*sch.get(b).reads, *sch.get(b).writes)}
    return "float32" in dtypes and dtypes <= {"float32", *masks}


def swap_last_two(ndim: int):
    """IndexMap that swaps the last two axes: [.., j, k] -> [.., k, j]."""
    return IndexMap.from_func(lambda *idx: (*idx[:ndim - 2], idx[ndim - 1], idx[ndim - 2]), ndim=ndim)


def vectorize_inner(sch, block_rv, lanes: int) -> None:
    """Vectorize the innermost loop of a block over ``lanes`` where its extent allows it."""
    if lanes <= 1:
        return
    loops = sch.get_loops(block_rv)
    if not loops:
        return
    inner = loops[-1]
    extent = const_int(sch.get(inner).extent)
    if extent is None or extent < 2:
        return
    if extent <= lanes:
        sch.vectorize(inner)
    elif extent % lanes == 0:
        sch.vectorize(sch.split(inner, factors=[None, lanes])[1])
    elif extent % 4 == 0:
        sch.vectorize(sch.split(inner, factors=[None, 4])[1])


class Float32Rule:
    """Base of the matmul and reduction rules: float32 kernels only, and a rule never breaks a build.

    ``apply`` checks the target and the dtypes, then calls ``_schedule(sch)``; anything a schedule
    primitive refuses makes the rule decline (None), so the kernel is logged as unscheduled.
    Subclasses also derive from TVM's CPUScheduleRule (for ``is_target_available``), listed after this.
    """

    # Dtypes a kernel may hold besides float32.  torch's attention softmax ("safe softmax": rows that
    # are all -inf give 0, not NaN) computes a bool/int8 row mask beside its float rows.
    MASK_DTYPES: tuple[str, ...] = ()

    def __init__(self, cpu):
        self.cpu = cpu

    def apply(self, func, target, _tunable):
        from tvm import s_tir

        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        try:
            sch = s_tir.Schedule(func)
            return self._schedule(sch) if all_float32(sch, self.MASK_DTYPES) else None
        except Exception:  # noqa: BLE001 (a rule never breaks a build: the kernel is logged as unscheduled)
            return None

    def _schedule(self, sch):
        raise NotImplementedError
