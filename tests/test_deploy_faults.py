"""The fault matrix: every fault gives a clear error and its own exit code, leaves the previous deployment
current and intact, and leaves no stray files (tmp/, half versions, orphan blobs) or processes on the device.

All faults are real: a stopped sshd, a proxy that never answers or cuts the link, a wrong key, a
reinstalled host key, a full tmpfs, a library that segfaults or never returns, bytes flipped on the
device's disk, an aarch64 library on an x86 board, a python without TVM.
"""

from __future__ import annotations

import os
import time

import pytest

from edgekit.deploy.deploy import deploy_model, deploy_to_host
from edgekit.targets import MeasureProtocol
from edgekit.deploy.remote import RemoteHost
from edgekit.errors import (
    ArchitectureMismatchError,
    AuthenticationError,
    ConnectionLostError,
    DeviceDiskFullError,
    DeviceRuntimeError,
    DeviceTimeoutError,
    DeviceUnreachableError,
    HostKeyChangedError,
    RunnerCrashError,
    RunnerTimeoutError,
    UnknownHostKeyError,
    UploadCorruptError,
)
from edgekit.testing.faults import FaultProxy, build_faulty_artifact, flip_byte_after_put, tmpfs_root, variant_artifact
from edgekit.testing.sshd import device_processes, keygen

QUICK = MeasureProtocol(warmup=1, repeats=3, time_limit_s=60)


def snapshot(device) -> dict:
    root = device.home / ".edgekit"
    listing = lambda d: sorted(os.listdir(root / d)) if (root / d).is_dir() else []  # noqa: E731
    current = root / "current"
    return {"current": os.path.basename(os.readlink(current)) if current.is_symlink() else None,
            "versions": listing("versions"), "blobs": listing("blobs"), "tmp": listing("tmp"),
            "stray": sorted(n for n in os.listdir(root) if n.endswith(".new")) if root.is_dir() else []}


@pytest.fixture
def deployed(device, host_artifact):
    """A device on which artifact A is deployed and current; returns (device, snapshot before the fault)."""
    r = deploy_model(host_artifact, hosts=[device.host_spec], connect=device.connect_kwargs(), measure=QUICK)
    assert r.ok, r.results[0].error
    before = snapshot(device)
    assert before["current"] == host_artifact.artifact_id
    return device, before


def assert_intact(device, before, *, wait_s: float = 10.0):
    """Previous deployment current and unchanged; nothing left behind (processes may need a moment to die)."""
    deadline = time.monotonic() + wait_s
    while device_processes(device) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert device_processes(device) == []
    after = snapshot(device)
    assert after == before, f"device state changed:\nbefore {before}\nafter  {after}"
    assert (device.home / ".edgekit" / "current" / "model.so").is_file()


def remote(device, **kw) -> RemoteHost:
    return RemoteHost(device.host_spec, **{**device.connect_kwargs(), **kw})


def known_hosts_for_port(device, port, tmp_path):
    """A known_hosts naming the device's key under a proxy's port."""
    path = tmp_path / f"known_hosts_{port}"
    path.write_text(device.host_key_line.replace(f"[127.0.0.1]:{device.port}", f"[127.0.0.1]:{port}") + "\n")
    return path


def one(artifact, host, **kw):
    return deploy_model(artifact, hosts=[host], **kw).results[0]


def test_connection_refused(deployed, host_artifact, tmp_path):
    device, before = deployed
    device.stop()
    started = time.monotonic()
    r = one(variant_artifact(host_artifact, tmp_path, "b"), device.host_spec, connect=device.connect_kwargs())
    assert isinstance(r.exception, DeviceUnreachableError) and r.exit_code == 20
    assert "connection refused" in r.error and device.host_spec in r.error
    assert time.monotonic() - started < 10  # two quick retries with backoff, then give up
    device.start()
    assert_intact(device, before)


def test_silent_blackhole_times_out_instead_of_hanging(deployed, host_artifact, tmp_path):
    device, before = deployed
    with FaultProxy(device.port, mode="blackhole") as proxy:
        started = time.monotonic()
        r = one(host_artifact, f"{device.user}@127.0.0.1:{proxy.port}",
                connect={**device.connect_kwargs(), "connect_timeout_s": 1.5, "retries": 1, "backoff_s": 0.1})
        elapsed = time.monotonic() - started
    assert isinstance(r.exception, DeviceTimeoutError) and r.exit_code == 21
    assert "no SSH answer" in r.error
    assert elapsed < 8
    assert_intact(device, before)


