"""End-to-end deploys to real local SSH devices: CLI, unchanged redeploys, keep-N, rollback, hostile
names, several devices at once, the device lock, and a runner that dies with its client."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path


from edgekit.cli.main import main
from edgekit.deploy.deploy import DeviceEntry, deploy_model
from edgekit.targets import MeasureProtocol
from edgekit.deploy.remote import RemoteHost
from edgekit.testing.faults import build_faulty_artifact, variant_artifact
from edgekit.testing.sshd import device_processes

QUICK = MeasureProtocol(warmup=2, repeats=10, time_limit_s=60)


def cli_args(device) -> list[str]:
    return ["--host", device.host_spec, "-i", str(device.client_key), "--known-hosts", str(device.known_hosts),
            "--no-agent"]


def state(device) -> dict:
    """What is on the device's disk, read directly (the test runs on the same machine)."""
    root = device.home / ".edgekit"

    def link(name):
        p = root / name
        return os.path.basename(os.readlink(p)) if p.is_symlink() else None

    listing = lambda d: sorted(os.listdir(root / d)) if (root / d).is_dir() else []  # noqa: E731
    return {"current": link("current"), "previous": link("previous"), "versions": listing("versions"),
            "tmp": listing("tmp"), "blobs": listing("blobs")}


def test_cli_deploy_host_end_to_end_then_unchanged_redeploy_uploads_nothing(device, host_artifact, capsys):
    argv = ["deploy", "--artifact", str(host_artifact.path), "--target", "host", *cli_args(device),
            "--warmup", "2", "--repeats", "20", "--kernels", "--json"]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)["devices"][0]
    assert first["ok"] and first["bytes_uploaded"] > 0
    report = first["report"]
    assert report["output_check"]["passed"] is True
    assert len(report["samples_ms"]) == 20 and report["stats"]["median_ms"] > 0
    assert report["emulated"] is False and report["device"]["machine"] == "x86_64"
    # The conv kernel takes weights packed at compile time: the library calls it NAME_prepacked.
    assert {k["name"] for k in report["kernels"]} >= {"fused_conv2d_add_relu_prepacked"}
    assert all(k["median_ms"] > 0 for k in report["kernels"])

    assert main(argv) == 0
    second = json.loads(capsys.readouterr().out)["devices"][0]
    assert second["ok"] and second["bytes_uploaded"] == 0 and second["files_uploaded"] == 0
    assert second["report"]["output_check"]["passed"]
    s = state(device)
    assert s["current"] == host_artifact.artifact_id and s["tmp"] == []


def test_cli_deploy_compiles_a_model_file_first(device, tmp_path, capsys):
    import torch

    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 8), torch.nn.ReLU()).eval()
    program = torch.export.export(model, (torch.zeros(1, 1, 8, 8),))
    model_path = tmp_path / "tiny.pt2"
    torch.export.save(program, model_path)
    argv = ["deploy", "--model", str(model_path), "--target", "host", "-o", str(tmp_path / "out"),
            *cli_args(device), "--repeats", "5", "--warmup", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "deployed" in out and "outputs  match" in out and "latency  median" in out


def test_keep_n_prunes_old_versions_and_rollback_switches_back(device, host_artifact, tmp_path):
    variants = [variant_artifact(host_artifact, tmp_path, f"v{i}") for i in range(4)]
    for v in variants:
        r = deploy_model(v, hosts=[device.host_spec], connect=device.connect_kwargs(), measure=None, keep=2,
                         run=False).results[0]
        assert r.ok, r.error
    s = state(device)
    assert s["current"] == variants[3].artifact_id and s["previous"] == variants[2].artifact_id
    assert s["versions"] == sorted([variants[2].artifact_id, variants[3].artifact_id])
    # variants share model.so: content addressing stores it once
    # model.so, reference.npz and a manifest each; runner.py, device_facts.py, order_stats.py shared
    assert len(s["blobs"]) <= 2 + 2 + 2 + 1

    back = deploy_model(None, hosts=[device.host_spec], connect=device.connect_kwargs(), rollback=True).results[0]
    assert back.ok and back.rolled_back_to == variants[2].artifact_id
    assert state(device)["current"] == variants[2].artifact_id
    forth = deploy_model(None, hosts=[device.host_spec], connect=device.connect_kwargs(), rollback=True).results[0]
    assert forth.rolled_back_to == variants[3].artifact_id


def test_rollback_without_history_is_a_clear_error(device, capsys):
    code = main(["deploy", "--rollback", *cli_args(device)])
    assert code == 35
    assert "nothing to roll back" in capsys.readouterr().err


HOSTILE = "we'ird \"name\"; $(touch /tmp/edgekit-pwned) `id`\nline2 & | >x"


def test_hostile_model_path_and_remote_dir_deploy_safely(device, host_artifact, tmp_path, capsys):
    import shutil

    evil_dir = tmp_path / HOSTILE
    shutil.copytree(host_artifact.path, evil_dir)
    evil_root = "~/" + HOSTILE.replace("/", "_")
    marker = Path("/tmp/edgekit-pwned")
    marker.unlink(missing_ok=True)
    argv = ["deploy", "--artifact", str(evil_dir), *cli_args(device), "--root", evil_root, "--repeats", "3",
            "--warmup", "1", "--json"]
    assert main(argv) == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out)["devices"][0]
    assert result["ok"] and result["report"]["output_check"]["passed"]
    assert result["remote_dir"].startswith(str(device.home / HOSTILE.replace("/", "_")))
    assert (device.home / HOSTILE.replace("/", "_") / "current").is_symlink()
    assert not marker.exists() and not (device.home / "x").exists()


