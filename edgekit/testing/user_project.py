"""A user's project as a new user would bring it: an image folder of real photos-as-files, a package with a model.

Real data only: the images are Fashion-MNIST test images (Debian's dataset-fashion-mnist) written as RGB PNG
files by Pillow, three classes that a tiny CNN separates in a second or two of training.  The package
(``userpkg``) holds ``models.make_model`` (a 3-channel CNN that knows nothing of edgekit), a metric and data
factories, the forms ``--model``, ``--metric`` and ``--data`` take.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# Fashion-MNIST label -> class folder name; T-shirt, Trouser and Bag are far apart, so a tiny model learns them.
CLASSES = {0: "tshirt", 1: "trouser", 8: "bag"}

USER_MODELS = '''
import torch
from torch import nn


class Net(nn.Module):
    """The user's own CNN: RGB in, any size (global pooling), CLASSES logits out."""

    def __init__(self, classes=3, width=8):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1))
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


class Regressor(nn.Module):
    """A non-classifier: one number per example (scikit-learn's diabetes progression, 10 features)."""

    def __init__(self, inputs=10):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(inputs, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
        self.head = nn.Linear(32, 1)

    def forward(self, x):
        return self.head(self.body(x))


def make_model():
    torch.manual_seed(0)
    return Net()


def make_two_class_model():
    torch.manual_seed(0)
    return Net(classes=2)


def make_regressor():
    torch.manual_seed(0)
    return Regressor()
'''

USER_METRICS = '''
import torch

CALLS = []


def balanced_accuracy(outputs, targets):
    """Mean per-class recall; records every call so a test can see the hook was used."""
    pred = outputs.argmax(1)
    recalls = [float((pred[targets == c] == c).float().mean()) for c in targets.unique()]
    CALLS.append({"examples": int(targets.numel()), "value": sum(recalls) / len(recalls)})
    return sum(recalls) / len(recalls)
'''

USER_DATA = '''
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

NPZ = None  # set by the test: an .npz written by edgekit.testing.user_project


def _tensors(split):
    with np.load(NPZ) as a:
        x, y = (a["x"], a["y"]) if split == "train" else (a["x_test"], a["y_test"])
    return torch.from_numpy(x), torch.from_numpy(y)


def dataset():
    return TensorDataset(*_tensors("train"))


def pair():
    return TensorDataset(*_tensors("train")), TensorDataset(*_tensors("test"))


def loaders():
    train, test = pair()
    return DataLoader(train, batch_size=16, shuffle=True), DataLoader(test, batch_size=16)


def junk():
    return 42
'''


def fashion_images(per_class: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images N x 28 x 28, Fashion-MNIST labels N): the first ``per_class`` test images of each class."""
    from edgekit.data.datasets import FASHION_MNIST_FILES, _read_idx, fashion_mnist_dir

    root = fashion_mnist_dir()
    images_name, labels_name = FASHION_MNIST_FILES["test"]
    images = _read_idx(root / images_name, expect_dims=3)
    labels = _read_idx(root / labels_name, expect_dims=1)
    idx = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in CLASSES])
    return images[idx], labels[idx]


def to_rgb(gray: np.ndarray) -> np.ndarray:
    """A colour image from a gray one (each channel a different function of it), so RGB matters."""
    g = gray.astype(np.float32)
    return np.stack([g, g * 0.6, 255 - g], -1).astype(np.uint8)


def write_image_folder(root: str | Path, *, per_class: int = 100, size: int = 64, ext: str = ".png",
                       splits: bool = False) -> Path:
    """root/<class>/<n>.png, RGB ``size`` x ``size`` (or root/train/<class>/... and root/test/... with ``splits``)."""
    from PIL import Image

    root = Path(root)
    images, labels = fashion_images(per_class)
    for i, (img, label) in enumerate(zip(images, labels)):
        split = ("test" if i % 5 == 0 else "train") if splits else ""
        folder = root / split / CLASSES[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        pic = Image.fromarray(to_rgb(img)).resize((size, size), Image.Resampling.BILINEAR)
        pic.save(folder / f"{i:04d}{ext}")
    return root


def write_user_package(project: str | Path) -> Path:
    """project/userpkg/{models,metrics,data}.py; put ``project`` on sys.path (or run from it) to import them."""
    pkg = Path(project) / "userpkg"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "models.py").write_text(USER_MODELS)
    (pkg / "metrics.py").write_text(USER_METRICS)
    (pkg / "data.py").write_text(USER_DATA)
    return pkg


def train_user_model(model, splits, *, epochs: int = 8, seed: int = 0):
    """A few seconds of training on the user's data, as the user would have done before coming to edgekit."""
    from edgekit.compress.distill import TrainConfig, train

    train(model, splits.train, config=TrainConfig(epochs=epochs, lr=1e-2, batch_size=32, val_size=0, seed=seed),
          progress=False)
    return model.eval()


def write_diabetes_npz(path: str | Path) -> Path:
    """scikit-learn's bundled diabetes data (442 patients, 10 features, a float target) as x/y and x_test/y_test."""
    from sklearn.datasets import load_diabetes

    bunch = load_diabetes()
    x = bunch.data.astype(np.float32) / bunch.data.std(0).astype(np.float32)
    y = ((bunch.target - bunch.target.mean()) / bunch.target.std()).astype(np.float32)
    order = np.random.default_rng(0).permutation(len(y))
    train, test = order[:352], order[352:]
    np.savez(path, x=x[train], y=y[train], x_test=x[test], y_test=y[test])
    return Path(path)