def test_wrong_key_is_an_authentication_error(deployed, host_artifact, tmp_path):
    device, before = deployed
    keygen(tmp_path / "other_key")
    r = one(host_artifact, device.host_spec,
            connect={**device.connect_kwargs(), "identity_files": [str(tmp_path / "other_key")]})
    assert isinstance(r.exception, AuthenticationError) and r.exit_code == 22
    assert "authentication" in r.error and "other_key" in r.error
    assert_intact(device, before)


def test_unknown_host_key_is_refused_without_trust(deployed, host_artifact, tmp_path):
    device, before = deployed
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    r = one(variant_artifact(host_artifact, tmp_path, "b"), device.host_spec,
            connect={**device.connect_kwargs(), "known_hosts": str(empty)})
    assert isinstance(r.exception, UnknownHostKeyError) and r.exit_code == 23
    assert "SHA256:" in r.error and "--trust-new-host" in r.error
    assert empty.read_text() == ""
    assert_intact(device, before)
    # with explicit trust the key is recorded, then checked strictly like any other
    r = one(host_artifact, device.host_spec, connect={**device.connect_kwargs(), "known_hosts": str(empty)},
            trust_new_host=True, measure=QUICK)
    assert r.ok and f"[127.0.0.1]:{device.port} ssh-ed25519" in empty.read_text()


def test_changed_host_key_is_always_refused_with_fingerprints(deployed, host_artifact, tmp_path):
    device, before = deployed
    device.regenerate_host_key()
    for trust in (False, True):
        r = one(variant_artifact(host_artifact, tmp_path, "b"), device.host_spec, connect=device.connect_kwargs(),
                trust_new_host=trust)
        assert isinstance(r.exception, HostKeyChangedError) and r.exit_code == 24
        assert "HOST KEY CHANGED" in r.error and r.error.count("SHA256:") == 2
    assert_intact(device, before)


def test_connection_cut_mid_upload(deployed, host_artifact, tmp_path):
    device, before = deployed
    big = variant_artifact(host_artifact, tmp_path, "big", extra_bytes=4 << 20)
    with FaultProxy(device.port, mode="cut", cut_after=1 << 20) as proxy:
        known = known_hosts_for_port(device, proxy.port, tmp_path)
        r = one(big, f"{device.user}@127.0.0.1:{proxy.port}",
                connect={**device.connect_kwargs(), "known_hosts": str(known), "retries": 0}, measure=QUICK)
        assert proxy.cuts == 1
    assert isinstance(r.exception, ConnectionLostError) and r.exit_code == 25
    assert "upload" in r.error
    assert_intact(device, before)


def test_link_going_silent_mid_upload_times_out_instead_of_hanging(deployed, host_artifact, tmp_path):
    device, before = deployed
    big = variant_artifact(host_artifact, tmp_path, "big", extra_bytes=4 << 20)
    with FaultProxy(device.port, mode="stall", cut_after=1 << 20) as proxy:
        known = known_hosts_for_port(device, proxy.port, tmp_path)
        started = time.monotonic()
        r = one(big, f"{device.user}@127.0.0.1:{proxy.port}", measure=QUICK, lock_wait_s=2,
                connect={**device.connect_kwargs(), "known_hosts": str(known), "retries": 0,
                         "transfer_timeout_s": 3, "connect_timeout_s": 3})
        elapsed = time.monotonic() - started
    assert isinstance(r.exception, DeviceTimeoutError) and r.exit_code == 21
    assert "did not finish within 3 s" in r.error and elapsed < 30
    # The device only learns the link is gone when the proxy's sockets close (its sshd then ends the
    # session); the next deploy takes the lock and clears the partial upload.
    assert snapshot(device)["current"] == before["current"]
    # How soon sshd reaps the dead session depends on the machine's load: wait for the lock generously.
    r = one(host_artifact, device.host_spec, connect=device.connect_kwargs(), measure=QUICK, lock_wait_s=90)
    assert r.ok and r.bytes_uploaded == 0
    assert_intact(device, before)


def test_disk_full_before_upload(device, host_artifact, tmp_path):
    import pwd

    account = pwd.getpwnam(device.user)
    with tmpfs_root(device.home / ".edgekit", 2 << 20, uid=account.pw_uid, gid=account.pw_gid):
        r = one(host_artifact, device.host_spec, connect=device.connect_kwargs(), measure=QUICK)
        assert r.ok, r.error
        before = snapshot(device)
        r = one(variant_artifact(host_artifact, tmp_path, "huge", extra_bytes=4 << 20), device.host_spec,
                connect=device.connect_kwargs(), measure=QUICK)
        assert isinstance(r.exception, DeviceDiskFullError) and r.exit_code == 26
        assert "bytes free" in r.error
        assert_intact(device, before)


