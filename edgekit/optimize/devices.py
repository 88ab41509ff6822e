"""Where the search measures: one interface, several real devices.

* ``LocalDevice``: this machine, running edgekit's device runner as a local process (the same
  script a board gets), with per-kernel timing.
* ``SshDevice``: a board over SSH through the deploy stage (``deploy_to_host``): upload, output
  check against the host reference, timing, per-kernel timing, all on the board.
* ``slow_local_device``: this machine with a runner whose kernels of chosen weight shapes really
  sleep (``slow_runner.py``): a device with a known, deliberately non-monotone latency.

Every device returns ``LatencyReport``s (``kernels`` filled when asked) and raises the deploy
stage's ``DeviceError`` subclasses when it fails.  ``identity`` names the device for the latency
cache; the hardware/runtime fingerprint comes back with every report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from edgekit.artifacts import CompiledArtifact, LatencyReport
from edgekit.errors import DeviceError, EdgekitError, OutputMismatchError

SLOW_RUNNER_PATH = Path(__file__).parent.parent / "testing" / "slow_runner.py"

# Fingerprint fields that make two measurements comparable; the rest (load, temperature) vary by the minute.
STABLE_FINGERPRINT_KEYS = ("board", "machine", "cpu_model", "cpu_count", "kernel", "governor", "python", "tvm",
                           "emulated")


def stable_fingerprint(device: dict[str, Any]) -> dict[str, Any]:
    return {k: device.get(k) for k in STABLE_FINGERPRINT_KEYS}


class Device:
    """What the search needs from a device."""

    kind = "device"
    identity = "device"
    supports_kernels = True

    def measure(self, artifact: CompiledArtifact, *, kernels: bool = False, warmup: int = 5,
                repeats: int = 50, kernel_repeats: int = 10) -> LatencyReport:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "identity": self.identity}


class LocalDevice(Device):
    """This machine: the device runner as a local process (``edgekit.run`` does the same, without kernels)."""

    kind = "local"

    def __init__(self, *, threads: int = 1, runner_path: Path | None = None, env: dict[str, str] | None = None,
                 timeout_s: float = 600.0, identity: str = "local"):
        from edgekit.run import RUNNER_PATH

        self.threads = threads
        self.runner_path = Path(runner_path or RUNNER_PATH)
        self.env = dict(env or {})
        self.timeout_s = timeout_s
        self.identity = identity

    def measure(self, artifact, *, kernels=False, warmup=5, repeats=50, kernel_repeats=10):
        from edgekit.measure.stats import summarize
        from edgekit.run import _runs_here

        if not _runs_here(artifact):
            raise EdgekitError(f"artifact {artifact.artifact_id} is built for '{artifact.target_name}' and cannot "
                               "run on this machine", hint="give --host for a device of that target")
        argv = [sys.executable, str(self.runner_path), str(artifact.path), "--warmup", str(warmup),
                "--repeats", str(repeats), "--threads", str(self.threads)]
        if kernels:
            argv += ["--kernels", "--kernel-repeats", str(kernel_repeats)]
        env = {**os.environ, **self.env}
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout_s, env=env)
        except subprocess.TimeoutExpired:
            raise DeviceError(f"local runner took longer than {self.timeout_s:.0f} s on {artifact.path}") from None
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        data = json.loads(lines[-1]) if lines else {}
        if done.returncode != 0 or not data.get("ok"):
            raise DeviceError(f"local runner failed on {artifact.path} (exit {done.returncode}): "
                              f"{data.get('message') or done.stderr.strip()[-500:]}")
        report = LatencyReport(
            artifact_id=data["artifact_id"], target=data["target"], device=data["device"], threads=self.threads,
            warmup=warmup, samples_ms=data["samples_ms"], stats=summarize(data["samples_ms"]),
            output_check=data["output_check"], emulated=bool(data.get("emulated")),
            kernels=list(data.get("kernels") or []))
        if not report.output_check["passed"]:
            raise OutputMismatchError(f"artifact {artifact.artifact_id}: outputs differ from the reference by up to "
                                      f"{report.output_check['max_abs_error']:.3g}")
        return report

    def describe(self):
        return {"kind": self.kind, "identity": self.identity, "runner": self.runner_path.name,
                "threads": self.threads, **({"env": self.env} if self.env else {})}


def slow_local_device(slow_kernels: list[dict[str, Any]], *, threads: int = 1) -> LocalDevice:
    """This machine with kernels of the given weight shapes made slower by real sleeps (a test device).

    ``slow_kernels``: ``[{"weight_shape": [O, I, KH, KW], "sleep_ms": S}, ...]``.
    """
    from edgekit.testing.slow_runner import SLOW_ENV

    import hashlib

    text = json.dumps(slow_kernels, sort_keys=True)
    return LocalDevice(threads=threads, runner_path=SLOW_RUNNER_PATH, env={SLOW_ENV: text},
                       identity=f"local-slow-{hashlib.sha256(text.encode()).hexdigest()[:12]}")


class SshDevice(Device):
    """A board over SSH: every measurement is a deploy (content-addressed, so unchanged files are not re-sent)."""

    kind = "ssh"

    def __init__(self, host: str, *, connect: dict | None = None, root: str | None = None, threads: int = 1,
                 time_limit_s: float = 300.0, emulated: bool = False):
        from edgekit.deploy.deploy import DEFAULT_ROOT

        self.host = host
        self.connect = dict(connect or {})
        self.root = root or DEFAULT_ROOT
        self.threads = threads
        self.time_limit_s = time_limit_s
        self.emulated = emulated
        self.identity = f"ssh:{host}"
        self._remote = None

    def _host(self):
        from edgekit.deploy.remote import RemoteHost

        if self._remote is None:
            self._remote = RemoteHost(self.host, **self.connect)
        return self._remote

    def measure(self, artifact, *, kernels=False, warmup=5, repeats=50, kernel_repeats=10):
        from edgekit.deploy.deploy import MeasureOptions, deploy_to_host

        options = MeasureOptions(warmup=warmup, repeats=repeats, threads=self.threads, kernels=kernels,
                                 kernel_repeats=kernel_repeats, time_limit_s=self.time_limit_s)
        try:
            result = deploy_to_host(artifact, self._host(), root=self.root, measure=options, emulated=self.emulated)
        except DeviceError:
            self.close()  # the next call reconnects from scratch
            raise
        report = result.report
        if report.emulated:
            raise DeviceError(f"{self.host} is emulated (qemu): its latency is not a measurement of the board",
                              hint="optimize against the real board")
        return report

    def close(self):
        if self._remote is not None:
            try:
                self._remote.close()
            finally:
                self._remote = None

    def describe(self):
        return {"kind": self.kind, "identity": self.identity, "host": self.host, "root": self.root,
                "threads": self.threads}


def no_kernel_timing_local_device(*, threads: int = 1) -> LocalDevice:
    """This machine with a runner that gives no per-kernel timing (as an older runner on a board would)."""
    from edgekit.testing.slow_runner import NO_KERNELS_ENV

    return LocalDevice(threads=threads, runner_path=SLOW_RUNNER_PATH, env={NO_KERNELS_ENV: "1"},
                       identity="local-no-kernel-timing")
