"""Where the search measures: one interface, several real devices.

* ``LocalDevice``: this machine, running edgekit's device runner as a local process (the same
  script a board gets), with per-kernel timing.
* ``SshDevice``: a board over SSH through the deploy stage (``deploy_to_host``): upload, output
  check against the host reference, timing, per-kernel timing, all on the board.
* ``slow_local_device``: this machine with a runner whose kernels of chosen weight shapes really
  sleep (``slow_runner.py``): a device with a known, deliberately non-monotone latency.

Every device measures through the measure verb (``measure_latency``), so it returns
``LatencyReport``s (``kernels`` filled when asked) and raises the deploy stage's ``DeviceError``
subclasses when it fails, here as on a board.  ``identity`` names the device for the latency
cache; the hardware/runtime fingerprint comes back with every report.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgekit.artifacts import CompiledArtifact, LatencyReport
from edgekit.errors import DeviceError, EdgekitError
from edgekit.measure.protocol import measure_latency

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

    def measure(self, artifact: CompiledArtifact, *, kernels: bool = False, warmup: int = 5,
                repeats: int = 50, kernel_repeats: int = 10) -> LatencyReport:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "identity": self.identity}


class LocalDevice(Device):
    """This machine: the device runner as a local process, as ``edgekit run`` starts it."""

    kind = "local"

    def __init__(self, *, threads: int = 1, runner_path: Path | None = None, env: dict[str, str] | None = None,
                 timeout_s: float = 600.0, identity: str = "local"):
        from edgekit.onboard import RUNNER_PATH

        self.threads = threads
        self.runner_path = Path(runner_path or RUNNER_PATH)
        self.env = dict(env or {})
        self.timeout_s = timeout_s
        self.identity = identity

    def measure(self, artifact, *, kernels=False, warmup=5, repeats=50, kernel_repeats=10):
        from edgekit.run import runs_here

        if not runs_here(artifact):
            raise EdgekitError(f"artifact {artifact.artifact_id} is built for '{artifact.target_name}' and cannot "
                               "run on this machine", hint="give --host for a device of that target")
        return measure_latency(artifact, None, warmup=warmup, repeats=repeats, threads=self.threads, kernels=kernels,
                               kernel_repeats=kernel_repeats, time_limit_s=self.timeout_s,
                               runner_path=self.runner_path, env=self.env)

    def describe(self):
        return {"kind": self.kind, "identity": self.identity, "runner": self.runner_path.name,
                "threads": self.threads, **({"env": self.env} if self.env else {})}


def slow_local_device(slow_kernels: list[dict[str, Any]], *, threads: int = 1) -> LocalDevice:
    """This machine with kernels of the given weight shapes made slower by real sleeps (a test device).

    ``slow_kernels``: ``[{"weight_shape": [O, I, KH, KW], "sleep_ms": S}, ...]``.
    """
    env, tag = _slow_kernels_env(slow_kernels)
    return LocalDevice(threads=threads, runner_path=SLOW_RUNNER_PATH, env=env, identity=f"local-slow-{tag}")


def _slow_kernels_env(slow_kernels: list[dict[str, Any]]) -> tuple[dict[str, str], str]:
    """The slow runner's environment for ``slow_kernels``, and a tag naming them in a device identity."""
    import hashlib

    from edgekit.testing.slow_runner import SLOW_ENV

    text = json.dumps(slow_kernels, sort_keys=True)
    return {SLOW_ENV: text}, hashlib.sha256(text.encode()).hexdigest()[:12]


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
        try:
            report = measure_latency(artifact, self._host(), warmup=warmup, repeats=repeats, threads=self.threads,
                                     kernels=kernels, kernel_repeats=kernel_repeats,
                                     time_limit_s=self.time_limit_s, root=self.root, emulated=self.emulated)
        except DeviceError:
            self.close()  # the next call reconnects from scratch
            raise
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


def no_kernel_timing_local_device(*, threads: int = 1, slow_kernels: list[dict[str, Any]] | None = None
                                  ) -> LocalDevice:
    """This machine with a runner that gives no per-kernel timing (as an older runner on a board would),
    optionally with slow kernels as in ``slow_local_device``."""
    from edgekit.testing.slow_runner import NO_KERNELS_ENV

    env, identity = {NO_KERNELS_ENV: "1"}, "local-no-kernel-timing"
    if slow_kernels:
        slow_env, tag = _slow_kernels_env(slow_kernels)
        env.update(slow_env)
        identity += f"-slow-{tag}"
    return LocalDevice(threads=threads, runner_path=SLOW_RUNNER_PATH, env=env, identity=identity)
