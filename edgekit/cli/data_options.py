"""The data flags of `edgekit compress` and `edgekit optimize`: --data, the image-folder options, the metric hook.

Declared once so both commands spell them alike.  Parsing stays light (nothing imports numpy or torch until a
command runs); ``image_options`` builds edgekit.data.image_folder.ImageOptions only from the flags given, so
every default left out comes from the model or the images.
"""

from __future__ import annotations

import argparse

from edgekit.errors import UsageError

DATA_HELP = ("fashion-mnist, digits, an image folder DIR/<class>/<image> (or DIR/train/<class>/..., with val/ "
             "and test/), an .npz with arrays x and y (optional x_val, y_val, x_test, y_test), or "
             "package.module:factory returning a torch Dataset, a (train, val) pair or DataLoaders")
METRIC_HELP = ("package.module:function(outputs, targets) -> float, higher is better, scoring the model on the "
               "data (default: top1 for class labels, r2 for float targets)")


def add_data_options(group, *, metric_flags: tuple[str, ...]) -> None:
    group.add_argument("--data", default="fashion-mnist", help=DATA_HELP + " (default: %(default)s)")
    group.add_argument(*metric_flags, dest="accuracy_metric", metavar="PKG.MOD:FN", default=None, help=METRIC_HELP)
    # Their own group in --help; inside an argument group already (optimize's "search"), nesting is deprecated.
    images = group.add_argument_group("image folder") if isinstance(group, argparse.ArgumentParser) else group
    images.add_argument("--image-size", metavar="H[,W]",
                        help="crop the images to this size (default: the model's input size, else the images' "
                             "most common size)")
    images.add_argument("--resize", type=int, metavar="N",
                        help="resize the shorter side to N before the center crop (default: just enough to cover "
                             "the crop)")
    images.add_argument("--channels", type=int, choices=(1, 3),
                        help="1 grayscale or 3 RGB (default: the model's, else RGB unless every image is gray)")
    images.add_argument("--mean", metavar="M[,M,M]", help="per-channel mean of pixels in [0, 1] to subtract "
                                                          "(default: the training images')")
    images.add_argument("--std", metavar="S[,S,S]", help="per-channel std to divide by (default: the training images')")


def _numbers(text: str | None, flag: str, kind=float) -> tuple | None:
    if text is None:
        return None
    try:
        return tuple(kind(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise UsageError(f"{flag} takes comma-separated numbers, got {text!r}") from None


def image_options(args):
    """ImageOptions from the image flags the user gave, or None when none was (every default applies)."""
    size = _numbers(args.image_size, "--image-size", int)
    if size is not None and len(size) == 1:
        size = size * 2
    given = {"size": size, "resize": args.resize, "channels": args.channels,
             "mean": _numbers(args.mean, "--mean"), "std": _numbers(args.std, "--std")}
    given = {k: v for k, v in given.items() if v is not None}
    if not given:
        return None
    from edgekit.data.image_folder import ImageOptions

    return ImageOptions(**given)
