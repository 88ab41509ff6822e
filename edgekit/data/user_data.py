"""``--data``: every way to name a data set, resolved to train / val / test ``Dataset``s (``load_data``).

    fashion-mnist, digits      edgekit's offline sets (datasets.py)
    DIR                        an image folder, one subfolder per class (image_folder.py)
    FILE.npz                   arrays x and y, optionally x_val/y_val and x_test/y_test
    package.module:factory     a callable returning a torch Dataset, a (train, val) or (train, val, test) tuple,
                               a dict of those by split name, DataLoaders, or edgekit Datasets; importable from
                               the current directory

A path that exists wins over the other readings of the same text.  ``x`` is the model's input, batch first;
``y`` integer class labels (a classification set) or float targets (regression).  The held-out set the user
gives is what the model is evaluated on: with only a val split, val is the test set; without either, a seeded
20% of train is held out.  A separate ``val`` (early stopping, scoring the search's candidates) is kept only
when both val and test are given; otherwise the verbs hold it out of train as before.  Everything is
materialised in memory as tensors, once, so calibration, fine-tuning and evaluation all read the same data.

Every problem is a ``DataError`` (exit 14) naming the file or factory and what to change; data_checks.py then
checks the data against the model before anything is written.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.data.datasets import DATASETS, Dataset, load_dataset
from edgekit.data.image_folder import ImageOptions, read_image_folder
from edgekit.data.user_code import SPEC_RE, import_object
from edgekit.errors import DataError

DATA_FORMS = ("fashion-mnist or digits (built in)", "an image folder DIR/<class>/<image>",
              "a .npz file with arrays x and y (optional x_val, y_val, x_test, y_test)",
              "package.module:factory returning a torch Dataset, a (train, val) pair or DataLoaders")
TEST_RATIO = 0.2  # held out of a single set for evaluation
NPZ_SPLITS = (("train", "x", "y"), ("val", "x_val", "y_val"), ("test", "x_test", "y_test"))


@dataclass(frozen=True, kw_only=True)
class DataSplits:
    """The data one verb works on: ``train`` (fine-tuning, calibration), ``test`` (evaluation), ``val`` or None."""

    train: Dataset
    test: Dataset | None
    val: Dataset | None = None
    source: str = "custom"  # the spec as the user wrote it, for messages and the run's setup
    info: dict[str, Any] = field(default_factory=dict)  # what was read and how (classes, normalisation ...)

    def parts(self) -> list[tuple[str, Dataset]]:
        return [(name, d) for name, d in (("train", self.train), ("val", self.val), ("test", self.test))
                if d is not None]

    def with_metric(self, metric) -> "DataSplits":
        if metric is None:
            return self
        return replace(self, **{name: replace(d, metric=metric) for name, d in self.parts()})

    def describe(self) -> dict[str, Any]:
        from edgekit.data.metrics import describe

        return {"source": self.source, **self.info, **describe(self.train),
                **{name: f"{d.name}:{d.split} ({len(d)})" for name, d in self.parts()}}


def load_data(spec, *, input_shape: tuple[int, ...] | None = None, model=None,
              image_options: ImageOptions | None = None, metric=None, seed: int = 0) -> DataSplits:
    """Resolve ``spec`` (see the module docstring; also a DataSplits or a Dataset in Python).

    ``input_shape`` (batch-1 or per-example) or else ``model`` (its first layer) give an image folder its
    defaults; ``metric`` (a callable or ``load_metric`` spec) replaces the default score on every split.
    """
    from edgekit.data.metrics import load_metric

    splits = _resolve(spec, input_shape=input_shape, model=model, image_options=image_options or ImageOptions(),
                      seed=seed)
    return splits.with_metric(load_metric(metric))


def _resolve(spec, *, input_shape, model, image_options, seed) -> DataSplits:
    if isinstance(spec, DataSplits):
        return spec
    if isinstance(spec, Dataset):
        return DataSplits(train=spec, test=None, source=spec.name)
    if not isinstance(spec, (str, Path)):
        return _from_factory_result(spec, source=type(spec).__name__, seed=seed)
    text = str(spec)
    path = Path(text)
    if path.exists():
        if path.is_dir():
            shape = input_shape or _model_input_hint(model)
            return _from_image_folder(path, text, image_options, shape)
        if path.suffix.lower() == ".npz":
            return _from_npz(path, text, seed)
        raise DataError(f"data file {path} is neither an .npz archive nor an image folder", hint=_forms_hint())
    if text.lower().replace("_", "-") in (*DATASETS, "fashionmnist", "fmnist"):
        return DataSplits(train=load_dataset(text, "train"), test=load_dataset(text, "test"), source=text,
                          info={"form": "builtin"})
    if SPEC_RE.fullmatch(text):
        factory = import_object(text, "data factory", DataError)  # data missing: exit 14, as a model's is 8
        try:
            result = factory() if callable(factory) and not _is_data(factory) else factory
        except Exception as exc:  # noqa: BLE001 - the user's factory may raise anything
            raise DataError(f"data factory '{text}' failed: {type(exc).__name__}: {str(exc)[:300]}",
                            hint="it is called with no arguments and must return a torch Dataset, a (train, val) "
                                 "pair or DataLoaders") from None
        return _from_factory_result(result, source=text, seed=seed)
    if path.suffix or "/" in text:
        raise DataError(f"data not found: {path} (no such file or directory)", hint=_forms_hint())
    raise DataError(f"unknown data set {text!r}: no such file or directory, built-in set or package.module:factory",
                    hint=_forms_hint())


def _forms_hint() -> str:
    return "--data takes: " + "; ".join(DATA_FORMS)


def _model_input_hint(model) -> tuple[int, ...] | None:
    """(C,) from a model whose first layer is a Conv2d: its in_channels (the size it cannot say)."""
    if model is None:
        return None
    import torch

    first = next((m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))), None)
    if isinstance(first, torch.nn.Conv2d) and first.in_channels in (1, 3):
        return (first.in_channels,)
    return None


# ---------------------------------------------------------------- image folder


def _from_image_folder(path: Path, source: str, options: ImageOptions, input_shape) -> DataSplits:
    import torch

    if input_shape is not None and len(input_shape) == 1 and options.channels is None:
        options, input_shape = replace(options, channels=int(input_shape[0])), None
    folder = read_image_folder(path, options, input_shape=input_shape)
    parts = {name: Dataset(path.name, name, torch.from_numpy(x), torch.from_numpy(y), len(folder.classes),
                           folder.classes) for name, (x, y) in folder.splits.items()}
    return _assemble(parts, source=source, info=folder.info, seed=options.seed)


# ---------------------------------------------------------------- .npz


def _from_npz(path: Path, source: str, seed: int) -> DataSplits:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"cannot read {path} as an .npz archive: {exc}",
                        hint="write it with numpy.savez(path, x=inputs, y=targets) (object arrays are refused)") from None
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise DataError(f"{path} lacks the array(s) {', '.join(missing)}; it holds: {', '.join(arrays) or 'nothing'}",
                        hint="name the inputs x and the labels or targets y (optional x_val, y_val, x_test, y_test)")
    parts = {}
    for split, xk, yk in NPZ_SPLITS:
        if (xk in arrays) != (yk in arrays):
            have, lack = (xk, yk) if xk in arrays else (yk, xk)
            raise DataError(f"{path} has {have} but not {lack}", hint="give both arrays of a split, or neither")
        if xk in arrays:
            parts[split] = _dataset(path.stem, split, arrays[xk], arrays[yk], where=f"{path} ({xk}, {yk})")
    return _assemble(parts, source=source, info={"form": "npz", "file": str(path),
                                                 "arrays": {k: list(v.shape) for k, v in arrays.items()}}, seed=seed)


# ---------------------------------------------------------------- factory


def _is_data(obj) -> bool:
    import torch.utils.data as tud

    return isinstance(obj, (tud.Dataset, tud.DataLoader, Dataset, DataSplits))


def _from_factory_result(result, *, source: str, seed: int) -> DataSplits:
    import torch.utils.data as tud

    if isinstance(result, DataSplits):
        return replace(result, source=source)
    if isinstance(result, dict):
        unknown = sorted(set(result) - {"train", "val", "test"})
        if unknown or "train" not in result:
            raise DataError(f"data factory '{source}' returned a dict with keys {sorted(result)}",
                            hint="use the keys train (required), val and test")
        named = result
    elif isinstance(result, (tuple, list)) and len(result) in (2, 3) and all(
            isinstance(r, (tud.Dataset, tud.DataLoader, Dataset)) for r in result):
        named = dict(zip(("train", "val", "test"), result))
    elif isinstance(result, (tud.Dataset, tud.DataLoader, Dataset)):
        named = {"train": result}
    else:
        raise DataError(f"data factory '{source}' returned a {type(result).__name__}",
                        hint="return a torch Dataset of (input, target) pairs, a (train, val) pair of them, a "
                             "DataLoader or a pair of DataLoaders")
    parts = {}
    for split, obj in named.items():
        if isinstance(obj, Dataset):
            parts[split] = replace(obj, split=split)
        else:
            x, y = _materialise(obj, where=f"the {split} data of '{source}'")
            parts[split] = _dataset(source.rpartition(":")[2], split, x, y, where=f"the {split} data of '{source}'")
    return _assemble(parts, source=source, info={"form": "factory"}, seed=seed)


def _materialise(obj, *, where: str):
    """(x, y) tensors from a torch Dataset (item by item) or a DataLoader (batch by batch)."""
    import torch
    import torch.utils.data as tud

    xs, ys = [], []
    try:
        if isinstance(obj, tud.DataLoader):
            for i, batch in enumerate(obj):
                x, y = _pair(batch, where, f"batch {i}")
                xs.append(torch.as_tensor(x))
                ys.append(torch.as_tensor(y))
            joined = (torch.cat(xs), torch.cat(ys)) if xs else (torch.zeros(0), torch.zeros(0))
            return joined
        items = (obj[i] for i in range(len(obj))) if hasattr(obj, "__len__") else iter(obj)
        for i, item in enumerate(items):
            x, y = _pair(item, where, f"item {i}")
            xs.append(torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x))
            ys.append(torch.as_tensor(y))
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - a user's __getitem__ may raise anything
        raise DataError(f"reading {where} failed at example {len(xs)}: {type(exc).__name__}: {str(exc)[:300]}") from None
    if not xs:
        return torch.zeros(0), torch.zeros(0, dtype=torch.int64)
    shapes = {tuple(x.shape) for x in xs}
    if len(shapes) > 1:
        odd = next(i for i, x in enumerate(xs) if tuple(x.shape) != tuple(xs[0].shape))
        raise DataError(f"the examples of {where} differ in shape: example 0 is {tuple(xs[0].shape)}, "
                        f"example {odd} is {tuple(xs[odd].shape)}",
                        hint="resize or crop every input to one shape (a transform in the Dataset)")
    return torch.stack(xs), torch.stack(ys)


def _pair(item, where: str, which: str):
    if isinstance(item, (tuple, list)) and len(item) >= 2:
        return item[0], item[1]
    if isinstance(item, dict) and {"x", "y"} <= set(item):
        return item["x"], item["y"]
    kind = type(item).__name__
    raise DataError(f"{which} of {where} is a {kind}, not an (input, target) pair",
                    hint="each item must be (input, target); an image needs a transform to a tensor first"
                    if "Image" in kind else "each item must be (input, target), e.g. a TensorDataset(x, y)")


# ---------------------------------------------------------------- common


def _dataset(name: str, split: str, x, y, *, where: str) -> Dataset:
    """A Dataset from arrays: float32 inputs, int64 labels or float32 targets; shapes and values checked."""
    import torch

    try:
        x, y = (v if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v)) for v in (x, y))
    except (TypeError, ValueError, RuntimeError) as exc:
        raise DataError(f"{where}: inputs and targets must be numeric arrays ({exc})") from None
    if x.ndim == 0 or y.ndim == 0:
        raise DataError(f"{where}: inputs and targets must be arrays with one row per example, got shapes "
                        f"{tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{where}: {x.shape[0]} inputs but {y.shape[0]} targets",
                        hint="x and y need one row per example, in the same order")
    if x.dtype == torch.bool or x.is_complex() or not (x.is_floating_point() or str(x.dtype) in _INT_DTYPES):
        raise DataError(f"{where}: inputs have dtype {x.dtype}; numbers are needed")
    x = x.float().contiguous()
    if not bool(torch.isfinite(x).all()):
        raise DataError(f"{where}: the inputs contain NaN or infinite values")
    if y.is_floating_point():
        y = y.float()
        if not bool(torch.isfinite(y).all()):
            raise DataError(f"{where}: the targets contain NaN or infinite values")
        num_classes = None
    else:
        y = y.long()
        num_classes = int(y.max()) + 1 if y.numel() else 0
    return Dataset(name, split, x, y.contiguous(), num_classes)


_INT_DTYPES = ("torch.uint8", "torch.int8", "torch.int16", "torch.int32", "torch.int64")


def _assemble(parts: dict[str, Dataset], *, source: str, info: dict, seed: int) -> DataSplits:
    """train / val / test by the module docstring's rule: the given held-out set is the test set."""
    for split, d in parts.items():
        if len(d) == 0:
            raise DataError(f"the {split} split of {source} is empty",
                            hint="the data needs labelled examples to fine-tune, calibrate and evaluate on")
    train, val, test = parts.get("train"), parts.get("val"), parts.get("test")
    if test is None and val is not None:
        test, val = val, None
    if test is None:
        if len(train) < 2:
            raise DataError(f"{source} has {len(train)} example: too few to hold any out for evaluation",
                            hint="give more examples, or a separate val or test split")
        n = max(1, round(len(train) * TEST_RATIO))
        train, test = train.split_off(n, seed=seed)
        test = replace(test, split="test (held out of train)")
        train = replace(train, split="train")
    classification = {d.is_classification for d in (train, val, test) if d is not None}
    if len(classification) > 1:
        raise DataError(f"{source}: some splits have integer labels and others float targets",
                        hint="use one kind of target in every split")
    return DataSplits(train=train, test=test, val=val, source=source, info=info)