def test_four_devices_at_once_one_killed_midway(make_device, host_artifact, tmp_path):
    devices = [make_device() for _ in range(4)]
    big = variant_artifact(host_artifact, tmp_path, "big", extra_bytes=8 << 20)
    victim = devices[2]
    killed = threading.Event()

    def log(message):
        if message.startswith(victim.host_spec) and "uploading" in message and not killed.is_set():
            killed.set()
            victim.stop()  # pull the plug while it is about to upload

    entries = [DeviceEntry(host=d.host_spec, identity_files=(str(d.client_key),), known_hosts=str(d.known_hosts))
               for d in devices]
    started = time.monotonic()
    fleet = deploy_model(big, hosts=entries, measure=QUICK, max_workers=4, log=log,
                         connect={"allow_agent": False, "use_ssh_config": False, "retries": 0})
    elapsed = time.monotonic() - started
    assert killed.is_set()
    by_host = {r.host: r for r in fleet.results}
    assert len(by_host) == 4
    for d in devices:
        r = by_host[d.host_spec]
        if d is victim:
            assert not r.ok and r.exit_code in (20, 25), r.error
        else:
            assert r.ok, r.error
            assert r.report.output_check["passed"] and r.bytes_uploaded >= 8 << 20
    assert fleet.exit_code == 34
    assert elapsed < 60


def test_four_devices_all_succeed_concurrently(make_device, host_artifact):
    devices = [make_device() for _ in range(4)]
    entries = [DeviceEntry(host=d.host_spec, identity_files=(str(d.client_key),), known_hosts=str(d.known_hosts))
               for d in devices]
    fleet = deploy_model(host_artifact, hosts=entries, measure=QUICK, max_workers=4,
                         connect={"allow_agent": False, "use_ssh_config": False})
    assert fleet.ok and fleet.exit_code == 0
    assert sorted(r.host for r in fleet.results) == sorted(d.host_spec for d in devices)
    assert all(len(r.report.samples_ms) == 10 for r in fleet.results)


def test_inventory_file_names_the_devices(make_device, host_artifact, tmp_path, capsys):
    a, b = make_device(), make_device()
    inventory = tmp_path / "fleet.toml"
    inventory.write_text("".join(
        f'[[device]]\nhost = "{d.host_spec}"\nidentity_file = "{d.client_key}"\nknown_hosts = "{d.known_hosts}"\n'
        for d in (a, b)))
    code = main(["deploy", "--artifact", str(host_artifact.path), "--inventory", str(inventory), "--no-agent",
                 "--repeats", "3", "--warmup", "1", "--json"])
    assert code == 0
    assert [d["ok"] for d in json.loads(capsys.readouterr().out)["devices"]] == [True, True]


