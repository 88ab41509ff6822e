"""Compression recipes: TOML in, frozen dataclasses inside, validated before any work.

    [recipe]
    name = "prune50-distill-int8"
    seed = 0

    [[steps]]
    kind = "prune"            # structured: removes channels
    ratio = 0.5
    importance = "l1"         # l1 | l2 | bn_scale
    exclude = ["fc"]

    [[steps]]
    kind = "distill"          # recover accuracy from the original model (the teacher)
    epochs = 3
    temperature = 4.0
    alpha = 0.7

    [[steps]]
    kind = "quantize"
    granularity = "per_channel"   # per_channel | per_tensor
    calibration = "percentile"    # minmax | percentile

Step kinds: prune, sparsify (unstructured), distill, finetune (labels only), quantize.
Order rules: quantize comes last and at most once (an int8 model is not retrained or
re-pruned here); distill/finetune may not follow sparsify (training would refill the
zeros, since nothing masks them).
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.compress.distill import TrainConfig
from edgekit.compress.prune import PruneConfig, SparsifyConfig
from edgekit.compress.quantize import QuantizeConfig
from edgekit.errors import RecipeError


@dataclass(frozen=True, kw_only=True)
class DistillConfig(TrainConfig):
    """Distillation step: TrainConfig plus where the teacher comes from.

    teacher: "original" (the model before this recipe ran), "zoo:<name>" or a path to a
    torch-saved module.
    """

    teacher: str = "original"


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig(TrainConfig):
    """Plain fine-tuning on the labels (no teacher)."""

    alpha: float = 0.0


STEP_TYPES: dict[str, type] = {
    "prune": PruneConfig,
    "sparsify": SparsifyConfig,
    "distill": DistillConfig,
    "finetune": FinetuneConfig,
    "quantize": QuantizeConfig,
}
# kind -> kinds it may not follow (anywhere earlier in the recipe)
_NOT_AFTER = {
    "prune": {"quantize"},
    "sparsify": {"quantize"},
    "distill": {"quantize", "sparsify"},
    "finetune": {"quantize", "sparsify"},
    "quantize": {"quantize"},
}
_WHY = {
    "quantize": "an int8 model is final here: quantize must be the last step (and appear once)",
    "sparsify": "training after sparsify would refill the zeroed weights (nothing masks them)",
}


def step_kind(step) -> str:
    for kind, cls in STEP_TYPES.items():
        if type(step) is cls:
            return kind
    raise RecipeError(f"not a recipe step: {step!r}")


@dataclass(frozen=True, kw_only=True)
class Recipe:
    name: str = "recipe"
    seed: int = 0
    steps: tuple[Any, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "steps", tuple(self.steps))
        if not self.steps:
            raise RecipeError(f"recipe {self.name!r} has no steps",
                              hint=f"add [[steps]] tables with kind = one of {', '.join(STEP_TYPES)}")
        seen: list[str] = []
        for i, step in enumerate(self.steps, 1):
            kind = step_kind(step)
            bad = [k for k in seen if k in _NOT_AFTER[kind]]
            if bad:
                raise RecipeError(f"recipe {self.name!r}: step {i} {kind!r} is not allowed after {bad[0]!r}",
                                  hint=_WHY.get(bad[0], "reorder the steps"))
            seen.append(kind)

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(step_kind(s) for s in self.steps)

    def to_dict(self) -> dict[str, Any]:
        steps = []
        for s in self.steps:
            d = {"kind": step_kind(s)}
            for f in dataclasses.fields(s):
                v = getattr(s, f.name)
                d[f.name] = list(v) if isinstance(v, tuple) else (dict(v) if isinstance(v, dict) else v)
            steps.append(d)
        return {"recipe": {"name": self.name, "seed": self.seed}, "steps": steps}


def parse_recipe(doc: dict[str, Any], *, source: str = "<recipe>") -> Recipe:
    """Build a Recipe from a parsed TOML document; every problem names the step and key."""
    if not isinstance(doc, dict):
        raise RecipeError(f"{source}: a recipe is a table, got {type(doc).__name__}")
    unknown_top = set(doc) - {"recipe", "steps"}
    if unknown_top:
        raise RecipeError(f"{source}: unknown top-level key(s) {', '.join(sorted(unknown_top))}",
                          hint="a recipe has a [recipe] table and [[steps]] tables")
    head = doc.get("recipe", {})
    if not isinstance(head, dict):
        raise RecipeError(f"{source}: [recipe] must be a table")
    unknown_head = set(head) - {"name", "seed"}
    if unknown_head:
        raise RecipeError(f"{source}: unknown key(s) in [recipe]: {', '.join(sorted(unknown_head))}; "
                          "valid: name, seed")
    seed = head.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise RecipeError(f"{source}: [recipe] seed must be an integer, got {seed!r}")
    raw_steps = doc.get("steps", [])
    if not isinstance(raw_steps, list):
        raise RecipeError(f"{source}: steps must be an array of tables ([[steps]])")
    steps = []
    for i, raw in enumerate(raw_steps, 1):
        steps.append(_parse_step(raw, i, source, seed))
    try:
        return Recipe(name=str(head.get("name", Path(source).stem)), seed=seed, steps=tuple(steps))
    except RecipeError as exc:
        raise RecipeError(f"{source}: {exc.message}", hint=exc.hint) from None


def _parse_step(raw: Any, i: int, source: str, seed: int):
    where = f"{source}: step {i}"
    if not isinstance(raw, dict):
        raise RecipeError(f"{where}: a step is a table, got {type(raw).__name__}")
    kind = raw.get("kind")
    if kind not in STEP_TYPES:
        raise RecipeError(f"{where}: unknown step kind {kind!r}; available: {', '.join(STEP_TYPES)}")
    cls = STEP_TYPES[kind]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    opts = {k: v for k, v in raw.items() if k != "kind"}
    unknown = set(opts) - set(fields)
    if unknown:
        raise RecipeError(f"{where} ({kind}): unknown option(s) {', '.join(sorted(unknown))}; "
                          f"valid: {', '.join(sorted(fields))}")
    for k, v in opts.items():
        _check_type(where, kind, k, v, fields[k])
    if "seed" in fields and "seed" not in opts:
        opts["seed"] = seed
    if "exclude" in opts:
        opts["exclude"] = tuple(opts["exclude"])
    try:
        return cls(**opts)
    except RecipeError as exc:
        raise RecipeError(f"{where} ({kind}): {exc.message}", hint=exc.hint) from None


def _check_type(where, kind, key, value, f):
    default = f.default if f.default is not dataclasses.MISSING else (
        f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
    ok = True
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, tuple):
        ok = isinstance(value, (list, tuple)) and all(isinstance(x, str) for x in value)
    elif isinstance(default, dict):
        ok = isinstance(value, dict) and all(isinstance(v, (int, float)) for v in value.values())
    elif default is None and key == "threads":
        ok = isinstance(value, int) and not isinstance(value, bool)
    if not ok:
        raise RecipeError(f"{where} ({kind}): option {key} = {value!r} has the wrong type "
                          f"(expected {type(default).__name__})")


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file {path} not found")
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{path}: not valid TOML: {exc}") from None
    return parse_recipe(doc, source=str(path))


def recipe_from_toml(text: str, *, source: str = "<recipe>") -> Recipe:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{source}: not valid TOML: {exc}") from None
    return parse_recipe(doc, source=source)
