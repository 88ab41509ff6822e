"""Target profiles: everything about a kind of device, as data (targets/*.toml).

A profile never holds an address or a credential; those come from ``--host``.
Built-in profiles are the repository's ``targets/`` directory, shipped as the
package data ``edgekit.builtin_targets`` (a symlink in the source tree, real files
in a wheel) and read with importlib.resources; a user adds or overrides profiles
with ``--targets-dir`` or ``EDGEKIT_TARGETS_DIR`` (``os.pathsep``-separated,
later directories win).

This module imports neither torch nor tvm, so ``edgekit targets list`` is fast.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar

from edgekit.errors import TargetProfileError, UnknownTargetError

BUILTIN_TARGETS_PACKAGE = "edgekit.builtin_targets"
TARGETS_DIR_ENV = "EDGEKIT_TARGETS_DIR"

KINDS = ("cpu", "cuda", "opencl")
# ELF e_machine names, as `readelf -h` prints them, keyed by `uname -m`.
ELF_MACHINE_BY_ARCH = {"x86_64": "x86-64", "aarch64": "aarch64", "armv7l": "arm"}


@dataclass(frozen=True, kw_only=True)
class RuntimeRequirements:
    """What the device must have to load an artifact built for this profile."""

    python: str = "3.10"  # minimum version
    tvm: str = "0.27"  # major.minor of the TVM runtime; must match the compiler's
    glibc: str = "2.27"  # minimum, the floor of the manylinux aarch64/x86 wheels
    cpu_features: tuple[str, ...] = ()  # as named in /proc/cpuinfo "Features"/"flags"
    notes: str = ""  # plain words on what this device needs beyond the above


@dataclass(frozen=True, kw_only=True)
class MeasureProtocol:
    """How one latency measurement is taken, on this machine or on a board.

    A profile's ``[measure]`` table sets the first four fields; compile writes them into the
    artifact's manifest (``CompiledArtifact.measure_protocol`` reads them back, so a measurement
    never looks the profile up again); flags and API arguments override them with ``with_overrides``.
    """

    warmup: int = 10  # untimed runs first
    repeats: int = 50  # timed samples, every one kept
    threads: int = 1  # TVM_NUM_THREADS on the device
    min_repeat_ms: float = 0.0  # a sample repeats the model until it lasts this long (0: one run a sample)
    kernels: bool = False  # also time every fused kernel alone
    kernel_repeats: int = 10
    time_limit_s: float = 300.0  # the runner stops itself after this long
    check_only: bool = False  # check outputs, take no timing
    # The stopping rule.  Off by default (0): a protocol that names `repeats` gets exactly that many samples,
    # which latency tables and reproducible reports rely on.  On: at least `repeats`, then more until the
    # median's confidence interval is within this fraction of it either side, or `time_cap_s` of timing.
    ci_target_ratio: float = 0.0
    time_cap_s: float = 10.0
    max_repeats: int = 10000
    confidence: float = 0.95  # of the median's interval, in every report
    # Warm-up continues past `warmup` runs until two windows of runs agree this closely, for at most warmup_cap_s.
    warmup_settle_ratio: float = 0.05
    warmup_cap_s: float = 2.0
    cpus: tuple[int, ...] = ()  # pin the runner to these CPU ids on the device (empty: wherever the OS puts it)

    # What a profile declares and a manifest stores; the rest is chosen per run.
    PROFILE_FIELDS: ClassVar[tuple[str, ...]] = ("warmup", "repeats", "threads", "min_repeat_ms")
    # What a profile may also declare; stored in the manifest only when it differs from the default, so
    # artifacts compiled from profiles that do not use them keep their manifests (and ids).
    OPTIONAL_PROFILE_FIELDS: ClassVar[tuple[str, ...]] = ("ci_target_ratio", "time_cap_s", "confidence",
                                                           "warmup_settle_ratio", "warmup_cap_s")

    def __post_init__(self):
        object.__setattr__(self, "cpus", tuple(int(c) for c in self.cpus))

    def with_overrides(self, **values) -> "MeasureProtocol":
        """This protocol with every value that is not None replaced (None: keep what it says)."""
        return replace(self, **{k: v for k, v in values.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cpus"] = list(self.cpus)
        return d

    def profile_dict(self) -> dict[str, Any]:
        defaults = MeasureProtocol()
        optional = {k: getattr(self, k) for k in self.OPTIONAL_PROFILE_FIELDS if getattr(self, k) != getattr(defaults, k)}
        return {**{k: getattr(self, k) for k in self.PROFILE_FIELDS}, **optional}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MeasureProtocol":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def protocol_value_problem(name: str, value) -> str | None:
    """What is wrong with a stopping-rule or warm-up value of a protocol (profile field or flag), or None."""
    if name == "confidence":
        return None if 0.5 <= value < 1.0 else f"must be in [0.5, 1), got {value}"
    if name in ("ci_target_ratio", "warmup_settle_ratio"):
        return None if 0.0 <= value < 1.0 else f"must be a fraction in [0, 1) (0: off), got {value}"
    if name in ("time_cap_s", "warmup_cap_s"):
        return None if value >= 0 else f"must be >= 0 seconds, got {value}"
    return None


@dataclass(frozen=True, kw_only=True)
class TargetProfile:
    name: str
    description: str
    kind: str  # cpu | cuda | opencl
    arch: str  # `uname -m` of the device (the host CPU for GPU targets)
    triple: str  # LLVM triple of the device CPU
    tvm_target: dict[str, Any]  # the full TVM target, "host" included for GPUs
    cross_compiler: str | None = None  # C++ compiler that links the library; None = this machine's
    cuda_arch: str | None = None  # e.g. "sm_87", for kind == "cuda"
    runtime: RuntimeRequirements = field(default_factory=RuntimeRequirements)
    measure: MeasureProtocol = field(default_factory=MeasureProtocol)
    # fp32 GFLOP/s one core can reach: frequency x FMA lanes x 2 (the cost card's yardstick); None: unknown
    peak_gflops_per_core: float | None = None
    source: Path | None = None  # the file it was read from

    @property
    def elf_machine(self) -> str:
        return ELF_MACHINE_BY_ARCH[self.arch]

    @property
    def is_native(self) -> bool:
        """True when this machine can load and run the artifact itself."""
        import platform

        return self.kind == "cpu" and self.arch == platform.machine() and self.cross_compiler is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "kind": self.kind,
            "arch": self.arch,
            "triple": self.triple,
            "tvm_target": self.tvm_target,
            "cross_compiler": self.cross_compiler,
            "cuda_arch": self.cuda_arch,
            "elf_machine": self.elf_machine,
            "runtime": {
                "python": self.runtime.python,
                "tvm": self.runtime.tvm,
                "glibc": self.runtime.glibc,
                "cpu_features": list(self.runtime.cpu_features),
                "notes": self.runtime.notes,
            },
            "measure": self.measure.profile_dict(),
            "peak_gflops_per_core": self.peak_gflops_per_core,
            "source": str(self.source) if self.source else None,
        }


def builtin_profile_files() -> dict[str, Path]:
    """The profiles shipped in the package, by name."""
    from importlib.resources import files

    found = {}
    for entry in files(BUILTIN_TARGETS_PACKAGE).iterdir():
        if entry.name.endswith(".toml") and entry.is_file():
            found[entry.name[:-len(".toml")]] = Path(str(entry))  # installed as files: a wheel is unpacked
    return dict(sorted(found.items()))


def target_dirs(extra_dirs: list[Path | str] | None = None) -> list[Path]:
    """Directories searched for user profiles (after the built-in ones), lowest priority first."""
    dirs = []
    env = os.environ.get(TARGETS_DIR_ENV)
    if env:
        dirs += [Path(p) for p in env.split(os.pathsep) if p]
    dirs += [Path(p) for p in (extra_dirs or [])]
    return dirs


def _profile_files(extra_dirs) -> dict[str, Path]:
    files = builtin_profile_files()
    for directory in target_dirs(extra_dirs):
        if not directory.is_dir():
            continue
        for path in sorted(directory.glob("*.toml")):
            files[path.stem] = path  # later directories override earlier ones
    return files


def list_targets(extra_dirs=None) -> list[str]:
    return sorted(_profile_files(extra_dirs))


def load_target(name_or_path: str | Path, extra_dirs=None) -> TargetProfile:
    """Load a profile by name (``rpi4``) or by the path of a TOML file."""
    if isinstance(name_or_path, TargetProfile):
        return name_or_path
    text = str(name_or_path)
    if text.endswith(".toml") or os.sep in text:
        path = Path(text)
        if not path.is_file():
            raise UnknownTargetError(f"target profile file not found: {path}")
        return parse_target_file(path)
    files = _profile_files(extra_dirs)
    if text not in files:
        raise UnknownTargetError(
            f"unknown target '{text}'; available: {', '.join(sorted(files)) or '(none)'}",
            hint=f"add {text}.toml to a directory named by --targets-dir or ${TARGETS_DIR_ENV}",
        )
    return parse_target_file(files[text])


def parse_target_file(path: Path) -> TargetProfile:
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise TargetProfileError(path, None, f"not valid TOML ({exc})") from None
    except OSError as exc:
        raise TargetProfileError(path, None, f"cannot read ({exc.strerror})") from None
    return _ProfileReader(path, data).read()


class _ProfileReader:
    """Reads one profile table, naming the file and field in every complaint."""

    TOP_LEVEL = {"description", "kind", "arch", "triple", "tvm_target", "cross_compiler", "cuda_arch",
                 "runtime", "measure", "peak_gflops_per_core"}

    def __init__(self, path: Path, data: dict):
        self.path = path
        self.data = data

    def fail(self, field_name: str, problem: str, hint: str | None = None):
        raise TargetProfileError(self.path, field_name, problem, hint=hint)

    def get(self, table: dict, key: str, kind: type | tuple, *, prefix: str = "", required=True, default=None):
        name = f"{prefix}{key}"
        if key not in table:
            if required:
                self.fail(name, "missing")
            return default
        value = table[key]
        if isinstance(value, bool) and kind is not bool and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            self.fail(name, f"expected {_type_name(kind)}, got a boolean")
        if not isinstance(value, kind):
            self.fail(name, f"expected {_type_name(kind)}, got {type(value).__name__} {value!r}")
        return value

    def read(self) -> TargetProfile:
        d = self.data
        unknown = sorted(set(d) - self.TOP_LEVEL)
        if unknown:
            self.fail(unknown[0], "unknown field", hint=f"allowed fields: {', '.join(sorted(self.TOP_LEVEL))}")
        kind = self.get(d, "kind", str)
        if kind not in KINDS:
            self.fail("kind", f"'{kind}' is not one of {', '.join(KINDS)}")
        arch = self.get(d, "arch", str)
        if arch == "native":  # the host profile: whatever machine edgekit runs on
            import platform

            arch = platform.machine()
        if arch not in ELF_MACHINE_BY_ARCH:
            self.fail("arch", f"'{arch}' is not one of {', '.join(ELF_MACHINE_BY_ARCH)}")
        tvm_target = self.get(d, "tvm_target", (dict, str))
        if isinstance(tvm_target, str):
            tvm_target = {"tag": tvm_target}
        if "kind" not in tvm_target and "tag" not in tvm_target:
            self.fail("tvm_target", "needs 'kind' (e.g. \"llvm\") or 'tag'")
        cuda_arch = self.get(d, "cuda_arch", str, required=kind == "cuda")
        if cuda_arch is not None and not cuda_arch.startswith("sm_"):
            self.fail("cuda_arch", f"'{cuda_arch}' should look like 'sm_87'")
        runtime = d.get("runtime", {})
        if not isinstance(runtime, dict):
            self.fail("runtime", "expected a table")
        measure = d.get("measure", {})
        if not isinstance(measure, dict):
            self.fail("measure", "expected a table")
        return TargetProfile(
            name=self.path.stem,
            description=self.get(d, "description", str),
            kind=kind,
            arch=arch,
            triple=self.get(d, "triple", str),
            tvm_target=tvm_target,
            cross_compiler=self.get(d, "cross_compiler", str, required=False),
            cuda_arch=cuda_arch,
            runtime=self._runtime(runtime),
            measure=self._measure(measure),
            peak_gflops_per_core=self._peak(d),
            source=self.path,
        )

    def _peak(self, d: dict) -> float | None:
        peak = self.get(d, "peak_gflops_per_core", (int, float), required=False)
        if peak is not None and not peak > 0:
            self.fail("peak_gflops_per_core", f"must be > 0, got {peak}")
        return None if peak is None else float(peak)

    def _runtime(self, t: dict) -> RuntimeRequirements:
        self._no_unknown(t, "runtime.", {"python", "tvm", "glibc", "cpu_features", "notes"})
        features = self.get(t, "cpu_features", list, prefix="runtime.", required=False, default=[])
        if not all(isinstance(f, str) for f in features):
            self.fail("runtime.cpu_features", "expected a list of strings")
        defaults = RuntimeRequirements()
        return RuntimeRequirements(
            python=self.get(t, "python", str, prefix="runtime.", required=False, default=defaults.python),
            tvm=self.get(t, "tvm", str, prefix="runtime.", required=False, default=defaults.tvm),
            glibc=self.get(t, "glibc", str, prefix="runtime.", required=False, default=defaults.glibc),
            cpu_features=tuple(features),
            notes=self.get(t, "notes", str, prefix="runtime.", required=False, default=""),
        )

    def _measure(self, t: dict) -> MeasureProtocol:
        self._no_unknown(t, "measure.", set(MeasureProtocol.PROFILE_FIELDS + MeasureProtocol.OPTIONAL_PROFILE_FIELDS))
        defaults = MeasureProtocol()
        values = {}
        for key in ("warmup", "repeats", "threads"):
            value = self.get(t, key, int, prefix="measure.", required=False, default=getattr(defaults, key))
            low = 0 if key == "warmup" else 1
            if value < low:
                self.fail(f"measure.{key}", f"must be >= {low}, got {value}")
            values[key] = value
        min_ms = self.get(t, "min_repeat_ms", (int, float), prefix="measure.", required=False,
                          default=defaults.min_repeat_ms)
        if min_ms < 0:
            self.fail("measure.min_repeat_ms", f"must be >= 0, got {min_ms}")
        for key in MeasureProtocol.OPTIONAL_PROFILE_FIELDS:
            value = self.get(t, key, (int, float), prefix="measure.", required=False, default=getattr(defaults, key))
            problem = protocol_value_problem(key, value)
            if problem:
                self.fail(f"measure.{key}", problem)
            values[key] = float(value)
        return MeasureProtocol(min_repeat_ms=float(min_ms), **values)

    def _no_unknown(self, table: dict, prefix: str, allowed: set[str]):
        unknown = sorted(set(table) - allowed)
        if unknown:
            self.fail(prefix + unknown[0], "unknown field", hint=f"allowed: {', '.join(sorted(allowed))}")


def _type_name(kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {str: "a string", int: "an integer", float: "a number", dict: "a table", list: "a list", bool: "true/false"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)
