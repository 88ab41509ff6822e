"""The data against the model, before a verb spends time or writes a file: does it fit, is the model any good on it.

``check_fits`` raises a ``DataError`` (exit 14) when the model cannot take the data: the splits' input shapes
differ, the model raises on two examples, its output does not match the targets, or a label is outside its
classes.  ``near_chance`` returns a warning when the model scores about what guessing would on the data: a model
trained for another task, another class order or other preprocessing.  It scores the model with the data's
metric: top-1 (class labels) or R^2 (float targets) by default, or the user's ``--metric``, whose chance level
is what that metric gives a constant guess (the most common class for every example, or the targets' mean).
When the metric cannot score such a guess, the warning says the chance level is unknown instead.
"""

from __future__ import annotations

import math
import warnings

from edgekit.errors import DataError

CHANCE_EXAMPLES = 1000  # enough to tell a trained model from chance, few enough to take a second


class DataWarning(UserWarning):
    """The data and the model run, but the result will mean little (``near_chance``)."""


def data_warning(message: str, log=None) -> None:
    """To the verb's log when it has one (the CLI's stderr), else as a Python warning."""
    if log is not None:
        log(f"warning: {message}")
    else:
        warnings.warn(message, DataWarning, stacklevel=3)


def _shape_hint(splits) -> str:
    form = splits.info.get("form")
    if form == "image-folder":
        return ("the images were made {channels}x{h}x{w}; give the size and channels the model takes with "
                "--image-size H,W and --channels".format(channels=splits.info["channels"], h=splits.info["size"][0],
                                                         w=splits.info["size"][1]))
    if form == "npz":
        return "x must hold the model's inputs batch first, e.g. N x C x H x W for a CNN"
    return "the data's inputs must have the shape the model takes (batch first)"


def check_fits(model, splits) -> None:
    """DataError unless every split of ``splits`` suits ``model`` (see the module docstring)."""
    import torch

    from edgekit.data.metrics import first_output

    parts = splits.parts()
    shapes = {name: tuple(d.x.shape[1:]) for name, d in parts}
    if len(set(shapes.values())) > 1:
        raise DataError(f"the splits of {splits.source} have different input shapes: "
                        + ", ".join(f"{name} {shape}" for name, shape in shapes.items()),
                        hint="every split must hold inputs of one shape")
    x = splits.train.x[:2]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:  # noqa: BLE001 - whatever the model raises on this input is the point
        first_line = (str(exc).strip().splitlines() or [""])[0][:300]
        raise DataError(f"the model refuses the inputs of {splits.source}: examples of shape {shapes['train']} "
                        f"raise {type(exc).__name__}: {first_line}", hint=_shape_hint(splits)) from None
    finally:
        model.train(was_training)
    main = first_output(out)
    if not isinstance(main, torch.Tensor) or main.ndim == 0 or main.shape[0] != x.shape[0]:
        raise DataError(f"the model's output on {splits.source} is not one row per example "
                        f"({type(main).__name__} {tuple(getattr(main, 'shape', ()))} for a batch of {x.shape[0]})")
    if splits.train.is_classification:
        _check_labels(main, parts, splits)
    else:
        per_example = tuple(splits.train.y.shape[1:])
        if main[0].numel() != max(1, math.prod(per_example)):
            raise DataError(f"the model outputs {tuple(main.shape[1:])} per example but the targets of "
                            f"{splits.source} are {per_example or 'one number'} per example",
                            hint="float targets are compared with the model's output element by element; "
                                 "integer targets are class labels")


def _check_labels(logits, parts, splits) -> None:
    if logits.ndim < 2:
        raise DataError(f"{splits.source} has integer class labels but the model outputs one number per example",
                        hint="for regression, give float targets (y.astype('float32'))")
    classes = logits.shape[1]
    label_shape = tuple(splits.train.y.shape[1:])
    if label_shape != tuple(logits.shape[2:]):
        raise DataError(f"the labels of {splits.source} are {label_shape or 'one'} per example, the model's class "
                        f"scores {tuple(logits.shape[1:])}: they do not line up",
                        hint="give one label per example (or per output position, for dense prediction)")
    names = splits.info.get("classes")
    for name, d in parts:
        lo, hi = int(d.y.min()), int(d.y.max())
        if lo < 0 or hi >= classes:
            have = f"{len(names)} class folders" if names else f"labels {lo}..{hi}"
            raise DataError(f"labels out of range: the {name} split of {splits.source} has {have}, the model "
                            f"outputs {classes} class scores (labels 0..{classes - 1})",
                            hint="labels must be 0..classes-1; give a model with as many outputs as the data "
                                 "has classes" + (", or fewer class folders" if names else ""))


