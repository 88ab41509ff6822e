"""Real OpenSSH servers on 127.0.0.1, started by tests and demos as edgekit devices.

Each ``SshDevice`` is an ``sshd -D -e`` with its own config, a throwaway ed25519
host key, a throwaway client key, a known_hosts file naming it, and its own
home directory (``SetEnv HOME=...`` overrides the passwd entry, so several
devices can share one unprivileged login user).  Logging in as an unprivileged
user with ``/bin/sh`` keeps a connection at about 0.1 s (root's shell is slow)
and makes permission faults real.

Nothing here mocks SSH: the client under test talks to a real sshd.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_USER = "edgekit-dev"
SSHD = "/usr/sbin/sshd"


class SshdUnavailable(RuntimeError):
    """sshd or ssh-keygen is missing: name the Debian package that provides it."""


def _require_tools() -> None:
    for tool in (SSHD, "ssh-keygen"):
        if shutil.which(tool) is None:
            raise SshdUnavailable(f"{tool} not found; install the Debian package openssh-server "
                                  "(tools/setup-system.sh)")


def ensure_user(name: str = DEFAULT_USER) -> pwd.struct_passwd:
    """The unprivileged login user of test devices; created (as root) when missing."""
    try:
        account = pwd.getpwnam(name)
    except KeyError:
        if os.geteuid() != 0:
            raise SshdUnavailable(f"user {name!r} does not exist and only root can create it") from None
        subprocess.run(["useradd", "--system", "--create-home", "--home-dir", f"/var/lib/{name}",
                        "--shell", "/bin/sh", name], check=True, capture_output=True)
        account = pwd.getpwnam(name)
    if os.geteuid() == 0 and _password_field(name).startswith("!"):
        # Without PAM, sshd refuses a locked account ('!') even for key logins; '*' is "no password".
        subprocess.run(["usermod", "-p", "*", name], check=True, capture_output=True)
    return account


def _password_field(name: str) -> str:
    try:
        for line in Path("/etc/shadow").read_text().splitlines():
            if line.startswith(name + ":"):
                return line.split(":")[1]
    except OSError:
        pass
    return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path, comment: str = "edgekit-test") -> str:
    """Write an ed25519 key pair without passphrase; return the public key line."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True, capture_output=True)
    return Path(f"{path}.pub").read_text().strip()


