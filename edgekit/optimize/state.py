"""The search's run directory: everything needed to resume an interrupted search exactly.

    RUN_DIR/
      state.json            config, status, iteration, current model, chosen steps, every candidate
      teacher.pt            the model the search started from (distillation teacher)
      checkpoints/iter_NNN.pt   the model after each verified iteration (iter_000 = the start)
      artifacts/            compiled artifacts (content-addressed; a resume reuses them)
      report.json report.md pareto.png   written when the search ends

``state.json`` is rewritten atomically (temp file + rename) after every step, and a checkpoint is
written *before* the state that names it, so a kill at any instant leaves a consistent directory:
a resume restarts the interrupted iteration from the last checkpoint, with the same seeds.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from edgekit.errors import UsageError

STATE_NAME = "state.json"
STATE_SCHEMA = 1


class RunState:
    def __init__(self, run_dir: Path, data: dict[str, Any]):
        self.run_dir = Path(run_dir)
        self.data = data

    # -- creation and loading -----------------------------------------------------------------------------

    @classmethod
    def create(cls, run_dir: Path | str, config: dict[str, Any]) -> "RunState":
        run_dir = Path(run_dir)
        if (run_dir / STATE_NAME).exists():
            raise UsageError(f"{run_dir} already holds a search (state.json)",
                             hint=f"resume it with `edgekit optimize --resume {run_dir}`, or pick another --run-dir")
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        state = cls(run_dir, {"schema_version": STATE_SCHEMA, "status": "running", "config": config,
                              "created_at": _now(), "iteration": 0, "current": None, "baseline": None,
                              "steps": [], "candidates": [], "events": [], "error": None, "result": None})
        state.save()
        return state

    @classmethod
    def load(cls, run_dir: Path | str) -> "RunState":
        run_dir = Path(run_dir)
        path = run_dir / STATE_NAME
        if not path.is_file():
            raise UsageError(f"{run_dir} is not a search run directory (no {STATE_NAME})",
                             hint="pass the --run-dir of an earlier `edgekit optimize`")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path} is corrupt: {exc}") from None
        if data.get("schema_version") != STATE_SCHEMA:
            raise UsageError(f"{path}: state schema {data.get('schema_version')!r}, this edgekit reads {STATE_SCHEMA}")
        return cls(run_dir, data)

    def save(self) -> None:
        self.data["updated_at"] = _now()
        path = self.run_dir / STATE_NAME
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(self.data, indent=1, default=_json_default))
        os.replace(tmp, path)

    # -- accessors ----------------------------------------------------------------------------------------

    def __getitem__(self, key):
        return self.data[key]

    def __setitem__(self, key, value):
        self.data[key] = value

    @property
    def config(self) -> dict[str, Any]:
        return self.data["config"]

    @property
    def artifacts_dir(self) -> Path:
        return self.run_dir / "artifacts"

    def checkpoint_path(self, iteration: int) -> Path:
        return self.run_dir / "checkpoints" / f"iter_{iteration:03d}.pt"

    @property
    def teacher_path(self) -> Path:
        return self.run_dir / "teacher.pt"

    def event(self, kind: str, **fields) -> None:
        self.data["events"].append({"at": _now(), "event": kind, **fields})

    # -- models -------------------------------------------------------------------------------------------

    def save_model(self, model, path: Path) -> None:
        """The whole module (architecture + weights): a pruned model's shapes differ from its class defaults."""
        import torch

        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(model, tmp)
        os.replace(tmp, path)

    def load_model(self, path: Path):
        import torch

        return torch.load(path, map_location="cpu", weights_only=False).eval()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _json_default(obj):
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"cannot store {type(obj).__name__} in state.json")
