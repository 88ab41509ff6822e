"""The pool's tracker process: TVM's RPC tracker, plus a record of who holds which board.

Run as ``python tracker_server.py HOST PORT`` (a script, no edgekit imports: the tracker needs only TVM and
tornado).  It is what ``python -m tvm.exec.rpc_tracker --silent`` runs -- tvm.rpc.tracker's tornado loop and
PriorityScheduler, the whole queueing -- in this one process instead of a popen worker, with torch's import
blocked (``import tvm`` would import it: seconds the tracker does not need).

TVM's tracker hands boards out but forgets to whom: a REQUEST carries a ``user`` field that its scheduler
ignores.  edgekit's clients put who they are there (JSON: ``{"user": "ana@laptop", "pid": 123, "verb":
"tune"}``, edgekit/pool/lease.py), and this script wraps the tracker's ``request`` and ``put`` to keep:

- ``waiting``: requests in the queue, with their client and since when;
- ``holders``: per board address, the client it was handed to and since when.  A board is held from the
  moment the tracker hands it out until its server reports itself free again (TVM's server PUTs a new match
  key after each session) or leaves the pool.

A client that dies while it waits closes its connection; TVM's tracker keeps its request queued until a board
frees up (and is then refused by the closed socket), so ``close`` also drops its requests from the queue and
from ``waiting``: `edgekit pool status` never lists a client that is gone.

Both ride along in the tracker's own SUMMARY answer (``edgekit_holders``, ``edgekit_waiting``), so `edgekit
pool status` reads them with the board list in one request.  A client that sends no user (a stock TVM
client) is listed with what the tracker knows: its address.
"""

import heapq
import json
import sys
import threading
import time

sys.modules["torch"] = None

from tvm.rpc import tracker as _tracker  # noqa: E402

_lock = threading.Lock()
_holders = {}  # "addr:port" -> {"client": ..., "key": ..., "since": ...}
_waiting = {}  # request id -> {"client": ..., "key": ..., "since": ...}
_asked_by = {}  # request id -> (the client's connection, the callback queued for it)
_ids = iter(range(1, 1 << 62))


def _client(user):
    try:
        client = json.loads(user) if user else None
    except ValueError:
        client = None
    if not isinstance(client, dict):  # a stock TVM client sends "": it did not say who it is
        client = {"user": str(user) if user else None}
    return client


_handler = _tracker.TrackerServerHandler
_original_request, _original_put, _original_close, _original_summary = (
    _handler.request, _handler.put, _handler.close, _handler.summary)


def _connection_of(callback):
    """The client connection a REQUEST's callback answers (TVM's ``_cb`` closes over its TCPEventHandler)."""
    for cell in callback.__closure__ or ():
        if isinstance(cell.cell_contents, _tracker.TCPEventHandler):
            return cell.cell_contents
    return None


def request(self, key, user, priority, callback):
    rid = next(_ids)

    def handed(value):  # value: (addr, port, matchkey) of the board the scheduler picked
        served = callback(value)
        with _lock:
            entry = _waiting.pop(rid, None)
            _asked_by.pop(rid, None)
            if served and entry is not None:
                _holders["%s:%s" % (value[0], value[1])] = {"client": entry["client"], "key": key,
                                                           "since": time.time()}
        return served

    with _lock:
        _waiting[rid] = {"client": _client(user), "key": key, "priority": priority, "since": time.time()}
        _asked_by[rid] = (_connection_of(callback), handed)
    return _original_request(self, key, user, priority, handed)


def put(self, key, value):
    # value: (server connection, addr, port, matchkey): the board is free again (or new)
    with _lock:
        _holders.pop("%s:%s" % (value[1], value[2]), None)
    return _original_put(self, key, value)


def close(self, conn):
    with _lock:
        for value in getattr(conn, "put_values", []):
            _holders.pop("%s:%s" % (value[1], value[2]), None)
        gone = [rid for rid, (asker, _) in _asked_by.items() if asker is conn]
        dead = {_asked_by.pop(rid)[1] for rid in gone}
        for rid in gone:
            _waiting.pop(rid, None)
    if dead:  # the client left the queue: its requests can never be answered
        for scheduler in self._scheduler_map.values():
            with scheduler._lock:
                scheduler._requests = [r for r in scheduler._requests if r[-1] not in dead]
                heapq.heapify(scheduler._requests)
    return _original_close(self, conn)


def summary(self):
    answer = _original_summary(self)
    with _lock:
        answer["edgekit_holders"] = {addr: dict(h) for addr, h in _holders.items()}
        answer["edgekit_waiting"] = sorted((dict(w) for w in _waiting.values()), key=lambda w: w["since"])
    return answer


_handler.request, _handler.put, _handler.close, _handler.summary = request, put, close, summary

if __name__ == "__main__":
    server = _tracker.PopenTrackerServerState(sys.argv[1], int(sys.argv[2]), int(sys.argv[2]) + 1, silent=True)
    server.thread.join()
