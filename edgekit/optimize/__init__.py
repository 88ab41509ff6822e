"""Optimize stage (the feedback loop): measured on-device latency chooses the compression steps (``optimize_model``).

    from edgekit.optimize import optimize_model
    result = optimize_model("zoo:fmnist-resnet", "fashion-mnist", latency_budget_ms=4.0, host="pi@board")
    result.met, result.chosen["widths"], result.reports["markdown"]

Imports torch and tvm only when a search runs.
"""

from __future__ import annotations

__all__ = ["optimize_model", "OptimizeResult", "SearchConfig"]


def __getattr__(name):
    if name in __all__:
        from edgekit.optimize import search

        return getattr(search, name)
    raise AttributeError(name)
