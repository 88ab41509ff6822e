"""RemoteHost: one lazily-connecting SSH connection to a device (paramiko), used as a context manager.

Over 500 lines because it is one thing: the connection and its deadlines.  Every method shares the
socket, the transport watchdog and the retry policy below; split up, each part would reach into the
others' private state.

Safety rules this module keeps (each one learned the hard way, see DESIGN.md section 7):
- host keys are checked against known_hosts; an unknown host is refused unless the caller trusts it
  explicitly, and a changed key is always refused, showing both fingerprints;
- every step has a deadline: TCP connect, banner, key exchange, auth, each command and each transfer.  A
  silently dead link must not hang, so our own socket gets TCP_USER_TIMEOUT and keepalives, commands poll
  with a deadline (``recv_exit_status`` has none), and a watchdog closes the transport when a transfer
  overruns (``sftp.put`` can block forever);
- only transient failures (refused, reset, timeout before auth) are retried, with exponential backoff;
- every remote command is built from ``shlex.quote``d arguments and runs under ``timeout``, because
  closing a channel does not stop the remote process.
"""

from __future__ import annotations

import getpass
import logging
import os
import re
import shlex
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from edgekit.errors import (
    AuthenticationError,
    ConnectionLostError,
    DeviceDiskFullError,
    DeviceTimeoutError,
    DeviceUnreachableError,
    HostKeyChangedError,
    RemoteCommandError,
    UnknownHostKeyError,
    UsageError,
)

DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
DEFAULT_SSH_CONFIG = "~/.ssh/config"
TCP_USER_TIMEOUT = getattr(socket, "TCP_USER_TIMEOUT", 18)
# paramiko logs every connection at INFO and a dead link's traceback at ERROR from its own thread; edgekit
# raises an error that says the same in words, so keep paramiko quiet unless asked (EDGEKIT_DEBUG_SSH=1).
logging.getLogger("paramiko").setLevel(logging.DEBUG if os.environ.get("EDGEKIT_DEBUG_SSH") else logging.CRITICAL)
# Extra seconds a remote process gets after SIGTERM before SIGKILL.
KILL_AFTER_S = 5


@dataclass(frozen=True)
class HostSpec:
    """Where and how to reach a device, after ``~/.ssh/config`` is applied."""

    name: str  # what the user wrote: an alias or user@host[:port]
    hostname: str
    port: int = 22
    user: str | None = None
    identity_files: tuple[str, ...] = ()
    proxy_jump: str | None = None
    known_hosts: tuple[str, ...] = ()
    connect_timeout_s: float | None = None

    @property
    def display(self) -> str:
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port != 22 else ""
        return f"{user}{self.hostname}{port}"

    @property
    def known_hosts_name(self) -> str:
        """The name OpenSSH files this host under in known_hosts."""
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"


_SPEC_RE = re.compile(r"^(?:(?P<user>[^@\s]+)@)?(?P<host>\[[^\]]+\]|[^:@\s\[\]]+)(?::(?P<port>\d+))?$")


def parse_host(text: str) -> tuple[str | None, str, int | None]:
    """``user@host:port`` -> (user, host, port); IPv6 as ``[::1]:2222``."""
    m = _SPEC_RE.match(text.strip())
    if not m:
        raise UsageError(f"cannot read host {text!r}", hint="write user@host, user@host:port or an ~/.ssh/config alias")
    host = m["host"].strip("[]")
    port = int(m["port"]) if m["port"] else None
    if port is not None and not 0 < port < 65536:
        raise UsageError(f"host {text!r}: port {port} out of range")
    return m["user"], host, port


def resolve_host(text: str, *, ssh_config: str | Path | None = DEFAULT_SSH_CONFIG) -> HostSpec:
    """Apply ``~/.ssh/config`` (HostName, User, Port, IdentityFile, ProxyJump, UserKnownHostsFile)."""
    user, host, port = parse_host(text)
    options: dict = {}
    if ssh_config:
        path = Path(ssh_config).expanduser()
        if path.is_file():
            import paramiko

            options = paramiko.SSHConfig.from_path(str(path)).lookup(host)
    hostname = options.get("hostname", host)
    identity = tuple(os.path.expanduser(p) for p in options.get("identityfile", []))
    known = options.get("userknownhostsfile")
    known_hosts = tuple(os.path.expanduser(p) for p in known.split()) if known else ()
    proxy = options.get("proxyjump")
    if proxy and proxy.lower() == "none":
        proxy = None
    timeout = options.get("connecttimeout")
    return HostSpec(
        name=text,
        hostname=hostname,
        port=port or int(options.get("port", 22)),
        user=user or options.get("user"),
        identity_files=identity,
        proxy_jump=proxy,
        known_hosts=known_hosts,
        connect_timeout_s=float(timeout) if timeout else None,
    )


