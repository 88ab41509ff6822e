"""Recipes: TOML -> frozen dataclasses, clear errors, compress_model and `edgekit compress` end to end."""

from __future__ import annotations

import dataclasses
import json

import pytest

from edgekit.compress.recipe import DistillConfig, Recipe, load_recipe, recipe_from_toml
from edgekit.errors import RecipeError

GOOD = """
[recipe]
name = "p50-kd-int8"
seed = 3

[[steps]]
kind = "prune"
ratio = 0.5
exclude = ["fc"]

[[steps]]
kind = "distill"
epochs = 2
temperature = 4.0
alpha = 0.7

[[steps]]
kind = "quantize"
granularity = "per_channel"
calibration = "percentile"
"""


def test_good_recipe_parses_into_frozen_keyword_only_steps():
    from edgekit.compress.prune import PruneConfig
    from edgekit.compress.quantize import QuantizeConfig

    recipe = recipe_from_toml(GOOD)
    assert recipe.name == "p50-kd-int8" and recipe.kinds == ("prune", "distill", "quantize")
    prune, kd, quant = recipe.steps
    assert isinstance(prune, PruneConfig) and prune.ratio == 0.5 and prune.exclude == ("fc",)
    assert isinstance(kd, DistillConfig) and kd.seed == 3 and kd.teacher == "original"
    assert isinstance(quant, QuantizeConfig) and quant.calibration == "percentile"
    with pytest.raises(dataclasses.FrozenInstanceError):
        prune.ratio = 0.9
    with pytest.raises(TypeError):
        DistillConfig(2)  # keyword-only
    assert recipe_from_toml(json_to_toml(recipe.to_dict())).to_dict() == recipe.to_dict()


def json_to_toml(d):
    """Tiny writer for the round trip above (flat values, lists of strings, inline tables)."""
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{json.dumps(k)} = {value(x)}" for k, x in v.items()) + "}"
        return repr(v)

    lines = ["[recipe]"] + [f"{k} = {value(v)}" for k, v in d["recipe"].items()]
    for step in d["steps"]:
        lines += ["", "[[steps]]"] + [f"{k} = {value(v)}" for k, v in step.items() if v is not None]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("text,match", [
    ('[[steps]]\nkind = "prune"\nratio = 1.5\n', r"step 1 \(prune\): prune ratio must be a number in \[0, 1\), got 1.5"),
    ('[[steps]]\nkind = "shrink"\n', r"step 1: unknown step kind 'shrink'; available: prune, sparsify, distill"),
    ('[[steps]]\nkind = "quantize"\n\n[[steps]]\nkind = "prune"\nratio = 0.3\n',
     r"step 2 'prune' is not allowed after 'quantize'"),
    ('[[steps]]\nkind = "quantize"\n\n[[steps]]\nkind = "distill"\n', r"step 2 'distill' is not allowed after 'quantize'"),
    ('[[steps]]\nkind = "sparsify"\n\n[[steps]]\nkind = "distill"\n', r"'distill' is not allowed after 'sparsify'"),
    ('[[steps]]\nkind = "prune"\nratoi = 0.5\n', r"unknown option\(s\) ratoi; valid: exclude, global_ranking"),
    ('[[steps]]\nkind = "prune"\nratio = "half"\n', r"option ratio = 'half' has the wrong type"),
    ('[[steps]]\nkind = "distill"\nepochs = 2.5\n', r"option epochs = 2.5 has the wrong type"),
    ('[recipe]\nname = "empty"\n', r"has no steps"),
    ('[[steps]\nkind = "prune"\n', r"not valid TOML"),
    ('[[steps]]\nkind = "quantize"\ngranularity = "per_row"\n', r"unknown quantize granularity 'per_row'"),
])
def test_bad_recipes_fail_clearly(text, match):
    with pytest.raises(RecipeError, match=match) as exc:
        recipe_from_toml(text, source="r.toml")
    assert str(exc.value).startswith("r.toml") and exc.value.exit_code == 15


def test_recipe_file_errors_name_the_file(tmp_path):
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text('[[steps]]\nkind = "prune"\nratio = 1.5\n')
    with pytest.raises(RecipeError, match=str(bad)):
        load_recipe(bad)


def test_recipe_in_python_validates_the_order_too():
    from edgekit.compress.prune import PruneConfig
    from edgekit.compress.quantize import QuantizeConfig

    with pytest.raises(RecipeError, match="quantize must be the last step"):
        Recipe(steps=(QuantizeConfig(), PruneConfig(ratio=0.3)))


