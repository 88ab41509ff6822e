"""Run an artifact on this machine: the same runner a device gets, started as a local process."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

from edgekit.artifacts import CompiledArtifact, LatencyReport
from edgekit.errors import ToolchainError
from edgekit.onboard import RUNNER_PATH, runner_options
from edgekit.targets import ELF_MACHINE_BY_ARCH, MeasureProtocol

WHERE = "local"  # how errors name this machine (a board is named by its SSH host)
# The runner stops itself at the protocol's time limit; this is the backstop should it not.
BACKSTOP_S = 30.0


def run_artifact(artifact: CompiledArtifact | str | Path, *, protocol: MeasureProtocol | None = None,
                 warmup: int | None = None, repeats: int | None = None, threads: int | None = None,
                 min_repeat_ms: float | None = None, kernels: bool | None = None, kernel_repeats: int | None = None,
                 time_limit_s: float | None = None, ci_target_ratio: float | None = None,
                 time_cap_s: float | None = None, cpus: tuple[int, ...] | None = None, check_outputs: bool = True, runner_path: Path | None = None,
                 env: dict[str, str] | None = None) -> LatencyReport:
    """Load ``artifact`` here, check its outputs against the reference and time it.

    The protocol is ``protocol`` or the one in the artifact's manifest, with every argument that is not
    None put over it.  ``kernels`` also times every fused kernel alone.  ``runner_path`` and ``env``
    swap in another runner (the optimize loop's test devices).  Runner failures raise the errors a
    board's do (``LatencyReport.from_runner``); ``OutputMismatchError`` when ``check_outputs`` and the
    outputs differ.
    """
    if not isinstance(artifact, CompiledArtifact):
        artifact = CompiledArtifact.open(artifact)
    if not runs_here(artifact):
        raise ToolchainError(
            f"artifact {artifact.artifact_id} is built for '{artifact.target_name}' "
            f"({artifact.manifest['elf_machine']}, {artifact.manifest['target']['kind']}) and cannot run on this machine",
            hint="deploy it to a matching device with `edgekit deploy`")
    protocol = (protocol or artifact.measure_protocol).with_overrides(
        warmup=warmup, repeats=repeats, threads=threads, min_repeat_ms=min_repeat_ms, kernels=kernels,
        kernel_repeats=kernel_repeats, time_limit_s=time_limit_s,
        ci_target_ratio=ci_target_ratio, time_cap_s=time_cap_s, cpus=cpus)
    command = [sys.executable, str(runner_path or RUNNER_PATH), str(artifact.path), *runner_options(protocol)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=protocol.time_limit_s + BACKSTOP_S,
                              env={**os.environ, **env} if env else None)
        status, stdout, stderr = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as exc:
        status, stdout, stderr = 124, _text(exc.stdout), _text(exc.stderr)  # as `timeout` reports it on a board
    if status < 0:
        status = 128 - status  # killed by signal N: the shell's 128 + N, as a board's exit reads
    return LatencyReport.from_runner(exit_status=status, stdout=stdout, stderr=stderr, protocol=protocol,
                                     where=WHERE, command=" ".join(command[1:3]), artifact_id=artifact.artifact_id,
                                     check_outputs=check_outputs)


def runs_here(artifact: CompiledArtifact) -> bool:
    """True when this machine can load ``artifact``: a CPU library of this machine's architecture."""
    return (artifact.manifest["target"]["kind"] == "cpu"
            and artifact.manifest["elf_machine"] == ELF_MACHINE_BY_ARCH.get(platform.machine()))


def _text(value) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value