@dataclass
class CommandResult:
    host: str
    command: str
    exit_status: int
    stdout: str
    stderr: str
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


def quote_command(argv: Sequence[str]) -> str:
    """One shell word per argument, whatever characters it holds."""
    if isinstance(argv, str):
        raise TypeError("pass the remote command as a list of arguments, not a string")
    return " ".join(shlex.quote(str(a)) for a in argv)


def fingerprint(key) -> str:
    return key.fingerprint  # "SHA256:..." as ssh-keygen -l prints it


@dataclass
class _Stats:
    bytes_uploaded: int = 0
    files_uploaded: int = 0
    commands: int = 0


class RemoteHost:
    """A device reached over SSH.  Connects on first use; ``with RemoteHost(...) as dev:`` closes it.

    ``host`` is ``user@host[:port]`` or an ``~/.ssh/config`` alias.  Failures raise ``DeviceError``
    subclasses that carry the host, the command, its exit status and the tail of its stderr.
    """

    def __init__(self, host: str | HostSpec, *, identity_files: Sequence[str] = (),
                 known_hosts: str | Sequence[str] | None = None, trust_new_host: bool = False,
                 allow_agent: bool = True, use_ssh_config: bool = True, ssh_config: str | Path | None = None,
                 connect_timeout_s: float = 10.0, auth_timeout_s: float = 15.0, command_timeout_s: float = 300.0,
                 transfer_timeout_s: float = 600.0, retries: int = 2, backoff_s: float = 0.5,
                 keepalive_s: float = 5.0, link_timeout_s: float = 20.0, env: dict[str, str] | None = None):
        if isinstance(host, HostSpec):
            self.spec = host
        else:
            config = (ssh_config or DEFAULT_SSH_CONFIG) if use_ssh_config else None
            self.spec = resolve_host(host, ssh_config=config)
        self.identity_files = tuple(identity_files) + self.spec.identity_files
        if known_hosts is None:
            known_hosts = self.spec.known_hosts or (DEFAULT_KNOWN_HOSTS,)
        elif isinstance(known_hosts, (str, Path)):
            known_hosts = (str(known_hosts),)
        self.known_hosts = tuple(os.path.expanduser(str(p)) for p in known_hosts)
        self.trust_new_host = trust_new_host
        self.allow_agent = allow_agent
        self.use_ssh_config = use_ssh_config
        self.ssh_config = ssh_config
        self.connect_timeout_s = self.spec.connect_timeout_s or connect_timeout_s
        self.auth_timeout_s = auth_timeout_s
        self.command_timeout_s = command_timeout_s
        self.transfer_timeout_s = transfer_timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.keepalive_s = keepalive_s
        self.link_timeout_s = link_timeout_s
        self.env = dict(env or {})
        self.stats = _Stats()
        self.trusted_new_key: str | None = None  # fingerprint, when this connection added a key
        self._client = None
        self._jump: RemoteHost | None = None
        self._sftp = None
        self._lock = threading.RLock()

    # -- connection -------------------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.spec.display

    @property
    def connected(self) -> bool:
        t = self._client.get_transport() if self._client else None
        return t is not None and t.is_active()

    def __enter__(self) -> "RemoteHost":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def connect(self) -> "RemoteHost":
        with self._lock:
            if self.connected:
                return self
            self.close()
            attempt = 0
            while True:
                try:
                    self._connect_once()
                    return self
                except (DeviceUnreachableError, DeviceTimeoutError, ConnectionLostError) as exc:
                    transient = getattr(exc, "transient", False)
                    if not transient or attempt >= self.retries:
                        raise
                    self.close()
                    time.sleep(self.backoff_s * (2 ** attempt))
                    attempt += 1

    def _fail(self, cls, message, *, transient=False, hint=None, **kw):
        exc = cls(message, host=self.name, hint=hint, **kw)
        exc.transient = transient
        return exc

    def _open_socket(self):
        if self.spec.proxy_jump:
            return self._open_jump_channel()
        try:
            sock = socket.create_connection((self.spec.hostname, self.spec.port), timeout=self.connect_timeout_s)
        except ConnectionRefusedError:
            raise self._fail(DeviceUnreachableError, f"connection refused on port {self.spec.port}",
                             transient=True, hint="is sshd running on the device, and is the port right?") from None
        except socket.gaierror as exc:
            raise self._fail(DeviceUnreachableError, f"cannot resolve host name {self.spec.hostname!r} ({exc.strerror})",
                             hint="check the name or add it to ~/.ssh/config") from None
        except (socket.timeout, TimeoutError):
            raise self._fail(DeviceTimeoutError, f"TCP connect timed out after {self.connect_timeout_s:g} s",
                             transient=True, hint="is the device powered and on this network?") from None
        except OSError as exc:
            raise self._fail(DeviceUnreachableError, f"cannot connect: {exc.strerror or exc}", transient=True) from None
        # A dead peer must surface as an error, not as a read that never returns.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for opt, value in (("TCP_KEEPIDLE", max(1, int(self.keepalive_s))), ("TCP_KEEPINTVL", 2), ("TCP_KEEPCNT", 3)):
            if hasattr(socket, opt):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), value)
        sock.setsockopt(socket.IPPROTO_TCP, TCP_USER_TIMEOUT, int(self.link_timeout_s * 1000))
        return sock

    def _open_jump_channel(self):
        jump = RemoteHost(self.spec.proxy_jump.split(",")[-1], known_hosts=self.known_hosts,
                          trust_new_host=self.trust_new_host, allow_agent=self.allow_agent,
                          identity_files=self.identity_files, use_ssh_config=self.use_ssh_config,
                          ssh_config=self.ssh_config, connect_timeout_s=self.connect_timeout_s,
                          auth_timeout_s=self.auth_timeout_s, retries=0, link_timeout_s=self.link_timeout_s)
        jump.connect()
        self._jump = jump
        try:
            return jump._client.get_transport().open_channel(
                "direct-tcpip", (self.spec.hostname, self.spec.port), ("127.0.0.1", 0),
                timeout=self.connect_timeout_s)
        except Exception as exc:
            raise self._fail(DeviceUnreachableError, f"jump host {jump.name} cannot reach "
                             f"{self.spec.hostname}:{self.spec.port} ({exc})", transient=True) from None

    def _connect_once(self) -> None:
        import paramiko

        sock = self._open_socket()
        client = paramiko.SSHClient()
        for path in self.known_hosts:
            if os.path.isfile(path):
                try:
                    client.load_system_host_keys(path)
                except (OSError, paramiko.SSHException) as exc:
                    raise self._fail(UnknownHostKeyError, f"cannot read known_hosts file {path}: {exc}") from None
        client.set_missing_host_key_policy(_HostKeyPolicy(self))
        keys = [p for p in self.identity_files if os.path.isfile(os.path.expanduser(p))]
        self._client = client
        started = time.monotonic()
        try:
            client.connect(
                self.spec.hostname, port=self.spec.port, username=self.spec.user or getpass.getuser(),
                key_filename=keys or None, look_for_keys=not keys, allow_agent=self.allow_agent, sock=sock,
                # the banner deadline fires first and says what happened; key exchange gets longer
                timeout=2 * self.connect_timeout_s, banner_timeout=self.connect_timeout_s,
                auth_timeout=self.auth_timeout_s, channel_timeout=self.connect_timeout_s)
        except paramiko.BadHostKeyException as exc:
            raise self._fail(
                HostKeyChangedError,
                f"HOST KEY CHANGED: the device presented {exc.key.get_name()} {fingerprint(exc.key)}, "
                f"known_hosts has {fingerprint(exc.expected_key)} for {self.spec.known_hosts_name}",
                hint="if the device was reinstalled, verify the new fingerprint on its console, then remove the "
                     f"old entry (ssh-keygen -R '{self.spec.known_hosts_name}'); otherwise this may be an attack. "
                     "edgekit never overrides a changed key") from None
        except (UnknownHostKeyError, HostKeyChangedError):
            raise
        except paramiko.AuthenticationException as exc:
            tried = ", ".join(keys) if keys else "default keys in ~/.ssh"
            raise self._fail(AuthenticationError, f"authentication as {self.spec.user} failed ({exc})",
                             hint=f"keys tried: {tried}{' and the ssh-agent' if self.allow_agent else ''}; "
                                  "install your public key in the device's ~/.ssh/authorized_keys") from None
        except (socket.timeout, TimeoutError) as exc:
            raise self._fail(DeviceTimeoutError, f"SSH handshake timed out after {self.connect_timeout_s:g} s "
                             f"({exc or 'no answer'})", transient=True,
                             hint="the port answers but no SSH server speaks on it") from None
        except paramiko.SSHException as exc:
            text = str(exc)
            silent = time.monotonic() - started >= 0.9 * self.connect_timeout_s
            if silent or "banner" in text.lower() or "timeout" in text.lower() or "timed out" in text.lower():
                raise self._fail(DeviceTimeoutError, f"no SSH answer within {self.connect_timeout_s:g} s ({text})",
                                 transient=True, hint="the port accepts connections but nothing answers") from None
            raise self._fail(ConnectionLostError, f"SSH handshake failed: {text}", transient=True) from None
        except (EOFError, ConnectionResetError, BrokenPipeError, OSError) as exc:
            raise self._fail(ConnectionLostError, f"connection closed during handshake ({exc or type(exc).__name__})",
                             transient=True) from None
        transport = client.get_transport()
        transport.set_keepalive(max(1, int(self.keepalive_s)))

    def close(self) -> None:
        with self._lock:
            for closer in (self._sftp, self._client, self._jump):
                if closer is not None:
                    try:
                        closer.close()
                    except Exception:
                        pass
            self._sftp = self._client = self._jump = None

    def _transport(self):
        self.connect()
        return self._client.get_transport()

    def forwarding_transport(self):
        """The live SSH transport, connecting first, for port forwards over this same connection.

        A forward opens ``direct-tcpip`` channels on it (``ssh -L``; remote tuning reaches the device's
        RPC server so).  This RemoteHost still owns the transport: closing it ends the forwards.
        """
        return self._transport()

    # -- commands ---------------------------------------------------------------------------------------------

    def run(self, argv: Sequence[str], *, timeout_s: float | None = None, check: bool = True,
            stdin: bytes | None = None, keep_stdin_open: bool = False, env: dict[str, str] | None = None,
            on_failure: type | None = None, what: str | None = None) -> CommandResult:
        """Run ``argv`` on the device under ``timeout``; return its result or raise with context.

        ``keep_stdin_open`` leaves the process's stdin open until it ends, so a process that watches stdin
        sees EOF (and can stop) when this client goes away.
        """
        timeout_s = self.command_timeout_s if timeout_s is None else timeout_s
        command = quote_command(argv)
        variables = {**self.env, **(env or {})}
        if variables:
            command = "env " + quote_command([f"{k}={v}" for k, v in variables.items()]) + " " + command
        # The remote process dies by itself at the limit, whatever happens to this client.
        wrapped = (f"if command -v timeout >/dev/null 2>&1; then exec timeout -k {KILL_AFTER_S} {int(timeout_s) + 1} "
                   f"{command}; else exec {command}; fi")
        return self._exec(wrapped, display=command, timeout_s=timeout_s + KILL_AFTER_S + 5, check=check,
                          stdin=stdin, keep_stdin_open=keep_stdin_open, on_failure=on_failure, what=what)

    def _exec(self, command: str, *, display: str, timeout_s: float, check: bool, stdin: bytes | None,
              keep_stdin_open: bool, on_failure, what) -> CommandResult:
        import paramiko

        started = time.monotonic()
        deadline = started + timeout_s
        try:
            channel = self._transport().open_session(timeout=self.connect_timeout_s)
            channel.exec_command(command)
            if stdin:
                channel.sendall(stdin)
            if not keep_stdin_open:
                channel.shutdown_write()
        except (paramiko.SSHException, EOFError, OSError) as exc:
            self.close()
            raise self._fail(ConnectionLostError, f"cannot start remote command ({exc or type(exc).__name__})",
                             command=display) from None
        self.stats.commands += 1
        out, err = bytearray(), bytearray()
        channel.settimeout(0.0)
        try:
            while True:
                progressed = False
                while channel.recv_ready():
                    out += channel.recv(65536)
                    progressed = True
                while channel.recv_stderr_ready():
                    err += channel.recv_stderr(65536)
                    progressed = True
                if channel.exit_status_ready() and not channel.recv_ready() and not channel.recv_stderr_ready():
                    break
                if channel.closed or not self.connected:
                    raise self._fail(ConnectionLostError, "connection lost while the command ran",
                                     command=display, stderr=err.decode(errors="replace"),
                                     hint="the device rebooted, lost power or the network dropped")
                if time.monotonic() > deadline:
                    raise self._fail(DeviceTimeoutError, f"command did not finish within {timeout_s:g} s",
                                     command=display, stderr=err.decode(errors="replace"),
                                     hint="the link may be dead; the remote process is killed by its time limit")
                if not progressed:
                    channel.status_event.wait(0.02)
        finally:
            channel.close()
        status = channel.recv_exit_status()
        if status == -1 and not self.connected:
            raise self._fail(ConnectionLostError, "connection lost while the command ran", command=display,
                             stderr=err.decode(errors="replace"),
                             hint="the device rebooted, lost power or the network dropped")
        # -1 with the link up: the process was killed by a signal (paramiko ignores exit-signal).
        result = CommandResult(self.name, display, status, out.decode(errors="replace"),
                               err.decode(errors="replace"), time.monotonic() - started)
        if result.exit_status in (124, 137) and check:
            raise self._fail(DeviceTimeoutError, f"{what or 'command'} exceeded its time limit on the device",
                             command=display, exit_status=result.exit_status, stderr=result.stderr)
        if check and not result.ok:
            cls = on_failure or RemoteCommandError
            raise self._fail(cls, f"{what or 'remote command'} failed", command=display,
                             exit_status=result.exit_status, stderr=result.stderr or result.stdout)
        return result

    def spawn(self, argv: Sequence[str], *, time_limit_s: float, env: dict[str, str] | None = None) -> "RemoteProcess":
        """Start ``argv`` on the device with stdin kept open; it is killed at ``time_limit_s`` regardless."""
        import paramiko

        command = quote_command(argv)
        variables = {**self.env, **(env or {})}
        if variables:
            command = "env " + quote_command([f"{k}={v}" for k, v in variables.items()]) + " " + command
        wrapped = (f"if command -v timeout >/dev/null 2>&1; then exec timeout -k {KILL_AFTER_S} {int(time_limit_s) + 1} "
                   f"{command}; else exec {command}; fi")
        try:
            channel = self._transport().open_session(timeout=self.connect_timeout_s)
            channel.exec_command(wrapped)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            self.close()
            raise self._fail(ConnectionLostError, f"cannot start remote command ({exc or type(exc).__name__})",
                             command=command[:200]) from None
        self.stats.commands += 1
        channel.settimeout(0.0)
        return RemoteProcess(self, channel, command if len(command) < 200 else command[:200] + "...")

    # -- transfers --------------------------------------------------------------------------------------------

    def sftp(self):
        import paramiko

        with self._lock:
            if self._sftp is None or not self.connected:
                try:
                    self._sftp = paramiko.SFTPClient.from_transport(self._transport())
                except (paramiko.SSHException, EOFError, OSError) as exc:
                    self.close()
                    raise self._fail(ConnectionLostError, f"cannot open SFTP ({exc or type(exc).__name__})") from None
            return self._sftp

    def put(self, local: str | Path, remote: str, *, timeout_s: float | None = None,
            progress: Callable[[int, int], None] | None = None, mode: int = 0o644) -> int:
        """Upload one file; return bytes sent.  A watchdog closes the link if the deadline passes."""
        timeout_s = self.transfer_timeout_s if timeout_s is None else timeout_s
        local = Path(local)
        total = local.stat().st_size
        sftp = self.sftp()
        fired = threading.Event()

        def expire():
            fired.set()
            self.close()  # unblocks a write stuck on a dead link

        watchdog = threading.Timer(timeout_s, expire)
        watchdog.daemon = True
        watchdog.start()
        sent = 0
        try:
            with open(local, "rb") as src, sftp.open(remote, "wb") as dst:
                dst.set_pipelined(True)
                while chunk := src.read(1 << 16):
                    dst.write(chunk)
                    sent += len(chunk)
                    if progress:
                        progress(sent, total)
                dst.chmod(mode)
            # Pipelined writes can fail without an error reaching us (ENOSPC is one): the size says.
            written = sftp.stat(remote).st_size
            if written != total:
                raise OSError(f"Failure: {written} of {total} bytes written")
            self.stats.bytes_uploaded += sent
            self.stats.files_uploaded += 1
            return sent
        except Exception as exc:
            if fired.is_set():
                raise self._fail(DeviceTimeoutError, f"upload of {local.name} did not finish within {timeout_s:g} s "
                                 f"({sent} of {total} bytes sent)", command=f"sftp put {remote}",
                                 hint="the link is too slow or dead; raise --transfer-timeout for slow links") from None
            if isinstance(exc, OSError) and not isinstance(exc, (ConnectionError, socket.timeout)) \
                    and self.connected and _looks_like_disk_full(self, remote, total - sent):
                raise self._fail(DeviceDiskFullError, f"device ran out of disk space uploading {local.name} "
                                 f"({sent} of {total} bytes written)", command=f"sftp put {remote}",
                                 hint="free space on the device or prune old deployments (--keep)") from None
            self.close()
            raise self._fail(ConnectionLostError, f"upload of {local.name} failed after {sent} of {total} bytes "
                             f"({exc or type(exc).__name__})", command=f"sftp put {remote}") from None
        finally:
            watchdog.cancel()

    def free_bytes(self, path: str) -> int | None:
        """Free space (bytes) of the file system holding ``path`` on the device."""
        result = self.run(["df", "-Pk", path], check=False, timeout_s=30)
        try:
            return int(result.stdout.splitlines()[1].split()[3]) * 1024
        except (IndexError, ValueError):
            return None


