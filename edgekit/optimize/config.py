"""SearchConfig: every option of the optimize loop, validated, saved with the run (so a resume uses the same).

Light on purpose (no torch): the CLI reads its fields' defaults to build ``edgekit optimize``'s flags.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from edgekit.errors import UsageError

METRICS = ("median", "p90")


@dataclass(frozen=True, kw_only=True)
class SearchConfig:
    latency_budget_ms: float | None = None
    metric: str = "median"  # which statistic of the device's samples must meet the budget
    size_budget_bytes: int | None = None  # of the compiled artifact (library + reference)
    # the artifact's run-time memory: constants + planned workspace (manifest "memory"), in MiB
    memory_budget_mb: float | None = None
    accuracy_floor: float | None = None  # held-out accuracy the search never goes below
    target: str = "host"
    seed: int = 0
    step_ratio: float = 0.1  # latency (or size) cut per iteration, as a fraction of the baseline's
    width_step_ratio: float = 0.125  # candidate widths are multiples of this fraction of a group's width
    min_width_ratio: float = 0.25  # no group is cut below this fraction of its original width
    margin_ratio: float = 0.03  # aim this far under the budget: the device's noise must not undo it
    max_iterations: int = 30
    finetune_epochs: int = 1
    finetune_examples: int = 5000
    final_epochs: int = 2
    final_examples: int | None = None  # None: all training examples
    val_examples: int = 1000
    test_examples: int | None = None  # None: the whole test split
    lr: float = 1e-3
    batch_size: int = 128
    warmup: int = 5
    repeats: int = 50
    kernel_repeats: int = 10
    measure_rounds: int = 3  # separate runs per measurement; the least-disturbed one counts (see device_measure)
    table_mode: str = "kernels"  # kernels: per-kernel latency table; whole: measure every proposal whole
    exclude: tuple[str, ...] = ()  # layer groups (by producing module) never pruned
    reuse_measurements: bool = True  # a model architecture measured before on this device is not re-measured
    quantize: bool = False  # after the search: per-layer int8 or float, by measured latency and accuracy
    int8_max_drop: float = 0.005  # accuracy int8 layers may cost (held-out), when they buy latency
    nproc_per_node: int = 1  # fine-tuning in this many DDP processes under torchrun (compress/distributed.py)

    def __post_init__(self):
        if self.latency_budget_ms is None and self.size_budget_bytes is None and self.memory_budget_mb is None:
            raise UsageError("give a budget: latency_budget_ms, size_budget_bytes and/or memory_budget_mb",
                             hint="e.g. edgekit optimize MODEL --latency-budget-ms 5")
        if self.latency_budget_ms is not None and not self.latency_budget_ms > 0:
            raise UsageError(f"latency budget must be > 0 ms, got {self.latency_budget_ms}")
        if self.size_budget_bytes is not None and not self.size_budget_bytes > 0:
            raise UsageError(f"size budget must be > 0 bytes, got {self.size_budget_bytes}")
        if self.memory_budget_mb is not None and not self.memory_budget_mb > 0:
            raise UsageError(f"memory budget must be > 0 MiB, got {self.memory_budget_mb}")
        if self.metric not in METRICS:
            raise UsageError(f"unknown latency metric {self.metric!r}; available: {', '.join(METRICS)}")
        if self.accuracy_floor is not None and not 0.0 <= self.accuracy_floor <= 1.0:
            raise UsageError(f"accuracy floor is a fraction in [0, 1], got {self.accuracy_floor}")
        if not 0.0 < self.step_ratio < 1.0:
            raise UsageError(f"step_ratio must be in (0, 1), got {self.step_ratio}")
        if self.table_mode not in ("kernels", "whole"):
            raise UsageError(f"table_mode must be 'kernels' or 'whole', got {self.table_mode!r}")
        object.__setattr__(self, "exclude", tuple(self.exclude))
        from edgekit.compress.distributed import check_nproc_per_node  # light: no torch at import

        object.__setattr__(self, "nproc_per_node", check_nproc_per_node(self.nproc_per_node))

    @property
    def memory_budget_bytes(self) -> int | None:
        return None if self.memory_budget_mb is None else int(self.memory_budget_mb * 2**20)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["exclude"] = list(self.exclude)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SearchConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        known["exclude"] = tuple(known.get("exclude", ()))
        return cls(**known)
