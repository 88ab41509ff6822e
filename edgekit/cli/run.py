"""``edgekit run``: run an artifact (or compile-and-run a model) on this machine, check and time it."""

from __future__ import annotations

from edgekit.cli.compile import compile_from_args
from edgekit.cli.options import (MODEL_HELP, add_json_option, add_measure_options, add_model_options,
                                 add_targets_dir_option, artifact_from_arg, measure_overrides)
from edgekit.cli.output import emit_json, measurement_lines, print_kernels, progress


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
    add_targets_dir_option(parser)
    add_json_option(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    from edgekit.run import run_artifact

    if args.model:
        artifact = compile_from_args(args, args.target)
    else:
        artifact = artifact_from_arg(args.artifact)
    with progress(f"running {artifact.artifact_id} here"):
        report = run_artifact(artifact, **measure_overrides(args), kernels=args.kernels or None)
    if args.kernels and args.model:  # the model is at hand: name each kernel's modules
        from edgekit.measure.cost_card import annotate_kernels, kernel_sources_for
        from edgekit.targets import load_target

        annotate_kernels(report.kernels, kernel_sources_for(args.model, load_target(args.target, args.targets_dir),
                                                            artifact)[0])
    if args.json:
        emit_json(report.to_dict())
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
    return 0
