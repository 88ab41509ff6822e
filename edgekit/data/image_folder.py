"""An image-folder data set, one subfolder per class (torchvision's ImageFolder layout), decoded with Pillow.

    DIR/cat/001.png  DIR/dog/a.jpg ...                       a seeded, per-class share is held out for evaluation
    DIR/train/cat/...  DIR/val/cat/...  DIR/test/cat/...     the splits as given (val and test optional)

Labels are the class folders' indices in sorted name order (as torchvision numbers them, so a model trained
with ImageFolder keeps its class order).  Each image is decoded once, resized (bilinear, keeping its aspect
ratio) so that it covers the target size, center-cropped to it, scaled to [0, 1] and normalised per channel.
Defaults come from the model where it says (its input shape: channels and size), else from the images (their
most common size; RGB unless every image is grayscale); the normalisation defaults to the training images'
per-channel mean and std, recorded in the report.  The whole set is held in memory as float32.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import DataError, UsageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")
SPLIT_DIRS = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")
LAYOUT_HINT = "lay it out as DIR/<class>/<image> (or DIR/train/<class>/<image>, with optional val/ and test/)"


@dataclass(frozen=True, kw_only=True)
class ImageOptions:
    """How images become model inputs; None means: from the model's input shape, else from the images."""

    size: tuple[int, int] | None = None  # (height, width) after the center crop
    resize: int | None = None  # the shorter side before the crop (default: just enough to cover `size`)
    channels: int | None = None  # 1 (grayscale) or 3 (RGB)
    mean: tuple[float, ...] | None = None  # per channel, of pixels in [0, 1] (default: the training images')
    std: tuple[float, ...] | None = None
    test_ratio: float = 0.2  # held out per class for evaluation when the folder has no val/ or test/
    seed: int = 0

    def __post_init__(self):
        if self.size is not None and (len(self.size) != 2 or min(self.size) < 1):
            raise UsageError(f"image size must be HEIGHT,WIDTH (positive), got {self.size}")
        if self.resize is not None and self.resize < 1:
            raise UsageError(f"image resize must be >= 1, got {self.resize}")
        if self.channels not in (None, 1, 3):
            raise UsageError(f"image channels must be 1 or 3, got {self.channels}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None and len(value) not in (1, 3):
                raise UsageError(f"image {name} takes 1 or 3 values, got {len(value)}")
        if self.std is not None and min(self.std) <= 0:
            raise UsageError(f"image std must be > 0, got {self.std}")
        if not 0.0 < self.test_ratio < 1.0:
            raise UsageError(f"test_ratio must be in (0, 1), got {self.test_ratio}")

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True, kw_only=True)
class ImageFolder:
    """Decoded splits: name -> (x float32 N x C x H x W, y int64 N), the class names and what was done."""

    root: Path
    splits: dict[str, tuple[np.ndarray, np.ndarray]]
    classes: tuple[str, ...]
    info: dict[str, Any]


def _visible_dirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_in(class_dir: Path) -> list[Path]:
    return sorted(p for p in class_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                  and not any(part.startswith(".") for part in p.relative_to(class_dir).parts))


def _layout(root: Path) -> dict[str, Path]:
    """split name -> its directory; a folder whose subfolders are all split names holds splits."""
    if not root.is_dir():
        raise DataError(f"image folder {root} is not a directory", hint=LAYOUT_HINT)
    subdirs = _visible_dirs(root)
    if not subdirs:
        loose = [p.name for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS][:3]
        raise DataError(f"image folder {root} has no class subfolders"
                        + (f" (images such as {', '.join(loose)} lie directly in it)" if loose else " (it is empty)"),
                        hint=LAYOUT_HINT)
    by_name = {d.name.lower(): d for d in subdirs}
    known = {alias: split for split, aliases in SPLIT_DIRS.items() for alias in aliases}
    if "train" in by_name and all(name in known for name in by_name):
        return {known[name]: d for name, d in by_name.items()}
    return {"all": root}


def _scan(split_dir: Path) -> dict[str, list[Path]]:
    classes = {d.name: _images_in(d) for d in _visible_dirs(split_dir)}
    if not classes:
        raise DataError(f"{split_dir} has no class subfolders", hint=LAYOUT_HINT)
    empty = [name for name, files in classes.items() if not files]
    if empty:
        raise DataError(f"class folder(s) with no images in {split_dir}: {', '.join(empty[:5])}"
                        + (f" and {len(empty) - 5} more" if len(empty) > 5 else ""),
                        hint=f"put images ({', '.join(IMAGE_EXTENSIONS)}) in every class folder, or remove the "
                             "empty ones")
    return classes


def _open(path: Path):
    from PIL import Image

    try:
        image = Image.open(path)
        image.load()  # open() reads only the header: decode now, so a truncated file fails here, by name
        return image
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot decode image {path}: {exc}",
                        hint="replace or remove the file; every file with an image extension under the folder "
                             "is read") from None


