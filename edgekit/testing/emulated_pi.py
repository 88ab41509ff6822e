"""An emulated Raspberry Pi 4: an arm64 Debian userland under qemu-user, reached over a real sshd.

How it is made (no emulation needed to build it):
  1. ``mmdebstrap --variant=extract --architectures=arm64`` extracts python3 and friends for arm64;
  2. ``pip install --target --platform manylinux_2_28_aarch64`` adds the aarch64 wheels of apache-tvm,
     apache-tvm-ffi and numpy (TVM's compiler library is deleted: a device only needs the runtime);
  3. qemu-user-static is registered in binfmt_misc, so every arm64 ELF the device runs goes through qemu;
  4. an sshd with ``ChrootDirectory`` on that tree, inside a private mount namespace (``unshare --mount``,
     /proc and /dev bound in), runs every remote command as arm64 while SFTP stays native.

The userland is cached under ``$EDGEKIT_CACHE`` (default /var/cache/edgekit-test) so later runs reuse it.
Latency measured here is emulated and edgekit marks it so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from edgekit.deploy.checks import RUNTIME_PACKAGES, RUNTIME_TAG
from edgekit.testing.sshd import DEFAULT_USER, SshDevice, create_device

CACHE_ENV = "EDGEKIT_CACHE"
DEFAULT_CACHE = Path("/var/cache/edgekit-test")
SUITE = "bookworm"
PACKAGES = "python3,libstdc++6,dash,coreutils,libc-bin"
# The runtime the rpi4 profile expects; the compiler's versions (DESIGN.md section 8).
WHEELS = tuple(f"{name}=={v}" if v else name for name, v in RUNTIME_PACKAGES.items())
PLATFORM = "manylinux_2_28_aarch64"
PYTHON_VERSION = "3.11"
BINFMT_ENTRY = "qemu-aarch64"
BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
# The key of the cached tree: change it when what goes in changes.
USERLAND_KEY = f"pi4-bookworm-{RUNTIME_TAG}-v2"


class EmulationUnavailable(RuntimeError):
    pass


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def _mirror() -> str:
    """The Debian mirror this machine's apt uses (the first URIs line), else deb.debian.org."""
    for path in (Path("/etc/apt/sources.list.d/debian.sources"),):
        if path.is_file():
            for line in path.read_text().splitlines():
                if line.startswith("URIs:"):
                    uri = line.split()[1]
                    if "security" not in uri:
                        return uri
    return "http://deb.debian.org/debian"


def _require(tool: str, package: str) -> str:
    found = shutil.which(tool)
    if found is None:
        raise EmulationUnavailable(f"{tool} not found; install the Debian package {package} "
                                   "(tools/setup-system.sh)")
    return found


def _log(msg: str) -> None:
    print(f"[emulated-pi] {msg}", file=sys.stderr, flush=True)


def build_userland(cache: Path | None = None) -> Path:
    """The arm64 userland with python3, numpy and the TVM runtime; built once, then reused."""
    cache = Path(cache or cache_dir())
    rootfs = cache / USERLAND_KEY
    if (rootfs / ".edgekit-ready").is_file():
        return rootfs
    _require("mmdebstrap", "mmdebstrap")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f"{USERLAND_KEY}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    started = time.monotonic()
    _log(f"building arm64 userland in {rootfs} (once; cached)")
    subprocess.run(["mmdebstrap", "--quiet", "--variant=extract", "--architectures=arm64",
                    f"--include={PACKAGES}", SUITE, str(tmp), f"deb {_mirror()} {SUITE} main"],
                   check=True, stdout=subprocess.DEVNULL)
    site = tmp / "usr/local/lib/python3.11/dist-packages"
    site.mkdir(parents=True, exist_ok=True)
    wheels = download_wheels(cache)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--find-links",
                    str(wheels), "--target", str(site), "--platform", PLATFORM, "--python-version",
                    PYTHON_VERSION, "--implementation", "cp", "--only-binary=:all:", "--no-deps", *WHEELS],
                   check=True)
    # The device needs the runtime only: the compiler library is 250 MB of nothing.
    for lib in site.glob("tvm/lib/libtvm_compiler.so"):
        lib.unlink()
    _finish_tree(tmp)
    (tmp / ".edgekit-ready").write_text(f"{USERLAND_KEY}\n")
    shutil.rmtree(rootfs, ignore_errors=True)
    tmp.rename(rootfs)
    _log(f"userland ready in {time.monotonic() - started:.0f} s")
    return rootfs


