"""A board pool shared by several clients, on TVM's RPC tracker (issue 13).

    tracker.py  `edgekit pool start` / `status`: TVM's tracker process, and its summary without importing TVM
    tracker_server.py  the tracker process itself: TVM's tracker plus a record of who holds which board
    lease.py    a board requested under the client's name (user@host, pid, verb), what `status` shows
    join.py     `edgekit pool join`: TVM's RPC server on a board, registered with the tracker, over SSH only
    client.py   PoolDevice: measurements on boards borrowed from the tracker's queue, lost boards retried
    tuning.py   `edgekit tune --pool`: MetaSchedule's RPC runner on the tracker, one candidate per board at once
    spread.py   unit-to-unit spread over identical boards; a unit that disagrees is flagged, not averaged in
"""

from edgekit.pool.client import BoardLostError, PoolDevice, measure_on_pool
from edgekit.pool.join import BoardMembership, join_pool
from edgekit.pool.tracker import TrackerProcess, parse_address, pool_status, start_tracker

__all__ = ["BoardLostError", "BoardMembership", "PoolDevice", "TrackerProcess", "join_pool", "measure_on_pool",
           "parse_address", "pool_status", "start_tracker"]
