"""compress_model: run a recipe's steps on a model and report what each one did."""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.errors import ModelLoadError, RecipeError

MODEL_FILE = "model.pt"  # the whole nn.Module (torch.save; load with weights_only=False)
EXPORT_FILE = "model.pt2"  # torch.export program: what `edgekit compile` takes
REPORT_FILE = "report.json"
RECIPE_FILE = "recipe.json"


@dataclass(frozen=True, kw_only=True)
class CompressedModel:
    """The compressed nn.Module, the recipe that made it, and the report of every step."""

    model: Any
    recipe: Any  # Recipe
    report: dict[str, Any] = field(default_factory=dict)
    input_shape: tuple[int, ...] = (1, 1, 28, 28)

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        """Write model.pt, model.pt2, report.json and recipe.json into ``out_dir``."""
        import torch

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"model": out / MODEL_FILE, "exported": out / EXPORT_FILE, "report": out / REPORT_FILE,
                 "recipe": out / RECIPE_FILE}
        torch.save(self.model, paths["model"])
        program = torch.export.export(self.model.eval(), (torch.zeros(self.input_shape),))
        torch.export.save(program, paths["exported"])
        paths["report"].write_text(json.dumps(self.report, indent=2) + "\n")
        paths["recipe"].write_text(json.dumps(self.recipe.to_dict(), indent=2) + "\n")
        return paths

    @classmethod
    def load(cls, out_dir: str | Path) -> "CompressedModel":
        import torch

        from edgekit.compress.recipe import parse_recipe

        out = Path(out_dir)
        try:
            model = torch.load(out / MODEL_FILE, map_location="cpu", weights_only=False)
            report = json.loads((out / REPORT_FILE).read_text())
            recipe = parse_recipe(json.loads((out / RECIPE_FILE).read_text()), source=str(out / RECIPE_FILE))
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelLoadError(f"cannot read compressed model in {out}: {exc}") from None
        return cls(model=model.eval(), recipe=recipe, report=report,
                   input_shape=tuple(report.get("input_shape", (1, 1, 28, 28))))


def model_summary(model, input_shape) -> dict[str, Any]:
    from edgekit.compress.stats import count_macs, count_params, sparsity_ratio, state_dict_bytes

    return {"params": count_params(model), "macs": count_macs(model, input_shape),
            "size_bytes": state_dict_bytes(model), "sparsity_ratio": round(sparsity_ratio(model), 4)}


def _resolve_data(data, eval_data, eval_limit, seed):
    from edgekit.data import load_dataset

    if isinstance(data, str):
        train = load_dataset(data, "train")
        if eval_data is None:
            eval_data = load_dataset(data, "test")
    else:
        train = data
    if isinstance(eval_data, str):
        eval_data = load_dataset(eval_data, "test")
    if eval_data is not None and eval_limit is not None:
        eval_data = eval_data.subset(eval_limit, seed=seed)
    return train, eval_data


def _load_teacher(spec: str, original):
    import torch

    if spec == "original":
        return original
    if spec.startswith("zoo:"):
        from edgekit.data.zoo import load_zoo_model

        return load_zoo_model(spec[4:])
    path = Path(spec)
    if not path.is_file():
        raise RecipeError(f"distill teacher {spec!r}: not 'original', 'zoo:<name>' or an existing file")
    try:
        return torch.load(path, map_location="cpu", weights_only=False).eval()
    except Exception as exc:  # noqa: BLE001 - any unpickling failure
        raise ModelLoadError(f"cannot load distill teacher {path}: {exc}") from None


def compress_model(model, recipe, data, *, eval_data=None, eval_limit: int | None = None, teacher=None,
                   input_shape=(1, 1, 28, 28), progress: bool | None = None, threads: int | None = None,
                   log=None) -> CompressedModel:
    """Run ``recipe`` on a copy of ``model``.

    ``data``: a data set name ("fashion-mnist", "digits") or a training ``Dataset`` (used by
    distill/finetune and for quantization calibration).  ``eval_data`` (default: the test
    split when ``data`` is a name) measures accuracy before and after every step.
    ``teacher`` overrides the distill steps' ``teacher`` option.
    """
    import torch

    from edgekit.compress.distill import train
    from edgekit.compress.prune import PruneConfig, SparsifyConfig, prune_model, sparsify_model
    from edgekit.compress.quantize import QuantizeConfig, quantize_model
    from edgekit.compress.recipe import DistillConfig, FinetuneConfig, Recipe, load_recipe, step_kind
    from edgekit.evaluate import evaluate

    if isinstance(recipe, (str, Path)):
        recipe = load_recipe(recipe)
    if not isinstance(recipe, Recipe):
        raise RecipeError(f"compress_model needs a Recipe or a recipe path, got {type(recipe).__name__}")
    if threads is not None:
        torch.set_num_threads(threads)
    say = log or (lambda msg: None)
    train_data, eval_data = _resolve_data(data, eval_data, eval_limit, recipe.seed)
    original = copy.deepcopy(model).eval()
    current = copy.deepcopy(model).eval()
    started = time.perf_counter()
    before = model_summary(current, input_shape)
    if eval_data is not None:
        before["accuracy"] = round(evaluate(current, eval_data), 4)
    steps_report = []
    for i, step in enumerate(recipe.steps, 1):
        kind = step_kind(step)
        t0 = time.perf_counter()
        say(f"step {i}/{len(recipe.steps)}: {kind}")
        detail: dict[str, Any] = {}
        if isinstance(step, PruneConfig):
            result = prune_model(current, step, input_shape=input_shape)
            current = result.model
            detail = {"removed": result.removed, "params_before": result.params_before,
                      "params_after": result.params_after,
                      "frozen_groups": {g.name: g.why_frozen for g in result.groups if g.frozen}}
        elif isinstance(step, SparsifyConfig):
            current = sparsify_model(current, step)
        elif isinstance(step, (DistillConfig, FinetuneConfig)):
            t = None
            if isinstance(step, DistillConfig):
                t = teacher if teacher is not None else _load_teacher(step.teacher, original)
            res = train(current, train_data, config=step, teacher=t, progress=progress, label=kind)
            detail = res.to_dict()
        elif isinstance(step, QuantizeConfig):
            current = quantize_model(current, train_data, step)
        summary = model_summary(current, input_shape)
        if eval_data is not None:
            summary["accuracy"] = round(evaluate(current, eval_data), 4)
        steps_report.append({"step": i, "kind": kind, "seconds": round(time.perf_counter() - t0, 2),
                             **summary, "detail": detail})
        say(f"  {kind}: params {summary['params']}, macs {summary['macs']}"
            + (f", accuracy {summary['accuracy']:.4f}" if "accuracy" in summary else ""))
    after = steps_report[-1] if steps_report else before
    report = {
        "recipe": recipe.to_dict(),
        "input_shape": list(input_shape),
        "data": {"train": f"{train_data.name}:{train_data.split} ({len(train_data)})",
                 "eval": None if eval_data is None else f"{eval_data.name}:{eval_data.split} ({len(eval_data)})"},
        "before": before,
        "after": {k: after[k] for k in ("params", "macs", "size_bytes", "sparsity_ratio", "accuracy") if k in after},
        "steps": steps_report,
        "seconds": round(time.perf_counter() - started, 2),
    }
    if "accuracy" in before and "accuracy" in after:
        report["accuracy_delta"] = round(after["accuracy"] - before["accuracy"], 4)
    return CompressedModel(model=current.eval(), recipe=recipe, report=report, input_shape=tuple(input_shape))