def _looks_like_disk_full(host: RemoteHost, remote: str, remaining: int) -> bool:
    """SFTP reports ENOSPC only as 'Failure': ask the device how much room is left."""
    free = host.free_bytes(os.path.dirname(remote) or ".")
    return free is not None and free < max(remaining, 1 << 16)


class _HostKeyPolicy:
    """Unknown host: refuse, or with explicit trust add it to known_hosts (and say so)."""

    def __init__(self, host: RemoteHost):
        self.host = host

    def missing_host_key(self, client, hostname, key):
        h = self.host
        fp = fingerprint(key)
        if not h.trust_new_host:
            raise h._fail(UnknownHostKeyError,
                          f"unknown host key {key.get_name()} {fp} for {hostname} (not in {', '.join(h.known_hosts)})",
                          hint="check the fingerprint on the device (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub), "
                               "then pass --trust-new-host to record it")
        path = Path(h.known_hosts[0])
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
        h.trusted_new_key = fp


class RemoteProcess:
    """A long-lived remote command we talk to line by line (the device agent).

    Its stdin stays open while we hold it; closing it (or losing the link) ends the process.
    """

    def __init__(self, host: RemoteHost, channel, display: str):
        self.host = host
        self.channel = channel
        self.display = display
        self._out = bytearray()
        self._err = bytearray()
        self._send_lock = threading.Lock()  # a heartbeat thread writes too: keep lines whole

    def send_line(self, text: str) -> None:
        try:
            with self._send_lock:
                self.channel.sendall((text + "\n").encode())
        except (OSError, EOFError) as exc:
            raise self.host._fail(ConnectionLostError, f"connection lost talking to the device agent ({exc})",
                                  command=self.display, stderr=self.stderr) from None

    @property
    def stderr(self) -> str:
        while self.channel.recv_stderr_ready():
            self._err += self.channel.recv_stderr(65536)
        return self._err.decode(errors="replace")

    def read_line(self, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._out:
            progressed = False
            while self.channel.recv_ready():
                self._out += self.channel.recv(65536)
                progressed = True
            while self.channel.recv_stderr_ready():
                self._err += self.channel.recv_stderr(65536)
            if b"\n" in self._out:
                break
            if self.channel.exit_status_ready() and not self.channel.recv_ready():
                raise self.host._fail(RemoteCommandError, "device agent stopped", command=self.display,
                                      exit_status=self.channel.recv_exit_status(), stderr=self.stderr)
            if self.channel.closed or not self.host.connected:
                raise self.host._fail(ConnectionLostError, "connection lost while waiting for the device",
                                      command=self.display, stderr=self.stderr)
            if time.monotonic() > deadline:
                raise self.host._fail(DeviceTimeoutError, f"device did not answer within {timeout_s:g} s",
                                      command=self.display, stderr=self.stderr)
            if not progressed:
                self.channel.status_event.wait(0.01)
        line, _, rest = bytes(self._out).partition(b"\n")
        self._out = bytearray(rest)
        return line.decode(errors="replace")

    def read_json(self, timeout_s: float) -> dict:
        import json

        line = self.read_line(timeout_s)
        try:
            return json.loads(line)
        except ValueError:
            raise self.host._fail(RemoteCommandError, f"device answered something that is not JSON: {line[:200]!r}",
                                  command=self.display, stderr=self.stderr) from None

    def request(self, obj: dict, timeout_s: float) -> dict:
        import json

        self.send_line(json.dumps(obj))
        return self.read_json(timeout_s)

    def close(self, wait_s: float = 5.0) -> None:
        try:
            self.channel.shutdown_write()
            self.channel.status_event.wait(wait_s)
        except Exception:
            pass
        try:
            self.channel.close()
        except Exception:
            pass

