"""Measuring on boards borrowed from the pool: ``PoolDevice``, a search/measure device like the others.

Each measurement asks the tracker for a board of the key (lease.py's ``request_session``: TVM's request, with
the client's name in it; it waits in the tracker's queue while every board is busy), uploads the artifact and
edgekit's device runner into that session's directory, runs the runner there (``edgekit.pool.run_runner`` on
the board's server) and reads what it printed with ``LatencyReport.from_runner``: the same runner, protocol,
output check and report as a direct SSH deploy, so the two agree within noise.  The session ends with the
measurement and the board goes back to the tracker for the next client.

A board that dies mid-measurement (its server killed, its link dropped) makes the RPC call fail: the board is
reported lost, and the measurement is retried on another board from the tracker.  A runner that fails for a
reason of the artifact's own (outputs differ, crash) is not a lost board and is raised as it is.

``measure_rounds`` measures several rounds at once on as many boards (the tracker hands each concurrent
request a different free board), records which unit measured which round, and leaves out of the result any
unit that disagrees with its siblings beyond the noise (spread.py).
"""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time
from pathlib import Path
from typing import Any, Callable

from edgekit.artifacts import CompiledArtifact, LatencyReport
from edgekit.errors import DeviceError, DeviceTimeoutError, DeviceUnreachableError
from edgekit.optimize.devices import Device
from edgekit.pool.spread import DEFAULT_TOLERANCE_RATIO, UnitMeasurement, unit_spread
from edgekit.pool.tracker import parse_address

DEFAULT_QUEUE_TIMEOUT_S = 900.0  # how long a request may wait in the tracker's queue for a free board
LOST_BOARD_ATTEMPTS = 3  # boards a measurement may lose before it gives up


class BoardLostError(DeviceUnreachableError):
    """The board serving a measurement went away mid-session (the measurement is retried elsewhere)."""


def _runner_files(runner_path: Path) -> tuple[str, dict[str, Path]]:
    """The runner (and its helpers) as uploaded: where it lands in the session dir, and every file it needs.

    Laid out as in the package (onboard/runner.py, testing/slow_runner.py) because the slow test runner finds
    the real one by that relative path.
    """
    from edgekit.onboard import UPLOADED_WITH_RUNNER

    files = {f"runner/onboard/{p.name}": p for p in UPLOADED_WITH_RUNNER}
    runner_path = Path(runner_path)
    main = f"runner/{runner_path.parent.name}/{runner_path.name}"
    files[main] = runner_path
    return main, files


