"""`edgekit device check` and `edgekit device setup`: what a device lacks, and installing its runtime.

check: arch (the artifact's ELF machine vs ``uname -m``), glibc, python, numpy and TVM runtime
versions (same major.minor as the compiler), free disk, CPU governor, load.  Each finding says how
to fix it.

setup: installs the TVM runtime into ``ROOT/runtime/site-packages`` on the device.  Method
``bundle`` (the default) needs no registry on the device: the host builds a runtime bundle for the
device's platform -- from its own installed packages when the platforms match, else from wheels it
downloads (``pip download --platform``) or finds in ``--wheels DIR`` -- drops TVM's 250 MB compiler
library, uploads one tarball, and the device agent verifies its sha256 and unpacks it atomically.
Method ``pip`` runs ``python3 -m pip install --user`` on the device (it needs registry access).
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.deploy.deploy import DEFAULT_ROOT, DEVICE_ENV, DeviceSession, probe_device, runtime_problems
from edgekit.deploy.remote import RemoteHost
from edgekit.errors import DeviceRuntimeError, RemoteCommandError, ToolchainError, UploadCorruptError

# What the device runtime is made of (DESIGN.md section 8: pin apache-tvm-ffi).  ml_dtypes 0.7.0's
# extension takes 1.3 s to import (0.6.0: 0.02 s), paid by every runner start on the board: 2.7 s -> 1.4 s
# before the first inference here, several times that on a Pi.
RUNTIME_PACKAGES = {"apache-tvm": "0.27.0.post1", "apache-tvm-ffi": "0.1.14.post1", "numpy": None,
                    "ml_dtypes": "0.6.0", "typing_extensions": None}
# Names the cached runtime bundles, wheel folders and unpacked sites: a new pin makes new ones.
RUNTIME_TAG = "-".join(f"{name.replace('apache-', '')}{v}" for name, v in RUNTIME_PACKAGES.items() if v)
# Import names and dist-info prefixes of those packages, for bundling from this machine.
_LOCAL_TOP_LEVEL = ("tvm", "tvm_ffi", "numpy", "numpy.libs", "ml_dtypes", "typing_extensions.py")
_DIST_PREFIXES = ("apache_tvm-", "apache_tvm_ffi-", "numpy-", "ml_dtypes-", "typing_extensions-")
_SKIP = ("libtvm_compiler.so", "__pycache__")
MIN_FREE_BYTES = 200 << 20


@dataclass
class Finding:
    name: str
    ok: bool
    value: Any
    required: str | None = None
    fix: str | None = None
    severity: str = "error"  # error: blocks a deploy; warning: measurements may be off

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "value": self.value, "required": self.required, "fix": self.fix,
                "severity": self.severity}


@dataclass
class CheckReport:
    host: str
    target: str
    facts: dict[str, Any]
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(f.ok or f.severity != "error" for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        return {"host": self.host, "target": self.target, "ok": self.ok, "facts": self.facts,
                "findings": [f.to_dict() for f in self.findings]}

    def text(self) -> str:
        lines = [f"{self.host} ({self.target}): {'ready' if self.ok else 'NOT READY'}"]
        for f in self.findings:
            mark = "ok " if f.ok else ("!! " if f.severity == "error" else "?  ")
            need = f" (needs {f.required})" if f.required and not f.ok else ""
            lines.append(f"  {mark}{f.name:<10} {f.value}{need}")
            if not f.ok and f.fix:
                lines.append(f"       fix: {f.fix}")
        return "\n".join(lines)


def _version_tuple(text: str | None) -> tuple[int, ...]:
    out = []
    for part in (text or "").split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


def check_device(remote: RemoteHost, target, *, root: str = DEFAULT_ROOT, elf_machine: str | None = None,
                 tvm_version: str | None = None) -> CheckReport:
    """Probe the device and compare it with what ``target`` (a profile or its name) needs."""
    from edgekit.targets import ELF_MACHINE_BY_ARCH, load_target

    profile = load_target(target)
    facts = probe_device(remote, root)
    report = CheckReport(host=remote.name, target=profile.name, facts=facts)
    add = report.findings.append
    setup = f"edgekit device setup --target {profile.name} --host {remote.spec.name}"

    machine = facts.get("machine")
    want_elf = elf_machine or profile.elf_machine
    have_elf = ELF_MACHINE_BY_ARCH.get(machine, machine)
    add(Finding("arch", have_elf == want_elf, machine, f"{profile.arch} ({want_elf} artifacts)",
                fix=f"this device needs a target with arch = \"{machine}\"; compile for that target instead"))
    glibc = facts.get("glibc")
    add(Finding("glibc", glibc is not None and _version_tuple(glibc) >= _version_tuple(profile.runtime.glibc),
                glibc, f">= {profile.runtime.glibc}",
                fix="the prebuilt TVM wheels need a newer glibc; upgrade the device OS"))
    py = facts.get("python")
    add(Finding("python", _version_tuple(py) >= _version_tuple(profile.runtime.python), py,
                f">= {profile.runtime.python}", fix="install python3 >= " + profile.runtime.python))
    packages = facts.get("packages") or {}
    add(Finding("numpy", bool(packages.get("numpy")), packages.get("numpy") or "missing", "any", fix=setup))
    tvm = packages.get("apache-tvm")
    want_tvm = tvm_version or profile.runtime.tvm
    tvm_ok = not runtime_problems({**facts, "packages": {**packages, "numpy": "x"}}, tvm_version) and \
        bool(tvm) and _version_tuple(tvm)[:2] == _version_tuple(want_tvm)[:2]
    value = tvm or "missing"
    if tvm and not facts.get("tvm_runtime_lib"):
        value = f"{tvm} (libtvm_runtime.so missing)"
    add(Finding("tvm", tvm_ok, value, f"{'.'.join(want_tvm.split('.')[:2])}.x runtime", fix=setup))
    add(Finding("tvm-ffi", bool(packages.get("apache-tvm-ffi")), packages.get("apache-tvm-ffi") or "missing",
                RUNTIME_PACKAGES["apache-tvm-ffi"], fix=setup))
    free = facts.get("free_bytes")
    add(Finding("disk", free is not None and free >= MIN_FREE_BYTES,
                f"{free / 2**20:.0f} MiB free" if free is not None else "unknown",
                f">= {MIN_FREE_BYTES >> 20} MiB", fix=f"free space under {facts.get('root')}"))
    governor = facts.get("governor")
    add(Finding("governor", governor in (None, "performance"), governor or "not readable", "performance",
                fix="echo performance | sudo tee /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor "
                    "(other governors change clocks while measuring)", severity="warning"))
    load = (facts.get("loadavg") or [0])[0]
    cpus = facts.get("cpu_count") or 1
    add(Finding("load", load < 0.5 * cpus, f"{load:.2f} (1 min, {cpus} CPUs)", f"< {0.5 * cpus:.1f}",
                fix="stop other work on the device before measuring", severity="warning"))
    add(Finding("emulated", not facts.get("emulated"), bool(facts.get("emulated")), "a real CPU",
                fix="latency under emulation is not a measurement; use the real board", severity="warning"))
    return report


# -- setup ------------------------------------------------------------------------------------------------------

def cache_dir() -> Path:
    base = os.environ.get("EDGEKIT_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "edgekit")
    return Path(base).expanduser()


def runtime_bundle(machine: str, python: str, *, wheels_dir: str | Path | None = None,
                   cache: Path | None = None) -> Path:
    """A tar.gz of the device runtime's site-packages for ``machine`` / ``python`` (cached)."""
    import platform

    pyver = ".".join(python.split(".")[:2])
    cache = Path(cache or cache_dir())
    tag = f"runtime-{machine}-cp{pyver.replace('.', '')}-{RUNTIME_TAG}"
    bundle = cache / f"{tag}.tar.gz"
    if bundle.is_file() and wheels_dir is None:
        return bundle
    cache.mkdir(parents=True, exist_ok=True)
    here = platform.machine() == machine and "%d.%d" % sys.version_info[:2] == pyver
    tmp = bundle.with_suffix(f".tmp{os.getpid()}")
    with tarfile.open(tmp, "w:gz", compresslevel=3) as tar:
        if wheels_dir is None and here and _local_runtime_matches():
            _add_local_packages(tar)
        else:
            wheels = Path(wheels_dir) if wheels_dir else download_wheels(machine, pyver, cache)
            _add_wheels(tar, wheels)
    tmp.rename(bundle)
    return bundle


