"""Tuning measured on boards borrowed from the pool (``edgekit tune --pool HOST:PORT --key K``).

MetaSchedule's own RPC runner already speaks to a tracker (``RPCConfig(tracker_host, tracker_port,
tracker_key)``): each trial asks the tracker for a board of the key, uploads the candidate, times it and ends
its session, so the board goes back to the queue between trials and other clients' requests are served in
turn.  With N boards of the key joined, N runner workers measure N candidates at once, one per board.

What edgekit adds, as for tuning over SSH (remote_tune.py): candidates are linked into a ``.so`` on the host
(the board has no compiler), arguments are filled with numpy on the host (the board's runtime has no
random_fill), and each request carries the client's name so `edgekit pool status` shows who holds the board
(lease.py).  The boards of one key are identical: the database is filed under the facts of the first board
handed out (its fingerprint), as it would be for one board over --host.

A board that dies mid-trial (its server killed, its link gone) fails that trial's RPC call; MetaSchedule would
record the candidate as failed and never measure it.  ``retrying_runner`` resubmits such a trial, and the
tracker hands the retry a live board (a dead one's registration went with its link); the client says so.
A timeout is the candidate's own (too slow), not the board's, and is not retried.
"""

from __future__ import annotations

import functools
import json
import time
from types import SimpleNamespace

from edgekit.errors import DeviceUnreachableError

SESSION_TIMEOUT_S = 120
TRIAL_ATTEMPTS = 3  # boards a trial may lose before its failure is kept
LOSS_NOTICE_S = 3.0  # how long a failed trial waits for the tracker to notice that its board left


class PoolTuningSession:
    """Boards of one key in the pool, seen by the tuner as one device (what RemoteTuningSession is for --host)."""

    def __init__(self, address: str, key: str, profile, info: dict, boards: int, *, log=lambda message: None):
        self.address, self.key, self.profile = address, key, profile
        self.info, self.boards = info, boards
        self.log = log

    @property
    def name(self) -> str:
        return f"pool {self.address} key {self.key}"

    @property
    def facts(self) -> dict:
        return self.info.get("facts", {})

    @classmethod
    def open(cls, address: str, key: str, profile, *, log=lambda message: None) -> "PoolTuningSession":
        from edgekit.compile.remote_tune import _check_machine
        from edgekit.pool.client import PoolDevice
        from edgekit.pool.lease import client_identity
        from edgekit.pool.tracker import pool_status

        status = pool_status(address)
        boards = len(status["keys"].get(key, {}).get("boards", []))
        if not boards:
            raise DeviceUnreachableError(f"the pool at {address} has no board of key {key!r}",
                                         host=address, hint="`edgekit pool status --pool ADDRESS` lists the keys; "
                                                            "join a board with `edgekit pool join --key KEY`")
        device = PoolDevice(address, key, queue_timeout_s=SESSION_TIMEOUT_S * 5, client=client_identity("tune"))
        session = device._session()  # one board, for the facts the database is filed under
        try:
            info = json.loads(session.get_function("edgekit.pool.unit")())
        finally:
            del session
        pool = cls(address, key, profile, info, boards, log=log)
        pool.client = device.identity_of_client
        _check_machine(SimpleNamespace(name=info.get("unit", address)), profile, pool.facts)
        log(f"tuning on the pool {address}: {boards} board(s) of key {key!r}, {boards} candidate(s) measured at "
            f"once; database filed under the facts of {info.get('unit')}")
        return pool

    def runner(self):
        from edgekit.compile.remote_tune import alloc_with_numpy
        from edgekit.compile.tune_workers import EVALUATOR
        from edgekit.compile.tvm_env import import_tvm
        from edgekit.pool.lease import create_session, set_client
        from edgekit.pool.tracker import parse_address

        import_tvm()
        from tvm.s_tir import meta_schedule as ms

        host, port = parse_address(self.address)
        config = ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=self.key,
                                     session_timeout_sec=SESSION_TIMEOUT_S)
        rpc_runner = ms.runner.RPCRunner(rpc_config=config, evaluator_config=ms.runner.EvaluatorConfig(**EVALUATOR),
                                         f_create_session=create_session, f_alloc_argument=alloc_with_numpy,
                                         max_workers=self.boards,  # one candidate per board at a time
                                         initializer=functools.partial(set_client, json.dumps(self.client)))
        return retrying_runner(rpc_runner, self.boards_now, say=self.log)

    def boards_now(self) -> list[str]:
        """The key's boards registered in the tracker now (an unreachable tracker: none)."""
        from edgekit.pool.tracker import pool_status

        try:
            return list(pool_status(self.address)["keys"].get(self.key, {}).get("boards", []))
        except Exception:  # noqa: BLE001  (the tracker is busy or gone: no board can be counted as present)
            return []

    def close(self) -> None:
        pass  # nothing held between trials: each trial's session gave its board back


