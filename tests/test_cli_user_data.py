"""`edgekit compress` and `edgekit optimize` on a user's own model and data, through the CLI (issue 11, part 3).

The user's project is what a new user brings: a folder of RGB 64x64 PNGs, one subfolder per class (Fashion-MNIST
images written by Pillow), and a package ``userpkg`` with ``make_model()`` and weights trained at 3x32x32.
Commands run in-process (``edgekit.cli.main.main``) from the project directory, as a user would type them.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

MODEL = "userpkg.models:make_model@weights.pt"
RECIPE = """
[recipe]
name = "user-prune-kd-int8"

[[steps]]
kind = "prune"
ratio = 0.5

[[steps]]
kind = "distill"
epochs = 2
lr = 0.005
batch_size = 32
val_size = 0

[[steps]]
kind = "quantize"
calibration_size = 64
"""


def _forget_userpkg():
    for name in [m for m in sys.modules if m == "userpkg" or m.startswith("userpkg.")]:
        del sys.modules[name]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    import torch

    from edgekit.data.user_data import load_data
    from edgekit.testing.user_project import train_user_model, write_image_folder, write_user_package

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("cli_userdata")
    write_image_folder(root / "images")
    write_user_package(root)
    _forget_userpkg()  # another test module's userpkg must not answer for this one
    sys.path.insert(0, str(root))
    from userpkg.models import make_model

    splits = load_data(root / "images", input_shape=(1, 3, 32, 32))
    torch.save(train_user_model(make_model(), splits).state_dict(), root / "weights.pt")
    (root / "recipe.toml").write_text(RECIPE)
    yield root
    sys.path.remove(str(root))
    _forget_userpkg()


@pytest.fixture
def edgekit(project, monkeypatch):
    """Run `edgekit ARGS...` in the project directory; (exit code, stdout, stderr)."""
    from edgekit.cli.main import main

    monkeypatch.chdir(project)
    monkeypatch.setattr(sys, "path", list(sys.path))  # main() puts the current directory on it: undone after

    def run(*args, capsys):
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture(scope="module")
def compressed(project):
    """`edgekit compress` (prune, distill, int8, compiled for host) of the user's model on the image folder."""
    import contextlib
    import io
    import os

    from edgekit.cli.main import main

    cwd, path, err = os.getcwd(), list(sys.path), io.StringIO()
    os.chdir(project)
    try:
        with contextlib.redirect_stderr(err):
            code = main(["compress", "--recipe", "recipe.toml", "--model", MODEL, "--data", "images",
                         "--image-size", "32", "-o", "out", "--target", "host", "--threads", "1"])
    finally:
        os.chdir(cwd)
        sys.path[:] = path
    return {"code": code, "err": err.getvalue(), "out": project / "out"}


def test_compress_a_user_model_on_an_image_folder_end_to_end(project, compressed):
    import torch

    from edgekit.artifacts import CompiledArtifact
    from edgekit.data.image_folder import ImageOptions
    from edgekit.data.user_data import load_data
    from edgekit.evaluate import evaluate
    from edgekit.models import load_torch_module

    assert compressed["code"] == 0, compressed["err"]
    assert "warning" not in compressed["err"]
    report = json.loads((compressed["out"] / "report.json").read_text())
    data = report["data"]
    assert data["source"] == "images" and data["form"] == "image-folder" and data["metric"] == "top1"
    assert data["classes"] == ["bag", "trouser", "tshirt"] and data["size"] == [32, 32] and data["channels"] == 3
    assert data["eval"].endswith("(60)") and report["input_shape"] == [1, 3, 32, 32]
    # accuracy measured on the user's data: the test split the same options give, with the user's own model
    test = load_data(project / "images", image_options=ImageOptions(size=(32, 32))).test
    model = load_torch_module(f"userpkg.models:make_model@{project / 'weights.pt'}")
    assert report["before"]["accuracy"] == round(evaluate(model, test), 4) > 0.8
    assert [s["kind"] for s in report["steps"]] == ["prune", "distill", "quantize"]
    assert report["after"]["params"] < report["before"]["params"] / 2
    assert report["artifact"]["accuracy"] is not None
    assert abs(report["artifact"]["accuracy"] - report["after"]["accuracy"]) <= 0.05  # int8 compiled vs torch
    artifact = CompiledArtifact.open(project / report["artifact"]["path"])  # relative to where compress ran
    assert tuple(artifact.inputs[0].shape) == (1, 3, 32, 32)
    program = torch.export.load(str(compressed["out"] / "model.pt2"))
    assert tuple(program.example_inputs[0][0].shape) == (1, 3, 32, 32)


