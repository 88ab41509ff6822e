"""``edgekit pool``: a board pool on TVM's RPC tracker -- start the tracker, join boards to it, see who is free.

    edgekit pool start [--host 127.0.0.1] [--port 9190]          # the tracker, in the foreground
    edgekit pool join --host pi@board --target rpi4 --tracker 127.0.0.1:9190   # one board, in the foreground
    edgekit pool status --pool 127.0.0.1:9190 [--json]

Then `edgekit run`/`optimize`/`tune`/`profile` take ``--pool 127.0.0.1:9190 --key rpi4`` and borrow boards from
the tracker; `status` shows who (user@host, pid, verb) holds each board and who waits.
"""

from __future__ import annotations

import time

from edgekit.cli.options import add_json_option, add_ssh_options, add_targets_dir_option, connect_kwargs
from edgekit.cli.output import emit_json, info


def register(subparsers) -> None:
    parser = subparsers.add_parser("pool", help="share boards between clients through TVM's RPC tracker",
                                   description="Several clients share boards: TVM's tracker queues their "
                                               "requests and hands each a free board of the key it asks for.")
    verbs = parser.add_subparsers(dest="pool_command", metavar="VERB", required=True)

    start = verbs.add_parser("start", help="run the tracker (until interrupted)")
    start.add_argument("--host", default="127.0.0.1", help="address the tracker listens on (default: %(default)s)")
    start.add_argument("--port", type=int, default=9190, help="its port (default: %(default)s; 0: a free one)")
    start.set_defaults(func=run_start)

    join = verbs.add_parser("join", help="start TVM's RPC server on a board and register it (until interrupted)",
                            description="Only SSH has to be open on the board: the server's link to the tracker "
                                        "and the clients' link to the server are forwarded over the SSH connection "
                                        "this command keeps; clients run on this host.")
    add_ssh_options(join, several=False, root=True)
    join.add_argument("--target", required=True, help="the board's target profile; its name is the default key")
    join.add_argument("--tracker", required=True, metavar="HOST:PORT", help="the pool's tracker")
    join.add_argument("--key", default=None, help="device key to register under (default: the target's name)")
    join.add_argument("--unit", default=None, help="name of this board in measurements (default: --host)")
    add_targets_dir_option(join)
    join.set_defaults(func=run_join)

    status = verbs.add_parser("status", help="boards and keys, who holds each board (user@host, pid, verb), "
                                             "and the queue")
    status.add_argument("--pool", required=True, metavar="HOST:PORT", help="the pool's tracker")
    add_json_option(status)
    status.set_defaults(func=run_status)


def run_start(args) -> int:
    from edgekit.pool.tracker import start_tracker

    tracker = start_tracker(args.host, args.port)
    info(f"pool tracker listening on {tracker.address} (TVM RPC tracker, pid {tracker.process.pid}); "
         f"boards join with `edgekit pool join --tracker {tracker.address}`")
    print(tracker.address, flush=True)
    try:
        while tracker.running:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        tracker.stop()
    return 0


def run_join(args) -> int:
    from edgekit.errors import ConnectionLostError
    from edgekit.pool.join import join_pool
    from edgekit.targets import load_target

    profile = load_target(args.target, args.targets_dir)
    key = args.key or profile.name
    membership = join_pool(args.host, args.tracker, key, profile=profile, unit=args.unit, root=args.root,
                           log=info, **connect_kwargs(args))
    print(f"joined {membership.unit} {key} {membership.address}", flush=True)
    try:
        membership.wait()
    except KeyboardInterrupt:
        import time

        started = time.monotonic()
        info(f"board {membership.unit} leaving the pool: stopping its server")
        membership.close()
        info(f"board {membership.unit} left the pool ({time.monotonic() - started:.1f} s to stop its server)")
        return 0
    membership.close()
    raise ConnectionLostError("the board's RPC server ended or its SSH link dropped; it has left the pool",
                              host=membership.unit, hint="run `edgekit pool join` again once the board is back")


def run_status(args) -> int:
    from edgekit.pool.tracker import describe_client, pool_status

    status = pool_status(args.pool)
    if args.json:
        emit_json(status)
        return 0
    print(f"pool {status['tracker']}")
    if not status["keys"]:
        print("  no boards (join one with `edgekit pool join`)")
    for key, k in status["keys"].items():
        print(f"  key {key}: {len(k['boards'])} board(s), {k['free']} free, {k['busy']} busy, "
              f"{k['queued_requests']} request(s) queued")
        for board in k["boards"]:
            holder = k["held_by"].get(board)
            print(f"    {board}  " + (f"in use by {describe_client(holder)} for {holder['held_s']:g} s" if holder
                                      else "free"))
        for i, waiting in enumerate(k["queue"], 1):
            print(f"    queued {i}: {describe_client(waiting)}, waiting {waiting['waiting_s']:g} s")
    return 0
