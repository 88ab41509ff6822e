"""Weights repacked for a kernel once, at compile time, instead of on every call.

The int8 conv schedule (schedules/int8_conv.py) reads its weights in the blocked layout of the
dot-product instruction ([O/lanes][KH][KW][I/group][lanes][group]).  It makes that layout with a
``cache_read`` + ``transform_layout`` stage inside the kernel, which ran on every inference: a
scalar loop over all the weights, as long as the whole convolution for MobileNetV3's 1x1 convs
at 7x7.  The stage is marked ``meta_schedule.layout_rewrite_preproc``, so TVM's
``SplitLayoutRewritePreproc`` moves it into a ``*_weight_prepack`` function of its own, called
on the weight; this pass then evaluates the calls whose argument is a constant, in numpy, and
the kernel takes the packed constant directly.

The prepack function is a pure gather (``out[f(i)] = cast(w[i])`` over w's index space), so a
small evaluator of its index expressions covers every layout a schedule may choose.  A call on
a non-constant weight stays a call: still correct, packed at run time.
"""

from __future__ import annotations

import numpy as np

from edgekit.compile.tvm_env import import_tvm

PREPACK_SUFFIX = "_weight_prepack"


class UnsupportedPrepack(ValueError):
    """A prepack function that is not the one-block gather this module evaluates."""


def FoldWeightPrepack():  # noqa: N802 (a pass, named like TVM's)
    """A module pass: ``call_tir(*_weight_prepack, (constant,))`` becomes the packed constant."""
    tvm = import_tvm()
    from tvm import relax
    from tvm.ir.expr import Constant
    from tvm.relax.expr_functor import PyExprMutator, mutator

    @mutator
    class _Folder(PyExprMutator):
        def __init__(self, mod):
            super().__init__(mod)
            self.mod_ = mod

        def visit_call_(self, call):
            call = self.visit_expr_post_order(call)
            if call.op != tvm.ir.Op.get("relax.call_tir"):
                return call
            gvar, args = call.args[0], call.args[1]
            if not gvar.name_hint.endswith(PREPACK_SUFFIX) or len(args.fields) != 1:
                return call
            weight = args.fields[0]
            if not isinstance(weight, Constant):
                return call
            try:
                packed = evaluate_prepack(self.mod_[gvar], weight.value.numpy())
            except UnsupportedPrepack:
                return call  # a layout this evaluator does not know: packed at run time, still correct
            return relax.const(packed, str(packed.dtype))

    @tvm.transform.module_pass(opt_level=0, name="EdgekitFoldWeightPrepack")
    def _pass(mod, _ctx):
        if not any(g.name_hint.endswith(PREPACK_SUFFIX) for g in mod.get_global_vars()):
            return mod
        mod = mod.clone()  # assigning into the module given would change the caller's in place
        for gvar, func in list(mod.functions_items()):
            if isinstance(func, relax.Function):
                mod[gvar] = _Folder(mod).visit_expr(func)
        return relax.transform.DeadCodeElimination()(mod)

    return _pass


def evaluate_prepack(func, source: np.ndarray) -> np.ndarray:
    """Run a prepack PrimFunc (one loop nest, one block: packed[f(i)] = cast(source[i])) on ``source``."""
    import_tvm()
    from tvm import tirx

    realize, loops = _single_block_nest(func)
    block = realize.block
    store = block.body
    if not isinstance(store, tirx.BufferStore) or len(block.reads) != 1:
        raise UnsupportedPrepack("a weight prepack block that is not one store of one read")
    dst_buf = store.buffer
    extents = [int(loop.extent) for loop in loops]
    grids = np.meshgrid(*[np.arange(e) for e in extents], indexing="ij") if extents else []
    env = {loop.loop_var: grid.ravel() for loop, grid in zip(loops, grids)}
    for iter_var, value in zip(block.iter_vars, realize.iter_values):
        env[iter_var.var] = _index(value, env)
    out = np.zeros([int(s) for s in dst_buf.shape], dtype=str(dst_buf.dtype))
    out[tuple(_index(i, env) for i in store.indices)] = _value(store.value, env, source)
    return out


def _single_block_nest(func):
    """(the block realize, its loops outermost first) of a function that is one loop nest around one block."""
    from tvm import s_tir, tirx

    node, loops = func.body, []
    while True:
        if isinstance(node, s_tir.SBlockRealize) and node.block.name_hint == "root":
            node = node.block.body
        elif isinstance(node, tirx.For):
            loops.append(node)
            node = node.body
        elif isinstance(node, s_tir.SBlockRealize):
            return node, loops
        else:
            raise UnsupportedPrepack(f"a weight prepack function that is not one loop nest: {type(node).__name__}")


def _value(expr, env, source):
    from tvm.ir import TensorLoad
    from tvm.tirx import expr as tirx

    if isinstance(expr, tirx.Cast):
        return _value(expr.value, env, source).astype(str(expr.ty.dtype))
    if isinstance(expr, TensorLoad):  # of the one buffer the block reads: the weight
        return source[tuple(_index(i, env) for i in expr.indices)]
    raise UnsupportedPrepack(f"a weight prepack value this evaluator does not know: {expr}")


def _index(expr, env):
    """An integer index expression over loop variables, on numpy arrays of their values."""
    from tvm.tirx import expr as tirx

    if isinstance(expr, tirx.Var):
        return env[expr]
    if isinstance(expr, tirx.IntImm):
        return int(expr.value)
    binary = {tirx.Add: np.add, tirx.Sub: np.subtract, tirx.Mul: np.multiply,
              tirx.FloorDiv: np.floor_divide, tirx.FloorMod: np.mod}
    for kind, fn in binary.items():
        if isinstance(expr, kind):
            return fn(_index(expr.a, env), _index(expr.b, env))
    raise UnsupportedPrepack(f"a weight prepack index this evaluator does not know: {expr}")