def test_disk_filling_up_during_upload(device, host_artifact, tmp_path):
    """Another process fills the disk between the free-space check and the upload: ENOSPC mid-transfer."""
    import pwd

    account = pwd.getpwnam(device.user)
    root = device.home / ".edgekit"
    with tmpfs_root(root, 4 << 20, uid=account.pw_uid, gid=account.pw_gid):
        assert one(host_artifact, device.host_spec, connect=device.connect_kwargs(), measure=QUICK).ok
        before = snapshot(device)
        filler = root / "filler"

        def fill(message):
            if "uploading" in message:
                with open(filler, "wb") as f:  # leaves a few hundred KB
                    f.write(b"\0" * (os.statvfs(root).f_bavail * os.statvfs(root).f_frsize - (300 << 10)))

        r = one(variant_artifact(host_artifact, tmp_path, "mid", extra_bytes=1 << 20), device.host_spec,
                connect=device.connect_kwargs(), measure=QUICK, log=fill)
        assert isinstance(r.exception, DeviceDiskFullError) and r.exit_code == 26, r.error
        assert "ran out of disk space" in r.error
        filler.unlink()
        assert_intact(device, before)


def test_runner_segfault(deployed, host_artifact, tmp_path):
    device, before = deployed
    crash = build_faulty_artifact(host_artifact, tmp_path, "segfault")
    r = one(crash, device.host_spec, connect=device.connect_kwargs(), measure=QUICK)
    assert isinstance(r.exception, RunnerCrashError) and r.exit_code == 27
    assert "crashed" in r.error and "Segfault" in r.error  # the stack tail from the device
    assert_intact(device, before)


def test_runner_hang_is_stopped_by_its_time_limit(deployed, host_artifact, tmp_path):
    device, before = deployed
    hang = build_faulty_artifact(host_artifact, tmp_path, "hang")
    started = time.monotonic()
    r = one(hang, device.host_spec, connect=device.connect_kwargs(),
            measure=MeasureProtocol(warmup=1, repeats=3, time_limit_s=3))
    assert isinstance(r.exception, RunnerTimeoutError) and r.exit_code == 28
    assert "time limit of 3 s" in r.error
    assert time.monotonic() - started < 20
    assert_intact(device, before)


def test_corrupted_upload_is_caught_by_sha256_on_the_device(deployed, host_artifact, tmp_path):
    device, before = deployed
    corrupting = flip_byte_after_put(remote(device))
    with pytest.raises(UploadCorruptError) as caught:
        with corrupting:
            deploy_to_host(variant_artifact(host_artifact, tmp_path, "c", extra_bytes=4096), corrupting,
                           measure=QUICK)
    assert caught.value.exit_code == 29 and "sha256 mismatch" in str(caught.value)
    assert_intact(device, before)


def test_wrong_arch_artifact_is_refused_before_upload(deployed, rpi4_artifact):
    device, before = deployed
    r = one(rpi4_artifact, device.host_spec, connect=device.connect_kwargs(), measure=QUICK)
    assert isinstance(r.exception, ArchitectureMismatchError) and r.exit_code == 30
    assert "aarch64" in r.error and "x86_64" in r.error and r.bytes_uploaded == 0
    assert_intact(device, before)


def test_missing_tvm_runtime_says_how_to_fix_it(make_device, host_artifact):
    device = make_device(runtime=False)
    r = one(host_artifact, device.host_spec, connect=device.connect_kwargs(), measure=QUICK)
    assert isinstance(r.exception, DeviceRuntimeError) and r.exit_code == 31
    assert "TVM runtime" in r.error and "edgekit device setup" in r.error
    s = snapshot(device)
    assert s["versions"] == [] and s["blobs"] == [] and s["tmp"] == [] and s["current"] is None
    assert device_processes(device) == []


def test_every_fault_has_its_own_exit_code():
    from edgekit import errors

    classes = [DeviceUnreachableError, DeviceTimeoutError, AuthenticationError, UnknownHostKeyError,
               HostKeyChangedError, ConnectionLostError, DeviceDiskFullError, RunnerCrashError, RunnerTimeoutError,
               UploadCorruptError, ArchitectureMismatchError, DeviceRuntimeError]
    codes = [c.exit_code for c in classes]
    assert len(set(codes)) == len(codes)
    assert all(issubclass(c, errors.DeviceError) for c in classes)
