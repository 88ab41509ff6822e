"""`edgekit device setup --install onnxruntime`: a peer runtime for `edgekit compare`, installed from the host.

The board needs no registry.  The host picks the wheel for the device's platform (machine, CPython minor,
glibc floor of its manylinux tag) from ``--wheels DIR``, else from its cache, else downloads it with
``pip download --platform`` -- the same version as the host's own ONNX Runtime, so both sides of a comparison
run the same release.  It uploads the wheel over SFTP; the device checks its sha256 and unpacks it into
``ROOT/peer-runtimes/onnxruntime`` (a private directory: nothing of the device's python is touched), under a
temporary name first, then renamed, so an interrupted setup leaves the old install or none.  The peer runner
puts that directory on its path.  numpy, which ONNX Runtime needs, is the TVM runtime's.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

from edgekit.deploy.remote import RemoteHost
from edgekit.errors import DeviceRuntimeError, ToolchainError, UploadCorruptError, UsageError

# Peer runtimes `device setup` can install, by wheel project name (executorch's wheel needs torch: pip it there).
INSTALLABLE_PEERS = ("onnxruntime",)
PEER_RUNTIMES_DIR = "peer-runtimes"

# Run by the device's python3: check the upload, unpack it beside the final place, swap it in.
_UNPACK = r"""
import hashlib, os, shutil, sys, zipfile
wheel, digest, dest = sys.argv[1], sys.argv[2], sys.argv[3]
h = hashlib.sha256()
with open(wheel, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
if h.hexdigest() != digest:
    os.unlink(wheel)
    print("sha256 mismatch")
    sys.exit(22)
tmp = dest + ".tmp%d" % os.getpid()
shutil.rmtree(tmp, ignore_errors=True)
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        path = z.extract(info, tmp)
        if (info.external_attr >> 16) & 0o111:
            os.chmod(path, 0o755)
old = dest + ".old%d" % os.getpid()
if os.path.isdir(dest):
    os.rename(dest, old)
os.rename(tmp, dest)
shutil.rmtree(old, ignore_errors=True)
os.unlink(wheel)
print("ok")
"""


def host_version(peer: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(peer)
    except metadata.PackageNotFoundError as exc:
        raise ToolchainError(f"{peer} is not installed on this machine, so no version to match on the device",
                             hint=f"pip install {peer}, or give its wheel for the device with --wheels DIR") from exc


def wheel_fits(wheel: Path, machine: str, python: str, glibc: str | None) -> bool:
    """Whether ``wheel``'s tags run on a device of ``machine`` (uname -m), CPython ``python``, glibc ``glibc``."""
    from packaging.utils import parse_wheel_filename

    cp = "cp" + "".join(python.split(".")[:2])
    floor = tuple(int(x) for x in (glibc or "0.0").split(".")[:2])
    for tag in parse_wheel_filename(wheel.name)[3]:
        if tag.interpreter not in (cp, "py3") or not tag.platform.endswith(machine):
            continue
        if tag.platform.startswith("manylinux_"):
            major, minor = (int(x) for x in tag.platform.split("_")[1:3])
            if (major, minor) <= floor:
                return True
        elif tag.platform.startswith("manylinux2014") and floor >= (2, 17):
            return True
    return False


def find_peer_wheel(peer: str, machine: str, python: str, glibc: str | None, *, wheels_dir: Path | str | None = None,
                    cache: Path | None = None) -> Path:
    """The peer's wheel for the device: the host's version where there is one that fits, from ``wheels_dir``
    (only), else the cache, else ``pip download`` into the cache."""
    from packaging.utils import parse_wheel_filename

    if peer not in INSTALLABLE_PEERS:
        raise UsageError(f"cannot install peer runtime {peer!r} on a device; installable: "
                         f"{', '.join(INSTALLABLE_PEERS)}")
    pyver = ".".join(python.split(".")[:2])

    def fitting(folder: Path) -> list[Path]:
        found = [w for w in folder.glob(f"{peer}-*.whl") if wheel_fits(w, machine, pyver, glibc)]
        return sorted(found, key=lambda w: parse_wheel_filename(w.name)[1], reverse=True)

    if wheels_dir is not None:
        found = fitting(Path(wheels_dir))
        if not found:
            raise ToolchainError(f"no {peer} wheel for {machine} / CPython {pyver} / glibc {glibc} in {wheels_dir}",
                                 hint=f"pip download {peer} --platform manylinux_2_28_{machine} --python-version "
                                      f"{pyver} --only-binary=:all: --no-deps -d {wheels_dir}")
        mine = [w for w in found if str(parse_wheel_filename(w.name)[1]) == _host_version_or_none(peer)]
        return (mine or found)[0]
    from edgekit.deploy.checks import cache_dir

    version = host_version(peer)
    folder = Path(cache or cache_dir()) / f"peer-wheels-{machine}-cp{pyver.replace('.', '')}"
    found = [w for w in fitting(folder) if str(parse_wheel_filename(w.name)[1]) == version] if folder.is_dir() else []
    if found:
        return found[0]
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(folder), "--no-deps",
                           "--only-binary=:all:", "--platform", f"manylinux_2_28_{machine}", "--python-version",
                           pyver, "--implementation", "cp", f"{peer}=={version}"], capture_output=True, text=True)
    found = [w for w in fitting(folder) if str(parse_wheel_filename(w.name)[1]) == version]
    if done.returncode != 0 or not found:
        raise ToolchainError(f"cannot download {peer} {version} for {machine} / CPython {pyver} / glibc {glibc}: "
                             f"{done.stderr.strip()[-400:] or 'no wheel fits the device'}",
                             hint="give a wheel downloaded elsewhere with --wheels DIR")
    return found[0]


