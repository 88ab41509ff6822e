"""compress_model: run a recipe's steps on a model, report what each one did, optionally compile the result.

Everything ``edgekit compress`` does is here (the CLI only parses its flags): the recipe's steps, accuracy
before and after each, and with ``target`` a compiled artifact whose accuracy is measured on this host when it
runs here.  The result is a ``CompressedModel``, which ``compile_model`` and every ``--model`` flag take
(directly, or as the directory ``CompressedModel.save`` writes).
"""

from __future__ import annotations

import copy
import json
import platform
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgekit.compress.report import SUMMARY_KEYS, ArtifactSummary, CompressReport
from edgekit.errors import ModelLoadError, RecipeError

MODEL_FILE = "model.pt"  # the whole nn.Module (torch.save; load with weights_only=False)
EXPORT_FILE = "model.pt2"  # torch.export program: what `edgekit compile` takes
REPORT_FILE = "report.json"
RECIPE_FILE = "recipe.json"
REFERENCE_INPUT_FILE = "reference_input.npy"  # a real input, for the compiled artifact's output check


@dataclass(frozen=True, kw_only=True)
class CompressedModel:
    """The compressed nn.Module, the recipe that made it, and the report of every step."""

    model: Any
    recipe: Any  # Recipe
    report: CompressReport
    input_shape: tuple[int, ...]  # batch-1, as the data gave it (no default: a model's input is the data's)
    # One real example from the data: int8 rounding is data-dependent, so the compiled artifact's output
    # check must use real data rather than the seeded random input compile_model uses otherwise.
    reference_input: Any = None  # np.ndarray of input_shape, or None

    @property
    def quantized(self) -> bool:
        return "quantize" in self.recipe.kinds

    def compile_defaults(self) -> dict[str, Any]:
        """compile_model's options for this model unless the caller gives them: real input, int8 tolerance."""
        from edgekit.compress.quantize import INT8_CHECK_TOLERANCE

        defaults: dict[str, Any] = {}
        if self.reference_input is not None:
            defaults["reference_inputs"] = [self.reference_input]
        if self.quantized:
            defaults["tolerance"] = dict(INT8_CHECK_TOLERANCE)
        return defaults

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        """Write model.pt, model.pt2, report.json, recipe.json (and reference_input.npy) into ``out_dir``."""
        import numpy as np
        import torch

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"model": out / MODEL_FILE, "exported": out / EXPORT_FILE, "report": out / REPORT_FILE,
                 "recipe": out / RECIPE_FILE}
        torch.save(self.model, paths["model"])
        program = torch.export.export(self.model.eval(), (torch.zeros(self.input_shape),))
        torch.export.save(program, paths["exported"])
        if self.reference_input is not None:
            paths["reference_input"] = out / REFERENCE_INPUT_FILE
            np.save(paths["reference_input"], self.reference_input)
        paths["recipe"].write_text(json.dumps(self.recipe.to_dict(), indent=2) + "\n")
        self.report.with_(files={k: str(v) for k, v in paths.items()}).save(paths["report"])
        return paths

    @classmethod
    def load(cls, out_dir: str | Path) -> "CompressedModel":
        import numpy as np
        import torch

        from edgekit.compress.recipe import parse_recipe

        out = Path(out_dir)
        try:
            model = torch.load(out / MODEL_FILE, map_location="cpu", weights_only=False)
            report = CompressReport.load(out / REPORT_FILE)
            recipe = parse_recipe(json.loads((out / RECIPE_FILE).read_text()), source=str(out / RECIPE_FILE))
            reference = np.load(out / REFERENCE_INPUT_FILE) if (out / REFERENCE_INPUT_FILE).is_file() else None
        except Exception as exc:  # noqa: BLE001 - a damaged pickle raises anything
            raise ModelLoadError(f"cannot read the compressed model in {out} ({type(exc).__name__}: "
                                 f"{str(exc)[:200]})", hint="run `edgekit compress` again") from None
        return cls(model=model.eval(), recipe=recipe, report=report, input_shape=tuple(report.input_shape),
                   reference_input=reference)


def model_summary(model, input_shape) -> dict[str, Any]:
    from edgekit.compress.stats import count_macs, count_params, sparsity_ratio, state_dict_bytes

    return {"params": count_params(model), "macs": count_macs(model, input_shape),
            "size_bytes": state_dict_bytes(model), "sparsity_ratio": round(sparsity_ratio(model), 4)}


