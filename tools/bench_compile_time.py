#!/usr/bin/env python3
"""Compile time of `edgekit compile` now vs a baseline revision, side by side (issue 10: at most 1.5x).

Each model of tools/bench_speed.py is exported once to a .pt2 with this checkout; then, in rounds
that alternate the two trees, ``python -m edgekit.cli.main compile --model M.pt2 --target host``
runs in a fresh process with PYTHONPATH set to the tree (a ``git worktree`` of the baseline, made
in a temporary directory) and an empty $EDGEKIT_CACHE, so no tuning database and no earlier
artifact is used.  The time is the command's wall time, interpreter start and imports included:
what a build script pays.

    python tools/bench_compile_time.py                       # baseline: issue 10's main (f014b6e)
    python tools/bench_compile_time.py --baseline HEAD~5 --models mobilenetv2,resnet18
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "tools" / "results"
# main when issue 10 was filed: no default schedules, TVM's FoldConstant for the weights.
BASELINE = "f014b6e"
TARGET = "host"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def export_models(names, work: Path) -> dict[str, Path]:
    import torch
    from bench_speed import load_model

    paths = {}
    for name in names:
        model, shape = load_model(name)
        example = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
        paths[name] = work / f"{name.replace(':', '_')}.pt2"
        torch.export.save(torch.export.export(model, (example,)), str(paths[name]))
    return paths


def compile_seconds(tree: Path, program: Path, out: Path) -> float:
    out.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(tree), "EDGEKIT_CACHE": str(out / "cache"), "HF_HUB_OFFLINE": "1"}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "edgekit.cli.main", "compile", "--model", str(program),
                           "--target", TARGET, "-o", str(out / "artifacts"), "--json"],
                          cwd=out, env=env, capture_output=True, text=True, timeout=1800)
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"compile in {tree} failed ({done.returncode}): {done.stderr[-1500:]}")
    return elapsed


def main(argv=None) -> int:
    from bench_speed import all_model_names, machine

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default=BASELINE, help=f"git revision to compare with (default {BASELINE})")
    parser.add_argument("--models", default=",".join(all_model_names()))
    parser.add_argument("--rounds", type=int, default=2, help="compiles per tree and model (the median is kept)")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_compile_time")
    args = parser.parse_args(argv)
    names = [m.strip() for m in args.models.split(",") if m.strip()]

    work = Path(tempfile.mkdtemp(prefix="edgekit-bench-compile-"))
    baseline_tree = work / "baseline"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(baseline_tree), args.baseline],
                   check=True, capture_output=True)
    revision = subprocess.run(["git", "-C", str(baseline_tree), "rev-parse", "--short", "HEAD"], check=True,
                              capture_output=True, text=True).stdout.strip()
    current = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], check=True,
                             capture_output=True, text=True).stdout.strip()
    doc = {"started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
           "baseline": revision, "current": current, "rounds": args.rounds, "models": []}
    try:
        programs = export_models(names, work)
        for name in names:
            times, errors = {"baseline": [], "current": []}, {}
            for n in range(args.rounds):  # alternate, so load from other processes falls on both alike
                for label, tree in (("baseline", baseline_tree), ("current", ROOT)):
                    if label in errors:
                        continue
                    try:
                        times[label].append(compile_seconds(tree, programs[name],
                                                            work / f"{label}-{name.replace(':', '_')}-{n}"))
                    except RuntimeError as exc:  # the baseline could not compile every model
                        errors[label] = str(exc).strip().splitlines()[-1][:300]
            row = {"model": name, **{k: round(sorted(v)[len(v) // 2], 1) if v else None for k, v in times.items()},
                   "samples": {k: [round(x, 1) for x in v] for k, v in times.items()}, "errors": errors}
            row["ratio"] = round(row["current"] / row["baseline"], 2) if row["baseline"] and row["current"] else None
            log(f"{name}: baseline {row['baseline']} s, current {row['current']} s ({row['ratio']}x) {errors or ''}")
            doc["models"].append(row)
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(baseline_tree)],
                       capture_output=True)
    doc["load_average_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(doc))
    log(f"wrote {args.out}.json / .md")
    return 0


def markdown(doc) -> str:
    m = doc["machine"]
    lines = [f"# `edgekit compile` time: {doc['current']} vs {doc['baseline']}", "",
             f"{doc['started']}, {m.get('cpu')} (ISA {m.get('isa')}), {platform.python_version()}; target `{TARGET}`, "
             f"empty cache, wall time of the command (imports included), median of {doc['rounds']} alternating "
             f"rounds; load average at the end {tuple(round(x, 1) for x in doc['load_average_end'])}.", "",
             f"| model | {doc['baseline']} (s) | {doc['current']} (s) | ratio |", "|---|---:|---:|---:|"]
    for row in doc["models"]:
        cells = [row["baseline"] if row["baseline"] is not None else f"failed: {row['errors'].get('baseline')}",
                 row["current"] if row["current"] is not None else f"failed: {row['errors'].get('current')}",
                 f"{row['ratio']:.2f}x" if row["ratio"] is not None else "–"]
        lines.append(f"| {row['model']} | " + " | ".join(str(c) for c in cells) + " |")
    from bench_speed import geometric_mean

    mean = geometric_mean(row["ratio"] for row in doc["models"])  # skips the models one tree failed on
    if mean is not None:
        lines.append(f"| geometric mean | | | {mean:.2f}x |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "tools"))
    sys.exit(main())