def _local_runtime_matches() -> bool:
    from importlib import metadata

    try:
        return all(metadata.version(name) == v for name, v in RUNTIME_PACKAGES.items() if v)
    except metadata.PackageNotFoundError:
        return False


def _site_packages() -> Path:
    import numpy

    return Path(numpy.__file__).resolve().parent.parent


def _skip(name: str) -> bool:
    return any(part in _SKIP for part in name.split("/"))


def _add_local_packages(tar: tarfile.TarFile) -> None:
    site = _site_packages()
    for entry in sorted(site.iterdir()):
        if entry.name in _LOCAL_TOP_LEVEL or (entry.name.startswith(_DIST_PREFIXES) and entry.name.endswith(".dist-info")):
            tar.add(entry, arcname=entry.name, filter=lambda ti: None if _skip(ti.name) else _plain(ti))


def _plain(ti: tarfile.TarInfo) -> tarfile.TarInfo:
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    return ti


def _add_wheels(tar: tarfile.TarFile, wheels: Path) -> None:
    found = sorted(wheels.glob("*.whl"))
    if not found:
        raise ToolchainError(f"no wheels in {wheels}", hint="download them with pip download --platform ...")
    for wheel in found:
        with zipfile.ZipFile(wheel) as z:
            for info in z.infolist():
                if info.is_dir() or _skip(info.filename) or ".data/" in info.filename.split("/", 1)[0] + "/":
                    continue
                data = z.read(info)
                ti = tarfile.TarInfo(info.filename)
                ti.size = len(data)
                ti.mode = 0o755 if (info.external_attr >> 16) & 0o111 else 0o644
                tar.addfile(ti, io.BytesIO(data))


