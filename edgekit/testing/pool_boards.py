"""Local boards in a pool, for tests and benchmarks: a tracker, SSH devices, one `edgekit pool join` each.

Each join runs as its own process, ``python -m edgekit.cli.main pool join ...``, as a user would run it: its
SSH forwards must not share a process with a TVM RPC client (the client holds the GIL while it waits on a
board, which would stall the forwards' threads).
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class JoinedBoard:
    device: object  # edgekit.testing.sshd.SshDevice
    process: subprocess.Popen
    unit: str
    address: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def leave(self, timeout_s: float = 15.0) -> None:
        """Interrupt `pool join` (as Ctrl-C does): it closes the server's stdin and the server ends."""
        import signal

        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def join_board(device, tracker: str, *, target: str = "host", key: str | None = None, unit: str | None = None,
               log_dir: Path | str, ready_timeout_s: float = 120.0) -> JoinedBoard:
    """Run `edgekit pool join` for ``device`` (an SshDevice) and wait until it has joined."""
    log_path = Path(log_dir) / f"join-{device.port}.log"
    argv = [sys.executable, "-m", "edgekit.cli.main", "pool", "join", "--host", device.host_spec, "--target", target,
            "--tracker", tracker, "-i", str(device.client_key), "--known-hosts", str(device.known_hosts),
            "--no-agent", "--ssh-config", "/dev/null"]
    if key:
        argv += ["--key", key]
    if unit:
        argv += ["--unit", unit]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + ready_timeout_s
    line = process.stdout.readline().decode()  # "joined UNIT KEY ADDRESS" once the board is registered
    if not line.startswith("joined ") or time.monotonic() > deadline:
        process.kill()
        raise RuntimeError(f"`edgekit pool join` for {device.host_spec} did not join: {line!r}\n"
                           + log_path.read_text(errors="replace")[-2000:])
    _, unit_name, _, address = line.split()
    return JoinedBoard(device, process, unit_name, address, log_path)
