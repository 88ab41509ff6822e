"""How a model's outputs are scored on a data set: top-1 for class labels, R^2 for float targets, or the user's.

A metric is ``function(outputs, targets) -> float``, higher is better, called once on the outputs for the
whole set (so a metric such as mean IoU or F1 sees every example, not a mean of per-batch values).  Outputs
are what the model returns, concatenated over batches: a tensor, or a tuple/dict of tensors for a model with
several outputs.  ``--metric package.module:function`` names one; ``load_metric`` imports it.

Every report's "accuracy" field holds this score, so the optimize search's floor and comparisons work for any
metric as long as higher is better.  torch is imported lazily.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from edgekit.data.user_code import SPEC_RE, import_object
from edgekit.errors import UsageError

DEFAULT_METRICS = ("top1", "r2")


def first_output(outputs):
    """The tensor the default metrics score: the output itself, or the first of several."""
    if isinstance(outputs, dict):
        return next(iter(outputs.values()))
    if isinstance(outputs, (tuple, list)):
        return outputs[0]
    return outputs


def top1(outputs, targets) -> float:
    """Fraction of examples whose largest output (over dim 1) is the label; works per pixel for (N, C, H, W)."""
    logits = first_output(outputs)
    return float((logits.argmax(1) == targets).float().mean()) if targets.numel() else 0.0


def r2(outputs, targets) -> float:
    """Coefficient of determination: 1 is exact, 0 is no better than predicting the targets' mean."""
    pred = first_output(outputs).reshape(targets.shape).double()
    t = targets.double()
    total = float(((t - t.mean()) ** 2).sum())
    residual = float(((t - pred) ** 2).sum())
    return 1.0 - residual / total if total > 0 else (1.0 if residual == 0 else 0.0)


def default_metric(data) -> Callable:
    return top1 if data.is_classification else r2


def metric_name(data) -> str:
    """How reports name the score: top1, r2, or the user's package.module:function."""
    fn = data.metric
    if fn is None:
        return default_metric(data).__name__
    if fn in (top1, r2):
        return fn.__name__
    return getattr(fn, "edgekit_spec", None) or f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', fn)}"


def load_metric(spec) -> Callable | None:
    """``package.module:function`` (importable from the current directory), a callable, "top1", "r2", or None
    (the default for the data's targets: top1 for class labels, r2 for float targets)."""
    if spec is None or callable(spec):
        return spec
    if spec in DEFAULT_METRICS:
        return {"top1": top1, "r2": r2}[spec]
    if not SPEC_RE.fullmatch(spec):
        raise UsageError(f"metric {spec!r} is neither top1, r2 nor package.module:function",
                         hint="e.g. --metric mypkg.metrics:f1  (function(outputs, targets) -> float, higher is better)")
    fn = import_object(spec, "metric")
    if not callable(fn):
        raise UsageError(f"metric '{spec}' is a {type(fn).__name__}, not a function")

    def metric(outputs, targets):
        return fn(outputs, targets)

    metric.edgekit_spec = spec  # the spec, not the wrapper, names it in reports and a resumed run re-imports it
    return metric


def score(data, outputs) -> float:
    """``data.metric`` (or the default for its targets) of ``outputs``; a user metric's failure names it."""
    fn = data.metric or default_metric(data)
    try:
        value = fn(outputs, data.y)
    except Exception as exc:  # noqa: BLE001 - the user's function may raise anything
        if data.metric is None:
            raise
        raise UsageError(f"metric {metric_name(data)} failed on {data.name}:{data.split} "
                        f"({type(exc).__name__}: {str(exc)[:300]})",
                        hint="a metric takes (outputs, targets) tensors for the whole set and returns a float") from None
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"metric {metric_name(data)} returned a {type(value).__name__}, not a number") from None
    if math.isnan(value):
        raise UsageError(f"metric {metric_name(data)} returned NaN on {data.name}:{data.split}")
    return value


def describe(data) -> dict[str, Any]:
    return {"metric": metric_name(data), "task": "classification" if data.is_classification else "regression"}
