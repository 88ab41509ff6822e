"""The pool's tracker: TVM's own RPC tracker (tvm.rpc.tracker, what `python -m tvm.exec.rpc_tracker` runs).

The tracker keeps, per device key, the boards that are free and a FIFO queue of the clients waiting for one;
a board serves one client session at a time and is handed to the next client when that session ends.  That
queueing is the whole scheduler: edgekit adds none of its own.  The tracker needs ``tornado``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from edgekit.errors import DeviceUnreachableError, UsageError

DEFAULT_PORT = 9190
# What `python -m tvm.exec.rpc_tracker --silent` runs (tvm.rpc.tracker's server: tornado loop, PriorityScheduler),
# in one process, plus the record of who holds which board (tracker_server.py; a script without edgekit imports).
TRACKER_SCRIPT = Path(__file__).with_name("tracker_server.py")


def parse_address(text: str, *, what: str = "--pool") -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port), or a UsageError that says what is expected."""
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"{what} {text!r} is not HOST:PORT",
                         hint="e.g. 127.0.0.1:9190 (`edgekit pool start` prints it)")
    return host, int(port)


@dataclass
class TrackerProcess:
    """A tracker this process started (``edgekit pool start``, tests, benchmarks); ``stop`` ends it."""

    host: str
    port: int
    process: subprocess.Popen

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.process.poll() is None:
            try:  # its own session: the tracker's popen worker goes with it
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.process.wait(timeout=5)

    def __enter__(self) -> "TrackerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_tracker(host: str = "127.0.0.1", port: int = 0, *, ready_timeout_s: float = 180.0) -> TrackerProcess:
    """Start TVM's RPC tracker on ``host:port`` (port 0: a free one); return once it answers."""
    try:
        import tornado  # noqa: F401  the tracker's event loop; fail here with the fix, not in the child
    except ImportError:
        raise UsageError("the RPC tracker needs the Python package tornado, which is not installed",
                         hint="pip install tornado (it is an edgekit dependency: reinstall edgekit)") from None
    if port == 0:
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen([sys.executable, str(TRACKER_SCRIPT), host, str(port)],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               start_new_session=True, env=env)
    tracker = TrackerProcess(host, port, process)
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            err = process.stderr.read().decode(errors="replace")[-2000:]
            raise DeviceUnreachableError(f"the RPC tracker on {host}:{port} exited at start (status "
                                         f"{process.returncode})", host=f"{host}:{port}", stderr=err,
                                         hint="is the port taken? give another with --port")
        try:
            pool_status(tracker.address)
            return tracker
        except DeviceUnreachableError:
            time.sleep(0.2)
    tracker.stop()
    raise DeviceUnreachableError(f"the RPC tracker on {host}:{port} did not answer within {ready_timeout_s:g} s",
                                 host=f"{host}:{port}")


def pool_status(address: str, *, timeout_s: float = 10.0) -> dict:
    """What the tracker knows: every board (key, address) and, per key, free boards, busy ones and the queue.

    Spoken in the tracker's own protocol (length-prefixed JSON, ``TrackerCode.SUMMARY``) without importing
    TVM, so `edgekit pool status` answers in a fraction of a second.
    """
    import json
    import struct

    host, port = parse_address(address)
    magic, summary_code, success = 0x2F271, 6, 0  # tvm.rpc.base: RPC_TRACKER_MAGIC, TrackerCode.SUMMARY/SUCCESS
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(struct.pack("<i", magic))
            if struct.unpack("<i", _recv(sock, 4))[0] != magic:
                raise DeviceUnreachableError(f"{address} answers, but is not a TVM RPC tracker", host=address)
            body = json.dumps([summary_code]).encode()
            sock.sendall(struct.pack("<i", len(body)) + body)
            size = struct.unpack("<i", _recv(sock, 4))[0]
            code, summary = json.loads(_recv(sock, size))
    except OSError as exc:
        raise DeviceUnreachableError(f"cannot reach the pool's tracker at {address} ({exc})", host=address,
                                     hint="start it with `edgekit pool start`, or check --pool") from None
    if code != success:
        raise DeviceUnreachableError(f"the tracker at {address} refused the status request", host=address)
    boards: dict[str, list[str]] = {}
    for server in summary.get("server_info", []):
        key = server.get("key", "").split(":", 1)[-1]
        boards.setdefault(key, []).append(":".join(str(x) for x in server.get("addr", [])))
    # Who holds what (tracker_server.py's record; absent from a stock TVM tracker: then nothing is known).
    holders = summary.get("edgekit_holders", {})
    waiting = summary.get("edgekit_waiting", [])
    now = time.time()
    keys = {}
    for key in sorted(set(boards) | set(summary.get("queue_info", {}))):
        queue = summary.get("queue_info", {}).get(key, {})
        total, free = len(boards.get(key, [])), int(queue.get("free", 0))
        held = {addr: {**_client(h.get("client")), "held_s": round(now - h.get("since", now), 1)}
                for addr, h in holders.items() if addr in boards.get(key, [])}
        keys[key] = {"boards": sorted(boards.get(key, [])), "free": free, "busy": max(0, total - free),
                     "queued_requests": int(queue.get("pending", 0)), "held_by": held,
                     "queue": [{**_client(w.get("client")), "waiting_s": round(now - w.get("since", now), 1)}
                               for w in waiting if w.get("key") == key]}
    return {"tracker": address, "keys": keys}


def _client(client) -> dict:
    """A client as the tracker recorded it: user@host, pid, verb (a stock TVM client says nothing)."""
    client = client if isinstance(client, dict) else {}
    return {"user": client.get("user") or None, "pid": client.get("pid"), "verb": client.get("verb")}


def describe_client(client: dict) -> str:
    """``ana@laptop pid 4242 (tune)``, or what is known of a client that did not say who it is."""
    if not client.get("user"):
        return "a client that did not say who it is (not edgekit)"
    return client["user"] + (f" pid {client['pid']}" if client.get("pid") else "") + \
        (f" ({client['verb']})" if client.get("verb") else "")


def _recv(sock, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionResetError("the tracker closed the connection")
        data += chunk
    return data
