"""Optimize stage (the feedback loop): measured on-device latency chooses the compression steps (``optimize_model``).

    from edgekit.optimize import optimize_model
    result = optimize_model("zoo:fmnist-resnet", "fashion-mnist", latency_budget_ms=4.0, host="pi@board")
    result.met, result.chosen["widths"], result.reports["markdown"]

Modules: search.py (the verb), loop.py (its phases), proposals.py (what may be pruned), prediction.py (latency,
measured or predicted), config.py (SearchConfig), records.py (SearchStatus, Candidate, OptimizeResult), state.py
(the run directory), latency_table.py, quantize_choice.py, report.py, devices.py (where it measures).

Imports torch and tvm only when a search runs.
"""

from __future__ import annotations

__all__ = ["optimize_model", "OptimizeResult", "SearchConfig", "SearchStatus"]


def __getattr__(name):
    if name in __all__:
        from edgekit.optimize import search

        return getattr(search, name)
    raise AttributeError(name)
