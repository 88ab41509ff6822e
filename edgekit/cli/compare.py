"""``edgekit compare``: two artifacts measured in interleaved rounds on one device; is the difference real?"""

from __future__ import annotations

from edgekit.cli.options import (add_json_option, add_measure_options, add_ssh_options, artifact_from_arg,
                                 connect_kwargs, measure_overrides)
from edgekit.cli.output import emit_json, progress


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare", help="measure two artifacts in interleaved rounds and say whether one is faster beyond the noise")
    parser.add_argument("artifacts", nargs=2, metavar="ARTIFACT", help="two artifact directories (A, then B)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="interleaved rounds of each (default 6, the fewest that give a 95%% interval)")
    add_ssh_options(parser, several=False, host_required=False, root=False)
    add_measure_options(parser)
    add_json_option(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    from edgekit.errors import UsageError
    from edgekit.measure.compare import DEFAULT_ROUNDS, compare_artifacts

    rounds = DEFAULT_ROUNDS if args.rounds is None else args.rounds
    if rounds < 1:
        raise UsageError(f"--rounds must be at least 1, got {rounds}")
    a, b = (artifact_from_arg(p) for p in args.artifacts)
    with progress(f"comparing {a.artifact_id} and {b.artifact_id} in {rounds} interleaved rounds"):
        result = compare_artifacts(a, b, args.host, rounds=rounds, connect=connect_kwargs(args),
                                   **measure_overrides(args))
    if args.json:
        emit_json(result)
        return 0
    from edgekit.measure.stats import format_interval

    for key, name in zip(("a", "b"), result["names"]):
        s = result[key]
        print(f"{key.upper()}  {name}  median {s['median_ms']:.4g} ms in {format_interval(s)}")
    print(result["verdict"])
    for warning in result["warnings"]:
        print(f"WARNING  {warning}")
    return 0
