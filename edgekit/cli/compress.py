"""`edgekit compress`: run a recipe on a model, write the compressed model and its report (compress_model)."""

from __future__ import annotations

from edgekit.cli.data_options import add_data_options, image_options
from edgekit.cli.options import MODEL_HELP, add_json_option, add_targets_dir_option
from edgekit.cli.output import emit_json, info
from edgekit.errors import UsageError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "compress", help="prune / distill / quantize a model with a TOML recipe",
        description="Run a compression recipe (prune -> distill -> quantize ...) on a model and write "
                    "model.pt, model.pt2, report.json and recipe.json to the output directory; with --target "
                    "also compile the result (and measure its accuracy on this host when it runs here).")
    p.add_argument("--recipe", required=True, help="recipe TOML file")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    add_data_options(p, metric_flags=("--metric", "--accuracy-metric"))
    p.add_argument("-o", "--out", required=True, help="output directory")
    p.add_argument("--target", help="also compile for this target profile (e.g. host, rpi4)")
    p.add_argument("--eval-limit", type=int, default=None,
                   help="measure accuracy on a seeded subset of this many test examples (default: all)")
    p.add_argument("--threads", type=int, default=None, help="torch threads for training (default: torch's)")
    add_nproc_per_node_option(p)
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted --nproc-per-node run from the checkpoints in --out")
    p.add_argument("--dry-run", action="store_true", help="validate the recipe, print the resolved plan and stop")
    add_targets_dir_option(p)
    add_json_option(p)
    p.set_defaults(func=run)


def add_nproc_per_node_option(parser) -> None:
    """--nproc-per-node: training in N DDP processes under torchrun (compress and optimize spell it alike)."""
    parser.add_argument("--nproc-per-node", default="1", metavar="N",
                        help="train (distill, fine-tune) in N processes under torchrun with DDP: gloo on CPU, NCCL "
                             "when there are N GPUs; the global batch stays the recipe's (default: %(default)s, "
                             "this process)")


def run(args) -> int:
    from pathlib import Path

    from edgekit.compress import compress_model, load_recipe
    from edgekit.compress.distributed import check_nproc_per_node

    if args.eval_limit is not None and args.eval_limit < 1:
        raise UsageError(f"--eval-limit must be >= 1, got {args.eval_limit}")
    nproc_per_node = check_nproc_per_node(args.nproc_per_node)  # before any recipe, model or data is read
    recipe = load_recipe(args.recipe)  # fail on a bad recipe before loading torch models
    if args.dry_run:
        return _print_plan(args, recipe)
    target = None
    if args.target:
        from edgekit.targets import load_target

        target = load_target(args.target, args.targets_dir)  # an unknown target fails before the training
    out = Path(args.out)
    info(f"compressing {args.model} with recipe {recipe.name!r}: {' -> '.join(recipe.kinds)}")
    result = compress_model(args.model, recipe, args.data, eval_limit=args.eval_limit, threads=args.threads,
                            metric=args.accuracy_metric, image_options=image_options(args), target=target,
                            out_dir=out, nproc_per_node=nproc_per_node, resume=args.resume, log=info)
    report = result.report.to_dict()
    if args.json:
        emit_json(report)
    else:
        before, after = report["before"], report["after"]
        for key in ("params", "macs", "size_bytes", "accuracy"):
            if key in before and key in after:
                info(f"  {key:11s} {before[key]:>12} -> {after[key]}")
        info(f"wrote {out}/")
    return 0


def _print_plan(args, recipe) -> int:
    plan = {"model": args.model, "data": args.data, "out": args.out, "target": args.target, **recipe.to_dict()}
    if args.json:
        emit_json(plan)
        return 0
    info(f"recipe {recipe.name!r} on {args.model} ({args.data}) -> {args.out}"
         + (f", compiled for {args.target}" if args.target else ""))
    for i, step in enumerate(plan["steps"], 1):
        opts = ", ".join(f"{k}={v}" for k, v in step.items() if k != "kind")
        info(f"  {i}. {step['kind']}: {opts}")
    return 0
