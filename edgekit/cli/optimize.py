"""``edgekit optimize``: prune until the latency measured on the device meets a budget (NetAdapt-style)."""

from __future__ import annotations

from edgekit.cli.output import add_json_option, emit_json, info


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "optimize", help="compress a model until its latency measured on the device meets a budget",
        description="Closed-loop compression: each step shrinks the layer group that keeps the most accuracy for "
                    "the latency it buys, with latency measured on the device (per-kernel table + whole-model "
                    "verification).  Exit code 5 when the budget cannot be met (the closest candidate is reported).")
    parser.add_argument("model", nargs="?", help="zoo:NAME, a .pt file of a whole nn.Module, or package.module:factory "
                                                 "(not needed with --resume)")
    # Spelled like every other command too (`edgekit deploy --model ...`), so build scripts need not remember.
    parser.add_argument("--model", dest="model_option", metavar="MODEL", help="the same as the positional MODEL")
    budget = parser.add_argument_group("budget")
    budget.add_argument("--latency-budget-ms", type=float, metavar="MS", help="latency the device must meet")
    budget.add_argument("--metric", choices=("median", "p90"), default="median",
                        help="which statistic of the device's samples must meet the latency budget")
    budget.add_argument("--size-budget-bytes", type=int, metavar="N", help="size of the compiled artifact")
    budget.add_argument("--accuracy-floor", type=float, metavar="F",
                        help="held-out accuracy (0..1) the search never goes below")
    where = parser.add_argument_group("device")
    where.add_argument("--target", default="host", help="target profile (default: host)")
    where.add_argument("--host", metavar="USER@HOST[:PORT]",
                       help="the device over SSH (or an ~/.ssh/config alias); default: this machine")
    where.add_argument("-i", "--identity-file", action="append", default=[], metavar="KEY")
    where.add_argument("--known-hosts", metavar="FILE")
    where.add_argument("--trust-new-host", action="store_true")
    where.add_argument("--ssh-config", metavar="FILE")
    where.add_argument("--no-agent", action="store_true")
    where.add_argument("--connect-timeout", type=float, default=10.0, metavar="S")
    where.add_argument("--transfer-timeout", type=float, default=600.0, metavar="S")
    where.add_argument("--retries", type=int, default=2)
    where.add_argument("--threads", type=int, default=1, help="threads the model runs with on the device")
    where.add_argument("--measure-rounds", type=int, default=3,
                       help="separate runs per measurement; the least-disturbed one counts (default 3)")
    where.add_argument("--proxy", action="store_true",
                       help="no device: latency PREDICTED from the cached latency table (development only)")
    search = parser.add_argument_group("search")
    search.add_argument("--data", default="fashion-mnist", help="fashion-mnist or digits")
    search.add_argument("--run-dir", metavar="DIR", help="where the search keeps its state (default: a temp dir)")
    search.add_argument("--resume", metavar="DIR", help="continue an interrupted search from its run directory")
    search.add_argument("--cache-dir", metavar="DIR", help="latency table cache (default: ~/.cache/edgekit/latency)")
    search.add_argument("--artifacts-dir", metavar="DIR",
                        help="compiled artifacts, reusable between runs (default: RUN_DIR/artifacts)")
    search.add_argument("--seed", type=int, default=0)
    search.add_argument("--step-ratio", type=float, default=0.1,
                        help="latency cut per iteration, as a fraction of the baseline's (default 0.1)")
    search.add_argument("--width-step-ratio", type=float, default=0.125,
                        help="candidate widths are multiples of this fraction of a group's width (default 0.125)")
    search.add_argument("--finetune-epochs", type=int, default=1)
    search.add_argument("--finetune-examples", type=int, default=5000)
    search.add_argument("--final-epochs", type=int, default=2)
    search.add_argument("--val-examples", type=int, default=1000)
    search.add_argument("--test-examples", type=int, default=None)
    search.add_argument("--max-iterations", type=int, default=30)
    search.add_argument("--exclude", action="append", default=[], metavar="GROUP",
                        help="layer group (producing module name or glob) never pruned; may repeat")
    search.add_argument("--quantize", action="store_true",
                        help="after the search, choose int8 or float per layer from measured latency and accuracy")
    search.add_argument("--torch-threads", type=int, default=None, help="torch threads for fine-tuning")
    add_json_option(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    from edgekit.errors import BudgetNotMetError, UsageError
    from edgekit.optimize.search import optimize_model

    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    common = dict(log=info, cache_dir=args.cache_dir, artifacts_dir=args.artifacts_dir)
    if args.resume:
        result = optimize_model(None, None, run_dir=args.resume, resume=True, **common)
    else:
        args.model = args.model or args.model_option
        if not args.model:
            raise UsageError("give a MODEL (zoo:fmnist-resnet, model.pt, package.module:factory) or --resume DIR")
        connect = None
        if args.host:
            from edgekit.cli.deploy import connect_kwargs

            connect = connect_kwargs(args)
        result = optimize_model(
            args.model, args.data, latency_budget_ms=args.latency_budget_ms, metric=args.metric,
            size_budget_bytes=args.size_budget_bytes, accuracy_floor=args.accuracy_floor, target=args.target,
            host=args.host, connect=connect, threads=args.threads, run_dir=args.run_dir, proxy=args.proxy,
            seed=args.seed, step_ratio=args.step_ratio, width_step_ratio=args.width_step_ratio,
            finetune_epochs=args.finetune_epochs,
            finetune_examples=args.finetune_examples, final_epochs=args.final_epochs,
            val_examples=args.val_examples, test_examples=args.test_examples, max_iterations=args.max_iterations,
            exclude=tuple(args.exclude), quantize=args.quantize, measure_rounds=args.measure_rounds, **common)
    if args.json:
        emit_json(result.to_dict())
    else:
        _print_summary(result)
    if not result.met:
        info(f"edgekit: error: {result.message}")
        return BudgetNotMetError.exit_code
    return 0


def _print_summary(result) -> None:
    ch, base = result.chosen, result.baseline
    label = "PREDICTED (proxy mode, no device)" if result.proxy else "measured on the device"
    print(f"{'budget met' if result.met else 'BUDGET NOT MET'} -- latency {label}")
    print(f"  baseline: {base['latency_ms']:.3f} ms, {base['size_bytes']} bytes, val accuracy {base['val_accuracy']:.4f}")
    print(f"  {'chosen' if result.met else 'closest'}:   {ch['latency_ms']:.3f} ms, {ch['size_bytes']} bytes, "
          f"val accuracy {ch['val_accuracy']:.4f}, test accuracy {ch.get('test_accuracy', float('nan')):.4f}")
    print("  widths:   " + ", ".join(f"{k}={v}" for k, v in ch["widths"].items()))
    if result.model_path:
        print(f"  model:    {result.model_path}")
    for kind, path in result.reports.items():
        print(f"  {kind + ':':9} {path}")
