"""The search's records: its status, its candidates, its result.

state.json keeps them as plain JSON (a resumed search reads them back); these types are how the code builds and
reads them, so that a candidate has the same fields wherever it is made.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from edgekit.errors import BudgetNotMetError


class SearchStatus(StrEnum):
    """Where a search stands (state.json's "status"); a StrEnum, so it reads and writes as the plain string."""

    RUNNING = "running"
    MET = "met"  # the current model meets the budget: the final phase comes next
    EXHAUSTED = "exhausted"  # no group can shrink further, or max_iterations reached
    FLOOR = "floor"  # the best next step would fall below the accuracy floor
    IMPOSSIBLE = "impossible"  # even the smallest model the search may build misses the budget
    INTERRUPTED = "interrupted"  # an exception stopped it; the state is kept for --resume
    DONE = "done"  # finished, budget met
    BUDGET_NOT_MET = "budget_not_met"  # finished, the closest candidate reported

    @property
    def finished(self) -> bool:
        return self in (SearchStatus.DONE, SearchStatus.BUDGET_NOT_MET)

    @property
    def stopped(self) -> bool:
        """A decision to stop searching taken (the final phase may still be to run)."""
        return self in (SearchStatus.MET, SearchStatus.EXHAUSTED, SearchStatus.FLOOR, SearchStatus.IMPOSSIBLE)


class CandidateKind(StrEnum):
    BASELINE = "baseline"  # the start model
    PROPOSAL = "proposal"  # one group shrunk one step, fine-tuned and scored
    SMALLEST = "smallest"  # every group at its minimum width (the feasibility check)
    FINAL = "final"  # the chosen model after the final distillation


@dataclass(frozen=True, kw_only=True)
class Candidate:
    """A model the search evaluated.  ``to_dict`` leaves out what does not apply (None, False)."""

    id: str
    iteration: int
    kind: CandidateKind
    widths: dict[str, int]
    latency_ms: float  # the budget's metric: measured, or predicted for a proposal not (yet) verified
    latency_source: str
    size_bytes: int
    val_accuracy: float
    test_accuracy: float | None = None
    group: str | None = None  # proposal: the group shrunk, from from_width to width channels
    width: int | None = None
    from_width: int | None = None
    predicted_latency_ms: float | None = None
    predicted_size_bytes: int | None = None
    median_ms: float | None = None
    p90_ms: float | None = None
    median_ci_low_ms: float | None = None  # the median's 95% interval, when measured
    median_ci_high_ms: float | None = None
    ci_half_width_ratio: float | None = None
    peak_rss_bytes: int | None = None  # of the run on the device
    model_memory_bytes: int | None = None  # the artifact's constants + workspace
    macs: int | None = None
    params: int | None = None
    artifact_id: str | None = None
    model_path: str | None = None
    chosen: bool = False  # a proposal that became the next step
    verified: bool = False  # measured on the device though not chosen (the smallest model)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["kind"] = self.kind.value
        return {k: v for k, v in d.items() if v is not None and v is not False}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Candidate":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**{**known, "kind": CandidateKind(d["kind"])})


@dataclass(kw_only=True)
class OptimizeResult:
    """What the search found; ``met`` says whether the budget holds on the device."""

    met: bool
    status: "SearchStatus"  # DONE or BUDGET_NOT_MET
    proxy: bool  # latency predicted from the cached table, never measured on a device
    run_dir: Path
    chosen: dict[str, Any]  # the chosen model (or, when not met, the closest candidate)
    baseline: dict[str, Any]
    steps: list[dict[str, Any]]
    candidates: list[dict[str, Any]]
    budget: dict[str, Any]
    device: dict[str, Any]
    table: dict[str, Any]
    model_path: Path | None = None
    reports: dict[str, str] = field(default_factory=dict)
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"met": self.met, "status": self.status.value, "proxy": self.proxy,
                "latency_source": "predicted from the cached latency table (proxy mode, no device)" if self.proxy
                else "measured on the device",
                "run_dir": str(self.run_dir), "model_path": str(self.model_path) if self.model_path else None,
                "budget": self.budget, "device": self.device, "baseline": self.baseline, "chosen": self.chosen,
                "steps": self.steps, "candidates": self.candidates, "table": self.table, "reports": self.reports,
                "message": self.message}

    def raise_if_not_met(self) -> "OptimizeResult":
        if not self.met:
            raise BudgetNotMetError(self.message)
        return self


def result_from_state(state, table=None) -> OptimizeResult:
    c = state.config["search"]
    setup = state.config["setup"]
    return OptimizeResult(
        met=state["status"] == SearchStatus.DONE, status=SearchStatus(state["status"]), proxy=bool(setup["proxy"]),
        run_dir=state.run_dir,
        chosen=state["chosen"], baseline=state["baseline"], steps=state["steps"], candidates=state["candidates"],
        budget={"latency_ms": c["latency_budget_ms"], "metric": c["metric"], "size_bytes": c["size_budget_bytes"],
                "memory_mb": c.get("memory_budget_mb"),
                "accuracy_floor": c["accuracy_floor"], "target": c["target"]},
        device=setup["device"], table=table or (state["result"] or {}).get("table", {}),
        model_path=Path(state["model_path"]) if state.data.get("model_path") else None,
        message=state.data.get("message", ""), reports=(state["result"] or {}).get("reports", {}))
