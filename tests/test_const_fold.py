"""The numpy constant folder gives exactly what TVM's FoldConstant gives, without compiling anything."""

from __future__ import annotations

import time

import numpy as np


def _graph_passes(mod, target, *, numpy_first: bool):
    from edgekit.compile.const_fold import FoldConstantsWithNumpy
    from edgekit.compile.graph_passes import clip_as_min_max, conv_layout
    from edgekit.compile.tvm_env import import_tvm

    tvm = import_tvm()
    from tvm import relax

    def fold():
        return [FoldConstantsWithNumpy(), relax.transform.FoldConstant()] if numpy_first else \
            [relax.transform.FoldConstant()]

    passes = [relax.transform.FoldBatchnormToConv2D(), relax.transform.DecomposeOpsForInference(),
              relax.transform.CanonicalizeBindings(), *fold(), clip_as_min_max(),
              relax.transform.ConvertLayout({"relax.nn.conv2d": list(conv_layout(target))}), *fold(),
              relax.transform.CanonicalizeBindings()]
    started = time.monotonic()
    return tvm.transform.Sequential(passes)(mod), time.monotonic() - started


def test_batchnorm_and_layout_folding_matches_fold_constant_bit_for_bit():
    from edgekit.compile.build import resolve_tvm_target
    from edgekit.compile.frontend import import_model
    from edgekit.compile.tvm_env import import_tvm
    from edgekit.targets import load_target
    from edgekit.testing.architectures import SMALL_VARIANTS, build_architecture

    tvm = import_tvm()
    model, shape = build_architecture("mobilenetv2", **SMALL_VARIANTS["mobilenetv2"])
    mod = import_model(model.eval(), input_shapes=[shape]).mod
    target = resolve_tvm_target(load_target("host"))
    ours, ours_s = _graph_passes(mod, target, numpy_first=True)
    theirs, theirs_s = _graph_passes(mod, target, numpy_first=False)
    tvm.ir.assert_structural_equal(ours, theirs, map_free_vars=True)  # constants compared by value
    assert ours_s < theirs_s, (ours_s, theirs_s)


def test_folds_chains_with_scalars_and_leaves_everything_else():
    from edgekit.compile.const_fold import FoldConstantsWithNumpy
    from edgekit.compile.tvm_env import import_tvm

    tvm = import_tvm()
    from tvm import relax
    from tvm.ir.expr import Constant

    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3)).astype("float32")
    x = relax.Var("x", relax.const(np.zeros((3, 4), "float32")).ty)
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            t = bb.emit(relax.op.permute_dims(relax.const(w)))                         # (3, 4)
            s = bb.emit(relax.op.sqrt(relax.op.add(t, relax.const(2.0, "float32"))))   # scalar operand
            r = bb.emit(relax.op.reshape(s, (12,)))
            live = bb.emit(relax.op.multiply(x, relax.op.reshape(r, (3, 4))))          # x is not constant
            out = bb.emit_output(live)
        bb.emit_func_output(out)
    folded = FoldConstantsWithNumpy()(bb.get())
    calls = [b.value for b in folded["main"].body.blocks[0].bindings if hasattr(b.value, "op")]
    assert [c.op.name for c in calls] == ["relax.multiply"], folded.script()  # the rest became one constant
    call = calls[0]
    assert call.op.name == "relax.multiply" and call.args[0].same_as(x)
    assert isinstance(call.args[1], Constant)
    np.testing.assert_array_equal(call.args[1].value.numpy(), np.sqrt(w.T + np.float32(2.0)))
    assert call.args[1].value.numpy().dtype == np.float32