def _last_line(error_msg: str) -> str:
    lines = [line.strip() for line in error_msg.splitlines() if line.strip()]
    return (lines[-1] if lines else error_msg)[:200]


def boards_gone(before: set[str], boards_now, wait_s: float = LOSS_NOTICE_S) -> set[str]:
    """Boards of ``before`` no longer registered (``boards_now()``), waiting up to ``wait_s`` for the tracker
    to notice a loss; empty: every board is still there, so a failed trial failed on its own."""
    deadline = time.monotonic() + wait_s
    while True:
        gone = before - set(boards_now())
        if gone or time.monotonic() >= deadline:
            return gone
        time.sleep(0.2)


def retry_lost_trial(result, resubmit, boards: set[str], boards_now, *, say=lambda message: None,
                     attempts: int = TRIAL_ATTEMPTS):
    """A trial's result, resubmitted (``resubmit()``) while it failed and a board of ``boards`` left the pool."""
    for attempt in range(2, attempts + 1):
        if not result.error_msg or result.error_msg.startswith("RPCRunner: Timeout"):
            return result  # timed on a board, or too slow there: the candidate's own result
        gone = boards_gone(boards, boards_now)
        if not gone:
            return result  # every board is still there: the candidate itself failed
        say(f"pool: board {', '.join(sorted(gone))} left the pool during a tuning trial "
            f"({_last_line(result.error_msg)}); the trial is retried on another board "
            f"(attempt {attempt} of {attempts})")
        boards = set(boards_now())
        result = resubmit()
    return result


def retrying_runner(inner, boards_now, *, say=lambda message: None, attempts: int = TRIAL_ATTEMPTS):
    """MetaSchedule runner ``inner`` whose trials that lose their board are resubmitted (at most ``attempts``).

    ``boards_now()`` lists the key's boards in the tracker.  A trial that fails while a board registered at its
    submission left the pool lost its board (the tracker cannot say which board served which trial, so any
    loss counts); one that fails with every board still there, or times out, failed on its own: kept.
    """
    from edgekit.compile.tvm_env import import_tvm

    import_tvm()
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms

    @derived_object
    class RetryingFuture(ms.runner.PyRunnerFuture):
        def __init__(self, runner_input, future, boards: set[str]):
            super().__init__()
            self.runner_input, self.future, self.boards = runner_input, future, boards

        def done(self) -> bool:
            return self.future.done()

        def result(self):
            return retry_lost_trial(self.future.result(), lambda: inner.run([self.runner_input])[0].result(),
                                    self.boards, boards_now, say=say, attempts=attempts)

    @derived_object
    class RetryingRunner(ms.runner.PyRunner):
        def run(self, runner_inputs):
            boards = set(boards_now())
            return [RetryingFuture(i, f, boards) for i, f in zip(runner_inputs, inner.run(runner_inputs))]

    return RetryingRunner()