def _resolve_data(data, eval_data, eval_limit, seed, *, model, input_shape, image_options, metric):
    """DataSplits: ``data`` in any form edgekit.data.user_data takes; ``eval_data`` replaces its test split."""
    from edgekit.data.metrics import load_metric
    from edgekit.data.user_data import load_data

    metric = load_metric(metric)
    options = dict(model=model, input_shape=input_shape, image_options=image_options, metric=metric, seed=seed)
    splits = load_data(data, **options)
    if eval_data is not None:
        test = load_data(eval_data, **options).test if isinstance(eval_data, (str, Path)) else eval_data
        splits = replace(splits, test=test).with_metric(metric)
    if splits.test is not None and eval_limit is not None:
        splits = replace(splits, test=splits.test.subset(eval_limit, seed=seed))
    return splits


def _load_teacher(spec: str, original):
    """A distill step's ``teacher``: "original", or any model spec edgekit.models accepts."""
    from edgekit.models import load_torch_module

    if spec == "original":
        return original
    return load_torch_module(spec, purpose="a distillation teacher")


def compress_model(model, recipe, data, *, eval_data=None, eval_limit: int | None = None, teacher=None,
                   input_shape=None, metric=None, image_options=None,
                   progress: bool | None = None, threads: int | None = None,
                   target=None, out_dir: str | Path | None = None, artifacts_dir: str | Path | None = None,
                   nproc_per_node: int = 1, resume: bool = False, log=None) -> CompressedModel:
    """Run ``recipe`` on a copy of ``model``.

    ``model``: anything ``edgekit.models.load_model`` gives an nn.Module for (a module, ``zoo:NAME``, a .pt
    file, ``module:factory[@weights.pt]``, a compress output directory).  ``recipe``: a Recipe or its path.
    ``data``: anything ``edgekit.data.user_data.load_data`` takes (a built-in name, an image folder, an .npz,
    ``package.module:factory``, DataSplits) or a training ``Dataset``; its train split is used by
    distill/finetune and for quantization calibration, its val split (when given) for early stopping.
    ``eval_data`` (default: the data's test split; none for a bare Dataset) measures the score before and
    after every step; ``eval_limit`` takes a seeded subset of it.  ``metric``: ``function(outputs, targets)``
    or its ``package.module:function`` spec (default: top-1 for class labels, R^2 for float targets); the
    report's "accuracy" fields hold it.  ``image_options``: an ``ImageOptions`` for an image folder.
    ``teacher`` overrides the distill steps' ``teacher`` option.  ``input_shape``: batch-1 input shape
    (default: the data's).  Data the model cannot take raises a DataError before any work.
    ``out_dir``: save the result there (``CompressedModel.save``), before any compile, so that a failed
    compile keeps the trained model.  ``target``: also compile the result for this profile (name, path
    or TargetProfile) into ``artifacts_dir`` (default: OUT_DIR/artifacts, else compile's default);
    ``report.artifact`` then holds the artifact and, when it runs on this host, its accuracy on ``eval_data``.
    ``nproc_per_node`` > 1: the distill/finetune steps train in that many DDP processes under torchrun
    (distributed.py; gloo on CPU, NCCL on GPUs).  With ``out_dir`` (one process or N) they are checkpointed
    after every epoch in OUT_DIR/checkpoints/; ``resume`` continues an interrupted run from there (the steps
    before it are seeded, so they are redone); a checkpoint of other data is refused (DataError).
    """
    import torch

    from edgekit.compress.distill import train
    from edgekit.compress.prune import PruneConfig, SparsifyConfig, prune_model, sparsify_model
    from edgekit.compress.quantize import QuantizeConfig, quantize_model
    from edgekit.compress.recipe import DistillConfig, FinetuneConfig, Recipe, load_recipe, step_kind
    from edgekit.data.data_checks import check_fits, data_warning, near_chance
    from edgekit.evaluate import evaluate
    from edgekit.models import load_model, load_torch_module

    if isinstance(recipe, (str, Path)):
        recipe = load_recipe(recipe)
    if not isinstance(recipe, Recipe):
        raise RecipeError(f"compress_model needs a Recipe or a recipe path, got {type(recipe).__name__}")
    nproc_per_node = _check_distributed(nproc_per_node, resume, out_dir)
    loaded = load_model(model, purpose="model")
    model = load_torch_module(loaded, purpose="compress")
    if threads is not None:
        torch.set_num_threads(threads)
    say = log or (lambda msg: None)
    splits = _resolve_data(data, eval_data, eval_limit, recipe.seed, model=model,
                           input_shape=input_shape or loaded.input_shape, image_options=image_options, metric=metric)
    check_fits(model, splits)  # before any training, and before anything is written
    train_data, eval_data = splits.train, splits.test
    warning = near_chance(model, eval_data or train_data, source=splits.source)
    if warning:
        data_warning(warning, log)
    input_shape = tuple(input_shape or (1, *train_data.input_shape))
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
            checkpoints = None if out_dir is None else Path(out_dir) / "checkpoints" / f"step{i}-{kind}"
            res = train(current, train_data, config=step, teacher=t, val_data=splits.val, progress=progress,
                        label=kind, nproc_per_node=nproc_per_node, checkpoint_dir=checkpoints, resume=resume,
                        log=say)
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
    report = CompressReport(
        recipe=recipe.to_dict(), input_shape=input_shape,
        data={**{k: v for k, v in splits.describe().items() if k not in ("train", "val", "test")},
              "train": f"{train_data.name}:{train_data.split} ({len(train_data)})",
              "eval": None if eval_data is None else f"{eval_data.name}:{eval_data.split} ({len(eval_data)})",
              **({"warnings": [warning]} if warning else {})},
        before=before, after={k: after[k] for k in SUMMARY_KEYS if k in after}, steps=steps_report,
        seconds=round(time.perf_counter() - started, 2))
    sample = (eval_data if eval_data is not None else train_data).x[:1]
    compressed = CompressedModel(model=current.eval(), recipe=recipe, report=report, input_shape=input_shape,
                                 reference_input=sample.numpy().astype("float32").reshape(input_shape))
    if out_dir is not None:
        files = {k: str(v) for k, v in compressed.save(out_dir).items()}
        compressed = replace(compressed, report=compressed.report.with_(files=files))
        artifacts_dir = artifacts_dir or Path(out_dir) / "artifacts"
    if target is not None:
        compressed = _compile_and_evaluate(compressed, target, artifacts_dir, eval_data, say)
        if out_dir is not None:
            compressed.report.save(Path(out_dir) / REPORT_FILE)  # again: it now describes the artifact
    return compressed


