"""One model loader (edgekit.models) behind every command: each form of model spec gives the same model, or the
same error, through `edgekit compile`, `edgekit compress`, `edgekit optimize --proxy` and the API.

Every valid form names the same seeded tiny ResNet (tests/model_factory.py), so "the same model" is checked as
"the same outputs on the same input"; compiled, the same model gives the same content-addressed artifact id.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edgekit.cli.main import main

SHAPE = (1, 1, 28, 28)
EXIT_USAGE, EXIT_MODEL = 2, 8
PRUNE_RECIPE = '[recipe]\nname = "p25"\n\n[[steps]]\nkind = "prune"\nratio = 0.25\n'


def _outputs(module) -> np.ndarray:
    x = torch.linspace(-1, 1, int(np.prod(SHAPE))).reshape(SHAPE)
    with torch.no_grad():
        return module(x).numpy()


@pytest.fixture(scope="module")
def forms(tmp_path_factory):
    """Every file form of the same model, plus the expected outputs."""
    from model_factory import tiny

    base = tmp_path_factory.mktemp("forms")
    model = tiny()
    torch.save(model, base / "whole.pt")
    torch.save(model.state_dict(), base / "weights.pt")
    torch.export.save(torch.export.export(model, (torch.zeros(SHAPE),)), base / "model.pt2")
    torch.onnx.export(model, (torch.zeros(SHAPE),), base / "model.onnx", dynamo=False, opset_version=17)
    (base / "garbage.pt").write_bytes(b"not a model at all" * 50)
    (base / "recipe.toml").write_text(PRUNE_RECIPE)
    return {"base": base, "model": model, "expected": _outputs(model),
            "valid": {"whole .pt": str(base / "whole.pt"), "factory": "model_factory:tiny",
                      "factory@weights": f"model_factory:untrained@{base / 'weights.pt'}"}}


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---------------------------------------------------------------- the API


@pytest.mark.parametrize("form", ["whole .pt", "factory", "factory@weights", "module", "pt2"])
def test_every_form_loads_the_same_model(forms, form):
    from edgekit.models import load_model

    spec = {"module": forms["model"], "pt2": str(forms["base"] / "model.pt2")}.get(form) or forms["valid"][form]
    loaded = load_model(spec)
    module = loaded.module if loaded.module is not None else loaded.exported.module()
    np.testing.assert_allclose(_outputs(module), forms["expected"], rtol=1e-5, atol=1e-6)


def test_zoo_name_with_and_without_prefix_is_the_same_model():
    from edgekit.models import load_model

    a, b = load_model("zoo:fmnist-resnet"), load_model("fmnist-resnet")
    assert a.input_shape == b.input_shape == SHAPE
    np.testing.assert_array_equal(_outputs(a.module), _outputs(b.module))


def test_onnx_is_a_compile_only_form(forms):
    from edgekit.errors import UsageError
    from edgekit.models import load_model, load_torch_module

    onnx_path = forms["base"] / "model.onnx"
    assert load_model(onnx_path).onnx_path == onnx_path
    with pytest.raises(UsageError, match="ONNX file, which can only be compiled"):
        load_torch_module(onnx_path, purpose="compress")


# The same error, whatever the command: (spec, exit code, words the message must hold)
BAD_SPECS = {
    "state_dict alone": ("{base}/weights.pt", EXIT_USAGE, "state_dict"),
    "missing file": ("{base}/nope.pt", EXIT_MODEL, "not found"),
    "garbage file": ("{base}/garbage.pt", EXIT_MODEL, "garbage.pt"),
    "unknown form": ("no-such-thing", EXIT_USAGE, "accepted forms"),
    "unknown zoo model": ("zoo:nope", EXIT_USAGE, "fmnist-resnet"),
    "factory not found": ("model_factory:nope", EXIT_MODEL, "model_factory:nope"),
    "factory of no module": ("model_factory:not_a_module", EXIT_MODEL, "not a torch.nn.Module"),
    "weights that do not fit": ("edgekit.testing.models:ResNetTiny@{base}/weights.pt", EXIT_MODEL, "does not fit"),
    "directory of nothing": ("{base}", EXIT_MODEL, "not an `edgekit compress` output"),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_a_bad_spec_is_the_same_error_in_every_command(forms, capsys, tmp_path, case):
    from edgekit.errors import EdgekitError
    from edgekit.models import load_model

    template, code, words = BAD_SPECS[case]
    spec = template.format(base=forms["base"])
    with pytest.raises(EdgekitError) as api_error:
        load_model(spec)
    assert api_error.value.exit_code == code and words in str(api_error.value)
    commands = {
        "compile": ["compile", "--model", spec, "--input-shape", "1,1,28,28", "-o", tmp_path / "a"],
        "compress": ["compress", "--model", spec, "--recipe", forms["base"] / "recipe.toml", "--data", "digits",
                     "-o", tmp_path / "c"],
        "optimize": ["optimize", spec, "--proxy", "--latency-budget-ms", "1", "--data", "digits",
                     "--run-dir", tmp_path / "r", "--cache-dir", tmp_path / "cache"],
    }
    for name, argv in commands.items():
        exit_code, _, err = _cli(capsys, *argv)
        assert (exit_code, words in err) == (code, True), (name, err)


# ---------------------------------------------------------------- through the commands


@pytest.fixture(scope="module")
def compiled(forms, tmp_path_factory):
    """`edgekit compile -o DIR --json` of every torch form (the same model gives the same id: one real build)."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("compiled")
    reports = {}
    for form, spec in {**forms["valid"], "pt2": str(forms["base"] / "model.pt2")}.items():
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):
            code = main(["compile", "--model", spec, "--input-shape", "1,1,28,28", "-o", str(out), "--json"])
        assert code == 0, form
        reports[form] = json.loads(stdout.getvalue())
    return {"out": out, "reports": reports, "ids": {form: r["artifact_id"] for form, r in reports.items()}}


