"""Joining a board to the pool with nothing but SSH open on it (``edgekit pool join``).

Three links, all over the one SSH connection this host keeps to the board:

    board: pool server --TCP--> board 127.0.0.1:<R>  ==ssh -R==>  tracker (host:port, seen from this host)
    client --TCP--> this host 127.0.0.1:<L>  ==ssh -L==>  board 127.0.0.1:<server port> (TVM's RPC server)

The server tells the tracker "I am at 127.0.0.1:<L>", so a client the tracker hands this board to connects to
this host's forward (clients therefore run on the host that runs ``pool join``; loopback only).  The board's
server is edgekit/onboard/pool_server.py: TVM's listen loop plus two functions (which board, run the runner).
``close`` (or a lost link) closes the server's stdin, and the server kills everything it started.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from edgekit.compile.remote_tune import DEVICE_ROOT, SERVER_TIME_LIMIT_S, PortForward, _check_machine, pump
from edgekit.errors import DeviceRuntimeError
from edgekit.onboard import inline_source
from edgekit.pool.tracker import parse_address

# Runs ON the board: python3 -c POOL_SERVER SITE WORK TRACKER_PORT KEY UNIT.  No edgekit imports.
POOL_SERVER = inline_source("pool_server")


class ReverseForward:
    """``ssh -R``: the SSH server listens on the board's loopback; each connection is piped to ``target`` here."""

    def __init__(self, transport, target: tuple[str, int]):
        self.transport = transport
        self.target = target
        self._closed = threading.Event()
        self.port = transport.request_port_forward("127.0.0.1", 0, handler=self._on_channel)

    def _on_channel(self, channel, origin, server) -> None:
        # Called on paramiko's transport thread: connect and pump on a thread of our own.
        threading.Thread(target=self._pipe, args=(channel,), name="edgekit-reverse-forward", daemon=True).start()

    def _pipe(self, channel) -> None:
        try:
            sock = socket.create_connection(self.target, timeout=10)
        except OSError:
            channel.close()
            return
        pump(sock, channel, self._closed)

    def close(self) -> None:
        self._closed.set()
        try:
            # Not paramiko's cancel_port_forward: it waits for the reply with no time limit, and a loaded sshd
            # (or a dying link) kept `pool join` from exiting on Ctrl-C.  The reply changes nothing here.
            self.transport.global_request("cancel-tcpip-forward", ("127.0.0.1", self.port), wait=False)
        except Exception:
            pass  # the link is already gone


@dataclass
class BoardMembership:
    """One board in the pool: its SSH connection, its server on the board, and the two forwards."""

    unit: str
    key: str
    remote: Any
    process: Any
    info: dict
    to_tracker: ReverseForward
    to_server: PortForward
    log: Callable[[str], None] = field(default=lambda message: None, repr=False)

    @property
    def address(self) -> str:
        """Where clients reach this board's server (what the tracker hands out)."""
        return f"127.0.0.1:{self.to_server.port}"

    @property
    def alive(self) -> bool:
        return self.remote.connected and not self.process.channel.exit_status_ready()

    def wait(self, poll_s: float = 1.0) -> None:
        """Block until the board's server ends or its link drops (``pool join`` in the foreground)."""
        import time

        while self.alive:
            time.sleep(poll_s)

    def close(self) -> None:
        self.to_server.close()
        self.to_tracker.close()
        try:
            self.process.close(wait_s=5)  # stdin EOF: the server kills its session workers and runners
        finally:
            self.remote.close()

    def __enter__(self) -> "BoardMembership":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def join_pool(host, tracker: str, key: str, *, profile=None, unit: str | None = None, root: str = DEVICE_ROOT,
              log: Callable[[str], None] = lambda message: None, start_timeout_s: float = 120.0,
              **connect_kwargs) -> BoardMembership:
    """Start TVM's RPC server on ``host`` and register it with the tracker at ``tracker`` under ``key``.

    ``host``: ``user@board[:port]``, an ``~/.ssh/config`` alias, or a ``RemoteHost`` (then this membership owns
    and closes it).  ``profile``: the board's target profile, to refuse a board of the wrong architecture.
    ``unit`` names the board in every measurement it makes (default: the SSH host).
    """
    from edgekit.deploy.remote import RemoteHost

    tracker_addr = parse_address(tracker, what="tracker address")
    remote = host if isinstance(host, RemoteHost) else RemoteHost(host, **connect_kwargs)
    unit = unit or remote.name
    try:
        remote.connect()
        transport = remote.forwarding_transport()
        to_tracker = ReverseForward(transport, tracker_addr)
        process = remote.spawn(["python3", "-c", POOL_SERVER, f"{root}/runtime/site-packages", f"{root}/pool-server",
                                str(to_tracker.port), key, unit],
                               time_limit_s=SERVER_TIME_LIMIT_S, env={"TVM_USE_RUNTIME_LIB": "1"})
        try:
            info = process.read_json(start_timeout_s)
            if not info.get("ok"):
                raise DeviceRuntimeError(f"the TVM runtime does not import on the board: {info.get('error')}",
                                         host=remote.name, command="python3 -c <pool server>",
                                         hint=f"run `edgekit device setup --host {remote.name} --target "
                                              f"{getattr(profile, 'name', 'TARGET')}` first")
            if profile is not None:
                _check_machine(remote, profile, info.get("facts", {}))
            to_server = PortForward(transport, "127.0.0.1", int(info["port"]))
            process.send_line('{"report_port": %d}' % to_server.port)
        except Exception:
            to_tracker.close()
            process.close(wait_s=1)
            raise
        _wait_registered(tracker, f"127.0.0.1:{to_server.port}", process, remote)
        log(f"board {unit} joined the pool at {tracker} under key {key!r}: TVM {info.get('tvm')} RPC server "
            f"(pid {info.get('pid')}) on its 127.0.0.1:{info['port']}, reached at 127.0.0.1:{to_server.port} over "
            f"SSH; tracker reached from the board through its 127.0.0.1:{to_tracker.port}")
        return BoardMembership(unit, key, remote, process, info, to_tracker, to_server, log)
    except Exception:
        remote.close()
        raise


def _wait_registered(tracker: str, address: str, process, remote, timeout_s: float = 60.0) -> None:
    """Return once the tracker lists the board (the server registers on its own, just after its port is sent)."""
    import time

    from edgekit.errors import DeviceTimeoutError
    from edgekit.pool.tracker import pool_status

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(address in k["boards"] for k in pool_status(tracker)["keys"].values()):
            return
        if process.channel.exit_status_ready():
            break
        time.sleep(0.1)
    raise DeviceTimeoutError(f"the board's RPC server did not register with the tracker at {tracker}",
                             host=remote.name, stderr=process.stderr,
                             hint="is the tracker reachable from this host? (`edgekit pool status`)")