def _check_distributed(nproc_per_node, resume: bool, out_dir) -> int:
    from edgekit.compress.distributed import check_nproc_per_node
    from edgekit.errors import UsageError

    nproc_per_node = check_nproc_per_node(nproc_per_node)
    if resume and out_dir is None:
        raise UsageError("resume continues from the checkpoints an interrupted run left in its output directory",
                         hint="give the same --out and --nproc-per-node as the interrupted run")
    return nproc_per_node


def _compile_and_evaluate(compressed: CompressedModel, target, artifacts_dir, eval_data, say) -> CompressedModel:
    from edgekit.compile import compile_model
    from edgekit.evaluate import evaluate

    say(f"compiling for {getattr(target, 'name', target)}")
    artifact = compile_model(compressed, target, out_dir=artifacts_dir)
    if not _runs_here(artifact):
        accuracy, note = None, "artifact does not run on this host; deploy it to measure"
    elif eval_data is None:
        accuracy, note = None, "no evaluation data given"
    else:
        say(f"measuring the compiled artifact's accuracy on {len(eval_data)} test images")
        accuracy, note = round(evaluate(artifact, eval_data), 4), None
    summary = ArtifactSummary(path=str(artifact.path), artifact_id=artifact.artifact_id,
                              target=artifact.target_name, size_bytes=artifact.size_bytes, accuracy=accuracy,
                              accuracy_note=note)
    return replace(compressed, report=compressed.report.with_(artifact=summary))


def _runs_here(artifact) -> bool:
    from edgekit.targets import ELF_MACHINE_BY_ARCH

    return (artifact.manifest["target"].get("kind") == "cpu"
            and artifact.manifest.get("elf_machine") == ELF_MACHINE_BY_ARCH.get(platform.machine()))