def near_chance(model, data, *, source: str) -> str | None:
    """A warning when ``model`` scores about chance on ``data`` (see the module docstring); None otherwise."""
    from edgekit.data.metrics import first_output, r2, top1
    from edgekit.evaluate import model_outputs

    sample = data.subset(CHANCE_EXAMPLES, seed=0)
    n = len(sample)
    if n == 0:
        return None
    outputs = model_outputs(model, sample, batch_size=256)
    if sample.metric not in (None, top1, r2):
        return _near_chance_of_metric(sample, outputs, source=source)
    out = first_output(outputs)
    if sample.is_classification:
        acc = top1(out, sample.y)
        chance = _majority_share(sample)
        if acc > chance + _accuracy_margin(chance, n):
            return None
        return (f"the model's top-1 accuracy on {source} is {acc:.3f}, near chance ({chance:.3f}, always answering "
                f"the most common class, over {n} examples): {_ANOTHER_TASK}")
    score = r2(out, sample.y)
    if score > 0.05:
        return None
    return (f"the model's R^2 on {source} is {score:.3f} over {n} examples: no better than predicting the targets' "
            "mean; it was probably trained for another task or other input preprocessing")


_ANOTHER_TASK = ("it was probably trained for another task, another class order or other input preprocessing; "
                 "compressing or optimizing it here will not tell much. Check the class order and the inputs' size "
                 "and normalisation (an image folder's classes are numbered in sorted folder-name order; "
                 "--image-size, --mean, --std)")


def _majority_share(sample) -> float:
    import torch

    return float(torch.bincount(sample.y.flatten()).max()) / sample.y.numel()


def _accuracy_margin(chance: float, n: int) -> float:
    """How far above chance an accuracy-like score must be: a tenth of the way to 1, or two binomial sigmas."""
    return max(0.1 * (1 - chance), 2 * math.sqrt(max(chance * (1 - chance), 0.0) / n))


def _near_chance_of_metric(sample, outputs, *, source: str) -> str | None:
    """near_chance for the user's metric: the model against a constant guess, both scored by that metric."""
    from edgekit.data.metrics import metric_name

    name = metric_name(sample)
    score = sample.score(outputs)
    try:
        chance = float(sample.metric(_constant_guess(sample, outputs), sample.y))
    except Exception as exc:  # noqa: BLE001  a metric for outputs of another form: chance stays unknown
        return (f"the chance level of the metric {name} is unknown: it could not score a constant guess "
                f"({type(exc).__name__}: {exc}); the model scores {score:.3f} on {source}, which is not checked "
                "against guessing")
    # An accuracy-like metric (chance in [0, 1)) gets top-1's margin; any other scale a tenth of chance's size.
    margin = _accuracy_margin(chance, len(sample)) if 0.0 <= chance < 1.0 else 0.1 * abs(chance)
    if score > chance + margin:
        return None
    guess = "the most common class" if sample.is_classification else "the targets' mean"
    return (f"the model's score on {source} by the metric {name} is {score:.3f}, near chance ({chance:.3f}: that "
            f"metric for always answering {guess}, over {len(sample)} examples): {_ANOTHER_TASK}")


def _constant_guess(sample, outputs):
    """Outputs shaped like the model's that give every example the same answer: the most common class (a one-hot
    row of the first output) or the targets' mean."""
    import torch

    from edgekit.data.metrics import first_output

    out = first_output(outputs)
    if sample.is_classification:
        guess = torch.zeros_like(out)
        guess[:, int(torch.bincount(sample.y.flatten()).argmax())] = 1.0
    else:
        guess = torch.full_like(out, float(sample.y.double().mean()))
    if isinstance(outputs, dict):
        first = next(iter(outputs))
        return {**outputs, first: guess}
    if isinstance(outputs, (tuple, list)):
        return type(outputs)([guess, *outputs[1:]])
    return guess