class PoolDevice(Device):
    """Boards of one key in the pool at ``address`` (the tracker's HOST:PORT)."""

    kind = "pool"

    def __init__(self, address: str, key: str, *, threads: int | None = None, runner_path: Path | None = None,
                 env: dict[str, str] | None = None, queue_timeout_s: float = DEFAULT_QUEUE_TIMEOUT_S,
                 tolerance_ratio: float = DEFAULT_TOLERANCE_RATIO, say: Callable[[str], None] | None = None,
                 client: dict | None = None):
        from edgekit.onboard import RUNNER_PATH

        self.host, self.port = parse_address(address)
        self.address, self.key = f"{self.host}:{self.port}", key
        self.threads = threads
        self.runner_path = Path(runner_path or RUNNER_PATH)
        self.env = dict(env or {})
        self.queue_timeout_s = queue_timeout_s
        self.tolerance_ratio = tolerance_ratio
        self.say = say or (lambda message: None)
        # Units of one key are identical boards: one latency table serves them all.
        self.identity = f"pool:{key}" + (f"-{runner_path.stem}" if runner_path else "")
        self.history: list[dict[str, Any]] = []  # every measurement: which unit, what, how long
        self.lost_units: list[dict[str, Any]] = []
        self.spreads: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._pool, self._pool_size = None, 0
        from edgekit.pool.lease import client_identity

        # Who holds the boards this device borrows (`edgekit pool status`); its worker processes borrow as it.
        self.identity_of_client = client or client_identity()

    # -- one round on one board -----------------------------------------------------------------------------

    def _session(self):
        from edgekit.compile.tvm_env import import_tvm

        import_tvm()
        from edgekit.pool.lease import request_session

        try:  # waits in the tracker's queue at most queue_timeout_s; the tracker records us as the holder
            return request_session(self.host, self.port, self.key, session_timeout=self.queue_timeout_s,
                                   queue_timeout_s=self.queue_timeout_s, client=self.identity_of_client)
        except TimeoutError as exc:
            raise DeviceTimeoutError(f"no board of key {self.key!r} in the pool at {self.address} became free "
                                     f"within {self.queue_timeout_s:g} s ({exc})", host=self.address,
                                     hint="`edgekit pool status` lists the boards and who holds them; join one "
                                          "with `edgekit pool join`") from None
        except ConnectionRefusedError as exc:
            raise DeviceUnreachableError(f"cannot reach the pool's tracker at {self.address} ({exc})",
                                         host=self.address, hint="start it with `edgekit pool start`") from None
        except Exception as exc:
            raise DeviceUnreachableError(f"the pool at {self.address} gave no usable board of key {self.key!r} "
                                         f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})",
                                         host=self.address,
                                         hint="`edgekit pool status` lists the boards of each key") from None

    def _measure_once(self, artifact: CompiledArtifact, protocol) -> LatencyReport:
        from edgekit.onboard import runner_options

        started = time.monotonic()
        session = self._session()
        unit = "?"
        phases = {"lease_s": time.monotonic() - started}
        try:
            unit = json.loads(session.get_function("edgekit.pool.unit")())["unit"]
            main, files = _runner_files(self.runner_path)
            for path in sorted(Path(artifact.path).iterdir()):
                if path.is_file():
                    files[f"artifact/{path.name}"] = path
            layout = {}
            mark = time.monotonic()
            for i, (dest, local) in enumerate(sorted(files.items())):
                session.upload(str(local), target=f"upload{i}")
                layout[dest] = f"upload{i}"
            phases["upload_s"] = time.monotonic() - mark
            mark = time.monotonic()
            request = {"layout": layout, "runner": main, "artifact": "artifact", "argv": runner_options(protocol),
                       "env": self.env, "timeout_s": protocol.time_limit_s + 30}
            answer = json.loads(session.get_function("edgekit.pool.run_runner")(json.dumps(request)))
            phases["runner_s"] = time.monotonic() - mark
        except Exception as exc:  # the RPC link or the board's server failed: the board is gone for us
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise BoardLostError(f"pool board lost while measuring {artifact.artifact_id} ({first})",
                                 host=unit) from None
        finally:
            del session  # closes the connection: the board goes back to the tracker
        report = LatencyReport.from_runner(exit_status=answer["exit_status"], stdout=answer["stdout"],
                                           stderr=answer["stderr"], protocol=protocol, where=f"pool unit {unit}",
                                           artifact_id=artifact.artifact_id,
                                           device_extra={"pool_unit": unit, "pool_key": self.key})
        with self._lock:
            self.history.append({"unit": unit, "artifact_id": artifact.artifact_id,
                                 "median_ms": report.stats.get("median_ms"),
                                 "kernels": bool(report.kernels), "wall_s": round(time.monotonic() - started, 3),
                                 "warmup_runs": report.warmup_runs, "samples": len(report.samples_ms),
                                 **{k: round(v, 3) for k, v in phases.items()}})
        return report

    def _measure_retrying(self, artifact, protocol) -> LatencyReport:
        for attempt in range(1, LOST_BOARD_ATTEMPTS + 1):
            try:
                return self._measure_once(artifact, protocol)
            except BoardLostError as exc:
                with self._lock:
                    self.lost_units.append({"unit": exc.host, "artifact_id": artifact.artifact_id,
                                            "error": str(exc)})
                if attempt == LOST_BOARD_ATTEMPTS:
                    raise
                self.say(f"pool: {str(exc).splitlines()[0]}; the board is dropped and the measurement retried on "
                         "another board")
        raise AssertionError("unreachable")

    def _protocol(self, artifact, **overrides):
        """The artifact's protocol with what is given (None: the profile's); ``threads`` from this device."""
        return artifact.measure_protocol.with_overrides(**{"threads": self.threads, **overrides})

    def measure(self, artifact, *, kernels=False, warmup=None, repeats=None, kernel_repeats=None, **overrides):
        """One measurement on a board of the key (``overrides``: other MeasureProtocol fields, e.g. ci_target_ratio)."""
        if not isinstance(artifact, CompiledArtifact):
            artifact = CompiledArtifact.open(artifact)
        protocol = self._protocol(artifact, kernels=kernels, warmup=warmup, repeats=repeats,
                                  kernel_repeats=kernel_repeats, **overrides)
        return self._measure_retrying(artifact, protocol)

    # -- several rounds on several boards at once ------------------------------------------------------------

    def measure_rounds(self, artifact, rounds: int, *, kernels=False, warmup=None, repeats=None,
                       kernel_repeats=None) -> list[LatencyReport]:
        """``rounds`` measurements at once, each on whichever board the tracker hands out; flagged units dropped.

        Each round runs in a worker process of its own: TVM's RPC client holds the GIL while it waits on
        the board, so threads would measure one board at a time.  A round whose board is lost is said and
        resubmitted (to another board).  Every report names its unit (``device["pool_unit"]``); the spread over
        units goes into each kept report's ``stats["unit_spread"]`` and ``self.spreads``.
        """
        if not isinstance(artifact, CompiledArtifact):
            artifact = CompiledArtifact.open(artifact)
        protocol = self._protocol(artifact, kernels=kernels, warmup=warmup, repeats=repeats,
                                  kernel_repeats=kernel_repeats)
        rounds = max(1, rounds)
        workers = self._workers(rounds)
        job = (self.address, self.key, str(self.runner_path), self.env, self.queue_timeout_s, str(artifact.path),
               protocol.to_dict(), self.identity_of_client)
        pending = {workers.submit(_measure_in_worker, *job): 1 for _ in range(rounds)}
        reports = []
        while pending:
            future = next(iter(concurrent.futures.wait(pending, return_when="FIRST_COMPLETED").done))
            attempt = pending.pop(future)
            outcome, payload = future.result()
            if outcome == "ok":
                report_dict, entry = payload
                with self._lock:
                    self.history.append(entry)
                reports.append(LatencyReport.from_dict(report_dict))
                continue
            unit, message = payload
            if outcome != "lost":  # the artifact's own failure (outputs differ, crash): not the board's
                raise DeviceError(f"{unit}: {message}")
            with self._lock:
                self.lost_units.append({"unit": unit, "artifact_id": artifact.artifact_id, "error": message})
            if attempt >= LOST_BOARD_ATTEMPTS:
                raise BoardLostError(message, host=unit)
            self.say(f"pool: {unit}: {message}; the board is dropped and the measurement retried on another board")
            pending[workers.submit(_measure_in_worker, *job)] = attempt + 1
        spread = unit_spread([UnitMeasurement(r.device["pool_unit"], r.stats["median_ms"],
                                              r.stats.get("median_ci_low_ms"), r.stats.get("median_ci_high_ms"))
                              for r in reports], tolerance_ratio=self.tolerance_ratio)
        with self._lock:
            self.spreads.append({"artifact_id": artifact.artifact_id, "kernels": kernels, **spread.to_dict()})
        for unit, why in spread.flagged.items():
            self.say(f"pool: unit {unit} disagrees with its siblings on {artifact.artifact_id}: {why}; "
                     "flagged and left out")
        kept = [r for r in reports if r.device["pool_unit"] not in spread.flagged]
        for r in kept:
            r.stats["unit_spread"] = spread.to_dict()
        return kept

    def prepare(self, rounds: int) -> None:
        """Start the worker processes for ``rounds`` concurrent rounds now, so that their start (each imports
        TVM) overlaps the host's own work instead of delaying the first measurement."""
        rounds = max(1, rounds)
        workers = self._workers(rounds)
        for _ in range(rounds):
            workers.submit(_started)

    def _workers(self, n: int):
        """Worker processes for concurrent rounds, started once (spawned: no forked TVM or torch state)."""
        import multiprocessing

        if self._pool is None or self._pool_size < n:
            self.close()
            context = multiprocessing.get_context("spawn")
            # All n workers up before any takes a round: else the first one up could take two rounds in a row
            # while a board stays idle.
            barrier = context.Barrier(n)
            self._pool = concurrent.futures.ProcessPoolExecutor(max_workers=n, mp_context=context,
                                                                initializer=_worker_init, initargs=(barrier,))
            self._pool_size = n
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool, self._pool_size = None, 0

    def describe(self):
        return {"kind": self.kind, "identity": self.identity, "pool": self.address, "key": self.key,
                "threads": self.threads, "runner": self.runner_path.name, **({"env": self.env} if self.env else {})}

    def summary(self) -> dict[str, Any]:
        """Which unit measured what, the boards lost, and every spread (for reports and the benchmark)."""
        with self._lock:
            per_unit: dict[str, int] = {}
            for h in self.history:
                per_unit[h["unit"]] = per_unit.get(h["unit"], 0) + 1
            return {"pool": self.address, "key": self.key, "measurements": len(self.history),
                    "per_unit": per_unit, "lost": list(self.lost_units), "spreads": list(self.spreads),
                    "flagged": sorted({u for s in self.spreads for u in s["flagged"]})}


