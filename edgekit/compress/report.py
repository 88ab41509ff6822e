"""What a compression did, as records: ``CompressReport`` (written as report.json) and ``ArtifactSummary``.

``to_dict`` gives the JSON that ``edgekit compress --json`` prints and report.json holds (the same keys as
before the report was typed); ``__getitem__`` reads a key of that dict, so ``report["after"]["params"]`` works.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

SUMMARY_KEYS = ("params", "macs", "size_bytes", "sparsity_ratio", "accuracy")


@dataclass(frozen=True, kw_only=True)
class ArtifactSummary:
    """The compressed model compiled for a target; ``accuracy`` measured on this host when the artifact runs here."""

    path: str
    artifact_id: str
    target: str
    size_bytes: int
    accuracy: float | None = None
    accuracy_note: str | None = None  # why accuracy is None

    def to_dict(self) -> dict[str, Any]:
        d = {"path": self.path, "artifact_id": self.artifact_id, "target": self.target,
             "size_bytes": self.size_bytes, "accuracy": self.accuracy}
        if self.accuracy_note:
            d["accuracy_note"] = self.accuracy_note
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ArtifactSummary":
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__})


@dataclass(frozen=True, kw_only=True)
class CompressReport:
    recipe: dict[str, Any]
    input_shape: tuple[int, ...]
    data: dict[str, str | None]  # {"train": "name:split (n)", "eval": ... or None}
    before: dict[str, Any]  # SUMMARY_KEYS of the input model
    after: dict[str, Any]  # SUMMARY_KEYS of the result
    steps: list[dict[str, Any]] = field(default_factory=list)  # one per recipe step: kind, seconds, summary, detail
    seconds: float = 0.0
    artifact: ArtifactSummary | None = None
    files: dict[str, str] = field(default_factory=dict)  # what CompressedModel.save wrote

    @property
    def accuracy_delta(self) -> float | None:
        if "accuracy" in self.before and "accuracy" in self.after:
            return round(self.after["accuracy"] - self.before["accuracy"], 4)
        return None

    def with_(self, **changes) -> "CompressReport":
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"recipe": self.recipe, "input_shape": list(self.input_shape), "data": self.data,
                             "before": self.before, "after": self.after, "steps": self.steps,
                             "seconds": self.seconds}
        if self.accuracy_delta is not None:
            d["accuracy_delta"] = self.accuracy_delta
        if self.files:
            d["files"] = self.files
        if self.artifact is not None:
            d["artifact"] = self.artifact.to_dict()
        return d

    def __getitem__(self, key: str):
        return self.to_dict()[key]

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CompressReport":
        artifact = d.get("artifact")
        return cls(recipe=d.get("recipe", {}), input_shape=tuple(d.get("input_shape", (1, 1, 28, 28))),
                   data=d.get("data", {}), before=d.get("before", {}), after=d.get("after", {}),
                   steps=list(d.get("steps", [])), seconds=d.get("seconds", 0.0),
                   artifact=ArtifactSummary.from_dict(artifact) if artifact else None,
                   files=dict(d.get("files", {})))

    @classmethod
    def load(cls, path: str | Path) -> "CompressReport":
        return cls.from_dict(json.loads(Path(path).read_text()))
