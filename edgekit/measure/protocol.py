"""``measure_latency``: the public verb for "how fast is this artifact on that board" (or on this machine).

The protocol (warm-up, kept samples, threads, min_repeat_ms, time limit) comes from the artifact's
manifest, written at compile time from its target profile; arguments that are not None override it.
The runner (edgekit/onboard/runner.py) times on the device and ``LatencyReport.from_runner`` reads
what it prints, wherever it ran.  Latency measured under emulation is kept but marked ``emulated``:
it is never a measurement of the board.
"""

from __future__ import annotations

from pathlib import Path

from edgekit.artifacts import CompiledArtifact, LatencyReport
from edgekit.targets import MeasureProtocol

# `edgekit run`, `deploy` and `profile` measure until the median's 95% interval is within 2% of it either side
# (issue 12's target on a quiet machine), or the time cap.  On a quiet machine the profile's repeats already get
# there (tools/results/bench_measure_spread.md), so the rule costs nothing; on a noisy board it keeps timing
# instead of printing a median no one can trust, and says so when the cap ends it.  The Python API keeps the
# protocol as given: latency tables and sample-counting callers get exactly `repeats`.
CLI_CI_TARGET_RATIO = 0.02


def cli_stopping_rule(overrides: dict, base: MeasureProtocol) -> dict:
    """The CLI's measurement overrides with its default stopping rule added, unless the user fixed the sample
    count (--repeats: exactly that many, as asked), chose a rule (--ci-target; 0 turns it off), or the
    target profile sets one (``base``)."""
    if "repeats" in overrides or "ci_target_ratio" in overrides or base.ci_target_ratio > 0:
        return overrides
    return {**overrides, "ci_target_ratio": CLI_CI_TARGET_RATIO}


def measure_latency(artifact: CompiledArtifact | str, host=None, *, protocol: MeasureProtocol | None = None,
                    warmup: int | None = None, repeats: int | None = None, threads: int | None = None,
                    min_repeat_ms: float | None = None, kernels: bool | None = None,
                    kernel_repeats: int | None = None, time_limit_s: float | None = None,
                    ci_target_ratio: float | None = None, time_cap_s: float | None = None,
                    cpus: tuple[int, ...] | None = None,
                    connect: dict | None = None, root: str | None = None, trust_new_host: bool = False,
                    emulated: bool = False, runner_path: Path | None = None,
                    env: dict[str, str] | None = None) -> LatencyReport:
    """Measure ``artifact`` on ``host`` (deploying it first if needed); on this machine when ``host`` is None.

    ``host`` is ``user@board[:port]``, an ``~/.ssh/config`` alias, or an open ``RemoteHost`` (kept open
    for the next call).  ``kernels`` also times every fused kernel alone.  ``emulated`` marks a board
    known to be emulated.  ``runner_path``/``env`` replace the runner on this machine (test devices).
    Raises the device's error (a ``DeviceError`` subclass, or ``OutputMismatchError``) on failure.
    """
    if not isinstance(artifact, CompiledArtifact):
        artifact = CompiledArtifact.open(artifact)
    protocol = (protocol or artifact.measure_protocol).with_overrides(
        warmup=warmup, repeats=repeats, threads=threads, min_repeat_ms=min_repeat_ms, kernels=kernels,
        kernel_repeats=kernel_repeats, time_limit_s=time_limit_s,
        ci_target_ratio=ci_target_ratio, time_cap_s=time_cap_s, cpus=cpus)
    if host is None:
        from edgekit.run import run_artifact

        return run_artifact(artifact, protocol=protocol, runner_path=runner_path, env=env)
    from edgekit.deploy.deploy import DEFAULT_ROOT, DeviceEntry, deploy_model, deploy_to_host

    from edgekit.deploy.remote import RemoteHost

    if isinstance(host, RemoteHost):  # one device whose connection the caller keeps for the next call
        return deploy_to_host(artifact, host, root=root or DEFAULT_ROOT, measure=protocol, emulated=emulated).report
    fleet = deploy_model(artifact, hosts=[DeviceEntry(host=host, emulated=emulated)], measure=protocol,
                         connect=connect, root=root or DEFAULT_ROOT, trust_new_host=trust_new_host)
    fleet.raise_for_errors()
    return fleet.results[0].report
