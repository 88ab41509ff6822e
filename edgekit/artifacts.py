"""Stage outputs that can be saved, reopened and handed to the next stage.

A compiled artifact is a directory named by its content id:

    <artifact_id>/
      manifest.json          this schema; sha256 of every other file
      model.so               the exported TVM library (Relax VM executable)
      reference.npz          inputs  (in0, in1, ...) and host outputs (out0, ...)

The id is a hash of the model, the recipe, the full target and the compiler
versions, so compiling the same thing twice gives the same directory and a
redeploy of an unchanged artifact uploads nothing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.errors import ArtifactError
from edgekit.measure.board_state import board_warnings, stopping_warnings  # leaves, as stats
from edgekit.measure.stats import summarize  # a leaf: statistics only, no stage imported
from edgekit.targets import ELF_MACHINE_BY_ARCH, MeasureProtocol

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
LIBRARY_NAME = "model.so"
REFERENCE_NAME = "reference.npz"

# readelf's names for the e_machine values edgekit builds for.
_ELF_MACHINES = {3: "x86", 40: "arm", 62: "x86-64", 183: "aarch64"}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def elf_machine(path: Path) -> str:
    """The ELF machine of a shared library, read from its header (no readelf needed)."""
    header = Path(path).read_bytes()[:20]
    if header[:4] != b"\x7fELF":
        raise ArtifactError(f"{path} is not an ELF file")
    byteorder = "little" if header[5] == 1 else "big"
    machine = int.from_bytes(header[18:20], byteorder)
    return _ELF_MACHINES.get(machine, f"e_machine={machine}")


@dataclass(frozen=True, kw_only=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str

    def to_dict(self):
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d):
        return cls(name=d["name"], shape=tuple(d["shape"]), dtype=d["dtype"])


@dataclass(frozen=True, kw_only=True)
class CompiledArtifact:
    """A compiled model on disk; ``manifest`` is the parsed manifest.json."""

    path: Path
    manifest: dict[str, Any] = field(repr=False)

    @property
    def artifact_id(self) -> str:
        return self.manifest["artifact_id"]

    @property
    def target_name(self) -> str:
        return self.manifest["target"]["name"]

    @property
    def library_path(self) -> Path:
        return self.path / self.manifest["library"]

    @property
    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec.from_dict(d) for d in self.manifest["inputs"]]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec.from_dict(d) for d in self.manifest["outputs"]]

    @property
    def measure_protocol(self) -> MeasureProtocol:
        """The protocol its target profile declared when it was compiled (defaults for older artifacts)."""
        return MeasureProtocol.from_dict(self.manifest.get("measure") or {})

    @property
    def size_bytes(self) -> int:
        return sum((self.path / name).stat().st_size for name in self.manifest["files"])

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), **self.manifest}

    @classmethod
    def open(cls, path: Path | str, *, verify: bool = True) -> "CompiledArtifact":
        """Open an artifact directory; with ``verify`` check every file's sha256."""
        path = Path(path)
        manifest_path = path / MANIFEST_NAME
        if not manifest_path.is_file():
            raise ArtifactError(f"{path} is not an edgekit artifact (no {MANIFEST_NAME})",
                                hint="pass the directory printed by `edgekit compile`")
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as exc:
            raise ArtifactError(f"{manifest_path} is corrupt: {exc}") from None
        if manifest.get("schema_version") != SCHEMA_VERSION:
            raise ArtifactError(
                f"{manifest_path}: schema_version {manifest.get('schema_version')!r}, this edgekit reads "
                f"{SCHEMA_VERSION}", hint="recompile the model with this edgekit")
        artifact = cls(path=path, manifest=manifest)
        if verify:
            artifact.verify()
        return artifact

    def verify(self) -> None:
        for name, expected in self.manifest["files"].items():
            file = self.path / name
            if not file.is_file():
                raise ArtifactError(f"artifact {self.path}: file {name} is missing")
            actual = sha256_file(file)
            if actual != expected:
                raise ArtifactError(
                    f"artifact {self.path}: sha256 of {name} is {actual[:16]}..., manifest says {expected[:16]}...",
                    hint="the file was changed or truncated after compile; recompile it")