def test_compress_model_runs_a_chain_and_reports_every_step():
    import torch

    from edgekit.compress import compress_model
    from edgekit.compress.compressed import CompressedModel
    from edgekit.data import load_dataset, load_zoo_model

    torch.set_num_threads(1)
    recipe = recipe_from_toml("""
[[steps]]
kind = "prune"
ratio = 0.5

[[steps]]
kind = "distill"
epochs = 1
lr = 0.002
val_size = 0

[[steps]]
kind = "quantize"
calibration_size = 128
""")
    model = load_zoo_model("fmnist-resnet")
    train = load_dataset("fashion-mnist", "train", limit=3000, seed=2)
    test = load_dataset("fashion-mnist", "test", limit=500)
    result = compress_model(model, recipe, train, eval_data=test, progress=False)
    assert isinstance(result, CompressedModel)
    report = result.report
    assert [s["kind"] for s in report["steps"]] == ["prune", "distill", "quantize"]
    assert report["after"]["params"] < report["before"]["params"] / 3
    assert report["after"]["macs"] < report["before"]["macs"] / 3
    assert report["after"]["size_bytes"] < report["before"]["size_bytes"] / 8  # 4x fewer params, int8
    pruned, distilled, quantized = (s["accuracy"] for s in report["steps"])
    assert report["before"]["accuracy"] > 0.85 and distilled > pruned + 0.2 and quantized > 0.7
    assert report["steps"][0]["detail"]["removed"]


@pytest.mark.slow
def test_cli_compress_writes_model_report_and_a_compiled_artifact(tmp_path):
    import torch

    from edgekit.artifacts import CompiledArtifact
    from edgekit.cli.main import main

    recipe = tmp_path / "r.toml"
    recipe.write_text('[recipe]\nname = "p30-int8"\n\n[[steps]]\nkind = "prune"\nratio = 0.3\n\n'
                      '[[steps]]\nkind = "finetune"\nepochs = 1\nval_size = 0\n\n'
                      '[[steps]]\nkind = "quantize"\ncalibration_size = 128\n')
    out = tmp_path / "out"
    code = main(["compress", "--recipe", str(recipe), "--model", "fmnist-resnet", "--data", "digits",
                 "-o", str(out), "--target", "host", "--threads", "1"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    for key in ("params", "macs", "size_bytes", "accuracy"):
        assert key in report["before"] and key in report["after"]
    artifact = CompiledArtifact.open(report["artifact"]["path"])
    assert artifact.manifest["recipe"]["recipe"]["name"] == "p30-int8"
    assert abs(report["artifact"]["accuracy"] - report["after"]["accuracy"]) <= 0.02
    model = torch.load(out / "model.pt", weights_only=False)
    assert model(torch.zeros(1, 1, 28, 28)).shape == (1, 10)
    assert (out / "model.pt2").is_file()


def test_cli_bad_recipe_exits_15_before_loading_anything(tmp_path, capsys):
    from edgekit.cli.main import main

    recipe = tmp_path / "r.toml"
    recipe.write_text('[[steps]]\nkind = "prune"\nratio = 1.5\n')
    code = main(["compress", "--recipe", str(recipe), "--model", "fmnist-resnet", "-o", str(tmp_path / "o")])
    assert code == 15
    assert "ratio must be a number in [0, 1)" in capsys.readouterr().err


def test_shipped_example_recipes_parse():
    from pathlib import Path

    recipes = sorted((Path(__file__).resolve().parent.parent / "tools" / "recipes").glob("*.toml"))
    assert len(recipes) >= 3
    for path in recipes:
        assert load_recipe(path).steps


def test_cli_dry_run_prints_the_resolved_plan_as_json(capsys):
    from pathlib import Path

    from edgekit.cli.main import main

    recipe = Path(__file__).resolve().parent.parent / "tools" / "recipes" / "prune50-kd-int8.toml"
    code = main(["compress", "--recipe", str(recipe), "--model", "fmnist-resnet", "-o", "unused", "--dry-run",
                 "--json"])
    assert code == 0
    plan = json.loads(capsys.readouterr().out)
    assert [s["kind"] for s in plan["steps"]] == ["prune", "distill", "quantize"]
    assert plan["steps"][0]["ratio"] == 0.5 and plan["steps"][1]["temperature"] == 4.0