def test_compile_gives_one_artifact_for_every_torch_form(compiled):
    ids = compiled["ids"]
    assert len(set(ids.values())) == 1, ids
    assert [p.name for p in compiled["out"].iterdir()] == [ids["factory"]]


def test_compile_takes_a_pickled_whole_module(compiled):
    # it used to be misread as a truncated torch.export archive
    assert compiled["reports"]["whole .pt"]["inputs"][0]["shape"] == list(SHAPE)


def test_compile_of_onnx_gives_the_same_outputs(forms, compiled, tmp_path):
    from edgekit.artifacts import CompiledArtifact
    from edgekit.compile import compile_model

    onnx_artifact = compile_model(forms["base"] / "model.onnx", "host", out_dir=tmp_path)
    torch_artifact = CompiledArtifact.open(compiled["out"] / compiled["ids"]["factory"])
    with np.load(onnx_artifact.path / "reference.npz") as a, np.load(torch_artifact.path / "reference.npz") as b:
        inputs = [k for k in a.files if k.startswith("in")]
        assert inputs and all(np.array_equal(a[k], b[k]) for k in inputs)  # the same seeded inputs
        outputs = [k for k in a.files if k.startswith("out")]
        assert outputs and all(np.allclose(a[k], b[k], atol=1e-5) for k in outputs)


def test_compress_gives_the_same_result_for_every_form(forms, capsys, tmp_path):
    from edgekit.compress import compress_model, load_recipe

    results = {}
    for form, spec in forms["valid"].items():
        out = tmp_path / form.replace(" ", "_").replace("@", "_at_")
        code, _, err = _cli(capsys, "compress", "--model", spec, "--recipe", forms["base"] / "recipe.toml",
                            "--data", "digits", "--eval-limit", "50", "-o", out)
        assert code == 0, (form, err)
        results[form] = _outputs(torch.load(out / "model.pt", weights_only=False))
    api = compress_model(forms["model"], load_recipe(forms["base"] / "recipe.toml"), "digits", eval_limit=50)
    results["module (API)"] = _outputs(api.model)
    # an earlier compress output directory is a model too: compressing it again starts from the pruned model
    code, out, err = _cli(capsys, "compress", "--model", tmp_path / "factory", "--recipe",
                          forms["base"] / "recipe.toml", "--data", "digits", "--eval-limit", "50",
                          "-o", tmp_path / "again", "--json")
    assert code == 0, err
    assert json.loads(out)["before"]["params"] == api.report["after"]["params"]
    first = results.pop("factory")
    for form, outputs in results.items():
        np.testing.assert_allclose(outputs, first, rtol=1e-5, atol=1e-6, err_msg=form)


