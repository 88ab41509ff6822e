"""Tuning measured on a device over SSH only: RPC server on the device, tunnel over the SSH connection.

The device is a real local OpenSSH server (edgekit.testing.sshd) whose login user has the TVM
runtime but no compiler library; the tuning trials run there, through a port forward of the
same paramiko connection.  Tiny trial budget: the real budgets live in tools/bench_speed.py.
"""

from __future__ import annotations

import json
import time

import pytest

pytestmark = pytest.mark.slow

SHAPE = (1, 8, 16, 16)


def _conv_model():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU()).eval()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_tuning_through_an_ssh_tunnel_records_and_builds_consult_them(device, cache, tmp_path):
    from edgekit.compile import compile_model
    from edgekit.compile.tune import tune_model
    from edgekit.deploy.remote import RemoteHost
    from edgekit.run import run_artifact
    from edgekit.testing.sshd import device_processes

    lines = []
    with RemoteHost(device.host_spec, **device.connect_kwargs()) as remote:
        report = tune_model(_conv_model(), "host", trials=4, trials_per_iter=2, input_shapes=[SHAPE],
                            remote=remote, log=lines.append)
        assert remote.connected, "the session's own connection stays usable after tuning"
    assert report.remote == device.host_spec
    assert report.trials_ok >= 2, report.errors  # no random_fill / cloudpickle failures on the device
    assert any("tunnel" in line for line in lines)
    records = (report.database_dir / "database_tuning_record.json").read_text().splitlines()
    assert len(records) >= report.trials_ok
    meta = json.loads((report.database_dir / "fingerprint.json").read_text())
    assert meta["device"]["machine"] and meta["fingerprint"] == report.fingerprint
    assert report.database_dir.parent == cache / "tuning" / "host"
    conv = next(t for t in report.tasks if "conv2d" in t.name)  # measured against the default on the device
    assert conv.gain is not None and conv.gain.default_us and conv.gain.tuned_us, conv
    assert (report.database_dir / "cost_model.tar").is_file()

    deadline = time.monotonic() + 15
    while device_processes(device) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert device_processes(device) == [], "the RPC server and its session workers must not outlive tuning"

    untuned = compile_model(_conv_model(), "host", input_shapes=[SHAPE], out_dir=tmp_path / "a", tuning=False)
    tuned = compile_model(_conv_model(), "host", input_shapes=[SHAPE], out_dir=tmp_path / "a",
                          tuning=report.database_dir)
    # The device-measured records are consulted; at a few trials they rarely beat the default
    # schedules, and then the gain measurement keeps them out (the build stays at the default speed).
    tuning = tuned.manifest["tuning"]
    assert tuned.artifact_id != untuned.artifact_id
    if conv.gain.applied:
        # Applied only as measured faster than the default on the device, beside it (how much faster is
        # the benchmark's business: timings in a test on a shared machine are noise).
        assert conv.name in tuned.manifest["schedules"]["tuned"]
        assert conv.gain.tuned_us < conv.gain.default_us, conv.gain
    else:
        assert conv.name in tuning["kept_out_slower_than_default"], tuning
    assert run_artifact(tuned, warmup=1, repeats=5, threads=1).output_check["passed"]


def test_a_device_without_the_runtime_is_told_what_to_do(make_device, cache):
    from edgekit.compile.tune import tune_model
    from edgekit.errors import DeviceRuntimeError

    bare = make_device(runtime=False)
    with pytest.raises(DeviceRuntimeError) as failure:
        tune_model(_conv_model(), "host", trials=2, input_shapes=[SHAPE], host=bare.host_spec,
                   **bare.connect_kwargs())
    assert "edgekit device setup" in str(failure.value)
