"""Requesting a board from the tracker under the client's name (what `edgekit pool status` shows as its holder).

TVM's ``TrackerSession.request`` sends an empty ``user``; ``request_session`` sends the same REQUEST with the
client in it (``{"user": "ana@laptop", "pid": 4242, "verb": "tune"}``), then connects to the board the
tracker hands out exactly as TVM does.  The tracker's queue and scheduling are TVM's, untouched.

Worker processes (the rounds measured at once, MetaSchedule's runner workers) borrow boards for the process
that started them: it hands them its identity (``set_client`` as their initializer, or an argument).  Not
through the environment it exports: an independent client it starts (a CLI in a subprocess) is another
client.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import sys

CLIENT_ENV = "EDGEKIT_POOL_CLIENT"
VERBS = ("tune", "optimize", "profile", "run", "deploy", "compress", "bench")


def client_identity(verb: str | None = None) -> dict:
    """Who borrows boards: user@host, pid and verb -- the parent's in a worker it started (``set_client``)."""
    inherited = os.environ.get(CLIENT_ENV)
    if inherited:
        try:
            return json.loads(inherited)
        except ValueError:
            pass
    if verb is None:  # `edgekit tune ...`, `python -m edgekit.cli.main optimize ...`; else the program's name
        verb = next((a for a in sys.argv[1:] if a in VERBS), os.path.basename(sys.argv[0] or "python"))
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001  (no passwd entry, e.g. in a container)
        user = str(os.getuid())
    return {"user": f"{user}@{socket.gethostname()}", "pid": os.getpid(), "verb": verb}


def set_client(identity_json: str) -> None:
    """A worker's initializer: borrow boards under the identity of the process that started the worker."""
    os.environ[CLIENT_ENV] = identity_json


def request_session(host: str, port: int, key: str, *, priority: int = 1, session_timeout: float = 0,
                    queue_timeout_s: float | None = None, max_retry: int = 3, client: dict | None = None):
    """An RPC session on a board of ``key``, waiting in the tracker's queue while every board is busy.

    What ``tvm.rpc.TrackerSession.request`` does, with ``client`` (default: ``client_identity()``) as the
    request's user.  Raises ConnectionRefusedError (tracker unreachable), TimeoutError (queue wait over
    ``queue_timeout_s``), RuntimeError (no usable answer after ``max_retry`` tries).
    """
    from tvm import rpc
    from tvm.rpc import base

    user = json.dumps(client or client_identity())
    last_error = None
    for _ in range(max_retry):
        try:
            tracker = rpc.connect_tracker(host, port)
        except Exception as exc:  # TVM retries, then raises RuntimeError: say what it is
            raise ConnectionRefusedError(f"cannot reach the tracker at {host}:{port}: {exc}") from None
        try:
            tracker._sock.settimeout(queue_timeout_s)
            base.sendjson(tracker._sock, [base.TrackerCode.REQUEST, key, user, priority])
            value = base.recvjson(tracker._sock)
            if value[0] != base.TrackerCode.SUCCESS:
                raise RuntimeError(f"invalid answer from the tracker: {value!s}")
            url, board_port, matchkey = value[1]
            return rpc.connect(url, board_port, matchkey, session_timeout)
        except socket.timeout:
            raise
        except (OSError, RuntimeError) as exc:
            last_error = exc
        finally:
            tracker.close()
    raise RuntimeError(f"cannot get a board of key {key!r} after {max_retry} tries: {last_error}")


def create_session(rpc_config):
    """MetaSchedule's ``f_create_session`` for RPCRunner: a board from the tracker, under the client's name."""
    return request_session(rpc_config.tracker_host, int(rpc_config.tracker_port), rpc_config.tracker_key,
                           priority=rpc_config.session_priority, session_timeout=rpc_config.session_timeout_sec)
