"""What edgekit adds to TVM 0.27's two frontends for the ops they lack or mis-handle: three small registries.

- ``FIXES``: rewrites of a torch ExportedProgram's FX graph into an equivalent one, each a function
  ``fix(graph) -> int`` (the number of nodes it changed).  ``apply_frontend_fixes`` runs them on a
  copy of the program, so the user's program (and the reference edgekit checks the artifact
  against) stays as it was given.
- ``TORCH_CONVERTERS``: converters for aten ops the torch frontend has no entry for, handed to
  ``from_exported_program(custom_convert_map=...)``: ``convert(node, importer) -> relax.Var``.
- ``ONNX_FIXES``: rewrites of an ONNX model (a copy) before TVM's ONNX frontend sees it, each
  ``fix(model) -> int``; ``apply_onnx_fixes`` runs them.

Each entry documents the failure it fixes and is tested on its own in tests/test_op_coverage.py
(and through the op-family model that needed it, edgekit.testing.op_families).
"""

from __future__ import annotations

import copy


def normalize_squeeze_dims(graph) -> int:
    """``aten.squeeze.dim(x, -2)`` -> ``aten.squeeze.dim(x, rank - 2)``.

    Failure fixed: ``nn.MultiheadAttention`` (and so ``nn.TransformerEncoderLayer``, every ViT)
    splits its packed q/k/v projection with ``unsqueeze(0).transpose(0, -2).squeeze(-2)``.  The
    torch frontend passes the negative axis through to ``relax.op.squeeze``, and TVM 0.27's
    ConvertLayout (which edgekit runs to make convolutions NHWC) crashes on a squeeze with a
    negative axis whose input carries a converted layout: ``tvm.error.InternalError:
    std::bad_alloc`` (issue 11).  A model with a patch-embedding conv before its encoder reaches
    that case; the same encoder without a conv does not.  Non-negative axes are handled.
    """
    import torch

    aten = torch.ops.aten
    changed = 0
    for node in graph.nodes:
        if node.op != "call_function" or node.target not in (aten.squeeze.dim, aten.squeeze.dims):
            continue
        source = node.args[0]
        value = source.meta.get("val") if hasattr(source, "meta") else None
        if value is None:
            continue
        rank = value.dim()
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        if isinstance(dims, int):
            if dims < 0:
                node.args = (source, dims % max(rank, 1), *node.args[2:])
                changed += 1
        elif isinstance(dims, (list, tuple)) and any(d < 0 for d in dims):
            node.args = (source, [d % max(rank, 1) for d in dims], *node.args[2:])
            changed += 1
    return changed


# Applied in this order; each entry is independent of the others.
FIXES = (normalize_squeeze_dims,)


def apply_frontend_fixes(program):
    """``program`` with every fix of FIXES applied (a copy; the original is returned when none applies)."""
    if not any(_needs(fix, program) for fix in FIXES):
        return program
    fixed = copy.deepcopy(program)
    for fix in FIXES:
        fix(fixed.graph_module.graph)
    fixed.graph_module.graph.lint()
    fixed.graph_module.recompile()
    return fixed


def _needs(fix, program) -> bool:
    # Run the fix on a throwaway copy of the graph alone (no weights) to see whether it changes anything.
    return fix(_graph_copy(program.graph_module.graph)) > 0


def _graph_copy(graph):
    import torch

    new_graph = torch.fx.Graph()
    value_map: dict = {}
    new_graph.graph_copy(graph, value_map)
    # graph_copy copies node meta by reference: enough for reading shapes, and nothing here writes meta.
    return new_graph


# ---------------------------------------------------------------------------------------- torch converters


def _convert_reduce(relax_op_name: str):
    """``aten.amax/amin(x, dim=[], keepdim=False)`` -> ``relax.op.max/min(x, axis, keepdims)``.

    Failure fixed: TVM 0.27's torch frontend has no entry for ``amax.default``/``amin.default``
    ("Unsupported function types ['amax.default']"), which keyword spotters (temporal max over
    frames) and global max pooling written as ``x.amax((2, 3))`` use.  An empty ``dim`` reduces
    every axis, as in torch.
    """

    def convert(node, importer):
        from tvm import relax

        x = importer.env[node.args[0]]
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", ())
        keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        if isinstance(dims, int):
            dims = [dims]
        axis = [int(d) % x.ty.ndim for d in dims] or None
        return importer.block_builder.emit(getattr(relax.op, relax_op_name)(x, axis=axis, keepdims=bool(keepdim)))

    convert.__doc__ = _convert_reduce.__doc__
    return convert


