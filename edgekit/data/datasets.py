"""Offline image-classification data: Fashion-MNIST (Debian) and scikit-learn's digits; the ``Dataset`` type.

Both come out as float32 ``(N, 1, 28, 28)`` tensors, normalised, with int64 labels, so
every zoo model accepts either.  Digits (8x8, 1797 images) is upsampled to 28x28; it is
there for fast tests, Fashion-MNIST for measurements.  torch is imported lazily.
A user's own data (image folders, .npz, factories: user_data.py) becomes the same ``Dataset``.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from edgekit.errors import DataError

FASHION_MNIST_DIR_ENV = "EDGEKIT_FASHION_MNIST_DIR"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
# Mean/std of the Fashion-MNIST training pixels in [0, 1]; used for both sets so
# a model trained on one sees the same input scale on the other.
_MEAN, _STD = 0.2860, 0.3530
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")
DATASETS = ("fashion-mnist", "digits")
SPLITS = ("train", "test")


@dataclass(frozen=True)
class Dataset:
    """Inputs ``x`` (float32, N x example shape) and targets ``y``: int64 class labels, or float targets.

    Integer targets make it a classification set (scored by top-1, distilled with KL on logits); float
    targets a regression one (scored by R^2, distilled with MSE).  ``metric`` replaces that default score:
    ``metric(outputs, targets) -> float``, higher is better (edgekit.data.metrics).
    """

    name: str
    split: str
    x: Any  # torch.Tensor
    y: Any  # torch.Tensor
    num_classes: int | None = 10  # None: regression targets
    classes: tuple[str, ...] | None = None  # class names, index = label, when the data names them
    metric: Any = None  # callable(outputs, targets) -> float; None: top-1 or R^2 (edgekit.data.metrics)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def is_classification(self) -> bool:
        return not self.y.is_floating_point()

    def score(self, outputs) -> float:
        """The data's metric of ``outputs`` (the model's, for every example in order) against ``y``."""
        from edgekit.data.metrics import score

        return score(self, outputs)

    def _part(self, split: str, idx) -> "Dataset":
        return replace(self, split=split, x=self.x[idx], y=self.y[idx])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def subset(self, n: int, *, seed: int = 0) -> "Dataset":
        """A seeded random subset of ``n`` examples (all of them if ``n >= len``)."""
        import torch

        if n >= len(self):
            return self
        if n <= 0:
            raise DataError(f"subset of {self.name} needs n >= 1, got {n}")
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n]
        return self._part(f"{self.split}[{n}]", idx)

    def split_off(self, n: int, *, seed: int = 0) -> tuple["Dataset", "Dataset"]:
        """Split into (rest, held_out of n examples), seeded; used for validation sets."""
        import torch

        if not 0 < n < len(self):
            raise DataError(f"cannot hold out {n} of {len(self)} examples of {self.name}")
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        keep, held = idx[n:], idx[:n]
        return self._part(f"{self.split}-rest", keep), self._part(f"{self.split}-val", held)

    def batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0) -> Iterator[tuple[Any, Any]]:
        import torch

        n = len(self)
        order = (torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle
                 else torch.arange(n))
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            yield self.x[idx], self.y[idx]


def _read_idx(path: Path, *, expect_dims: int) -> np.ndarray:
    """Parse one gzip'd IDX file (big-endian header: magic, then one uint32 per dimension)."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    if ndim != expect_dims:
        raise DataError(f"{path}: IDX file has {ndim} dimensions, expected {expect_dims}")
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path}: {body.size} bytes of data, header says {dims}")
    return body.reshape(dims)


def fashion_mnist_dir() -> Path:
    return Path(os.environ.get(FASHION_MNIST_DIR_ENV, FASHION_MNIST_DIR))


def _load_fashion_mnist(split: str):
    import torch

    root = fashion_mnist_dir()
    images_name, labels_name = FASHION_MNIST_FILES[split]
    missing = [n for n in (images_name, labels_name) if not (root / n).is_file()]
    if missing:
        raise DataError(
            f"Fashion-MNIST {split} files missing in {root}: {', '.join(missing)}",
            hint=f"install the Debian package: apt-get install {FASHION_MNIST_PACKAGE} "
                 f"(or point {FASHION_MNIST_DIR_ENV} at a directory with the IDX .gz files)")
    images = _read_idx(root / images_name, expect_dims=3)
    labels = _read_idx(root / labels_name, expect_dims=1)
    if images.shape[0] != labels.shape[0] or images.shape[0] == 0:
        raise DataError(f"Fashion-MNIST {split} in {root}: {images.shape[0]} images, {labels.shape[0]} labels")
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    x = (x - _MEAN) / _STD
    return x.contiguous(), torch.from_numpy(labels.astype(np.int64))


def _load_digits(split: str):
    """sklearn's 8x8 digits, upsampled to 28x28; a fixed 80/20 split by a seeded permutation."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    images = F.interpolate(images, size=(28, 28), mode="bilinear", align_corners=False)
    images = (images - _MEAN) / _STD
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(1234))
    cut = int(len(labels) * 0.8)
    idx = order[:cut] if split == "train" else order[cut:]
    return images[idx].contiguous(), labels[idx]


def load_dataset(name: str, split: str = "test", *, limit: int | None = None, seed: int = 0) -> Dataset:
    """Load ``name`` ("fashion-mnist" or "digits"), split "train" or "test".

    ``limit`` keeps a seeded random subset of that many examples (fast tests).
    """
    key = name.lower().replace("_", "-")
    if key in ("fashion-mnist", "fashionmnist", "fmnist"):
        key = "fashion-mnist"
    if key not in DATASETS:
        raise DataError(f"unknown data set {name!r}; available: {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} of {key}; available: {', '.join(SPLITS)}")
    x, y = _load_fashion_mnist(split) if key == "fashion-mnist" else _load_digits(split)
    data = Dataset(key, split, x, y, 10)
    return data.subset(limit, seed=seed) if limit is not None else data