@dataclass(frozen=True, kw_only=True)
class LatencyReport:
    """Timing of one artifact on one device; every sample is kept."""

    artifact_id: str
    target: str
    device: dict[str, Any]  # fingerprint: host, machine, cpu model, kernel, governor, load...
    threads: int
    warmup: int
    samples_ms: list[float]
    stats: dict[str, float]  # median_ms, mean_ms, p90_ms, p99_ms, min_ms, max_ms, stdev_ms, cv
    output_check: dict[str, Any]  # passed, max_abs_error, atol, rtol
    emulated: bool = False  # measured under qemu: latency is meaningless and never used
    kernels: list[dict[str, Any]] = field(default_factory=list)  # per-kernel timings, when measured
    warmup_runs: int | None = None  # untimed runs really made: `warmup`, then until the timings settled
    warmup_settled: bool | None = None  # None: a fixed warm-up was asked for
    stopping: dict[str, Any] = field(default_factory=dict)  # rule (fixed | ci), why it stopped, the interval then
    clocks: dict[str, Any] = field(default_factory=dict)  # {"before", "after"}: governors, freqs, temperatures
    memory: dict[str, Any] = field(default_factory=dict)  # peak_rss_bytes of the run on the device, runtime_rss...
    warnings: list[str] = field(default_factory=list)  # board not at speed, interval wider than asked

    @property
    def median_ms(self) -> float:
        return self.stats["median_ms"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "artifact_id": self.artifact_id,
            "target": self.target,
            "device": self.device,
            "threads": self.threads,
            "warmup": self.warmup,
            "emulated": self.emulated,
            "stats": self.stats,
            "output_check": self.output_check,
            "samples_ms": self.samples_ms,
            "kernels": self.kernels,
            "warmup_runs": self.warmup_runs,
            "warmup_settled": self.warmup_settled,
            "stopping": self.stopping,
            "clocks": self.clocks,
            "memory": self.memory,
            "warnings": self.warnings,
        }

    @classmethod
    def from_runner(cls, *, exit_status: int, stdout: str, stderr: str, protocol: MeasureProtocol, where: str,
                    command: str | None = None, artifact_id: str | None = None,
                    device_extra: dict[str, Any] | None = None, check_outputs: bool = True) -> "LatencyReport":
        """What the device runner (edgekit/onboard/runner.py) printed and returned -> a report, or its error.

        The one reading of runner output, for this machine (``edgekit.run``) and for boards (deploy): each
        runner exit maps to the same error wherever it ran.  ``where`` names the machine in messages
        (the SSH host, or "local"); ``exit_status`` is 128 + N for a process killed by signal N, and -1
        when the signal is unknown (SSH).  Raises ``OutputMismatchError`` when ``check_outputs`` and the
        outputs differ from the host's reference.
        """
        from edgekit.errors import (ArchitectureMismatchError, DeviceRuntimeError, OutputMismatchError,
                                    RemoteCommandError, RunnerCrashError, RunnerTimeoutError, UploadCorruptError)
        from edgekit.onboard import runner

        data = _last_json_line(stdout)
        common = dict(host=where, command=command, exit_status=exit_status, stderr=stderr)
        what = artifact_id or data.get("artifact_id") or "the artifact"
        # the runner's own limit; "Timeout (" is faulthandler's backstop when the GIL was held; 124/137: `timeout`
        if exit_status in (runner.EXIT_TIME_LIMIT, 124, 137) or (exit_status == 1 and "Timeout (" in stderr):
            raise RunnerTimeoutError(f"runner exceeded its time limit of {protocol.time_limit_s:g} s and was stopped",
                                     hint="the model hangs on this device or the limit is too short (--time-limit)",
                                     **common)
        if exit_status == -1 or exit_status >= 128:
            signal = "a signal" if exit_status == -1 else f"signal {exit_status - 128}"
            raise RunnerCrashError(f"runner crashed (killed by {signal}) while running {what}",
                                   hint="the library crashes on this device; see the stack in stderr", **common)
        if exit_status == runner.EXIT_NO_RUNTIME:
            raise DeviceRuntimeError(f"TVM runtime cannot be imported on the device: {data.get('message')}",
                                     hint="run `edgekit device setup`", **common)
        if exit_status == runner.EXIT_LOAD_FAILED:
            library, machine = data.get("library_elf_machine"), data.get("device_machine")
            if library and machine and ELF_MACHINE_BY_ARCH.get(machine) != library:
                raise ArchitectureMismatchError(f"library is {library}, the device is {machine}", **common)
            raise DeviceRuntimeError(f"the device's TVM runtime could not load the library: {data.get('message')}",
                                     **common)
        if exit_status == runner.EXIT_INTEGRITY:
            raise UploadCorruptError(f"artifact files changed on the device: {data.get('message')}", **common)
        if exit_status != 0 or not data.get("ok"):
            raise RemoteCommandError(f"runner failed: {data.get('message') or 'no report'}", **common)
        samples = list(data.get("samples_ms") or [])
        device = {**(data.get("device") or {}), **(device_extra or {})}
        emulated = bool(data.get("emulated") or device.get("emulated"))
        stats = summarize(samples, protocol.confidence) if samples else {}
        if emulated:
            stats = {**stats, "emulated": True}
        clocks = {"before": data["clocks_before"], "after": data["clocks_after"]} if "clocks_before" in data else {}
        stopping = dict(data.get("stopping") or {})
        report = cls(
            artifact_id=data["artifact_id"], target=data["target"], device=device,
            threads=int(data.get("threads", protocol.threads)), warmup=int(data.get("warmup", protocol.warmup)),
            samples_ms=samples, stats=stats, output_check=data["output_check"], emulated=emulated,
            kernels=list(data.get("kernels") or []), warmup_runs=data.get("warmup_runs"),
            warmup_settled=data.get("warmup_settled"), stopping=stopping,
            clocks=clocks, memory=dict(data.get("memory") or {}),
            warnings=board_warnings(clocks.get("before"), clocks.get("after")) + stopping_warnings(stopping))
        check = report.output_check
        if check_outputs and not check["passed"]:
            raise OutputMismatchError(
                f"{where}: outputs of {report.artifact_id} differ from the host reference by up to "
                f"{check['max_abs_error']:.3g} (atol {check['atol']:g}, rtol {check['rtol']:g})")
        return report

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LatencyReport":
        return cls(
            artifact_id=d["artifact_id"], target=d["target"], device=d["device"], threads=d["threads"],
            warmup=d["warmup"], samples_ms=list(d["samples_ms"]), stats=dict(d["stats"]),
            output_check=dict(d["output_check"]), emulated=d.get("emulated", False),
            kernels=list(d.get("kernels", [])), warmup_runs=d.get("warmup_runs"),
            warmup_settled=d.get("warmup_settled"), stopping=d.get("stopping") or {},
            clocks=d.get("clocks") or {}, memory=d.get("memory") or {}, warnings=list(d.get("warnings") or []),
        )


def _last_json_line(stdout: str) -> dict[str, Any]:
    """The runner prints one JSON object last; anything before it (a library's chatter) is not ours."""
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return {}
    return {}