def download_wheels(cache: Path | None = None) -> Path:
    """aarch64 wheels of the device runtime, downloaded once into the cache."""
    cache = Path(cache or cache_dir())
    wheels = cache / f"wheels-{PLATFORM}-cp{PYTHON_VERSION.replace('.', '')}-{RUNTIME_TAG}"
    stamp = wheels / ".complete"
    if stamp.is_file():
        return wheels
    wheels.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(wheels), "--platform",
                    PLATFORM, "--python-version", PYTHON_VERSION, "--implementation", "cp",
                    "--only-binary=:all:", "--no-deps", *WHEELS], check=True)
    stamp.write_text("ok\n")
    return wheels


def _finish_tree(root: Path) -> None:
    """What an extracted (not installed) Debian tree lacks to be logged into."""
    for d in ("proc", "dev", "tmp", "home", "etc"):
        (root / d).mkdir(exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    sh = root / "bin/sh" if not (root / "bin").is_symlink() else root / "usr/bin/sh"
    if not sh.exists() and not sh.is_symlink():
        sh.symlink_to("dash")
    if not (root / "usr/bin/python3").exists():
        (root / "usr/bin/python3").symlink_to("python3.11")
    passwd = root / "etc/passwd"
    text = passwd.read_text() if passwd.exists() else "root:x:0:0:root:/root:/bin/sh\n"
    if DEFAULT_USER not in text:
        import pwd

        try:
            account = pwd.getpwnam(DEFAULT_USER)
            text += f"{DEFAULT_USER}:x:{account.pw_uid}:{account.pw_gid}::/home/{DEFAULT_USER}:/bin/sh\n"
        except KeyError:
            pass
        passwd.write_text(text)
    # A chroot root must be owned by root and not group/world writable, or sshd refuses it.
    os.chown(root, 0, 0)
    os.chmod(root, 0o755)


# -- binfmt_misc ------------------------------------------------------------------------------------------------

def register_binfmt() -> bool:
    """Make the kernel run arm64 ELFs through qemu-aarch64-static; True when this call registered it."""
    qemu = _require("qemu-aarch64-static", "qemu-user-static")
    if not (BINFMT_DIR / "register").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT_DIR)], check=True,
                       capture_output=True)
    entry = BINFMT_DIR / BINFMT_ENTRY
    if entry.exists():
        return False
    magic, mask = _debian_binfmt_magic()
    # F: open the interpreter now, so it works inside any chroot without copying qemu there.
    line = f":{BINFMT_ENTRY}:M::{magic}:{mask}:{qemu}:F"
    (BINFMT_DIR / "register").write_text(line)
    return True


def _debian_binfmt_magic() -> tuple[str, str]:
    conf = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")
    if conf.is_file():
        fields = conf.read_text().strip().split(":")
        return fields[4], fields[5]
    return (r"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00",
            r"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff")


def unregister_binfmt() -> None:
    entry = BINFMT_DIR / BINFMT_ENTRY
    if entry.exists():
        entry.write_text("-1")


# -- the device ---------------------------------------------------------------------------------------------------

class EmulatedPi:
    """Context manager: an SshDevice whose sessions are arm64 under qemu; cleans up binfmt it registered."""

    def __init__(self, cache: Path | None = None):
        self.cache = cache
        self.device: SshDevice | None = None
        self._registered = False

    def start(self) -> SshDevice:
        _require("unshare", "util-linux")
        rootfs = build_userland(self.cache)
        self._registered = register_binfmt()
        self.device = create_device(chroot=rootfs, env={"TVM_USE_RUNTIME_LIB": "1"})
        return self.device

    def stop(self) -> None:
        if self.device is not None:
            home = self.device.home
            self.device.remove()
            shutil.rmtree(home, ignore_errors=True)
            self.device = None
        if self._registered:
            unregister_binfmt()
            self._registered = False

    def __enter__(self) -> SshDevice:
        return self.start()

    def __exit__(self, *exc):
        self.stop()


if __name__ == "__main__":
    print(build_userland())