def _convert_reduce_dim(values_op: str, indices_op: str):
    """``aten.max.dim/min.dim(x, dim, keepdim)`` -> (values, indices) as ``relax.op.max/min`` and ``argmax/argmin``.

    Failures fixed: ``x.min(dim=1)`` has no entry in the torch frontend ("Unsupported function
    types ['min.dim']"); ``x.max(dim=1)`` has one, through ``topk(k=1)``, whose extern sort kernel
    fails edgekit's CPU pipeline ("ScheduleError ... topk_cpu ... Cannot find a block with the
    name: root").  A plain reduction and an arg-reduction are what the op is.
    """

    def convert(node, importer):
        from tvm import relax

        x = importer.env[node.args[0]]
        dim = int(node.args[1]) % x.ty.ndim
        keepdim = bool(node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False))
        bb = importer.block_builder
        values = bb.emit(getattr(relax.op, values_op)(x, axis=[dim], keepdims=keepdim))
        indices = bb.emit(getattr(relax.op, indices_op)(x, axis=dim, keepdims=keepdim))
        return bb.emit(relax.Tuple([values, indices]))

    convert.__doc__ = _convert_reduce_dim.__doc__
    return convert


def convert_adaptive_max_pool(node, importer):
    """``aten.adaptive_max_pool2d(x, size)`` -> (values, indices) with ``values`` only computed.

    Failure fixed: the torch frontend has no ``adaptive_max_pool2d`` entry (nor 1-D: torch's
    decomposition turns ``adaptive_max_pool1d`` into the 2-D op).  Sizes that divide the input
    become ``relax.op.nn.max_pool2d`` with kernel = stride = input / output (what ONNX export
    does too, and what the layout pass and the pooling schedule know); any other size becomes
    TOPI's ``adaptive_pool`` (floor/ceil window bounds, exactly torch's).  Models that read the
    indices are refused by name: nothing here computes them.
    """
    from tvm import relax, topi

    from edgekit.errors import UnsupportedOperatorError

    x = importer.env[node.args[0]]
    size = [int(s) for s in node.args[1]]
    if any(user.target is not _getitem() or user.args[1] != 0 for user in node.users):
        raise UnsupportedOperatorError(f"{node.target} at node '{node.name}': its indices output is used, which "
                                       "edgekit cannot compile", hint="use return_indices=False")
    bb = importer.block_builder
    unbatched = x.ty.ndim == 3  # (C, H, W)
    if unbatched:
        x = bb.emit(relax.op.expand_dims(x, axis=0))
    height, width = (int(d) for d in list(x.ty.shape)[-2:])
    if height % size[0] == 0 and width % size[1] == 0:
        kernel = [height // size[0], width // size[1]]
        values = bb.emit(relax.op.nn.max_pool2d(x, pool_size=kernel, strides=kernel, layout="NCHW"))
    else:
        values = bb.emit_te(topi.nn.adaptive_pool, x, size, "max", "NCHW", primfunc_name_hint="adaptive_max_pool2d")
    if unbatched:
        values = bb.emit(relax.op.squeeze(values, axis=[0]))
    return bb.emit(relax.Tuple([values, values]))


def convert_native_channel_shuffle(node, importer):
    """``aten.native_channel_shuffle(x, groups)`` -> reshape, transpose, reshape (ShuffleNet's shuffle).

    Failure fixed: ``nn.ChannelShuffle`` / ``torch.native_channel_shuffle`` have no torch frontend
    entry (and no ONNX export either), while the same shuffle written with view/transpose works.
    """
    from tvm import relax

    x = importer.env[node.args[0]]
    groups = int(node.args[1])
    shape = [int(d) for d in x.ty.shape]
    batch, channels, rest = shape[0], shape[1], shape[2:]
    bb = importer.block_builder
    y = bb.emit(relax.op.reshape(x, [batch, groups, channels // groups, *rest]))
    y = bb.emit(relax.op.permute_dims(y, [0, 2, 1, *range(3, 3 + len(rest))]))
    return bb.emit(relax.op.reshape(y, shape))


def _getitem():
    import operator

    return operator.getitem


# aten op name (as the frontend's convert_map spells it) -> converter(node, importer)
TORCH_CONVERTERS = {
    "amax.default": _convert_reduce("max"),
    "amin.default": _convert_reduce("min"),
    "max.dim": _convert_reduce_dim("max", "argmax"),
    "min.dim": _convert_reduce_dim("min", "argmin"),
    "adaptive_max_pool2d.default": convert_adaptive_max_pool,
    "native_channel_shuffle.default": convert_native_channel_shuffle,
}


# ---------------------------------------------------------------------------------------- onnx fixes

# Ops whose value can be computed at compile time once every input is a constant: the shape
# arithmetic that torch.onnx.export writes around chunk/split/view (Shape -> Gather -> Div -> Slice).
_SHAPE_ARITHMETIC = frozenset({
    "Add", "Sub", "Mul", "Div", "Mod", "Neg", "Abs", "Floor", "Ceil", "Min", "Max", "Cast", "Concat", "Gather",
    "Unsqueeze", "Squeeze", "Slice", "Reshape", "Range", "Equal", "Less", "Greater", "Not", "Where", "Identity",
    "ConstantOfShape", "Expand", "ReduceProd", "ReduceSum", "ReduceMin", "ReduceMax", "Size"})
_FOLD_MAX_ELEMENTS = 64  # shape vectors and scalars only: weights are TVM's FoldConstant's business


def fold_shape_arithmetic(model) -> int:
    """Replace computed shapes, slice bounds and split sizes by constants, the graph's inputs being static.

    Failure fixed: ``torch.onnx.export`` writes ``x.chunk(2, dim=1)`` as ``Shape -> Gather -> Add ->
    Div -> Mul -> Slice``.  TVM's ONNX frontend turns a Slice whose bounds are not constants into
    ``dynamic_strided_slice``, whose result has an unknown shape, and legalizing the next conv
    then fails with ``AssertionError: emit_te now only supports Tensor that has ShapeExpr shape``
    (the ShuffleNet of issue 11).  edgekit compiles for static input shapes, so every such value
    is a constant: ``Shape`` of a statically shaped tensor, then every small node whose inputs are
    all constants, evaluated with ONNX's reference implementation, in graph order, repeated
    while ONNX shape inference learns more shapes.  Returns the number of nodes replaced.
    """
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    opset = {entry.domain or "": entry.version for entry in model.opset_import}
    total = 0
    for _round in range(8):
        shapes = _static_shapes(model)
        constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
        changed = 0
        new_nodes = []
        for node in graph.node:
            value = None
            if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
                constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
            elif node.domain in ("", "ai.onnx") and node.op_type == "Shape" and node.input[0] in shapes:
                attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
                dims = shapes[node.input[0]]
                value = [np.array(dims[attrs.get("start", 0):attrs.get("end", len(dims))], dtype=np.int64)]
            elif (node.domain in ("", "ai.onnx") and node.op_type in _SHAPE_ARITHMETIC and node.input
                  and all(not name or (name in constants and constants[name].size <= _FOLD_MAX_ELEMENTS)
                          for name in node.input)):
                feeds = {name: constants[name] for name in node.input if name}
                try:
                    value = ReferenceEvaluator(node, opsets={"": opset.get("", 17)}).run(None, feeds)
                except Exception:  # noqa: BLE001  (an op the reference cannot run stays for TVM)
                    value = None
            if value is None:
                new_nodes.append(node)
                continue
            for name, array in zip(node.output, value):
                array = np.asarray(array)
                constants[name] = array
                new_nodes.append(helper.make_node("Constant", [], [name], name=f"{node.name or name}_folded",
                                                  value=numpy_helper.from_array(array, name)))
            changed += 1
        if not changed:
            break
        del graph.node[:]
        graph.node.extend(new_nodes)
        total += changed
    if total:
        _drop_unused_nodes(model)
    return total


def _static_shapes(model) -> dict[str, list[int]]:
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001  (shape inference refuses some custom graphs: fold nothing)
        return {}
    graph = inferred.graph
    shapes = {}
    for info in (*graph.input, *graph.value_info, *graph.output):
        tensor_type = info.type.tensor_type
        if not tensor_type.HasField("shape"):
            continue
        dims = tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[info.name] = [d.dim_value for d in dims]
    return shapes


def _drop_unused_nodes(model) -> None:
    """Remove the nodes (Shape, folded arithmetic) no output depends on any more."""
    graph = model.graph
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(list(graph.node)):
        if any(name in needed for name in node.output):
            kept.append(node)
            needed.update(name for name in node.input if name)
            for attr in node.attribute:  # subgraphs (If, Loop) read outer values by name
                for sub in (*([attr.g] if attr.HasField("g") else []), *attr.graphs):
                    needed.update(name for sub_node in sub.node for name in sub_node.input)
    del graph.node[:]
    graph.node.extend(reversed(kept))


_REDUCE_OPS = frozenset({"ReduceMax", "ReduceMin", "ReduceMean", "ReduceSum", "ReduceProd", "ReduceL1", "ReduceL2",
                         "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"})


def drop_empty_reduce_axes(model) -> int:
    """``ReduceMax(x, axes=[])`` -> ``ReduceMax(x)``: both reduce every axis (opset < 18 attribute form).

    Failure fixed: ``x.amax()`` exports as ReduceMax with an empty ``axes`` list; TVM's ONNX
    frontend cannot read an empty list attribute ("ValueError: Cannot parse attribute: axes").
    """
    changed = 0
    for node in model.graph.node:
        if node.op_type not in _REDUCE_OPS:
            continue
        empty = [a for a in node.attribute if a.name == "axes" and not list(a.ints)]
        for attr in empty:
            node.attribute.remove(attr)
            changed += 1
    return changed


# Applied in this order to a copy of the model.
ONNX_FIXES = (drop_empty_reduce_axes, fold_shape_arithmetic)


def apply_onnx_fixes(model, input_shapes: dict[str, list[int]] | None = None):
    """A copy of ``model`` with every ONNX_FIXES entry applied; ``input_shapes`` pins the graph's
    input dimensions first (the shapes edgekit compiles for), so that shapes fold to constants."""
    import onnx

    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    initializers = {init.name for init in fixed.graph.initializer}
    for graph_input in fixed.graph.input:
        shape = (input_shapes or {}).get(graph_input.name)
        if graph_input.name in initializers or shape is None:
            continue
        dims = graph_input.type.tensor_type.shape.dim
        if len(dims) == len(shape):
            for dim, value in zip(dims, shape):
                dim.Clear()
                dim.dim_value = int(value)
    for fix in ONNX_FIXES:
        fix(fixed)
    return fixed
