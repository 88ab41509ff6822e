"""A cross-compiled rpi4 artifact really runs on aarch64: an emulated Raspberry Pi 4 (arm64 Debian userland,
python3 + numpy + the TVM runtime wheels, qemu-user via binfmt_misc) behind a real chrooted sshd.

The first run builds the userland into $EDGEKIT_CACHE (about 20 s with the network); later runs reuse it.
"""

from __future__ import annotations

import json

import pytest

from edgekit.cli.main import main

pytestmark = pytest.mark.slow


def args(device):
    return ["--host", device.host_spec, "-i", str(device.client_key), "--known-hosts", str(device.known_hosts),
            "--no-agent"]


def test_deploy_rpi4_model_to_emulated_pi_end_to_end(emulated_pi, tmp_path, capsys):
    import torch

    torch.manual_seed(4)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 6 * 6, 10)).eval()
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(model, (torch.zeros(1, 1, 8, 8),)), path)
    argv = ["deploy", "--target", "rpi4", "--model", str(path), "-o", str(tmp_path / "out"), *args(emulated_pi),
            "--warmup", "1", "--repeats", "5", "--kernels", "--json"]
    assert main(argv) == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out)["devices"][0]
    report = result["report"]
    assert result["ok"] and result["bytes_uploaded"] > 0
    assert report["output_check"]["passed"] and report["output_check"]["max_abs_error"] < 1e-4
    assert report["device"]["machine"] == "aarch64"
    assert report["emulated"] is True and report["stats"]["emulated"] is True  # never a measurement
    assert len(report["samples_ms"]) == 5 and report["kernels"]

    assert main(argv) == 0
    again = json.loads(capsys.readouterr().out)["devices"][0]
    assert again["ok"] and again["bytes_uploaded"] == 0 and again["report"]["output_check"]["passed"]


def test_device_check_on_emulated_pi(emulated_pi, capsys):
    code = main(["device", "check", "--target", "rpi4", *args(emulated_pi), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["ok"], report
    findings = {f["name"]: f for f in report["findings"]}
    assert findings["arch"]["value"] == "aarch64" and findings["tvm"]["ok"]
    assert findings["emulated"]["ok"] is False and findings["emulated"]["severity"] == "warning"


def test_x86_artifact_is_refused_on_the_pi(emulated_pi, host_artifact, capsys):
    code = main(["deploy", "--artifact", str(host_artifact.path), *args(emulated_pi)])
    assert code == 30
    assert "x86-64" in capsys.readouterr().err
