"""Bring a model into TVM Relax: whatever ``edgekit.models.load_model`` resolves (module, program, .onnx).

The torch.export route is tried first for torch models (it handles more graphs);
``.onnx`` files go through TVM's ONNX frontend.  Where TVM lacks an op, edgekit
converts or rewrites it first (edgekit.compile.frontend_fixes); where a route still
fails, ``alternative_route`` gives the other one (a torch model exported to ONNX in
this process), and compile_model records which route built the artifact.  Every
route also yields a *reference* function that runs the original framework (torch or
ONNX Runtime), so the compiled artifact is checked against the model the user gave,
not against TVM itself.  A failure inside a TVM frontend is an edgekit error naming
the stage and, where the traceback shows it, the op and node (``failure_site``).
"""

from __future__ import annotations

import functools
import hashlib
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgekit.artifacts import TensorSpec
from edgekit.compile.tvm_env import import_tvm
from edgekit.errors import InputShapeError, ModelLoadError, UnsupportedOperatorError, UsageError


@dataclass(frozen=True)
class ImportedModel:
    """A model in Relax plus what the artifact manifest needs to describe it.

    ``mod`` is translated on first use: the artifact id needs only ``content_sha256``, so an artifact already
    built for it is reused without TVM's translation of the exported program (most of a cached compile's
    time: 0.5 of 0.65 s for a small CNN here).  A translation failure is raised where ``mod`` is first read.
    """

    translate: Callable[[], Any]  # -> the tvm.IRModule (read it as ``mod``)
    inputs: list[TensorSpec]
    reference: Callable[[list[np.ndarray]], list[np.ndarray]]  # the original framework
    frontend: str  # "torch.export" | "onnx"
    source: str  # where the model came from, for the manifest
    content_sha256: str  # hash of the model's graph and weights

    @functools.cached_property
    def mod(self):
        return self.translate()


def import_model(model, *, input_shapes=None, example_inputs=None, frontend: str = "auto") -> ImportedModel:
    """Any model spec (``edgekit.models.load_model``: a module, a program, a path, a factory, ...) -> Relax."""
    from edgekit.models import load_model

    loaded = load_model(model)
    if loaded.onnx_path is not None:
        return _from_onnx_file(loaded.onnx_path, input_shapes)
    if loaded.exported is not None:
        return _from_exported_program(loaded.exported, input_shapes, source=loaded.source)
    shapes = input_shapes or ([loaded.input_shape] if loaded.input_shape else None)
    if frontend == "onnx":
        return _torch_via_onnx(loaded.module, shapes, example_inputs)
    return _from_torch_module(loaded.module, shapes, example_inputs, source=loaded.source)


# ---------------------------------------------------------------- torch


def _example_inputs(input_shapes, example_inputs, what: str):
    import torch

    if example_inputs is not None:
        return tuple(torch.as_tensor(x) for x in example_inputs)
    if not input_shapes:
        raise InputShapeError(f"{what}: input shapes are unknown", hint="pass --input-shape 1,3,224,224 (once per input)")
    generator = torch.Generator().manual_seed(0)
    return tuple(torch.randn(*shape, generator=generator) for shape in input_shapes)


def _from_torch_module(module, input_shapes, example_inputs, *, source: str) -> ImportedModel:
    import torch

    module = module.eval()
    inputs = _example_inputs(input_shapes, example_inputs, source)
    try:
        with torch.no_grad():
            module(*inputs)
    except RuntimeError as exc:
        raise InputShapeError(
            f"{source} does not accept inputs of shape {[tuple(x.shape) for x in inputs]}: {_first_line(exc)}",
            hint="check --input-shape against what the model's first layer expects") from None
    try:
        program = torch.export.export(module, inputs)
    except Exception as exc:
        raise UnsupportedOperatorError(f"torch.export could not trace {source}: {_first_line(exc)}",
                                       hint="try frontend='onnx', or make the forward pass traceable") from None
    return _from_exported_program(program, None, source=source)