def download_wheels(machine: str, pyver: str, cache: Path) -> Path:
    """Wheels of the runtime for the device's platform, downloaded on the host (the device needs no registry)."""
    dest = cache / f"wheels-{machine}-cp{pyver.replace('.', '')}-{RUNTIME_TAG}"
    stamp = dest / ".complete"
    if stamp.is_file():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    specs = [f"{name}=={v}" if v else name for name, v in RUNTIME_PACKAGES.items()]
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(dest), "--no-deps",
                           "--only-binary=:all:", "--platform", f"manylinux_2_28_{machine}", "--python-version",
                           pyver, "--implementation", "cp", *specs], capture_output=True, text=True)
    if done.returncode != 0:
        raise ToolchainError(f"cannot download the TVM runtime wheels for {machine} / Python {pyver}: "
                             f"{done.stderr.strip()[-400:]}",
                             hint="give wheels you downloaded elsewhere with --wheels DIR")
    stamp.write_text("ok\n")
    return dest


def setup_device(remote: RemoteHost, target, *, root: str = DEFAULT_ROOT, method: str = "bundle",
                 wheels_dir: str | Path | None = None, cache: Path | None = None,
                 log=lambda msg: None) -> CheckReport:
    """Install the TVM runtime on the device, then check it again; return the new check report."""
    facts = probe_device(remote, root)
    if method == "pip":
        specs = [f"{name}=={v}" if v else name for name, v in RUNTIME_PACKAGES.items()]
        result = remote.run(["python3", "-m", "pip", "install", "--user", "--quiet", *specs], timeout_s=1800,
                            check=False)
        if not result.ok:
            raise DeviceRuntimeError("pip on the device could not install the runtime", host=remote.name,
                                     command=result.command, exit_status=result.exit_status, stderr=result.stderr,
                                     hint="a device without registry access: use --method bundle")
    elif method == "bundle":
        bundle = runtime_bundle(facts["machine"], facts["python"], wheels_dir=wheels_dir, cache=cache)
        digest = hashlib.sha256(bundle.read_bytes()).hexdigest()
        log(f"{remote.name}: uploading runtime bundle {bundle.name} ({bundle.stat().st_size >> 20} MiB)")
        session = DeviceSession(remote, root, 30.0, request_timeout_s=600.0)
        try:
            part = f"runtime-{digest[:16]}.tar.gz.part"
            remote.put(bundle, f"{session.state['tmp']}/{part}", timeout_s=1800)
            reply = session.request("install_runtime", tarball=part, sha256=digest)
        finally:
            session.close()
        if not reply.get("ok"):
            if reply.get("error") == "sha256":
                raise UploadCorruptError("runtime bundle arrived corrupted (sha256 mismatch)", host=remote.name)
            raise RemoteCommandError(f"device could not install the runtime: {reply}", host=remote.name)
    else:
        raise ValueError(f"unknown setup method {method!r}; use 'bundle' or 'pip'")
    return check_device(remote, target, root=root)


def import_check(remote: RemoteHost, root: str = DEFAULT_ROOT) -> str:
    """Really import the runtime on the device (slow on a board: seconds); return its version."""
    script = ("import sys, os; site = os.path.expanduser(sys.argv[1]); os.path.isdir(site) and sys.path.insert(0, site);"
              "sys.modules.setdefault('torch', None); import tvm, numpy; print(tvm.__version__)")
    result = remote.run(["python3", "-c", script, f"{root}/runtime/site-packages"], env=DEVICE_ENV,
                        timeout_s=300, check=False)
    if not result.ok:
        raise DeviceRuntimeError("the TVM runtime does not import on the device", host=remote.name,
                                 command=result.command, exit_status=result.exit_status, stderr=result.stderr)
    return result.stdout.strip()
