#!/usr/bin/env python3
"""How far apart are repeated measurements of one artifact?  Today's fixed protocol vs the stopping rule.

Compiles the zoo CNN for this machine and measures it N times (each a separate runner, as every `edgekit run`
is) two ways: the fixed protocol (warm-up 10, 50 samples, settling off: what measurements were before issue 12)
the protocol with error bars (warm-up until the timings settle, then samples until the median's 95% interval
is within --ci-target of it either side, or --time-cap), and what `edgekit run` does with no measurement flag
(the host profile's repeats, then the CLI's default rule: 2%, the profile's time cap).  For each: per-run CV and interval half-width, and the
spread of the N medians.  Writes JSON and a markdown table.  Target from issue 12: half-width under 2% of the
median on a quiet machine.

    python tools/bench_measure_spread.py [--model zoo:fmnist-resnet] [--runs 10] [--ci-target 0.02]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="zoo:fmnist-resnet")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--ci-target", type=float, default=0.02)
    parser.add_argument("--time-cap", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_measure_spread")
    args = parser.parse_args()

    from edgekit.compile import compile_model
    from edgekit.run import run_artifact

    from edgekit.measure.protocol import cli_stopping_rule
    from edgekit.targets import load_target

    host = load_target("host").measure  # what `edgekit run` uses when given no measurement flag
    protocols = {
        "fixed (before)": dict(warmup=10, repeats=50),
        "with the stopping rule": dict(warmup=10, repeats=50, ci_target_ratio=args.ci_target,
                                       time_cap_s=args.time_cap),
        "edgekit run's default (host profile + CLI rule)": {
            **{f: getattr(host, f) for f in ("warmup", "repeats", "threads", "time_cap_s")},
            **cli_stopping_rule({}, host)},
    }
    with tempfile.TemporaryDirectory() as tmp:
        artifact = compile_model(args.model, "host", out_dir=tmp)
        rows = {}
        for name, overrides in protocols.items():
            from edgekit.targets import MeasureProtocol

            settle = {} if "ci_target_ratio" in overrides else {"warmup_settle_ratio": 0.0}
            protocol = MeasureProtocol(**overrides, **settle)
            reports = [run_artifact(artifact, protocol=protocol) for _ in range(args.runs)]
            medians = [r.median_ms for r in reports]
            rows[name] = {
                "runs": args.runs,
                "median_ms_of_runs": statistics.median(medians),
                "spread_of_medians_ratio": (max(medians) - min(medians)) / statistics.median(medians),
                "cv_of_medians": statistics.stdev(medians) / statistics.fmean(medians),
                "mean_cv": statistics.fmean(r.stats["cv"] for r in reports),
                "mean_ci_half_width_ratio": statistics.fmean(r.stats["ci_half_width_ratio"] for r in reports),
                "max_ci_half_width_ratio": max(r.stats["ci_half_width_ratio"] for r in reports),
                "mean_samples": statistics.fmean(len(r.samples_ms) for r in reports),
                "stopped_by": sorted({(r.stopping or {}).get("reason", "repeats") for r in reports}),
                "medians_ms": medians,
            }
    result = {"model": args.model, "machine": platform.machine(), "cpu": platform.processor() or None,
              "ci_target_ratio": args.ci_target, "time_cap_s": args.time_cap, "protocols": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# Measurement spread: {args.model} on this machine, {args.runs} runs each", "",
             "| protocol | samples/run | mean CV | mean CI half-width | max CI half-width | spread of medians | "
             "CV of medians | stopped by |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['mean_samples']:.0f} | {r['mean_cv']:.1%} | ±{r['mean_ci_half_width_ratio']:.2%} "
                     f"| ±{r['max_ci_half_width_ratio']:.2%} | {r['spread_of_medians_ratio']:.1%} | "
                     f"{r['cv_of_medians']:.2%} | {', '.join(r['stopped_by'])} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