def test_device_lock_refuses_a_second_edgekit_on_the_same_board(device, host_artifact):
    from edgekit.deploy.deploy import DeviceSession
    from edgekit.errors import DeviceBusyError

    with RemoteHost(device.host_spec, **device.connect_kwargs()) as holder:
        session = DeviceSession(holder, "~/.edgekit", 1.0, 30.0)
        try:
            r = deploy_model(host_artifact, hosts=[device.host_spec], connect=device.connect_kwargs(),
                             measure=QUICK, lock_wait_s=0.5).results[0]
            assert not r.ok and isinstance(r.exception, DeviceBusyError) and r.exit_code == 33
            assert "busy" in r.error
        finally:
            session.close()
    r = deploy_model(host_artifact, hosts=[device.host_spec], connect=device.connect_kwargs(), measure=QUICK)
    assert r.ok


def test_runner_dies_when_the_client_goes_away(device, host_artifact, tmp_path):
    hang = build_faulty_artifact(host_artifact, tmp_path, "hang")
    from edgekit.deploy.deploy import deploy_to_host

    remote = RemoteHost(device.host_spec, **device.connect_kwargs())
    worker = threading.Thread(target=lambda: _swallow(deploy_to_host, hang, remote,
                                                      measure=MeasureProtocol(time_limit_s=600)), daemon=True)
    worker.start()
    deadline = time.monotonic() + 30
    while not any("runner.py" in p for p in device_processes(device)):
        assert time.monotonic() < deadline, "runner never started"
        time.sleep(0.1)
    remote.close()  # the client vanishes; nothing tells the runner but its stdin closing
    deadline = time.monotonic() + 15
    while device_processes(device):
        assert time.monotonic() < deadline, device_processes(device)
        time.sleep(0.2)
    worker.join(timeout=10)


def _swallow(fn, *args, **kw):
    try:
        fn(*args, **kw)
    except Exception:
        pass


def test_ssh_config_alias_is_used_by_deploy(device, host_artifact, tmp_path):
    config = tmp_path / "ssh_config"
    config.write_text(device.ssh_config_block("board"))
    fleet = deploy_model(host_artifact, hosts=["board"], measure=QUICK,
                         connect={"ssh_config": str(config), "allow_agent": False})
    assert fleet.ok, fleet.results[0].error
    assert fleet.results[0].host == device.host_spec


def test_measure_latency_on_a_device_returns_a_report(device, host_artifact):
    from edgekit.measure.protocol import measure_latency

    report = measure_latency(host_artifact, device.host_spec, warmup=1, repeats=7, kernels=True,
                             connect=device.connect_kwargs())
    assert report.artifact_id == host_artifact.artifact_id and len(report.samples_ms) == 7
    assert report.output_check["passed"] and report.kernels and not report.emulated
    assert report.device["host"] == device.host_spec and report.stats["median_ms"] > 0


def test_agent_gives_the_lock_up_when_the_host_falls_silent_but_not_while_it_pings(device, monkeypatch):
    from edgekit.deploy.deploy import DeviceSession

    monkeypatch.setattr(DeviceSession, "IDLE_S", 1.5)
    monkeypatch.setattr(DeviceSession, "HEARTBEAT_S", 0.3)
    with RemoteHost(device.host_spec, **device.connect_kwargs()) as remote:
        alive = DeviceSession(remote, "~/.edgekit", 1.0, 30.0)
        time.sleep(3)
        assert alive.request("state")["ok"]  # heartbeats kept it
        alive.close()
    monkeypatch.setattr(DeviceSession, "HEARTBEAT_S", 3600.0)
    with RemoteHost(device.host_spec, **device.connect_kwargs()) as silent_host:
        silent = DeviceSession(silent_host, "~/.edgekit", 1.0, 30.0)  # a host whose link went quiet
        time.sleep(3)
        with RemoteHost(device.host_spec, **device.connect_kwargs()) as other:
            DeviceSession(other, "~/.edgekit", 0.5, 30.0).close()  # the lock is free again
        silent.close()
