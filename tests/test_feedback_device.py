"""edgekit.optimize against a real SSH device (an sshd on 127.0.0.1): a device that vanishes mid-search."""

from __future__ import annotations

import json

import pytest

FAST = dict(finetune_examples=400, val_examples=200, test_examples=200, final_epochs=1, repeats=30, warmup=3)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    from edgekit.compress.distill import TrainConfig, train
    from edgekit.data import load_dataset
    from edgekit.testing.models import ResNetTiny

    train_data, test_data = load_dataset("digits", "train"), load_dataset("digits", "test")
    torch.manual_seed(0)
    model = ResNetTiny(in_ch=1, width=8)
    train(model, train_data, config=TrainConfig(epochs=6, lr=1e-2, batch_size=64, val_size=0), progress=False)
    return model.eval(), (train_data, test_data), tmp_path_factory.mktemp("feedback-ssh")


# The board's layer1 convs (8 -> 8 at 28x28) and layer2.conv2 (16 -> 16 at 14x14) really sleep 1 ms a call at full
# width (edgekit/testing/slow_site: the runner deploy uploads, wrapped on the board): ~3 ms a run, far above the noise
# of a loaded machine.  No layer group narrows both, so a budget a quarter of the baseline takes two steps at least,
# and the pruned model then runs ~0.05 ms, far under it.
SLOW_KERNELS = [{"weight_shape": [8, 8, 3, 3], "out_shape": [1, 8, 28, 28], "sleep_ms": 1.0},
                {"weight_shape": [16, 16, 3, 3], "out_shape": [1, 16, 14, 14], "sleep_ms": 1.0}]


@pytest.mark.slow
def test_device_vanishing_mid_search_is_a_clear_error_and_resumable(tiny, make_device, device_runtime_site,
                                                                       tmp_path):
    from edgekit.compile import compile_model
    from edgekit.errors import DeviceError
    from edgekit.optimize import optimize_model
    from edgekit.optimize.devices import SshDevice
    from edgekit.testing.slow_board import slow_board_env

    model, data, base = tiny
    device = make_device(env=slow_board_env(device_runtime_site, SLOW_KERNELS))
    connect = device.connect_kwargs()
    artifact = compile_model(model, "host", input_shapes=[(1, 1, 28, 28)], out_dir=base / "artifacts")
    baseline_ms = SshDevice(device.host_spec, connect=connect).measure(artifact, repeats=30).stats["median_ms"]
    assert baseline_ms > 3.0  # the board's slow kernels are in force
    budget = baseline_ms * 0.25
    run_dir = tmp_path / "run"
    common = dict(cache_dir=base / "cache", artifacts_dir=base / "artifacts", connect=connect, **FAST)

    def pull_the_plug(kind, payload):
        if kind == "step":  # one step verified on the board: now the board disappears
            device.stop()

    with pytest.raises(DeviceError) as info:
        optimize_model(model, data, latency_budget_ms=budget, host=device.host_spec, run_dir=run_dir,
                       step_ratio=0.2, width_step_ratio=0.25, on_event=pull_the_plug, **common)
    error = info.value
    assert error.exit_code in (20, 21, 25), error  # unreachable / timeout / connection lost: the device's failure
    assert "127.0.0.1" in str(error) and f"--resume {run_dir}" in str(error)

    state = json.loads((run_dir / "state.json").read_text())
    assert state["status"] == "interrupted" and state["error"]["exit_code"] == error.exit_code
    assert state["iteration"] == 1 and len(state["steps"]) == 1  # nothing verified is lost
    assert (run_dir / "checkpoints" / "iter_001.pt").is_file()

    device.start()  # the board is back (same address, same host key)
    result = optimize_model(None, data, run_dir=run_dir, resume=True, connect=connect,
                            cache_dir=base / "cache", artifacts_dir=base / "artifacts")
    assert result.met, result.message
    assert result.steps[0] == state["steps"][0] and len(result.steps) >= 2
    assert result.chosen["latency_ms"] <= budget
    assert result.chosen["latency_source"] == "measured"
    assert result.device["kind"] == "ssh"
