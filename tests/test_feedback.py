"""edgekit.optimize: the closed loop, on real devices (this machine's runner, a slow-kernel runner, a real sshd).

A tiny ResNet trained for a few seconds on scikit-learn's digits keeps each search to seconds per iteration.
The latency cache and compiled artifacts are shared by the tests of this module (as they would be between a
user's runs), so probe artifacts are compiled once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FAST = dict(finetune_examples=400, val_examples=200, test_examples=200, final_epochs=1, repeats=30, warmup=3)
FAST_CLI = ["--data", "digits", "--finetune-examples", "400", "--val-examples", "200", "--test-examples", "200",
            "--final-epochs", "1", "--torch-threads", "1", "--width-step-ratio", "0.25"]


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    from edgekit.compress.distill import TrainConfig, train
    from edgekit.data import load_dataset
    from edgekit.testing.models import ResNetTiny

    base = tmp_path_factory.mktemp("feedback")
    train_data, test_data = load_dataset("digits", "train"), load_dataset("digits", "test")
    torch.manual_seed(0)
    model = ResNetTiny(in_ch=1, width=8)
    train(model, train_data, config=TrainConfig(epochs=6, lr=1e-2, batch_size=64, val_size=0), progress=False)
    model.eval()
    model_path = base / "tiny.pt"
    torch.save(model, model_path)
    return {"model": model, "model_path": model_path, "data": (train_data, test_data), "cache": base / "cache",
            "artifacts": base / "artifacts", "base": base}


def _baseline_ms(shared, device=None):
    """The start model's median latency on the device (compiled into the shared artifact cache)."""
    from edgekit.compile import compile_model
    from edgekit.optimize.devices import LocalDevice

    artifact = compile_model(shared["model"], "host", input_shapes=[(1, 1, 28, 28)], out_dir=shared["artifacts"])
    return (device or LocalDevice()).measure(artifact, repeats=30).stats["median_ms"]


