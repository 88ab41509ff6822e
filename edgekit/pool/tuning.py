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
"""

from __future__ import annotations

import functools
import json
from types import SimpleNamespace

from edgekit.errors import DeviceUnreachableError

SESSION_TIMEOUT_S = 120


class PoolTuningSession:
    """Boards of one key in the pool, seen by the tuner as one device (what RemoteTuningSession is for --host)."""

    def __init__(self, address: str, key: str, profile, info: dict, boards: int):
        self.address, self.key, self.profile = address, key, profile
        self.info, self.boards = info, boards

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
        pool = cls(address, key, profile, info, boards)
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
        return ms.runner.RPCRunner(rpc_config=config, evaluator_config=ms.runner.EvaluatorConfig(**EVALUATOR),
                                   f_create_session=create_session, f_alloc_argument=alloc_with_numpy,
                                   max_workers=self.boards,  # one candidate per board at a time
                                   initializer=functools.partial(set_client, json.dumps(self.client)))

    def close(self) -> None:
        pass  # nothing held between trials: each trial's session gave its board back
