"""``edgekit tune``: MetaSchedule tuning into the target's persistent database.

    edgekit tune --model zoo:fmnist-resnet --target host --trials 200 --time-budget-s 1200
    edgekit tune --model m.pt2 --target rpi4 --host pi@board --trials 200     # measured on the board
    edgekit tune --model m.pt2 --target rpi4 --pool 127.0.0.1:9190 --key rpi4   # on boards borrowed from the pool
    edgekit tune ... --resume        # --trials is then the total, trials already recorded included
    edgekit tune ... --refine        # search kernels the database already has records for, too
    edgekit tune ... --search knobs  # only edgekit's own schedule knobs: a minute or two for a 224 CNN

Kernels the target's database already has (tuned for any model) are not tuned again.  The
report gives, per kernel, the default schedule's time, the record's, and the time gained;
records slower than the default are kept out of builds.  Every later ``edgekit compile``
for that target applies the database by itself.
"""

from __future__ import annotations

from edgekit.cli.compile import add_model_options
from edgekit.cli.deploy import add_connection_options, connect_kwargs
from edgekit.cli.options import add_pool_options
from edgekit.cli.output import add_json_option, add_targets_dir_option, emit_json, info
from edgekit.compile.tune import SEARCH_CHOICES
from edgekit.errors import UsageError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "tune", help="tune a model's kernels for a target (MetaSchedule); later compiles use the records",
        description="Search schedules for the model's fused kernels and keep the best ones in a database per "
                    "target (and per device when measured over --host).  Candidates are measured on this "
                    "machine, or on the device through an SSH tunnel to a TVM RPC server started there.")
    add_model_options(parser)
    parser.add_argument("--target", default="host", help="target profile name or .toml path (default: host)")
    parser.add_argument("--trials", type=int, default=64, help="candidates to measure (default: 64)")
    parser.add_argument("--time-budget-s", type=float, default=None, metavar="S",
                        help="stop after the batch that crosses S seconds of tuning")
    parser.add_argument("--search", choices=SEARCH_CHOICES, default=SEARCH_CHOICES[0],
                        help="knobs: every tile and loop order of edgekit's default schedules, measured; "
                             "metaschedule: MetaSchedule's evolutionary search; knobs+metaschedule (default): "
                             "the knob search, then MetaSchedule for what is left of --time-budget-s")
    parser.add_argument("--resume", action="store_true",
                        help="count trials already in the database towards --trials (continue an interrupted run)")
    parser.add_argument("--refine", action="store_true",
                        help="also search kernels that already have records (default: only kernels the database lacks)")
    parser.add_argument("--database", metavar="DIR", default=None,
                        help="database directory (default: $EDGEKIT_CACHE/tuning/<target>/<fingerprint>)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads candidates are measured with (default: the profile's)")
    add_connection_options(parser, several=True)
    add_pool_options(parser)  # --pool/--key: candidates measured on boards borrowed from the pool, one per board
    add_targets_dir_option(parser)
    add_json_option(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    from edgekit.compile.frontend import parse_input_shape
    from edgekit.compile.tune import tune_model
    from edgekit.targets import load_target

    if getattr(args, "inventory", None) or len(args.host) > 1:
        raise UsageError("tune measures on one device at a time", hint="give a single --host")
    if args.key and not args.pool:
        raise UsageError("--key names boards of a pool: give --pool HOST:PORT too")
    if args.pool and args.host:
        raise UsageError("give --pool or --host, not both", hint="--pool borrows boards; --host names one")
    if args.pool:
        from edgekit.pool.tracker import parse_address

        parse_address(args.pool)
    profile = load_target(args.target, args.targets_dir)
    shapes = [parse_input_shape(s) for s in args.input_shape] if args.input_shape else None
    remote_options = {}
    if args.host:
        remote_options = {**connect_kwargs(args), "root": args.root}
    report = tune_model(args.model, profile, trials=args.trials, time_budget_s=args.time_budget_s,
                        resume=args.resume, refine=args.refine, host=args.host[0] if args.host else None, input_shapes=shapes,
                        pool=args.pool, pool_key=args.key,
                        frontend=args.frontend, database_path=args.database, threads=args.threads, search=args.search, log=info,
                        **remote_options)
    if args.json:
        emit_json(report.to_dict())
    else:
        info(f"  {'kernel':44s} {'status':11s} {'trials':>6s} {'default':>10s} {'tuned':>10s} {'gain':>10s}")
        for task in report.tasks:
            gain = task.gain
            default = _us(gain.default_us if gain else task.default_us)
            tuned = _us(gain.tuned_us if gain else task.best_us)
            saved = _us(gain.gain_us) if gain and gain.applied else ("kept out" if gain else "")
            info(f"  {task.name[:44]:44s} {task.status:11s} {task.trials_this_run:6d} {default:>10s} {tuned:>10s} "
                 f"{saved:>10s}")
        total = report.default_kernels_us
        info(f"  kernel time gained over the default schedules: {report.kernel_gain_us:.1f} us per inference"
             + (f" (of {total:.1f} us)" if total else ""))
        print(report.database_dir)
    return 0


def _us(value) -> str:
    return f"{value:.1f} us" if value is not None else "-"
