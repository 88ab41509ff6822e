"""``edgekit compare``: two artifacts, or edgekit against peer runtimes, in interleaved rounds on one device."""

from __future__ import annotations

from edgekit.cli.options import (add_one_device_options, artifact_from_arg, connect_kwargs, input_shapes,
                                 measure_overrides)
from edgekit.cli.output import emit_json, progress


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare", help="two artifacts, or edgekit vs ONNX Runtime / ExecuTorch / torch, in interleaved rounds: faster beyond "
                        "the noise?")
    parser.add_argument("artifacts", nargs="*", metavar="ARTIFACT", help="two artifact directories (A, then B)")
    parser.add_argument("--model", help="with --peers: the model to compile and to run in each peer runtime")
    parser.add_argument("--peers", default=None, metavar="onnxruntime,executorch,torch",
                        help="peer runtimes to run the model with on the same device")
    parser.add_argument("--target", default="host", help="with --model: the profile to compile for")
    parser.add_argument("--input-shape", action="append", default=None, metavar="1,3,224,224")
    parser.add_argument("-o", "--out-dir", default=None, help="where compiled artifacts go")
    parser.add_argument("--rounds", type=int, default=None,
                        help="interleaved rounds of each (default 6, the fewest that give a 95%% interval)")
    add_one_device_options(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    from edgekit.errors import UsageError
    from edgekit.measure.compare import DEFAULT_ROUNDS

    rounds = DEFAULT_ROUNDS if args.rounds is None else args.rounds
    if rounds < 1:
        raise UsageError(f"--rounds must be at least 1, got {rounds}")
    if args.peers or args.model:
        if not (args.peers and args.model) or args.artifacts:
            raise UsageError("give --model with --peers (and no artifacts), or two artifacts")
        return _peers(args, rounds)
    if len(args.artifacts) != 2:
        raise UsageError(f"give two artifacts to compare, got {len(args.artifacts)}",
                         hint="or --model M --peers onnxruntime to compare edgekit with another runtime")
    return _artifacts(args, rounds)


def _artifacts(args, rounds) -> int:
    from edgekit.measure.compare import compare_artifacts
    from edgekit.measure.protocol import cli_stopping_rule
    from edgekit.measure.stats import format_interval

    a, b = (artifact_from_arg(p) for p in args.artifacts)
    with progress(f"comparing {a.artifact_id} and {b.artifact_id} in {rounds} interleaved rounds"):
        result = compare_artifacts(a, b, args.host, rounds=rounds, connect=connect_kwargs(args),
                                   **cli_stopping_rule(measure_overrides(args), a.measure_protocol))
    if args.json:
        emit_json(result)
        return 0
    for key, name in zip(("a", "b"), result["names"]):
        s = result[key]
        print(f"{key.upper()}  {name}  median {s['median_ms']:.4g} ms in {format_interval(s)}")
    print(result["verdict"])
    for warning in result["warnings"]:
        print(f"WARNING  {warning}")
    return 0


def _peers(args, rounds) -> int:
    from edgekit.measure.peers import compare_with_peers
    from edgekit.measure.protocol import cli_stopping_rule
    from edgekit.targets import load_target

    peers = tuple(p.strip() for p in args.peers.split(",") if p.strip())
    profile = load_target(args.target, args.targets_dir)
    with progress(f"edgekit vs {', '.join(peers)} on {args.host or 'this machine'}, {rounds} interleaved rounds"):
        result = compare_with_peers(args.model, profile, args.host, peers=peers, rounds=rounds,
                                    input_shapes=input_shapes(args), connect=connect_kwargs(args) if args.host else None,
                                    root=args.root, out_dir=args.out_dir, emulated=args.emulated,
                                    **cli_stopping_rule(measure_overrides(args), profile.measure))
    if args.json:
        emit_json(result)
        return 0
    print_peers(result)
    return 0


def print_peers(result) -> None:
    """edgekit's median, then each peer's (or why it could not run) and the verdict, one block per peer."""
    from edgekit.measure.stats import format_interval

    edgekit = result["edgekit"]["stats"]
    print(f"edgekit      median {edgekit['median_ms']:.4g} ms in {format_interval(edgekit)}")
    for peer, r in result["peers"].items():
        if not r["available"]:
            print(f"{peer:<12} cannot run on this device: {r['reason']}")
            continue
        agree = "outputs agree" if r["outputs_agree"] else "OUTPUTS DIFFER"
        print(f"{peer:<12} median {r['stats']['median_ms']:.4g} ms in {format_interval(r['stats'])} ({r['version']}, "
              f"{agree})")
        print(f"             {r['verdict']}")