def _header(path: Path) -> tuple[tuple[int, int], str]:
    """(width, height), mode from the file's header only (cheap: nothing is decoded)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.size, image.mode
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot decode image {path}: {exc}",
                        hint="replace or remove the file; every file with an image extension under the folder "
                             "is read") from None


def _convert(image, channels: int) -> np.ndarray:
    from PIL import Image

    if image.mode == "P" or image.mode == "PA" or ("transparency" in image.info and image.mode != "RGBA"):
        image = image.convert("RGBA")  # a palette or transparency: through RGBA, else Pillow warns or misreads
    if image.mode in ("I", "I;16", "F") and channels == 3:
        image = image.convert("L")  # 16-bit/float gray: to 8 bits before RGB (Pillow clips, not scales, them)
    image = image.convert("L" if channels == 1 else "RGB")
    arr = np.asarray(image, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def _fit(image, size: tuple[int, int], resize: int | None):
    """Resize (keeping the aspect ratio) so the image covers ``size``, then center-crop to it."""
    from PIL import Image

    h, w = size
    iw, ih = image.size
    scale = max(h / ih, w / iw)
    if resize is not None:
        scale = max(resize / min(iw, ih), scale)  # never smaller than the crop
    nw, nh = max(w, round(iw * scale)), max(h, round(ih * scale))
    if (nw, nh) != (iw, ih):
        image = image.resize((nw, nh), Image.Resampling.BILINEAR)
    left, top = (nw - w) // 2, (nh - h) // 2
    return image.crop((left, top, left + w, top + h))


def _hold_out(labels: np.ndarray, ratio: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices, per class (at least one test example for each class with two or more)."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n = min(max(1, round(len(idx) * ratio)), len(idx) - 1) if len(idx) >= 2 else 0
        test.extend(idx[:n])
        train.extend(idx[n:])
    return np.sort(np.array(train, dtype=np.int64)), np.sort(np.array(test, dtype=np.int64))


def read_image_folder(root: str | Path, options: ImageOptions = ImageOptions(), *,
                      input_shape: tuple[int, ...] | None = None) -> ImageFolder:
    """Decode ``root`` into float32 splits; ``input_shape`` (C, H, W), when the model's is known, sets defaults."""
    root = Path(root)
    layout = _layout(root)
    scanned = {split: _scan(d) for split, d in layout.items()}
    first = "train" if "train" in scanned else "all"
    classes = tuple(sorted(scanned[first]))
    for split, found in scanned.items():
        extra = sorted(set(found) - set(classes))
        if extra:
            raise DataError(f"{layout[split]} has class folder(s) the training split lacks: {', '.join(extra[:5])}",
                            hint="every class of val/ and test/ needs a folder (with images) in train/ too")
    files = [p for found in scanned.values() for paths in found.values() for p in paths]
    headers = None
    model_chw = tuple(input_shape[-3:]) if input_shape is not None and len(input_shape) >= 3 else None
    size = options.size or (model_chw[1:] if model_chw else None)
    channels = options.channels or (model_chw[0] if model_chw and model_chw[0] in (1, 3) else None)
    if size is None or channels is None:
        headers = [_header(p) for p in files]
    if size is None:
        (w, h), _ = Counter(s for s, _ in headers).most_common(1)[0]
        size = (h, w)
    if channels is None:
        channels = 1 if all(mode in _GRAY_MODES for _, mode in headers) else 3
    decoded: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split, found in scanned.items():
        pixels, labels = [], []
        for label, name in enumerate(classes):
            for path in found.get(name, ()):
                with _open(path) as image:
                    pixels.append(_convert(_fit(image, size, options.resize), channels))
                labels.append(label)
        decoded[split] = (np.stack(pixels), np.asarray(labels, dtype=np.int64))
    if "all" in decoded:
        x, y = decoded.pop("all")
        if len(y) < 2:
            raise DataError(f"image folder {root} has {len(y)} image: too few to hold any out for evaluation",
                            hint="add images, or give train/ and test/ folders")
        tr, te = _hold_out(y, options.test_ratio, options.seed)
        decoded = {"train": (x[tr], y[tr]), "test": (x[te], y[te])}
    train_pixels = decoded["train"][0].reshape(-1, channels).astype(np.float64) / 255.0
    mean = np.broadcast_to(np.asarray(options.mean if options.mean is not None else train_pixels.mean(0)),
                           (channels,)).astype(np.float32)
    std = np.broadcast_to(np.asarray(options.std if options.std is not None else train_pixels.std(0)),
                          (channels,)).astype(np.float32)
    std = np.maximum(std, 1e-6)  # a constant channel (blank images) would divide by zero
    splits = {}
    for split, (x, y) in decoded.items():
        xf = (x.astype(np.float32) / 255.0 - mean) / std
        splits[split] = (np.ascontiguousarray(xf.transpose(0, 3, 1, 2)), y)
    info = {"form": "image-folder", "root": str(root), "classes": list(classes), "images": len(files),
            "size": list(size), "channels": channels, "resize": options.resize,
            "mean": [round(float(v), 5) for v in mean], "std": [round(float(v), 5) for v in std],
            "splits": sorted(layout) if "all" not in layout else f"held out {options.test_ratio:.0%} per class"}
    return ImageFolder(root=root, splits=splits, classes=classes, info=info)