def test_the_compress_output_deploys_to_a_local_ssh_device(compressed, device, edgekit, capsys):
    assert compressed["code"] == 0, compressed["err"]
    code, out, err = edgekit("deploy", "--artifact", compressed["out"] / "artifacts", "--target", "host",
                             "--host", device.host_spec, "-i", device.client_key, "--known-hosts",
                             device.known_hosts, "--no-agent", "--warmup", "1", "--repeats", "5", "--json",
                             capsys=capsys)
    assert code == 0, err
    result = json.loads(out)["devices"][0]
    assert result["ok"] and result["report"]["output_check"]["passed"] is True  # a real user image, int8 tolerance


def _empty_folder(project, tmp):
    (tmp / "empty").mkdir()
    return ["--data", tmp / "empty"], "has no class subfolders"


def _unreadable_image(project, tmp):
    from edgekit.testing.user_project import write_image_folder

    root = write_image_folder(tmp / "small", per_class=5, size=32)
    (root / "bag" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    return ["--data", root], "cannot decode image .*broken.jpg"


def _labels_out_of_range(project, tmp):
    return ["--data", "images", "--model", "userpkg.models:make_two_class_model"], \
        "labels out of range: .*3 class folders, the model outputs 2"


def _shape_refused(project, tmp):
    return ["--data", "images", "--channels", "1"], r"refuses the inputs .*\(1, 64, 64\)"


def _npz_without_y(project, tmp):
    np.savez(tmp / "x_only.npz", x=np.zeros((10, 3, 32, 32), dtype=np.float32))
    return ["--data", tmp / "x_only.npz"], "lacks the array\\(s\\) y"


def _npz_labels_out_of_range(project, tmp):
    y = np.arange(40) % 5  # classes 3 and 4: the model has three outputs
    np.savez(tmp / "five.npz", x=np.random.default_rng(0).normal(size=(40, 3, 32, 32)).astype(np.float32), y=y)
    return ["--data", tmp / "five.npz"], "labels out of range: .*labels 0..4, the model outputs 3"


def _unknown_data(project, tmp):
    return ["--data", "imagenet"], "unknown data set 'imagenet'"


@pytest.mark.parametrize("bad", [_empty_folder, _unreadable_image, _labels_out_of_range, _shape_refused,
                                 _npz_without_y, _npz_labels_out_of_range, _unknown_data])
@pytest.mark.parametrize("command", ["compress", "optimize"])
def test_bad_data_exits_14_before_anything_is_written(project, edgekit, capsys, tmp_path, bad, command):
    import re

    args, expected = bad(project, tmp_path)
    model = [] if "--model" in args else ["--model", MODEL]
    out = tmp_path / "out"
    if command == "compress":
        code, _, err = edgekit("compress", "--recipe", "recipe.toml", *model, *args, "-o", out, capsys=capsys)
    else:
        code, _, err = edgekit("optimize", *model, *args, "--latency-budget-ms", "100", "--run-dir", out,
                               capsys=capsys)
    assert code == 14, err
    assert re.search(expected, err), err
    assert "hint:" in err and "Traceback" not in err
    assert not out.exists()


def test_metric_hook_scores_the_compress_report(project, edgekit, capsys):
    import userpkg.metrics

    (project / "prune.toml").write_text('[[steps]]\nkind = "prune"\nratio = 0.25\n')
    userpkg.metrics.CALLS.clear()
    code, out, err = edgekit("compress", "--recipe", "prune.toml", "--model", MODEL, "--data", "images",
                             "--image-size", "32", "--metric", "userpkg.metrics:balanced_accuracy", "-o", "out-metric",
                             "--json", capsys=capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["data"]["metric"] == "userpkg.metrics:balanced_accuracy"
    # the near-chance check (the model, then a constant guess: 1/3 balanced accuracy), before, after the step
    calls = userpkg.metrics.CALLS
    assert len(calls) == 4 and all(c["examples"] == 60 for c in calls)
    assert calls[1]["value"] == pytest.approx(1 / 3)
    assert report["before"]["accuracy"] == round(calls[0]["value"], 4) == round(calls[2]["value"], 4)
    assert report["steps"][0]["accuracy"] == round(calls[3]["value"], 4)


# The board's conv 8 -> 16 at 16x16 (the user's second conv, full width) really sleeps 1 ms a call: a baseline of
# ~1 ms, far above a loaded machine's noise.  Narrowing either layer group removes it (~0.02 ms after), so the
# search must prune, and a 0.5 ms budget is then met by a wide margin.
SLOW_KERNELS = [{"weight_shape": [16, 8, 3, 3], "out_shape": [1, 16, 16, 16], "sleep_ms": 1.0}]
BUDGET_MS = 0.5


def test_optimize_prunes_the_user_model_on_the_user_data(project, edgekit, capsys, tmp_path, make_device,
                                                          device_runtime_site):
    """A budget under the model's latency on a board (a real sshd, its runner made slow in one kernel): the loop
    must prune, each step verified on the board, then meet the budget, or end with exit 5 and the reason."""
    from edgekit.testing.slow_board import slow_board_env

    board = make_device(env=slow_board_env(device_runtime_site, SLOW_KERNELS))
    code, out, err = edgekit("optimize", "--model", MODEL, "--data", "images", "--image-size", "32",
                             "--latency-budget-ms", BUDGET_MS, "--host", board.host_spec, "-i", board.client_key,
                             "--known-hosts", board.known_hosts, "--no-agent", "--run-dir", tmp_path / "run",
                             "--cache-dir", tmp_path / "cache", "--final-epochs", "1", "--finetune-examples", "240",
                             "--width-step-ratio", "0.25", "--max-iterations", "4", "--torch-threads", "1", "--json",
                             capsys=capsys)
    assert code in (0, 5), err
    result = json.loads(out)
    assert "warning" not in err
    assert result["baseline"]["latency_ms"] > 2 * BUDGET_MS  # the board's slow kernel is in force
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    setup = state["config"]["setup"]
    assert setup["input_shape"] == [1, 3, 32, 32] and setup["data"] == str(project / "images")
    assert setup["image_options"]["size"] == [32, 32] and setup["host"] == board.host_spec
    original = state["original_widths"]
    steps = result["steps"]
    assert steps, f"no pruning step was taken: {result['message']}"
    for step in steps:  # each step narrowed one group, and was measured on the board
        assert step["to_width"] < step["from_width"] <= original[step["group"]]
        assert step["latency_source"] == "measured"
    assert sum(result["chosen"]["widths"].values()) < sum(original.values())
    if code == 0:
        assert result["met"] and result["chosen"]["latency_ms"] <= BUDGET_MS
    else:  # why not: the search's own reason, and the closest candidate with its measured latency
        assert not result["met"] and result["message"] and "error:" in err
        assert state["stop_reason"] and result["chosen"]["latency_source"] == "measured"
    assert result["baseline"]["val_accuracy"] > 0.7 and result["chosen"]["test_accuracy"] > 0.5


def test_optimize_warns_near_chance_before_the_search_starts(project, edgekit, capsys, tmp_path):
    # An untrained model (another task's, as far as this data knows); --proxy with an empty cache then stops
    # the run at its first latency question, so the warning is all the work there was.
    code, _, err = edgekit("optimize", "--model", "userpkg.models:make_model", "--data", "images", "--image-size",
                           "32", "--latency-budget-ms", "1", "--proxy", "--cache-dir", tmp_path / "cache",
                           "--run-dir", tmp_path / "run", capsys=capsys)
    assert code != 0
    warning, _, rest = err.partition("near chance")
    assert "warning: the model's top-1 accuracy on" in warning and "trained for another task" in rest
    assert err.index("near chance") < err.index("error:")
    assert "proxy mode" in err  # it stopped where it had to, not on the data
    # a resume finds the same data and image options again from the run's setup (it stops at the same place)
    resumed, _, again = edgekit("optimize", "--resume", tmp_path / "run", capsys=capsys)
    assert resumed == code and "proxy mode" in again, again


def test_optimize_resumes_from_outside_the_project_folder(project, edgekit, capsys, tmp_path):
    """The run records where the user's code was imported from, so `--resume` works from any directory: the
    model (unpickled from the run's checkpoints) and the metric come from userpkg, which only the project
    folder holds."""
    import os
    import subprocess

    args = ["optimize", "--model", "userpkg.models:make_model", "--data", "images", "--image-size", "32",
            "--accuracy-metric", "userpkg.metrics:balanced_accuracy", "--latency-budget-ms", "1", "--proxy",
            "--cache-dir", tmp_path / "cache", "--run-dir", tmp_path / "run"]
    code, _, err = edgekit(*args, capsys=capsys)
    assert code != 0 and "proxy mode" in err, err  # stopped at its first latency question, state kept
    setup = json.loads((tmp_path / "run" / "state.json").read_text())["config"]["setup"]
    assert setup["import_paths"] == [os.path.realpath(project)]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    resumed = subprocess.run([sys.executable, "-m", "edgekit.cli.main", "optimize", "--resume", tmp_path / "run"],
                             cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == code, resumed.stderr[-3000:]
    assert "proxy mode" in resumed.stderr and "No module named" not in resumed.stderr, resumed.stderr[-3000:]