@pytest.mark.parametrize("form", ["onnx", "pt2"])
def test_compile_only_forms_are_refused_by_compress_and_optimize_alike(forms, capsys, tmp_path, form):
    spec = forms["base"] / f"model.{form}"
    for argv in (["compress", "--model", spec, "--recipe", forms["base"] / "recipe.toml", "--data", "digits",
                  "-o", tmp_path / "c"],
                 ["optimize", spec, "--proxy", "--latency-budget-ms", "1", "--data", "digits",
                  "--run-dir", tmp_path / "r", "--cache-dir", tmp_path / "cache"]):
        code, _, err = _cli(capsys, *argv)
        assert code == EXIT_USAGE and "needs a torch nn.Module" in err and str(spec) in err, err


def test_optimize_starts_from_the_same_model_for_every_form(forms, capsys, tmp_path):
    """In proxy mode with an empty latency cache the search stops at once (exit 2) -- after saving its start."""
    for form, spec in forms["valid"].items():
        run_dir = tmp_path / form.replace(" ", "_").replace("@", "_at_")
        code, _, err = _cli(capsys, "optimize", spec, "--proxy", "--latency-budget-ms", "1", "--data", "digits",
                            "--run-dir", run_dir, "--cache-dir", tmp_path / "cache")
        assert code == EXIT_USAGE and "proxy mode" in err, (form, err)
        start = torch.load(run_dir / "checkpoints" / "iter_000.pt", weights_only=False)
        np.testing.assert_allclose(_outputs(start), forms["expected"], rtol=1e-5, atol=1e-6, err_msg=form)


# ---------------------------------------------------------------- stages chain


def test_compile_model_takes_compress_model_output(forms, tmp_path):
    from edgekit.compile import compile_model
    from edgekit.compress import compress_model, recipe_from_toml
    from edgekit.data import load_dataset
    from edgekit.run import run_artifact

    recipe = recipe_from_toml(PRUNE_RECIPE + '\n[[steps]]\nkind = "quantize"\ncalibration_size = 64\n')
    train = load_dataset("digits", "train", limit=300, seed=1)
    compressed = compress_model(forms["model"], recipe, train, progress=False)
    artifact = compile_model(compressed, "host", out_dir=tmp_path)
    assert artifact.manifest["recipe"] == recipe.to_dict()
    assert run_artifact(artifact, warmup=1, repeats=3).output_check["passed"]
    # the saved directory is the same model
    compressed.save(tmp_path / "saved")
    assert compile_model(tmp_path / "saved", "host", out_dir=tmp_path).artifact_id == artifact.artifact_id


def test_compress_model_compiles_and_reports_like_the_cli(forms, tmp_path):
    from edgekit.compress import compress_model, load_recipe
    from edgekit.compress.report import CompressReport

    result = compress_model("model_factory:tiny", load_recipe(forms["base"] / "recipe.toml"), "digits",
                            eval_limit=50, target="host", out_dir=tmp_path)
    report = result.report
    assert isinstance(report, CompressReport) and report.artifact.accuracy is not None
    assert Path(report.artifact.path).is_dir() and report.artifact.target == "host"
    assert CompressReport.load(tmp_path / "report.json") == report


def test_deploy_artifact_accepts_the_compile_out_dir(compiled, device, capsys, tmp_path):
    argv = ["deploy", "--artifact", compiled["out"], "--host", device.host_spec, "-i", device.client_key,
            "--known-hosts", device.known_hosts, "--no-agent", "--no-run", "--json"]
    code, out, err = _cli(capsys, *argv)
    assert code == 0, err
    assert json.loads(out)["devices"][0]["artifact_id"] == compiled["ids"]["factory"]
    # two artifacts in the directory: a usage error that names them
    second = tmp_path / "two"
    for name in ("a", "b"):
        (second / name).mkdir(parents=True)
        (second / name / "manifest.json").write_text("{}")
    code, _, err = _cli(capsys, "deploy", "--artifact", second, "--host", device.host_spec)
    assert code == EXIT_USAGE and "holds 2 artifacts" in err and str(second / "a") in err


def test_cli_option_defaults_come_from_the_api():
    from edgekit.cli.main import build_parser
    from edgekit.cli.options import DEFAULT_DEVICE_ROOT
    from edgekit.deploy.deploy import DEFAULT_ROOT
    from edgekit.optimize.config import SearchConfig

    assert DEFAULT_DEVICE_ROOT == DEFAULT_ROOT
    args = build_parser().parse_args(["optimize", "m", "--latency-budget-ms", "1"])
    for name in ("seed", "step_ratio", "finetune_examples", "max_iterations", "measure_rounds", "metric"):
        assert getattr(args, name) == getattr(SearchConfig, name)
    assert args.connect_timeout is None  # left out of the call: RemoteHost's own default holds