def _worker_init(barrier) -> None:
    import sys
    from threading import BrokenBarrierError

    sys.modules.setdefault("torch", None)  # `import tvm` would import torch (seconds): a worker needs none
    from edgekit.compile.tvm_env import import_tvm

    import_tvm()
    try:
        barrier.wait(timeout=120)
    except BrokenBarrierError:
        pass  # fewer workers started than asked for: go on, the rounds are served all the same


def _started() -> None:
    """A no-op job: submitting one makes the executor start a worker."""


def _measure_in_worker(address, key, runner_path, env, queue_timeout_s, artifact_path, protocol_dict, client=None):
    """One round in a worker process: ("ok", (report, history entry)) or ("lost"/"failed", (unit, message)).

    Outcomes, not exceptions, cross the process boundary: edgekit's errors take keyword-only arguments,
    which pickle cannot rebuild.
    """
    from edgekit.errors import EdgekitError
    from edgekit.targets import MeasureProtocol

    device = PoolDevice(address, key, runner_path=Path(runner_path), env=env, queue_timeout_s=queue_timeout_s,
                        client=client)
    artifact = CompiledArtifact.open(artifact_path)
    protocol = MeasureProtocol(**{**protocol_dict, "cpus": tuple(protocol_dict.get("cpus") or ())})
    try:
        report = device._measure_once(artifact, protocol)
    except BoardLostError as exc:
        return "lost", (exc.host, str(exc).split(": ", 1)[-1])
    except EdgekitError as exc:
        return "failed", (getattr(exc, "host", None) or address, str(exc))
    return "ok", (report.to_dict(), device.history[-1])


def measure_on_pool(artifact, address: str, key: str, **kwargs) -> LatencyReport:
    """One measurement of ``artifact`` on a board of ``key`` from the pool at ``address``."""
    measure_kwargs = {k: kwargs.pop(k) for k in ("kernels", "warmup", "repeats", "kernel_repeats") if k in kwargs}
    device = PoolDevice(address, key, **kwargs)
    return device.measure(artifact, **measure_kwargs)