def _from_exported_program(program, input_shapes, *, source: str) -> ImportedModel:
    import torch

    import_tvm()
    from tvm.relax.frontend.torch import from_exported_program

    placeholders = [s for s in program.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    fake_shapes = [tuple(_placeholder(program, s.arg.name).meta["val"].shape) for s in placeholders]
    if input_shapes and [tuple(s) for s in input_shapes] != fake_shapes:
        # An exported program is specialized to its example shapes (unless exported with dynamic dims).
        raise InputShapeError(f"{source} was exported for input shapes {fake_shapes}, not {list(map(tuple, input_shapes))}",
                              hint="export the model again with the shape you want, or drop --input-shape")
    from edgekit.compile.frontend_fixes import TORCH_CONVERTERS, apply_frontend_fixes
    from edgekit.errors import EdgekitError

    def translate():
        try:
            mod = from_exported_program(apply_frontend_fixes(program), keep_params_as_input=False,
                                        unwrap_unit_return_tuple=True, custom_convert_map=dict(TORCH_CONVERTERS))
        except EdgekitError:
            raise
        except AssertionError as exc:
            missing = re.findall(r"'([^']+)'", str(exc)) if "Unsupported function types" in str(exc) else []
            if missing:
                raise UnsupportedOperatorError(_unsupported_torch_message(program, missing, source),
                                               hint="rewrite that part of the model with supported ops, or export to "
                                                    "ONNX and compile the .onnx file") from None
            raise UnsupportedOperatorError(_frontend_failure("torch.export", source, exc)) from None
        except Exception as exc:
            raise UnsupportedOperatorError(_frontend_failure("torch.export", source, exc)) from None
        return mod

    inputs = [TensorSpec(name=s.arg.name, shape=shape, dtype=_torch_dtype(_placeholder(program, s.arg.name)))
              for s, shape in zip(placeholders, fake_shapes)]
    module = program.module()

    def reference(arrays: list[np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            out = module(*[torch.from_numpy(a) for a in arrays])
        # tuples, lists and dicts of tensors, in the order torch.export flattens them (the compiled outputs')
        return [t.detach().numpy() for t in torch.utils._pytree.tree_leaves(out)]

    return ImportedModel(translate=translate, inputs=inputs, reference=reference, frontend="torch.export", source=source,
                         content_sha256=_hash_exported_program(program))


def _placeholder(program, name):
    return next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == name)


def _torch_dtype(node) -> str:
    return str(node.meta["val"].dtype).removeprefix("torch.")


def _unsupported_torch_message(program, missing_ops: list[str], source: str) -> str:
    # TVM checks the graph after torch's decompositions, so look for the op there too.
    where = _locate_nodes(program, missing_ops) or _locate_nodes(program.run_decompositions(), missing_ops)
    detail = "; ".join(where) if where else ", ".join(missing_ops)
    return f"unsupported operator in {source} (frontend torch.export): {detail}"


def _locate_nodes(program, op_names: list[str]) -> list[str]:
    where = []
    for node in program.graph.nodes:
        if node.op == "call_function" and getattr(node.target, "__name__", "") in op_names:
            stack = node.meta.get("nn_module_stack") or {}
            module_path = list(stack.values())[-1][0] if stack else ""
            trace = [t.strip() for t in (node.meta.get("stack_trace") or "").strip().splitlines()]
            code = f" ({' '.join(trace[-2:])})" if trace else ""  # 'File "m.py", line 9, in forward' + the code
            where.append(f"{node.target.__name__} at node '{node.name}' in module '{module_path or '(root)'}'{code}")
    return where


def _hash_exported_program(program) -> str:
    digest = hashlib.sha256(str(program.graph).encode())
    for name, tensor in sorted({**program.state_dict, **program.constants}.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


def _torch_via_onnx(module, input_shapes, example_inputs, *, source: str | None = None) -> ImportedModel:
    """An nn.Module (or a torch.export program) -> ONNX opset 17 in memory -> TVM's ONNX frontend."""
    import contextlib
    import logging
    import warnings

    import torch

    source = source or type(module).__qualname__
    buffer = io.BytesIO()
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    levels = [logger.level for logger in loggers]
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")  # the exporters' deprecation and version-conversion notes
            for logger in loggers:
                logger.setLevel(logging.CRITICAL)
            if isinstance(module, torch.export.ExportedProgram):
                # A program's module() cannot be traced again (no eval/train): the dynamo exporter takes
                # the program itself, at the opset 18 it writes (its conversion down to 17 leaves opset-18
                # attributes behind, e.g. ReduceMean's noop_with_empty_axes, and the checker refuses that).
                onnx_program = torch.onnx.export(module, (), dynamo=True, opset_version=18, verbose=False)
                buffer.write(onnx_program.model_proto.SerializeToString())
            else:
                inputs = _example_inputs(input_shapes, example_inputs, source)
                torch.onnx.export(module.eval(), inputs, buffer, dynamo=False, opset_version=17)
    except Exception as exc:  # torch names the op it cannot export on the first line
        raise UnsupportedOperatorError(f"{source} (frontend onnx, via torch.onnx.export): "
                                       f"{_first_line(exc)}") from None
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
    return _from_onnx_bytes(buffer.getvalue(), None, source=source)


def alternative_route(model, *, input_shapes=None, example_inputs=None) -> ImportedModel | None:
    """``model`` (a ``load_model`` spec) through the ONNX route, when the torch.export route failed; None
    when there is no other route.

    A torch model is exported to ONNX in this process: a module, a factory or a zoo model with the
    TorchScript exporter (opset 17) for the shapes the torch route used; a ``.pt2`` program with
    the dynamo exporter, which takes the program itself (opset 18).  An ``.onnx`` file has no other route: nothing turns ONNX back into torch.
    """
    from edgekit.models import load_model

    loaded = load_model(model)
    if loaded.onnx_path is not None:
        return None
    if loaded.exported is not None:
        return _torch_via_onnx(loaded.exported, None, None, source=loaded.source)
    shapes = input_shapes or ([loaded.input_shape] if loaded.input_shape else None)
    return _torch_via_onnx(loaded.module, shapes, example_inputs, source=loaded.source)


# ---------------------------------------------------------------- onnx


def _from_onnx_file(path: Path, input_shapes) -> ImportedModel:
    return _from_onnx_bytes(path.read_bytes(), input_shapes, source=str(path))


def _from_onnx_bytes(data: bytes, input_shapes, *, source: str) -> ImportedModel:
    import onnx

    tvm = import_tvm()
    from tvm.relax.frontend.onnx import from_onnx

    try:
        model = onnx.load_from_string(data)
        onnx.checker.check_model(model)
    except Exception as exc:
        raise ModelLoadError(f"{source} is not a valid ONNX model ({_first_line(exc)})",
                             hint="the file may be truncated or corrupt; export it again") from None
    initializers = {init.name for init in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in initializers]
    file_shapes = [tuple(d.dim_value if d.HasField("dim_value") else -1 for d in i.type.tensor_type.shape.dim)
                   for i in graph_inputs]
    shapes = _resolve_onnx_shapes(source, file_shapes, input_shapes)
    dtypes = [onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type).name for i in graph_inputs]
    unsupported = _unsupported_onnx_nodes(model)
    if unsupported:
        raise UnsupportedOperatorError(f"unsupported operator in {source} (frontend onnx): {unsupported}",
                                       hint="re-export with a lower opset or replace that op; for torch models "
                                            "compile the .pt2 instead")
    shape_dict = {i.name: list(s) for i, s in zip(graph_inputs, shapes)}
    from edgekit.compile.frontend_fixes import apply_onnx_fixes

    try:
        fixed = apply_onnx_fixes(model, shape_dict)
    except Exception:  # noqa: BLE001  (a fix that cannot read this graph leaves it to TVM as it was)
        fixed = model
    try:
        mod = from_onnx(fixed, shape_dict=shape_dict, dtype_dict={i.name: d for i, d in zip(graph_inputs, dtypes)},
                        keep_params_in_input=False)
    except tvm.error.OpNotImplemented as exc:
        raise UnsupportedOperatorError(f"{source} (frontend onnx): {_first_line(exc)}") from None
    except Exception as exc:
        raise UnsupportedOperatorError(_frontend_failure("onnx", source, exc)) from None

    inputs = [TensorSpec(name=i.name, shape=s, dtype=d) for i, s, d in zip(graph_inputs, shapes, dtypes)]

    def reference(arrays: list[np.ndarray]) -> list[np.ndarray]:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        session = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        return list(session.run(None, {spec.name: a for spec, a in zip(inputs, arrays)}))

    return ImportedModel(translate=lambda: mod, inputs=inputs, reference=reference, frontend="onnx", source=source,
                         content_sha256=hashlib.sha256(data).hexdigest())


def _resolve_onnx_shapes(source, file_shapes, input_shapes):
    if input_shapes is None:
        if any(d < 1 for shape in file_shapes for d in shape):
            raise InputShapeError(f"{source} has dynamic input dimensions {file_shapes}",
                                  hint="pass --input-shape once per input, e.g. --input-shape 1,3,224,224")
        return file_shapes
    if len(input_shapes) != len(file_shapes):
        raise InputShapeError(f"{source} has {len(file_shapes)} inputs, got {len(input_shapes)} --input-shape values")
    resolved = []
    for index, (given, declared) in enumerate(zip(input_shapes, file_shapes)):
        given = tuple(given)
        if len(given) != len(declared) or any(d > 0 and d != g for d, g in zip(declared, given)):
            raise InputShapeError(f"{source}: input {index} is declared {declared} (-1 = any), got {given}")
        resolved.append(given)
    return resolved


def _unsupported_onnx_nodes(model) -> str:
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    supported = set(_get_convert_map()) | {"If", "Constant"}
    bad = [f"{node.op_type} at node '{node.name or '(unnamed)'}'" for node in model.graph.node
           if node.op_type not in supported]
    return "; ".join(bad)


def _frontend_failure(frontend: str, source: str, exc: BaseException) -> str:
    site = failure_site(exc)
    return (f"import of {source} failed in TVM's {frontend} frontend{f' at {site}' if site else ''}: "
            f"{type(exc).__name__}: {_first_line(exc)}")


def failure_site(exc: BaseException) -> str | None:
    """The op and node being converted or lowered when ``exc`` was raised, from its traceback's frames.

    TVM's frontends loop over the graph with a local ``node`` (an FX node for torch.export, a
    NodeProto for ONNX); legalization and the block builder hold the Relax ``call``.  The
    innermost such frame names the op, e.g. ``aten.amax.default at node 'amax'`` or
    ``ReduceMax at node '/ReduceMax_3'``; None when no frame shows one.
    """
    import traceback

    frames = [frame for frame, _line in traceback.walk_tb(exc.__traceback__)]
    for frame in reversed(frames):
        node = frame.f_locals.get("node")
        if node is not None and hasattr(node, "op_type") and hasattr(node, "name"):  # onnx NodeProto
            return f"{node.op_type} at node '{node.name or '(unnamed)'}'"
        if node is not None and hasattr(node, "target") and hasattr(node, "graph"):  # torch.fx.Node
            stack = (node.meta.get("nn_module_stack") or {}) if hasattr(node, "meta") else {}
            module_path = list(stack.values())[-1][0] if stack else ""
            return f"{node.target} at node '{node.name}'" + (f" in module '{module_path}'" if module_path else "")
    for frame in reversed(frames):
        call = frame.f_locals.get("call")
        op = getattr(call, "op", None)
        if op is not None and hasattr(op, "name"):
            return f"Relax op {op.name}"
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def parse_input_shape(text: str) -> tuple[int, ...]:
    """``"1,3,224,224"`` -> ``(1, 3, 224, 224)``; used by the CLI."""
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        raise UsageError(f"bad --input-shape '{text}'", hint="write it as 1,3,224,224") from None
    if not shape or any(d < 1 for d in shape):
        raise UsageError(f"bad --input-shape '{text}': every dimension must be >= 1")
    return shape