@dataclass
class SshDevice:
    """One running sshd; ``host_spec`` is what a user would pass to ``--host``."""

    workdir: Path
    port: int
    user: str
    home: Path
    client_key: Path
    known_hosts: Path
    host_key: Path
    env: dict[str, str] = field(default_factory=dict)
    chroot: Path | None = None
    process: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def host_spec(self) -> str:
        return f"{self.user}@127.0.0.1:{self.port}"

    @property
    def host_key_line(self) -> str:
        key_type, key_b64 = Path(f"{self.host_key}.pub").read_text().split()[:2]
        return f"[127.0.0.1]:{self.port} {key_type} {key_b64}"

    @property
    def remote_home(self) -> str:
        """HOME as the device's own shell sees it (inside the chroot for an emulated device)."""
        return self.env.get("HOME", str(self.home))

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def ssh_config_block(self, alias: str) -> str:
        return (f"Host {alias}\n  HostName 127.0.0.1\n  Port {self.port}\n  User {self.user}\n"
                f"  IdentityFile {self.client_key}\n  UserKnownHostsFile {self.known_hosts}\n")

    def connect_kwargs(self) -> dict:
        """Keyword arguments for ``RemoteHost`` that reach this device."""
        return {"identity_files": [str(self.client_key)], "known_hosts": str(self.known_hosts),
                "use_ssh_config": False, "allow_agent": False}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self, timeout_s: float = 10.0) -> "SshDevice":
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege-separation directory
        for attempt in range(5):
            if attempt:
                self.port = free_port()
            self._write_config()
            log = open(self.log_path, "ab")
            argv = [SSHD, "-D", "-e", "-f", str(self.workdir / "sshd_config")]
            if self.chroot is not None:
                # A private mount namespace: the chroot's /proc, /dev binds vanish with the sshd.
                argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                        self._namespace_script(), "sh", *argv]
            self.process = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                            start_new_session=True)
            log.close()
            if self._wait_ready(timeout_s):
                self._write_known_hosts()
                return self
            self.stop()
            if "Address already in use" not in self.log():
                break
        raise RuntimeError(f"sshd on port {self.port} did not start:\n{self.log()[-2000:]}")

    def _namespace_script(self) -> str:
        root = self.chroot
        return (
            f"set -e; mount --bind /proc {root}/proc; mount --bind /dev {root}/dev; "
            f'exec "$@"'
        )

    def _wait_ready(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.settimeout(2)
                    if s.recv(64).startswith(b"SSH-"):
                        return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def _write_config(self) -> None:
        lines = [
            f"Port {self.port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {self.host_key}",
            f"PidFile {self.workdir / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.workdir / 'authorized_keys'}",
            f"AllowUsers {self.user}",
            "UsePAM no",
            "StrictModes no",  # test directories live under /tmp
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            "PermitRootLogin no",
            "X11Forwarding no",
            "AllowTcpForwarding yes",  # ProxyJump through a device
            "MaxStartups 100:30:200",
            "MaxSessions 64",
            "LogLevel VERBOSE",
            "Subsystem sftp internal-sftp",  # native even inside an emulated chroot
        ]
        if self.chroot is not None:
            lines.append(f"ChrootDirectory {self.chroot}")
        if self.env:
            lines.append("SetEnv " + " ".join(f'{k}="{v}"' for k, v in self.env.items()))
        (self.workdir / "sshd_config").write_text("\n".join(lines) + "\n")

    def _write_known_hosts(self) -> None:
        self.known_hosts.write_text(self.host_key_line + "\n")

    def regenerate_host_key(self) -> None:
        """Give the device a new host key (as after a reinstall); known_hosts keeps the old one."""
        old_known = self.known_hosts.read_text()
        for p in (self.host_key, Path(f"{self.host_key}.pub")):
            p.unlink(missing_ok=True)
        keygen(self.host_key, "edgekit-test-host")
        os.chmod(self.host_key, 0o600)
        was_running = self.running
        if was_running:
            self.stop()
            self.start()
        self.known_hosts.write_text(old_known)

    def kill_sessions(self) -> None:
        """Kill every connection's sshd child (a dropped session) but keep the listener."""
        for child in _descendants(self.process.pid):
            try:
                os.kill(child, 9)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        """Kill the listener and every session it started, like pulling the plug on a board."""
        if self.process is None:
            return
        pids = _descendants(self.process.pid) + [self.process.pid]
        for pid in pids:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self.process = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


def _descendants(pid: int) -> list[int]:
    import psutil

    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def create_device(*, user: str = DEFAULT_USER, base_dir: Path | str | None = None, env: dict | None = None,
                  chroot: Path | None = None, home: str | None = None, start: bool = True) -> SshDevice:
    """Make a fresh device: keys, known_hosts, home; start its sshd unless ``start`` is False.

    ``chroot`` makes sshd chroot every session there (an emulated board's userland); ``home`` is then the
    home directory as seen inside the chroot.
    """
    _require_tools()
    account = ensure_user(user)
    workdir = Path(tempfile.mkdtemp(prefix="edgekit-dev-", dir=base_dir))
    os.chmod(workdir, 0o755)  # the login user must reach its home and authorized_keys under here
    host_key = workdir / "host_ed25519"
    keygen(host_key, "edgekit-test-host")
    client_key = workdir / "client_ed25519"
    pub = keygen(client_key, "edgekit-test-client")
    (workdir / "authorized_keys").write_text(pub + "\n")
    os.chmod(workdir / "authorized_keys", 0o644)
    if chroot is None:
        home_path = workdir / "home"
        home_path.mkdir()
        os.chown(home_path, account.pw_uid, account.pw_gid)
        remote_home = str(home_path)
    else:
        remote_home = home or f"/home/{workdir.name}"  # one per device: several may share a tree
        home_path = Path(str(chroot) + remote_home)
        home_path.mkdir(parents=True, exist_ok=True)
        os.chown(home_path, account.pw_uid, account.pw_gid)
    device_env = {"HOME": remote_home, **(env or {})}
    device = SshDevice(workdir=workdir, port=free_port(), user=user, home=home_path, client_key=client_key,
                       known_hosts=workdir / "known_hosts", host_key=host_key, env=device_env, chroot=chroot,
                       log_path=workdir / "sshd.log")
    if start:
        device.start()
    else:
        device._write_known_hosts()
    return device


def device_processes(device: SshDevice) -> list[str]:
    """Command lines of processes still running for this device's login user that mention its home.

    Used by tests to prove nothing was left running on the device after a failure.
    """
    import psutil

    uid = pwd.getpwnam(device.user).pw_uid
    home = str(device.home)
    remote_home = device.remote_home
    found = []
    for p in psutil.process_iter(["uids", "cmdline"]):
        try:
            if p.info["uids"] is None or p.info["uids"].real != uid:
                continue
            cmd = " ".join(p.info["cmdline"] or [])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if home in cmd or remote_home in cmd:
            found.append(cmd)
    return found


def local_runtime_site(cache: Path | str | None = None) -> Path:
    """This machine's TVM runtime as `edgekit device setup` installs it, unpacked once into the cache.

    A local device "with the runtime" gets it on its PYTHONPATH, like a board whose python already has
    apache-tvm (the system python3 of the device user has no numpy or tvm).
    """
    import platform
    import sys
    import tarfile

    from edgekit.deploy.checks import RUNTIME_TAG, cache_dir, runtime_bundle

    cache = Path(cache) if cache else cache_dir()
    site = cache / f"site-{platform.machine()}-cp{sys.version_info[0]}{sys.version_info[1]}-{RUNTIME_TAG}"
    if not (site / ".complete").is_file():
        bundle = runtime_bundle(platform.machine(), platform.python_version(), cache=cache)
        tmp = site.with_name(site.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        with tarfile.open(bundle) as tar:
            tar.extractall(tmp)
        for root, _, _ in os.walk(tmp):
            os.chmod(root, 0o755)  # the device's login user reads it
        (tmp / ".complete").write_text("ok\n")
        shutil.rmtree(site, ignore_errors=True)
        tmp.rename(site)
    return site
