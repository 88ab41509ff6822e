"""``edgekit run``: run an artifact (or compile-and-run a model) on this machine, check and time it."""

from __future__ import annotations

from edgekit.cli.compile import compile_from_args
from edgekit.cli.options import (MODEL_HELP, add_json_option, add_measure_options, add_model_options,
                                 add_pool_options, add_targets_dir_option, artifact_from_arg, measure_overrides,
                                 pool_device)
from edgekit.cli.output import emit_json, info, measurement_lines, print_kernels, progress


def register(subparsers) -> None:
    parser = subparsers.add_parser("run", help="run on this machine: output check and latency")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--artifact", help="an artifact directory from `edgekit compile` (or its -o directory "
                                           "when that holds one artifact)")
    source.add_argument("--model", help=MODEL_HELP + "; compiled for --target first")
    add_model_options(parser, model=False)
    parser.add_argument("--target", default="host", help="profile to compile for with --model (default: host)")
    parser.add_argument("-o", "--out-dir", default=None)
    add_measure_options(parser, kernels=True)
    parser.add_argument("--compare", default=None, metavar="onnxruntime,executorch,torch",
                        help="with --model: then run the same model in these runtimes here, in interleaved rounds "
                             "with the artifact (same inputs, threads and protocol), and say which is faster")
    parser.add_argument("--rounds", type=int, default=None,
                        help="with --compare: interleaved rounds of each (default 6, the fewest with a 95%% interval)")
    add_pool_options(parser)  # --pool/--key: on a board borrowed from the pool instead of this machine
    add_targets_dir_option(parser)
    add_json_option(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    from edgekit.errors import UsageError
    from edgekit.measure.protocol import cli_stopping_rule
    from edgekit.run import run_artifact

    if args.compare and not args.model:
        raise UsageError("--compare needs --model: the peer runtimes run the model, not the artifact")
    if args.rounds is not None and args.rounds < 1:
        raise UsageError(f"--rounds must be at least 1, got {args.rounds}")
    if args.model:
        artifact = compile_from_args(args, args.target)
    else:
        artifact = artifact_from_arg(args.artifact)
    pool = pool_device(args, artifact.target_name, say=info)
    measure = cli_stopping_rule(measure_overrides(args), artifact.measure_protocol)
    if pool is not None:
        with progress(f"running {artifact.artifact_id} on a '{pool.key}' board of the pool {pool.address}"):
            report = pool.measure(artifact, kernels=args.kernels or None, **measure)
    else:
        with progress(f"running {artifact.artifact_id} here"):
            report = run_artifact(artifact, **measure, kernels=args.kernels or None)
    if args.kernels and args.model:  # the model is at hand: name each kernel's modules
        from edgekit.measure.cost_card import annotate_kernels, kernel_sources_for
        from edgekit.targets import load_target

        annotate_kernels(report.kernels, kernel_sources_for(args.model, load_target(args.target, args.targets_dir),
                                                            artifact)[0])
    comparison = _compare(args, artifact) if args.compare else None
    if args.json:
        emit_json({**report.to_dict(), **({"comparison": comparison} if comparison else {})})
        return 0
    s, check = report.stats, report.output_check
    print(f"artifact   {artifact.path}  ({artifact.target_name})")
    print(f"outputs    {'match' if check['passed'] else 'DIFFER'} the reference "
          f"(max abs error {check['max_abs_error']:.2e}, atol {check['atol']:g})")
    print(f"latency    median {s['median_ms']:.3f} ms  p90 {s['p90_ms']:.3f} ms  p99 {s['p99_ms']:.3f} ms  "
          f"cv {s['cv']:.1%}  ({s['count']} runs after {report.warmup} warm-up, {report.threads} thread(s))")
    print(f"device     {report.device.get('cpu_model')} ({report.device.get('machine')}), "
          f"governor {report.device.get('governor') or 'n/a'}")
    for line in measurement_lines(report):
        print(line)
    print_kernels(report.kernels, prefix="kernel     ")
    if comparison:
        from edgekit.cli.compare import print_peers

        print(f"compared   with {', '.join(comparison['peers'])} here, {comparison['rounds']} interleaved rounds, "
              f"{comparison['threads']} thread(s) each:")
        print_peers(comparison)
    return 0


def _compare(args, artifact) -> dict:
    from edgekit.measure.compare import DEFAULT_ROUNDS
    from edgekit.measure.peers import compare_with_peers
    from edgekit.measure.protocol import cli_stopping_rule

    peers = tuple(p.strip() for p in args.compare.split(",") if p.strip())
    rounds = DEFAULT_ROUNDS if args.rounds is None else args.rounds
    with progress(f"edgekit vs {', '.join(peers)} here, {rounds} interleaved rounds"):
        return compare_with_peers(args.model, artifact.target_name, None, peers=peers, rounds=rounds,
                                  artifact=artifact, **cli_stopping_rule(measure_overrides(args),
                                                                         artifact.measure_protocol))
