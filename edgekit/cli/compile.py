"""``edgekit compile``: a model (any form edgekit.models accepts) -> an artifact directory."""

from __future__ import annotations

from edgekit.cli.options import add_json_option, add_model_options, add_targets_dir_option, input_shapes
from edgekit.cli.output import emit_json, info, progress

__all__ = ["register", "run", "compile_from_args", "add_model_options"]  # add_model_options: cli/tune.py


def register(subparsers) -> None:
    parser = subparsers.add_parser("compile", help="compile a model for a target profile")
    add_model_options(parser)
    parser.add_argument("--target", default="host", help="target profile name or .toml path (default: host)")
    parser.add_argument("-o", "--out-dir", default=None,
                        help="where artifacts go, one directory each (default: ./edgekit-artifacts)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the same artifact exists")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved plan (target, toolchain) only")
    add_targets_dir_option(parser)
    add_json_option(parser)
    parser.set_defaults(func=run)


def compile_from_args(args, target):
    from edgekit.compile import compile_model
    from edgekit.targets import load_target

    profile = load_target(target, args.targets_dir)
    return compile_model(args.model, profile, input_shapes=input_shapes(args), out_dir=getattr(args, "out_dir", None),
                         frontend=args.frontend, force=getattr(args, "force", False), progress=progress)


def plan(args) -> dict:
    """What a compile would do, resolved but not run: for build scripts to check before a long build."""
    import shutil

    from edgekit.compile import DEFAULT_OUT_DIR
    from edgekit.compile.build import resolve_tvm_target
    from edgekit.targets import load_target

    profile = load_target(args.target, args.targets_dir)
    compiler = profile.cross_compiler
    shapes = input_shapes(args)
    return {
        "model": args.model,
        "input_shapes": [list(s) for s in shapes] if shapes else None,
        "frontend": args.frontend,
        "target": profile.name,
        "profile": str(profile.source),
        "tvm_target": str(resolve_tvm_target(profile)),
        "cross_compiler": compiler,
        "cross_compiler_found": shutil.which(compiler) if compiler else None,
        "out_dir": str(args.out_dir or DEFAULT_OUT_DIR),
    }


def run(args) -> int:
    if args.dry_run:
        resolved = plan(args)
        if args.json:
            emit_json(resolved)
        else:
            for key, value in resolved.items():
                print(f"{key:<20} {value}")
        return 0
    artifact = compile_from_args(args, args.target)
    if args.json:
        emit_json(artifact.to_dict())
    else:
        info(f"artifact {artifact.artifact_id} for {artifact.target_name} ({artifact.manifest['elf_machine']}, "
             f"{artifact.size_bytes} bytes)")
        print(artifact.path)
    return 0
