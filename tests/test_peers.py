"""Peer runtimes on the same device (issue 12, part 2): edgekit against ONNX Runtime over SSH, in interleaved
rounds, outputs checked on the same inputs, both medians with intervals; a runtime the device lacks is reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgekit.cli.main import main


def ssh_args(device) -> list[str]:
    return ["--host", device.host_spec, "-i", str(device.client_key), "--known-hosts", str(device.known_hosts),
            "--no-agent"]


@pytest.fixture(scope="module")
def small_cnn_pt2(tmp_path_factory) -> Path:
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(16 * 16 * 16, 10)).eval()
    path = tmp_path_factory.mktemp("peers") / "cnn.pt2"
    torch.export.save(torch.export.export(model, (torch.zeros(1, 1, 16, 16),)), path)
    return path


def test_edgekit_and_onnxruntime_side_by_side_on_one_board(make_device, device_runtime_site, edgekit_cache,
                                                           small_cnn_pt2, tmp_path, capsys):
    from edgekit.testing.peer_sites import local_peer_site

    ort_site = local_peer_site(edgekit_cache, "onnxruntime")
    device = make_device(env={"PYTHONPATH": f"{device_runtime_site}:{ort_site}"})
    argv = ["compare", "--model", str(small_cnn_pt2), "--peers", "onnxruntime", *ssh_args(device), "--rounds", "6",
            "--repeats", "10", "--warmup", "3", "-o", str(tmp_path / "artifacts")]
    assert main(argv + ["--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    peer = result["peers"]["onnxruntime"]
    assert peer["available"] and peer["outputs_agree"] and peer["output_check"]["passed"]
    assert peer["stats"]["count"] == 60 and peer["stats"]["median_ci_low_ms"] is not None  # pooled over 6 rounds
    assert peer["edgekit_stats"]["median_ci_low_ms"] <= peer["edgekit_stats"]["median_ms"]
    assert peer["ratio_ci_low"] <= peer["ratio_edgekit_over_peer"] <= peer["ratio_ci_high"]
    assert peer["beyond_noise"] in (True, False) and peer["verdict"].startswith(("edgekit is", "no difference"))
    assert result["edgekit"]["output_check"]["passed"] and result["emulated"] is False
    assert result["threads"] == 1  # the same thread count for both, the profile's


def test_edgekit_and_executorch_xnnpack_side_by_side_at_one_thread(make_device, device_runtime_site, edgekit_cache,
                                                                  small_cnn_pt2, tmp_path, capsys):
    from edgekit.testing.peer_sites import local_peer_site

    et_site = local_peer_site(edgekit_cache, "executorch")  # executorch and torch, as pip installs them on a board
    device = make_device(env={"PYTHONPATH": f"{device_runtime_site}:{et_site}"})
    argv = ["compare", "--model", str(small_cnn_pt2), "--peers", "executorch", *ssh_args(device), "--rounds", "2",
            "--repeats", "10", "--warmup", "3", "-o", str(tmp_path / "artifacts"), "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    peer = result["peers"]["executorch"]
    assert peer["available"], peer.get("reason")
    assert peer["version"] == "1.5.1" and peer["outputs_agree"] and peer["output_check"]["passed"]
    assert peer["stats"]["count"] == 20 and peer["stats"]["median_ci_low_ms"] <= peer["stats"]["median_ms"]
    assert peer["edgekit_stats"]["median_ci_high_ms"] >= peer["edgekit_stats"]["median_ms"]
    assert peer["threads"] == result["threads"] == 1  # XNNPACK's threadpool was reset from every core to one


def test_a_peer_the_board_cannot_run_is_reported_not_skipped(device, small_cnn_pt2, tmp_path, capsys):
    argv = ["compare", "--model", str(small_cnn_pt2), "--peers", "onnxruntime", *ssh_args(device), "--rounds", "1",
            "--repeats", "6", "-o", str(tmp_path / "artifacts")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "onnxruntime  cannot run on this device: onnxruntime cannot be imported on the device" in out
    assert out.startswith("edgekit      median")


def test_peer_options_are_usage_errors(small_cnn_pt2, capsys):
    assert main(["compare", "--model", str(small_cnn_pt2), "--peers", "tflite"]) == 2
    assert "unknown peer runtime 'tflite'; available: onnxruntime, executorch, torch" in capsys.readouterr().err
    assert main(["compare", "--peers", "onnxruntime"]) == 2
    assert main(["compare", "only-one"]) == 2
    assert main(["run", "--artifact", "some-dir", "--compare", "onnxruntime"]) == 2  # peers run the model
    assert "--compare needs --model" in capsys.readouterr().err


# The ONNX Runtime wheel for the emulated Pi: tools/setup-system.sh downloads it into the cache (no test does)
PI_PEER_WHEELS = "peer-wheels-aarch64-cp311"


@pytest.mark.slow
def test_onnxruntime_installed_from_the_host_runs_beside_edgekit_on_the_emulated_pi(emulated_pi, edgekit_cache,
                                                                                    small_cnn_pt2, tmp_path, capsys):
    wheels = edgekit_cache / PI_PEER_WHEELS
    assert list(wheels.glob("onnxruntime-*manylinux_2_28_aarch64.whl")), \
        f"no aarch64 onnxruntime wheel in {wheels}: run tools/setup-system.sh"
    setup = ["device", "setup", "--target", "rpi4", *ssh_args(emulated_pi), "--install", "onnxruntime",
             "--wheels", str(wheels), "--json"]
    assert main(setup) == 0, capsys.readouterr().err
    installed = json.loads(capsys.readouterr().out)["peers_installed"][0]
    assert installed["peer"] == "onnxruntime" and installed["path"].endswith("/peer-runtimes/onnxruntime")

    argv = ["compare", "--model", str(small_cnn_pt2), "--target", "rpi4", "--peers", "onnxruntime,executorch",
            *ssh_args(emulated_pi), "--rounds", "1", "--repeats", "10", "--warmup", "2",  # qemu: one round
            "-o", str(tmp_path / "artifacts"), "--json"]
    assert main(argv) == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out)
    assert result["emulated"] is True and result["edgekit"]["device"]["machine"] == "aarch64"
    ort = result["peers"]["onnxruntime"]
    assert ort["available"] and ort["version"] == installed["version"]
    assert ort["outputs_agree"] and ort["output_check"]["passed"]
    for stats in (ort["stats"], ort["edgekit_stats"]):  # both medians have intervals
        assert stats["median_ci_low_ms"] <= stats["median_ms"] <= stats["median_ci_high_ms"]
    assert ort["verdict"].startswith("EMULATED, not a measurement of the board")
    executorch = result["peers"]["executorch"]  # the Pi has no executorch (nor torch): said so, not skipped
    assert executorch == {"available": False, "reason": executorch["reason"]}
    assert "executorch cannot be imported on the device" in executorch["reason"]


def test_device_setup_install_names_what_it_can_install(device, capsys):
    argv = ["device", "setup", "--target", "host", *ssh_args(device), "--install", "runtime,tflite"]
    assert main(argv) == 2
    assert "--install: unknown 'tflite'" in capsys.readouterr().err


def test_a_peer_wheel_fits_the_device_by_machine_python_and_glibc(tmp_path):
    from edgekit.deploy.peer_setup import find_peer_wheel, wheel_fits

    wheel = tmp_path / "onnxruntime-1.32.0-cp311-cp311-manylinux_2_28_aarch64.whl"
    assert wheel_fits(wheel, "aarch64", "3.11.2", "2.36")
    assert not wheel_fits(wheel, "aarch64", "3.11.2", "2.27")  # a board older than the wheel's glibc floor
    assert not wheel_fits(wheel, "x86_64", "3.11.2", "2.36") and not wheel_fits(wheel, "aarch64", "3.12.1", "2.36")
    wheel.write_bytes(b"")
    (tmp_path / "onnxruntime-1.20.0-cp311-cp311-manylinux_2_27_aarch64.whl").write_bytes(b"")
    assert find_peer_wheel("onnxruntime", "aarch64", "3.11.2", "2.36", wheels_dir=tmp_path) == wheel
    with pytest.raises(Exception, match="no onnxruntime wheel for aarch64 / CPython 3.11 / glibc 2.26"):
        find_peer_wheel("onnxruntime", "aarch64", "3.11.2", "2.26", wheels_dir=tmp_path)