def _host_version_or_none(peer: str) -> str | None:
    try:
        return host_version(peer)
    except ToolchainError:
        return None


def install_peer(remote: RemoteHost, peer: str, facts: dict, *, root: str, wheels_dir: Path | str | None = None,
                 cache: Path | None = None, log=lambda msg: None) -> dict:
    """Install ``peer`` into ROOT/peer-runtimes/PEER on the device; return what was installed."""
    wheel = find_peer_wheel(peer, facts["machine"], facts["python"], facts.get("glibc"), wheels_dir=wheels_dir,
                            cache=cache)
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    base = remote.run(["python3", "-c", "import os, sys; print(os.path.expanduser(sys.argv[1]))", root],
                      timeout_s=30).stdout.strip()
    folder = f"{base}/{PEER_RUNTIMES_DIR}"
    remote.run(["mkdir", "-p", folder], timeout_s=30)
    part = f"{folder}/.{wheel.name}.{digest[:16]}.part"
    log(f"{remote.name}: uploading {wheel.name} ({wheel.stat().st_size >> 20} MiB)")
    remote.put(wheel, part, timeout_s=1800)
    done = remote.run(["python3", "-c", _UNPACK, part, digest, f"{folder}/{peer}"], timeout_s=600, check=False)
    if done.exit_status == 22:
        raise UploadCorruptError(f"the {peer} wheel arrived corrupted (sha256 mismatch)", host=remote.name)
    if not done.ok:
        raise DeviceRuntimeError(f"the device could not unpack the {peer} wheel", host=remote.name,
                                 command=done.command, exit_status=done.exit_status, stderr=done.stderr)
    imported = import_peer(remote, peer, [f"{base}/runtime/site-packages", f"{folder}/{peer}"])
    return {"peer": peer, "version": imported, "wheel": wheel.name, "sha256": digest, "path": f"{folder}/{peer}"}


def import_peer(remote: RemoteHost, peer: str, sites: list[str]) -> str:
    """Import ``peer`` on the device as the peer runner will (those sites first); return its version."""
    script = ("import os, sys; sys.path[:0] = [s for s in sys.argv[1:] if os.path.isdir(s)]; "
              f"import {peer}; print({peer}.__version__)")
    done = remote.run(["python3", "-c", script, *sites], timeout_s=300, check=False)
    if not done.ok:
        raise DeviceRuntimeError(f"{peer} was unpacked but does not import on the device", host=remote.name,
                                 command=done.command, exit_status=done.exit_status, stderr=done.stderr)
    return done.stdout.strip().splitlines()[-1]
