"""Run an artifact on this machine: the same runner a device gets, started as a local process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from edgekit.artifacts import CompiledArtifact, LatencyReport
from edgekit.errors import ArtifactError, EdgekitError, OutputMismatchError, ToolchainError
from edgekit.measure.stats import summarize

RUNNER_PATH = Path(__file__).parent / "deploy" / "runner.py"
# Exit codes of deploy/runner.py (it cannot import edgekit, so they are repeated here).
RUNNER_EXIT_INTEGRITY, RUNNER_EXIT_NO_RUNTIME, RUNNER_EXIT_LOAD_FAILED = 20, 21, 22


def run_artifact(artifact: CompiledArtifact | str | Path, *, warmup: int | None = None, repeats: int | None = None,
                 threads: int | None = None, check_outputs: bool = True, timeout_s: float = 600) -> LatencyReport:
    """Load ``artifact`` here, check its outputs against the reference and time it.

    Defaults come from the artifact's target profile.  Raises
    ``OutputMismatchError`` when ``check_outputs`` and the outputs differ.
    """
    if not isinstance(artifact, CompiledArtifact):
        artifact = CompiledArtifact.open(artifact)
    if not _runs_here(artifact):
        raise ToolchainError(
            f"artifact {artifact.artifact_id} is built for '{artifact.target_name}' "
            f"({artifact.manifest['elf_machine']}, {artifact.manifest['target']['kind']}) and cannot run on this machine",
            hint="deploy it to a matching device with `edgekit deploy`")
    from edgekit.targets import load_target

    defaults = _measure_defaults(load_target, artifact.target_name)
    warmup = defaults.warmup if warmup is None else warmup
    repeats = defaults.repeats if repeats is None else repeats
    threads = defaults.threads if threads is None else threads
    command = [sys.executable, str(RUNNER_PATH), str(artifact.path), "--warmup", str(warmup),
               "--repeats", str(repeats), "--threads", str(threads)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise EdgekitError(f"running {artifact.path} took longer than {timeout_s:.0f} s") from None
    result = _parse(done)
    if done.returncode == RUNNER_EXIT_INTEGRITY:
        raise ArtifactError(f"artifact {artifact.path}: {result.get('message')}")
    if done.returncode != 0 or not result.get("ok"):
        raise EdgekitError(f"runner failed on {artifact.path} (exit {done.returncode}): "
                           f"{result.get('message') or done.stderr.strip()[-500:]}")
    report = LatencyReport(
        artifact_id=result["artifact_id"], target=result["target"], device=result["device"],
        threads=threads, warmup=warmup, samples_ms=result["samples_ms"], stats=summarize(result["samples_ms"]),
        output_check=result["output_check"], emulated=False)
    if check_outputs and not report.output_check["passed"]:
        raise OutputMismatchError(
            f"artifact {artifact.artifact_id}: outputs differ from the reference by up to "
            f"{report.output_check['max_abs_error']:.3g} (atol {report.output_check['atol']:g}, "
            f"rtol {report.output_check['rtol']:g})")
    return report


def _runs_here(artifact: CompiledArtifact) -> bool:
    import platform

    from edgekit.targets import ELF_MACHINE_BY_ARCH

    return (artifact.manifest["target"]["kind"] == "cpu"
            and artifact.manifest["elf_machine"] == ELF_MACHINE_BY_ARCH.get(platform.machine()))


def _measure_defaults(load_target, name):
    from edgekit.errors import UnknownTargetError
    from edgekit.targets import MeasureDefaults

    try:
        return load_target(name).measure
    except UnknownTargetError:  # built with a profile this machine no longer has
        return MeasureDefaults()


def _parse(done: subprocess.CompletedProcess) -> dict:
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {}
    try:
        return json.loads(lines[-1])
    except json.JSONDecodeError:
        return {}
