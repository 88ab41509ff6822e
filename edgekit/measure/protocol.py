"""The on-device measurement protocol: warm-up, N kept samples, threads, per-kernel timing.

The runner (deploy/runner.py) does the timing on the device; this module turns its JSON into a
``LatencyReport`` and offers ``measure_latency``, the public verb for "how fast is this artifact on
that board".  Latency measured under emulation is kept but marked ``emulated``: it is never a
measurement of the board.
"""

from __future__ import annotations

from typing import Any

from edgekit.artifacts import CompiledArtifact, LatencyReport
from edgekit.measure.stats import summarize


def report_from_runner(data: dict[str, Any], measure, *, device_extra: dict | None = None) -> LatencyReport:
    """The runner's JSON object -> LatencyReport (statistics computed here from every kept sample)."""
    samples = list(data.get("samples_ms") or [])
    device = {**(data.get("device") or {}), **(device_extra or {})}
    emulated = bool(data.get("emulated") or device.get("emulated"))
    kernels = list(data.get("kernels") or [])
    stats = summarize(samples) if samples else {}
    if emulated:
        stats = {**stats, "emulated": True}
    return LatencyReport(
        artifact_id=data["artifact_id"], target=data["target"], device=device,
        threads=int(data.get("threads", measure.threads)), warmup=int(data.get("warmup", measure.warmup)),
        samples_ms=samples, stats=stats, output_check=data["output_check"], emulated=emulated, kernels=kernels)


def measure_latency(artifact: CompiledArtifact | str, host: str | None = None, *, warmup: int | None = None,
                    repeats: int | None = None, threads: int | None = None, kernels: bool = False,
                    time_limit_s: float = 300.0, connect: dict | None = None, root: str | None = None,
                    trust_new_host: bool = False) -> LatencyReport:
    """Measure ``artifact`` on ``host`` (deploying it first if needed); on this machine when ``host`` is None.

    Raises the device's error (a ``DeviceError`` subclass, or ``OutputMismatchError``) on failure.
    """
    from edgekit.deploy.deploy import DEFAULT_ROOT, MeasureOptions, default_measure, deploy_model

    if not isinstance(artifact, CompiledArtifact):
        artifact = CompiledArtifact.open(artifact)
    if host is None:
        from edgekit.run import run_artifact

        return run_artifact(artifact, warmup=warmup, repeats=repeats, threads=threads)
    base = default_measure(artifact)
    options = MeasureOptions(
        warmup=base.warmup if warmup is None else warmup, repeats=base.repeats if repeats is None else repeats,
        threads=base.threads if threads is None else threads, kernels=kernels, time_limit_s=time_limit_s)
    fleet = deploy_model(artifact, hosts=[host], measure=options, connect=connect, root=root or DEFAULT_ROOT,
                         trust_new_host=trust_new_host)
    fleet.raise_for_errors()
    return fleet.results[0].report
