"""``edgekit run``: run an artifact (or compile-and-run a model) on this machine, check and time it."""

from __future__ import annotations

from pathlib import Path

from edgekit.cli.compile import compile_from_args
from edgekit.cli.output import add_json_option, add_targets_dir_option, emit_json, progress


def register(subparsers) -> None:
    parser = subparsers.add_parser("run", help="run on this machine: output check and latency")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--artifact", help="an artifact directory from `edgekit compile`")
    source.add_argument("--model", help="compile this model for --target first (see `edgekit compile`)")
    parser.add_argument("--input-shape", action="append", default=None, metavar="1,3,224,224")
    parser.add_argument("--frontend", choices=("auto", "onnx"), default="auto")
    parser.add_argument("--target", default="host", help="profile to compile for with --model (default: host)")
    parser.add_argument("-o", "--out-dir", default=None)
    parser.add_argument("--warmup", type=int, default=None, help="default: the profile's")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs, all kept (default: the profile's)")
    parser.add_argument("--threads", type=int, default=None, help="default: the profile's")
    add_targets_dir_option(parser)
    add_json_option(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    from edgekit.artifacts import CompiledArtifact
    from edgekit.run import run_artifact

    if args.model:
        artifact = compile_from_args(args, args.target)
    else:
        artifact = CompiledArtifact.open(Path(args.artifact))
    with progress(f"running {artifact.artifact_id} here"):
        report = run_artifact(artifact, warmup=args.warmup, repeats=args.repeats, threads=args.threads)
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
    return 0