def _cli(*args, env=None, timeout=900):
    return subprocess.run([sys.executable, "-m", "edgekit.cli.main", "optimize", *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=timeout, env={**os.environ, **(env or {})})


# ---------------------------------------------------------------- fast, no search

def test_empty_data_is_a_clear_error(shared, tmp_path):
    from edgekit.data import Dataset
    from edgekit.errors import DataError
    from edgekit.optimize import optimize_model

    train_data, test_data = shared["data"]
    empty = Dataset("digits", "train", train_data.x[:0], train_data.y[:0])
    with pytest.raises(DataError, match="training data is empty") as info:
        optimize_model(shared["model"], (empty, test_data), latency_budget_ms=1.0, run_dir=tmp_path / "run")
    assert info.value.exit_code == 14
    assert not (tmp_path / "run").exists()  # refused before anything was started

    # the CLI: a Fashion-MNIST directory without its files
    (tmp_path / "fm").mkdir()
    done = _cli("zoo:fmnist-resnet", "--latency-budget-ms", "1", "--run-dir", tmp_path / "run2",
                env={"EDGEKIT_FASHION_MNIST_DIR": str(tmp_path / "fm")})
    assert done.returncode == 14, done.stderr
    assert "Fashion-MNIST train files missing" in done.stderr and "dataset-fashion-mnist" in done.stderr


def test_budget_and_option_errors_are_usage_errors(shared, tmp_path):
    from edgekit.errors import UsageError
    from edgekit.optimize import optimize_model

    with pytest.raises(UsageError, match="give a budget"):
        optimize_model(shared["model"], shared["data"], run_dir=tmp_path / "a")
    with pytest.raises(UsageError, match="unknown latency metric"):
        optimize_model(shared["model"], shared["data"], latency_budget_ms=1, metric="p50", run_dir=tmp_path / "b")
    with pytest.raises(UsageError, match="not a search run directory"):
        optimize_model(None, None, run_dir=tmp_path, resume=True)


def test_latency_table_is_cached_and_detects_stale_entries(shared, tmp_path):
    from edgekit.compile import compile_model
    from edgekit.optimize.devices import LocalDevice
    from edgekit.optimize.latency_table import LatencyTable, conv_layers

    device = LocalDevice()
    layers = conv_layers(shared["model"], (1, 1, 28, 28))
    specs = [spec for _, spec in layers]
    measured = []

    def compile_fn(model, shapes):
        return compile_model(model, "host", input_shapes=shapes, out_dir=shared["artifacts"])

    def measure_fn(artifact, kernels=False):
        report = device.measure(artifact, kernels=kernels, repeats=5)
        table.observe(report.device)
        measured.append(artifact.artifact_id)
        return report

    table = LatencyTable.open(identity="local", target="host", threads=1, cache_dir=tmp_path)
    assert table.fill(specs, compile_fn=compile_fn, measure_fn=measure_fn) == len({s.signature for s in specs})
    assert len(measured) == 1  # one probe artifact measured every missing kernel
    first = table.conv_sum_ms(layers)
    assert first > 0

    again = LatencyTable.open(identity="local", target="host", threads=1, cache_dir=tmp_path)
    assert again.path == table.path and again.missing(specs) == []  # reused from disk, nothing to measure
    assert again.conv_sum_ms(layers) == pytest.approx(first)

    # another TVM runtime on the device: every row is stale, never used, and is measured again
    changed = {**table.fingerprint, "tvm": "0.99.0"}
    assert again.observe(changed) == len(again.entries)
    assert len(again.missing(specs)) == len({s.signature for s in specs})
    other = LatencyTable.open(identity="ssh:pi@board", target="host", threads=1, cache_dir=tmp_path)
    assert other.path != table.path and other.entries == {}


# ---------------------------------------------------------------- the search

@pytest.mark.slow
def test_impossible_budget_exits_5_with_the_closest_candidate(shared, tmp_path):
    run_dir = tmp_path / "run"
    done = _cli(shared["model_path"], "--latency-budget-ms", "0.001", "--run-dir", run_dir, "--json",
                "--cache-dir", shared["cache"], "--artifacts-dir", shared["artifacts"], *FAST_CLI)
    assert done.returncode == 5, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["met"] is False and report["status"] == "budget_not_met"
    closest = report["chosen"]
    # The closest is the measured candidate nearest the budget: the smallest model, or one the search measured
    # faster still (on a 0.05 ms model which one wins is the machine's noise, not the rule's).
    smallest = next(c for c in report["candidates"] if c["id"] == "smallest")
    assert closest["latency_source"].startswith("measured") and smallest["latency_source"].startswith("measured")
    assert closest["latency_ms"] <= smallest["latency_ms"], (closest, smallest)
    assert closest["latency_ms"] < report["baseline"]["latency_ms"]
    assert set(closest["widths"]) == set(report["baseline"]["widths"])
    assert Path(closest["model_path"]).is_file()
    assert "budget cannot be met" in done.stderr and "closest candidate" in done.stderr
    for path in report["reports"].values():
        assert Path(path).is_file()


@pytest.mark.slow
def test_search_avoids_a_slow_width_that_flops_would_choose(shared, tmp_path):
    """A device whose runner really sleeps in one kernel shape: the measured table steers around it."""
    from edgekit.compile import compile_model
    from edgekit.optimize import optimize_model
    from edgekit.optimize.devices import slow_local_device
    from edgekit.optimize.proposals import flops_proposal

    model, shape = shared["model"], (1, 1, 28, 28)
    group, step = "layer2.conv1", 0.2
    flops_width = flops_proposal(model, group, input_shape=shape, step_ratio=step)
    assert flops_width == 8
    # layer2.conv1's conv at that width (8 -> w, 3x3) becomes 4 ms slower on this device.  Its full width
    # (16) sleeps 1 ms: with the default schedules the whole tiny model runs in ~0.05 ms, and a 25% budget
    # below that is within the noise of a shared machine; with the sleep the start model is ~1.05 ms.
    device = slow_local_device([{"weight_shape": [flops_width, 8, 3, 3], "out_shape": [1, flops_width, 14, 14],
                                 "sleep_ms": 4.0},
                                {"weight_shape": [16, 8, 3, 3], "out_shape": [1, 16, 14, 14], "sleep_ms": 1.0}])
    baseline_ms = _baseline_ms(shared, device)
    result = optimize_model(
        model, shared["data"], latency_budget_ms=baseline_ms * 0.75, device=device, run_dir=tmp_path / "run",
        cache_dir=shared["cache"], artifacts_dir=shared["artifacts"], step_ratio=step, max_iterations=1,
        exclude=("stem.0", "layer1.conv1", "layer2.conv2"), **FAST)
    assert result.steps, result.message
    first = result.steps[0]
    assert first["group"] == group
    assert first["to_width"] != flops_width, result.steps
    assert first["latency_source"] == "measured"
    assert first["latency_ms"] < baseline_ms  # the step really bought latency on the device
    # the table saw the slow kernel; the FLOPs-chosen model really is slower on this device than the start
    from edgekit.optimize.latency_table import LatencyTable

    table = LatencyTable.open(identity=device.identity, target="host", threads=1, cache_dir=shared["cache"])
    slow = [e for k, e in table.entries.items() if k.startswith(f"conv2d|x1x8x28x28|w{flops_width}x8x3x3|s2x2")]
    assert slow and slow[0]["median_ms"] >= 4.0
    from edgekit.compress.prune import PruneConfig, prune_model

    flops_model = prune_model(model, PruneConfig(ratio=0.0, layer_ratios={group: (16 - flops_width) / 16}),
                              input_shape=shape).model
    artifact = compile_model(flops_model, "host", input_shapes=[shape], out_dir=shared["artifacts"])
    flops_ms = device.measure(artifact, repeats=20).stats["median_ms"]
    assert flops_ms > baseline_ms + 2.0 > first["latency_ms"] + 2.0


# A device whose layer1 convs (both 8 -> 8 at 28x28) and layer2.conv2 (16 -> 16 at 14x14) really sleep 1 ms a call
# at full width: ~3 ms a run, far above a loaded machine's noise.  No layer group narrows both (layer1's pair goes
# with the stem's or layer1.conv1's width, layer2.conv2 with layer2's), so a budget a quarter of the baseline
# takes two steps at least, and once both are pruned the model runs ~0.05 ms: 15x under it.
RESUME_SLOW_KERNELS = [{"weight_shape": [8, 8, 3, 3], "out_shape": [1, 8, 28, 28], "sleep_ms": 1.0},
                       {"weight_shape": [16, 16, 3, 3], "out_shape": [1, 16, 14, 14], "sleep_ms": 1.0}]
SEARCH_SCRIPT = """
import json, sys
import torch
from edgekit.optimize import optimize_model
from edgekit.optimize.devices import slow_local_device
torch.set_num_threads(1)
options = json.loads(sys.argv[1])
model = torch.load(options.pop("model"), weights_only=False)
optimize_model(model, "digits", device=slow_local_device(options.pop("slow_kernels")), **options)
"""


@pytest.mark.slow
def test_resume_after_kill_gives_the_uninterrupted_result(shared, tmp_path):
    import torch

    from edgekit.optimize import optimize_model
    from edgekit.optimize.devices import slow_local_device

    baseline_ms = _baseline_ms(shared, slow_local_device(RESUME_SLOW_KERNELS))
    budget = round(baseline_ms * 0.25, 4)
    common = dict(latency_budget_ms=budget, cache_dir=str(shared["cache"]), artifacts_dir=str(shared["artifacts"]),
                  seed=3, step_ratio=0.2, width_step_ratio=0.25, **FAST)
    killed = tmp_path / "killed"
    options = {**common, "model": str(shared["model_path"]), "slow_kernels": RESUME_SLOW_KERNELS,
               "run_dir": str(killed)}
    proc = subprocess.Popen([sys.executable, "-c", SEARCH_SCRIPT, json.dumps(options)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 1800  # a generous wait for a loaded machine: only the kill's moment depends on it
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            state_path = killed / "state.json"
            if state_path.is_file():
                try:
                    state = json.loads(state_path.read_text())
                except json.JSONDecodeError:
                    state = {}
                # mid-search: one step verified and the next iteration's proposals under way
                if state.get("iteration", 0) >= 1 and any(c.get("iteration") == 2 for c in state.get("candidates", [])):
                    break
            time.sleep(0.1)
        assert proc.poll() is None, f"the search ended before it could be killed: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "the search was not past its first step after 30 minutes"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    state = json.loads((killed / "state.json").read_text())
    assert state["status"] == "running" and state["iteration"] >= 1  # killed, not finished

    a = optimize_model(None, None, run_dir=killed, resume=True, device=slow_local_device(RESUME_SLOW_KERNELS))
    b = optimize_model(torch.load(shared["model_path"], weights_only=False), "digits", run_dir=tmp_path / "straight",
                       device=slow_local_device(RESUME_SLOW_KERNELS), **common)
    assert a.met and b.met, (a.message, b.message)
    path = lambda r: [(s["group"], s["to_width"], s["val_accuracy"], s["latency_ms"]) for s in r.steps]  # noqa: E731
    assert path(a) == path(b) and len(path(a)) >= 2
    assert a.chosen["widths"] == b.chosen["widths"]
    assert a.chosen["val_accuracy"] == b.chosen["val_accuracy"]
    assert a.chosen["test_accuracy"] == b.chosen["test_accuracy"]
    assert a.chosen["latency_ms"] <= budget and a.chosen["latency_source"] == "measured"
    assert any(e["event"] == "resumed" for e in json.loads((killed / "state.json").read_text())["events"])
    # the report a person reads
    md = (killed / "report.md").read_text()
    assert "latency MEASURED on the device" in md and "Path taken" in md and "Pareto front" in md
    assert (killed / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_int8_is_chosen_per_layer_from_measured_latency_and_accuracy(shared):
    from edgekit.compile import compile_model
    from edgekit.evaluate import evaluate
    from edgekit.optimize.devices import LocalDevice
    from edgekit.optimize.quantize_choice import choose_int8_layers, quantized_layer_names

    model, (train_data, test_data) = shared["model"], shared["data"]
    val = test_data.subset(200, seed=0)
    device = LocalDevice()

    def measured(m):
        artifact = compile_model(m, "host", input_shapes=[(1, 1, 28, 28)], out_dir=shared["artifacts"],
                                 reference_inputs=[train_data.x[:1].numpy()], tolerance={"atol": 1e-2, "rtol": 1e-2})
        return {"latency_ms": device.measure(artifact, repeats=30).stats["median_ms"], "source": "measured"}

    choice = choose_int8_layers(model, calibration_data=train_data, accuracy_fn=lambda m: evaluate(m, val),
                                measure_fn=measured)
    assert set(choice["layers"]) == {"stem.0", "layer1.conv1", "layer1.conv2", "layer2.conv1", "layer2.conv2",
                                     "layer2.shortcut.0", "fc"}
    assert choice["float"]["latency_ms"] > 0 and choice["int8"]["latency_ms"] > 0
    if choice["int8"]["latency_ms"] >= choice["float"]["latency_ms"]:
        # TVM runs these int8 layers as fake-quantized fp32: int8 costs latency here, so nothing is int8
        assert set(choice["layers"].values()) == {"float"} and "buys no latency" in choice["reason"]

    # The greedy branch, with a device where int8 is faster (latency = 1 ms per float layer, 0.5 per int8 one):
    # layers go back to float, most-accuracy-first, only until accuracy is within max_drop of float.
    def by_layers(m):
        n_int8 = len(quantized_layer_names(m))
        return {"latency_ms": 7.0 - 0.5 * n_int8, "source": "synthetic"}

    strict = choose_int8_layers(model, calibration_data=train_data, accuracy_fn=lambda m: evaluate(m, val),
                                measure_fn=by_layers, max_drop=0.0)
    assert strict["mixed"]["val_accuracy"] >= strict["float"]["val_accuracy"] - 1e-9 if strict["model"] else True
    loose = choose_int8_layers(model, calibration_data=train_data, accuracy_fn=lambda m: evaluate(m, val),
                               measure_fn=by_layers, max_drop=1.0)
    assert set(loose["layers"].values()) == {"int8"} and loose["model"] is not None


@pytest.mark.slow
def test_size_budget_is_met_on_the_compiled_artifact(shared, tmp_path):
    from edgekit.compile import compile_model
    from edgekit.optimize import optimize_model

    artifact = compile_model(shared["model"], "host", input_shapes=[(1, 1, 28, 28)], out_dir=shared["artifacts"])
    budget = int(artifact.size_bytes * 0.97)  # the weights are a small part of the library: a few percent is a lot
    result = optimize_model(shared["model"], shared["data"], size_budget_bytes=budget, run_dir=tmp_path / "run",
                            cache_dir=shared["cache"], artifacts_dir=shared["artifacts"], width_step_ratio=0.25,
                            step_ratio=0.02, **FAST)
    assert result.met, result.message
    assert result.chosen["size_bytes"] <= budget < result.baseline["size_bytes"]
    assert all(s["resource"] == "size" for s in result.steps) and result.steps
    assert result.budget["latency_ms"] is None and result.budget["size_bytes"] == budget



@pytest.mark.slow
def test_without_kernel_timing_the_search_measures_whole_models(shared, tmp_path):
    from edgekit.optimize import optimize_model
    from edgekit.optimize.devices import no_kernel_timing_local_device

    # layer2.conv1 at its full width sleeps 1 ms (the tiny model alone runs in ~0.05 ms: a 20% budget below
    # that is noise); pruning it is the step that meets the budget, found by whole-model measurements.
    device = no_kernel_timing_local_device(
        slow_kernels=[{"weight_shape": [16, 8, 3, 3], "out_shape": [1, 16, 14, 14], "sleep_ms": 1.0}])
    baseline_ms = _baseline_ms(shared, device)
    result = optimize_model(shared["model"], shared["data"], latency_budget_ms=baseline_ms * 0.8, device=device,
                            run_dir=tmp_path / "run", cache_dir=shared["cache"], artifacts_dir=shared["artifacts"],
                            step_ratio=0.2, width_step_ratio=0.25, max_iterations=1,
                            exclude=("stem.0", "layer1.conv1", "layer2.conv2"), **FAST)
    assert result.table["mode"] == "whole"
    proposals = [c for c in result.candidates if c["kind"] == "proposal"]
    assert proposals and all(c["latency_source"].startswith("measured") for c in proposals)
    assert result.steps and result.steps[0]["latency_ms"] < baseline_ms
