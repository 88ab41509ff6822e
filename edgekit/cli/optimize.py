"""``edgekit optimize``: prune until the latency measured on the device meets a budget (NetAdapt-style)."""

from __future__ import annotations

from edgekit.cli.compress import add_nproc_per_node_option
from edgekit.cli.data_options import add_data_options, image_options
from edgekit.cli.options import (MODEL_HELP, add_json_option, add_pool_options, add_search_options, add_ssh_options,
                                 connect_kwargs, pool_device, search_options)
from edgekit.cli.output import emit_json, info


def register(subparsers) -> None:
    from edgekit.optimize.config import METRICS, SearchConfig

    parser = subparsers.add_parser(
        "optimize", help="compress a model until its latency measured on the device meets a budget",
        description="Closed-loop compression: each step shrinks the layer group that keeps the most accuracy for "
                    "the latency it buys, with latency measured on the device (per-kernel table + whole-model "
                    "verification).  Exit code 5 when the budget cannot be met (the closest candidate is reported).")
    parser.add_argument("model", nargs="?", help=MODEL_HELP + " (not needed with --resume)")
    # Spelled like every other command too (`edgekit deploy --model ...`), so build scripts need not remember.
    parser.add_argument("--model", dest="model_option", metavar="MODEL", help="the same as the positional MODEL")
    budget = parser.add_argument_group("budget")
    budget.add_argument("--latency-budget-ms", type=float, metavar="MS", help="latency the device must meet")
    budget.add_argument("--metric", choices=METRICS, default=SearchConfig.metric,
                        help="which statistic of the device's samples must meet the latency budget")
    budget.add_argument("--size-budget-bytes", type=int, metavar="N", help="size of the compiled artifact")
    budget.add_argument("--memory-budget-mb", type=float, metavar="MB",
                        help="run-time memory of the model on the device: its constants plus planned workspace "
                             "(MiB; the runtime's own memory is reported, not budgeted)")
    budget.add_argument("--accuracy-floor", type=float, metavar="F",
                        help="held-out accuracy (0..1) the search never goes below")
    where = parser.add_argument_group("device")
    where.add_argument("--target", default=SearchConfig.target, help="target profile (default: %(default)s)")
    add_ssh_options(where, several=False, host_required=False, root=False)
    add_pool_options(where)  # --pool/--key: boards borrowed from the pool, each measurement's rounds at once
    where.add_argument("--threads", type=int, default=None,
                       help="threads the model runs with on the device (default: optimize_model's, 1)")
    where.add_argument("--proxy", action="store_true",
                       help="no device: latency PREDICTED from the cached latency table (development only)")
    search = parser.add_argument_group("search")
    # --metric is the latency statistic here (median, p90), so the score of the data is --accuracy-metric.
    add_data_options(search, metric_flags=("--accuracy-metric",))
    search.add_argument("--run-dir", metavar="DIR", help="where the search keeps its state (default: a temp dir)")
    search.add_argument("--resume", metavar="DIR", help="continue an interrupted search from its run directory")
    search.add_argument("--cache-dir", metavar="DIR", help="latency table cache (default: ~/.cache/edgekit/latency)")
    search.add_argument("--artifacts-dir", metavar="DIR",
                        help="compiled artifacts, reusable between runs (default: RUN_DIR/artifacts)")
    add_search_options(search)
    search.add_argument("--torch-threads", type=int, default=None, help="torch threads for fine-tuning")
    add_nproc_per_node_option(search)
    add_json_option(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    from edgekit.errors import BudgetNotMetError, UsageError
    from edgekit.compress.distributed import check_nproc_per_node
    from edgekit.optimize import optimize_model

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
        if args.threads is not None:
            common["threads"] = args.threads
        result = optimize_model(
            args.model, args.data, latency_budget_ms=args.latency_budget_ms, metric=args.metric,
            size_budget_bytes=args.size_budget_bytes, memory_budget_mb=args.memory_budget_mb,
            accuracy_floor=args.accuracy_floor, target=args.target,
            host=args.host, connect=connect_kwargs(args) if args.host else None, run_dir=args.run_dir,
            device=pool_device(args, args.target, threads=args.threads, say=info),
            proxy=args.proxy, accuracy_metric=args.accuracy_metric, image_options=image_options(args),
            nproc_per_node=check_nproc_per_node(args.nproc_per_node), **search_options(args), **common)
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
    if ch.get("median_ci_low_ms") is not None:
        print(f"  interval: median in [{ch['median_ci_low_ms']:.4g}, {ch['median_ci_high_ms']:.4g}] ms (95%)")
    if ch.get("peak_rss_bytes"):
        own = ch.get("model_memory_bytes")
        print(f"  memory:   peak resident {ch['peak_rss_bytes'] / 2**20:.1f} MiB on the device"
              + (f", model {own / 2**20:.2f} MiB (constants + workspace)" if own else ""))
    print("  widths:   " + ", ".join(f"{k}={v}" for k, v in ch["widths"].items()))
    if result.model_path:
        print(f"  model:    {result.model_path}")
    for kind, path in result.reports.items():
        print(f"  {kind + ':':9} {path}")
