"""Memory on the device (issue 12, part 4): the artifact's constants and planned workspace from the lowered
module, the run's peak resident memory read by the runner on the device, and a memory budget for optimize."""

from __future__ import annotations

import json

import pytest

from edgekit.cli.main import main
from edgekit.run import run_artifact


def ssh_args(device) -> list[str]:
    return ["--host", device.host_spec, "-i", str(device.client_key), "--known-hosts", str(device.known_hosts),
            "--no-agent"]


@pytest.fixture(scope="module")
def wide_artifact(two_conv_artifact):
    """Two convolutions without BatchNorm: constants are exactly their weights and biases (on x86 the
    32 -> 32 conv runs as Winograd F(4x4): its weight is the 6x6 transformed one, 36 / 9 times larger)."""
    return two_conv_artifact


def test_the_manifest_records_constants_and_planned_workspace(wide_artifact):
    memory = wide_artifact.manifest["memory"]
    weights = 4 * (32 * 1 * 9 + 32 + 32 * 32 * 36 + 32)
    assert memory["constant_bytes"] == weights
    activation = 4 * 32 * 32 * 32  # one 32x32x32 float32 feature map
    winograd = 2 * 4 * 36 * 64 * 32  # the Winograd conv's transformed input and product: 36 x 64 tiles x 32
    assert activation <= memory["workspace_bytes"] <= 4 * activation + winograd
    assert memory["dynamic_allocations"] == 0
    assert memory["model_memory_bytes"] == memory["constant_bytes"] + memory["workspace_bytes"]


def test_a_run_reports_its_peak_resident_memory_and_the_artifacts(wide_artifact):
    report = run_artifact(wide_artifact, warmup=2, repeats=6)
    memory = report.memory
    assert memory["artifact"] == wide_artifact.manifest["memory"]
    assert memory["peak_rss_bytes"] >= memory["runtime_rss_bytes"] > 0
    assert memory["peak_rss_bytes"] == memory["vm_hwm_bytes"] and memory["ru_maxrss_bytes"] > 0


def test_a_board_over_ssh_reports_memory_in_json_and_on_the_terminal(device, wide_artifact, capsys):
    argv = ["deploy", "--artifact", str(wide_artifact.path), *ssh_args(device), "--warmup", "2", "--repeats", "6"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "  memory     peak resident" in out and "model: constants 145.4 KiB + workspace" in out
    assert main(argv + ["--json"]) == 0
    report = json.loads(capsys.readouterr().out)["devices"][0]["report"]
    assert report["memory"]["peak_rss_bytes"] > report["memory"]["artifact"]["model_memory_bytes"] > 0


def test_a_memory_budget_is_a_usage_error_when_not_positive_or_with_proxy(tmp_path):
    from edgekit.errors import UsageError
    from edgekit.optimize import SearchConfig, optimize_model

    with pytest.raises(UsageError, match="memory budget must be > 0 MiB"):
        SearchConfig(memory_budget_mb=0)
    assert SearchConfig(memory_budget_mb=1.5).memory_budget_bytes == int(1.5 * 2**20)
    with pytest.raises(UsageError, match="--proxy"):
        optimize_model("zoo:fmnist-resnet", "digits", memory_budget_mb=1.0, proxy=True, run_dir=tmp_path / "run")


def test_optimize_prunes_until_the_model_fits_its_memory_budget(tmp_path):
    import torch

    from edgekit.compress.distill import TrainConfig, train
    from edgekit.data import load_dataset
    from edgekit.optimize import optimize_model
    from edgekit.testing.models import ResNetTiny

    torch.set_num_threads(1)
    train_data, test_data = load_dataset("digits", "train"), load_dataset("digits", "test")
    torch.manual_seed(0)
    model = ResNetTiny(in_ch=1, width=8)
    train(model, train_data, config=TrainConfig(epochs=3, lr=1e-2, batch_size=64, val_size=0), progress=False)
    model.eval()
    fast = dict(finetune_examples=300, val_examples=200, test_examples=200, final_epochs=1, repeats=10, warmup=2,
                measure_rounds=1, width_step_ratio=0.25, step_ratio=0.05)
    first = optimize_model(model, (train_data, test_data), memory_budget_mb=1000.0, run_dir=tmp_path / "probe",
                           cache_dir=tmp_path / "cache", artifacts_dir=tmp_path / "artifacts", **fast)
    baseline = first.baseline["model_memory_bytes"]
    assert first.met and not first.steps and baseline > 0 and first.baseline["peak_rss_bytes"] > baseline
    budget_mb = baseline * 0.9 / 2**20
    result = optimize_model(model, (train_data, test_data), memory_budget_mb=budget_mb, run_dir=tmp_path / "run",
                            cache_dir=tmp_path / "cache", artifacts_dir=tmp_path / "artifacts", **fast)
    assert result.met, result.message
    assert result.chosen["model_memory_bytes"] <= budget_mb * 2**20 < baseline
    assert result.steps and all(s["resource"] == "memory" for s in result.steps)
    assert result.budget["memory_mb"] == budget_mb and result.chosen["median_ci_low_ms"] is not None
