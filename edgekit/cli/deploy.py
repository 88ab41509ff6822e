"""``edgekit deploy``: compile if needed, check the device, upload, verify, run, check outputs, measure."""

from __future__ import annotations

import sys

from edgekit.cli.options import (MODEL_HELP, add_json_option, add_measure_options, add_model_options, add_ssh_options,
                                 add_targets_dir_option, artifact_from_arg, connect_kwargs, measure_overrides)
from edgekit.cli.output import emit_json, info, measurement_lines, print_kernels

__all__ = ["register", "run", "add_connection_options", "connect_kwargs"]  # the last two: cli/tune.py


def add_connection_options(parser, *, several: bool = True) -> None:
    """The SSH option group (cli/options.py), named as cli/device.py and cli/tune.py import it."""
    add_ssh_options(parser, several=several)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "deploy", help="deploy to devices over SSH: check, upload, verify, run, check outputs, measure",
        description="Deploy an artifact (compiled from --model when needed) to one or more devices, run it "
                    "there against the host's reference outputs and measure its latency.  A failure leaves the "
                    "previous deployment current.")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help=MODEL_HELP + "; compiled for --target")
    source.add_argument("--artifact", help="a prebuilt artifact directory from `edgekit compile`, or its -o "
                                           "directory when that holds one artifact")
    source.add_argument("--rollback", action="store_true", help="switch back to the previous deployment")
    parser.add_argument("--target", help="target profile (required with --model)")
    add_model_options(parser, model=False)
    parser.add_argument("-o", "--out-dir", default=None, help="where compiled artifacts go")
    add_ssh_options(parser)
    parser.add_argument("--keep", type=int, default=3, help="versions kept on the device (default 3)")
    parser.add_argument("--jobs", type=int, default=4, help="devices handled at once (default 4)")
    parser.add_argument("--lock-wait", type=float, default=30.0, metavar="S",
                        help="how long to wait for a device another edgekit is using")
    add_measure_options(parser, kernels=True)
    parser.add_argument("--time-limit", type=float, default=300.0, metavar="S",
                        help="the runner is stopped on the device after this long")
    parser.add_argument("--no-run", action="store_true", help="upload and check outputs only, no timing")
    add_targets_dir_option(parser)
    add_json_option(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    from edgekit.deploy.deploy import deploy_model
    from edgekit.errors import UsageError

    if not args.host and not args.inventory:
        raise UsageError("no device given", hint="pass --host user@board (repeatable) or --inventory FILE")
    if args.keep < 1:
        raise UsageError("--keep must be at least 1")
    artifact = None
    measure = None
    if not args.rollback:
        if args.model:
            if not args.target:
                raise UsageError("--model needs --target (the profile to compile for)")
            from edgekit.cli.compile import compile_from_args

            artifact = compile_from_args(args, args.target)
        elif args.artifact:
            artifact = artifact_from_arg(args.artifact)
        else:
            raise UsageError("give --model, --artifact or --rollback")
        if args.target and artifact.target_name != args.target and not args.target.endswith(".toml"):
            raise UsageError(f"artifact {artifact.artifact_id} is compiled for '{artifact.target_name}', "
                             f"not '{args.target}'")
        from edgekit.measure.protocol import cli_stopping_rule  # the default stopping rule (issue 12)

        measure = artifact.measure_protocol.with_overrides(
            **cli_stopping_rule(measure_overrides(args), artifact.measure_protocol), kernels=args.kernels,
            time_limit_s=args.time_limit, check_only=args.no_run)
    fleet = deploy_model(artifact, hosts=args.host, inventory=args.inventory, measure=measure, root=args.root,
                         keep=args.keep, max_workers=args.jobs, lock_wait_s=args.lock_wait,
                         rollback=args.rollback, connect=connect_kwargs(args), log=info)
    if args.kernels and args.model and artifact is not None:  # the model is at hand: name each kernel's modules
        from edgekit.measure.cost_card import annotate_kernels, kernel_sources_for
        from edgekit.targets import load_target

        sources = kernel_sources_for(args.model, load_target(args.target, args.targets_dir), artifact)[0]
        for r in fleet.results:
            if r.ok and r.report is not None:
                annotate_kernels(r.report.kernels, sources)
    if args.json:
        emit_json(fleet.to_dict())
    else:
        for r in fleet.results:
            print_result(r, rollback=args.rollback)
    for r in fleet.results:
        if not r.ok:
            print(f"edgekit: error: {r.error}", file=sys.stderr)
    return fleet.exit_code


def print_result(r, *, rollback: bool = False) -> None:
    if not r.ok:
        print(f"{r.host}: FAILED ({r.error_type}, exit {r.exit_code})")
        return
    if rollback:
        print(f"{r.host}: rolled back to {r.rolled_back_to} (was {r.previous})")
        return
    sent = f"uploaded {r.bytes_uploaded} bytes in {r.files_uploaded} file(s)" if r.bytes_uploaded else \
        "unchanged, uploaded nothing"
    print(f"{r.host}: deployed {r.artifact_id} -> {r.remote_dir} ({sent})")
    rep = r.report
    if rep is None:
        return
    check = rep.output_check
    print(f"  outputs  match the host reference (max abs error {check['max_abs_error']:.2e}, atol {check['atol']:g})")
    if rep.samples_ms:
        s = rep.stats
        note = "  [EMULATED: not a measurement of the board]" if rep.emulated else ""
        print(f"  latency  median {s['median_ms']:.3f} ms  p90 {s['p90_ms']:.3f} ms  p99 {s['p99_ms']:.3f} ms  "
              f"cv {s['cv']:.1%}  ({s['count']} runs, {rep.threads} thread(s)){note}")
    for line in measurement_lines(rep):
        print(f"  {line}")
    print_kernels(rep.kernels, prefix="  kernel   ")
    d = rep.device
    print(f"  device   {d.get('board') or d.get('cpu_model')} ({d.get('machine')}), kernel {d.get('kernel')}, "
          f"governor {d.get('governor') or 'n/a'}, load {d.get('loadavg_1m')}")
