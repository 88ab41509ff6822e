"""``edgekit profile``: the cost card, every kernel's device time mapped to the model's modules."""

from __future__ import annotations

from edgekit.cli.options import (add_model_options, add_one_device_options, add_pool_options, connect_kwargs,
                                 input_shapes, measure_overrides, pool_device)
from edgekit.cli.output import emit_json, info, progress


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "profile", help="cost card: each kernel's time on the device, mapped to the model's modules",
        description="Compile the model, time every fused kernel on the device and map each to the PyTorch "
                    "module(s) it was fused from, with its share of the time, MACs, bytes and GFLOP/s against "
                    "the target's peak.  Writes cost_card.json, .md and .png to --report-dir.")
    add_model_options(parser)
    parser.add_argument("--target", default="host", help="target profile (default: host)")
    parser.add_argument("-o", "--out-dir", default=None, help="where compiled artifacts go")
    parser.add_argument("--report-dir", default="edgekit-profile", help="where the card's files go "
                                                                        "(default: %(default)s)")
    parser.add_argument("--kernel-repeats", type=int, default=None, help="timed repeats of each kernel")
    add_one_device_options(parser)
    add_pool_options(parser)  # --pool/--key: the card measured on a board borrowed from the pool
    parser.set_defaults(func=run)


def run(args) -> int:
    from edgekit.errors import UsageError
    from edgekit.measure.cost_card import profile_model
    from edgekit.measure.protocol import cli_stopping_rule
    from edgekit.targets import load_target

    if args.kernel_repeats is not None and args.kernel_repeats < 1:
        raise UsageError(f"--kernel-repeats must be at least 1, got {args.kernel_repeats}")
    profile = load_target(args.target, args.targets_dir)
    measure = cli_stopping_rule(measure_overrides(args), profile.measure)
    if args.kernel_repeats is not None:
        measure["kernel_repeats"] = args.kernel_repeats
    pool = pool_device(args, profile.name, say=info)
    if pool is not None:
        with progress(f"profiling on a '{pool.key}' board of the pool {pool.address}"):
            card = _profile_on_pool(args, profile, pool, measure)
    else:
        with progress(f"profiling on {args.host or 'this machine'}"):
            card = profile_model(args.model, profile, args.host, input_shapes=input_shapes(args),
                                 connect=connect_kwargs(args) if args.host else None, out_dir=args.out_dir,
                                 emulated=args.emulated, root=args.root if args.host else None, **measure)
    files = card.write(args.report_dir)
    if args.json:
        emit_json({**card.to_dict(), "files": files})
        return 0
    note = "  [EMULATED: not a measurement of the board]" if card.emulated else ""
    peak = f", peak {card.peak_gflops:g} GFLOP/s" if card.peak_gflops else ", peak unknown (profile has none)"
    print(f"cost card  {card.artifact_id} on {card.target}: whole model median {card.model_median_ms:.4f} ms"
          f"{peak}{note}")
    for line in card.table_lines():
        print(line)
    for s in card.suggestions:
        print(f"optimize   {s['module']} ({s['share']:.1%}): {s['option']}")
    info(f"wrote {files['markdown']}, {files['json']}, {files['png']}")
    return 0


def _profile_on_pool(args, profile, pool, measure):
    """profile_model's steps, with the kernels timed on a board borrowed from the pool."""
    from edgekit.compile import compile_model
    from edgekit.measure.cost_card import build_card, kernel_sources_for
    from edgekit.models import load_model

    loaded = load_model(args.model)
    artifact = compile_model(loaded, profile, input_shapes=input_shapes(args), out_dir=args.out_dir)
    sources, macs = kernel_sources_for(loaded, profile, artifact)
    report = pool.measure(artifact, kernels=True, **measure)
    per_core = profile.peak_gflops_per_core
    return build_card(report, sources, macs, peak_gflops=per_core * report.threads if per_core else None)
