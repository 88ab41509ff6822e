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

RUNNER_PROCESS_NAME = "edgekit-runner"  # onboard/pool_server.py's name for the runner it forks


@dataclass
class JoinedBoard:
    device: object  # edgekit.testing.sshd.SshDevice
    process: subprocess.Popen
    unit: str
    address: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def leave(self, timeout_s: float = 60.0) -> None:
        """Interrupt `pool join` (as Ctrl-C does): it closes the server's stdin and the server ends.

        A join that has not exited within ``timeout_s`` is killed (its returncode is then negative); on this
        2-core machine under the whole suite, closing the SSH link has taken over 15 s."""
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


def wait_until_busy(devices, timeout_s: float = 60.0):
    """The first device found running a measurement (its runner process), or None within ``timeout_s``.

    A pool board's server forks the runner and names it (pool_server.RUNNER_PROCESS_NAME); a direct deploy runs
    ``python3 runner.py``.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for device in devices:
            if any(p.info["name"] == RUNNER_PROCESS_NAME or _runs_script(p.info["cmdline"], "runner.py")
                   for p in _device_tree(device)):
                return device
        time.sleep(0.05)
    return None


def freeze_mid_session(devices, timeout_s: float = 120.0):
    """The first device caught serving an RPC session, frozen there; None within ``timeout_s``.

    A board's server forks a worker per session (TVM's rpc server), so a device is mid-session while a python
    process of the device has a parent with the same command line.  Every process of the device is then stopped
    (SIGSTOP): the session cannot end before the test pulls the plug (``device.stop()``), so the client's call
    is certain to be cut mid-trial.  A device whose session ended before the stop is resumed and watched again.
    """
    import signal

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for device in devices:
            processes = _device_tree(device)
            if not _serving(processes):
                continue
            _signal_all(processes, signal.SIGSTOP)
            if _serving(_device_tree(device)):
                return device
            _signal_all(processes, signal.SIGCONT)
        time.sleep(0.02)
    return None


def _runs_script(cmdline, name: str) -> bool:
    """``python3 .../NAME ...`` (not a ``python3 -c SOURCE`` whose source mentions it)."""
    return len(cmdline or []) > 1 and cmdline[1].endswith(name)


def _device_tree(device) -> list:
    """The device's running processes (psutil): everything below its sshd listener, which is this device's
    alone (the local test devices share one login user).  Unlike sshd.device_processes, it cannot see what a
    stopped device left behind: it is for watching a live device, not for proving nothing is left."""
    import psutil

    if device.process is None:
        return []
    try:
        below = psutil.Process(device.process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for p in below:
        try:
            p.info = p.as_dict(["cmdline", "ppid", "status", "name"])
        except psutil.NoSuchProcess:
            continue
        if p.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(p)
    return found


def _serving(processes) -> bool:
    by_pid = {p.pid: p for p in processes}
    return any(p.info["cmdline"] and "python" in p.info["cmdline"][0] and p.info["ppid"] in by_pid
               and by_pid[p.info["ppid"]].info["cmdline"] == p.info["cmdline"] for p in processes)


def _signal_all(processes, signum) -> None:
    import os

    for p in processes:
        try:
            os.kill(p.pid, signum)
        except ProcessLookupError:
            pass


def client_main(argv=None) -> int:
    """A pool client as its own process: N measurements of one artifact, then a JSON line of what happened.

        python -m edgekit.testing.pool_boards POOL KEY ARTIFACT_DIR N [--slow-kernels JSON] [--repeats R]

    What it says about lost boards goes to stderr, as the CLI's log does.
    """
    import argparse
    import json

    from edgekit.optimize.devices import SLOW_RUNNER_PATH
    from edgekit.pool.client import PoolDevice
    from edgekit.testing.slow_runner import SLOW_ENV

    parser = argparse.ArgumentParser()
    parser.add_argument("pool")
    parser.add_argument("key")
    parser.add_argument("artifact")
    parser.add_argument("count", type=int)
    parser.add_argument("--slow-kernels", default=None)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    slow = {"runner_path": SLOW_RUNNER_PATH, "env": {SLOW_ENV: args.slow_kernels}} if args.slow_kernels else {}
    device = PoolDevice(args.pool, args.key, say=lambda m: print(m, file=sys.stderr, flush=True), **slow)
    done = []
    for _ in range(args.count):
        report = device.measure(args.artifact, warmup=2, repeats=args.repeats)
        done.append({"unit": report.device["pool_unit"], "median_ms": report.stats["median_ms"],
                     "outputs_match": report.output_check["passed"], "at": time.time()})
    print(json.dumps({"measurements": done, "lost": device.lost_units}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(client_main())
