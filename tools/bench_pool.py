#!/usr/bin/env python3
"""Optimize's wall time with 1 and with 3 boards in the pool (issue 13): same model, budget, seed and protocol.

One run, all on this machine and on loopback:
  1. TVM's RPC tracker (`edgekit pool start`'s), four local OpenSSH devices with the TVM runtime, each joined by
     `edgekit pool join` in its own process: one under the key ``solo``, three under ``trio``;
  2. a small ResNet trained on digits; every measurement uses the slow-kernel runner
     (edgekit/testing/slow_runner.py): the stem convolution (never pruned) really sleeps on the device, so each
     measurement round is dominated by waiting on the device, as it is on a real board;
  3. a warm-up search on ``trio`` compiles every artifact both timed runs need (content-addressed, reused), so the
     timed runs differ only in where their measurements run;
  4. ``optimize_model`` on ``solo`` then on ``trio`` (fresh latency caches): each measurement's rounds run at once
     on as many boards as the key has (on ``solo`` they wait in the tracker's queue for the one board);
  5. JSON and markdown in tools/results/bench_pool.{json,md}.

    python tools/bench_pool.py [--sleep-ms 60] [--out tools/results]

The four local devices share this machine's CPUs: what three boards parallelise is the device wait, not
compute.  The markdown says so.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FAST = dict(finetune_examples=300, finetune_epochs=1, val_examples=200, test_examples=200, final_epochs=1,
            final_examples=300, repeats=20, warmup=3, measure_rounds=3, width_step_ratio=0.25, step_ratio=0.15,
            max_iterations=3)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "tools" / "results"))
    parser.add_argument("--sleep-ms", type=float, default=60.0, help="the stem conv's sleep per call on the device")
    parser.add_argument("--size-ratio", type=float, default=0.7, help="size budget = this x the baseline's")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from edgekit.compile import compile_model
    from edgekit.compress.distill import TrainConfig, train
    from edgekit.data import load_dataset
    from edgekit.optimize import optimize_model
    from edgekit.optimize.devices import SLOW_RUNNER_PATH
    from edgekit.pool import PoolDevice, pool_status, start_tracker
    from edgekit.testing.models import ResNetTiny
    from edgekit.testing.pool_boards import join_board
    from edgekit.testing.slow_runner import SLOW_ENV
    from edgekit.testing.sshd import create_device, local_runtime_site
    from bench_speed import machine  # tools/ is this script's directory

    work = Path(tempfile.mkdtemp(prefix="edgekit-bench-pool-"))
    cache = Path(os.environ.setdefault("EDGEKIT_CACHE", "/var/cache/edgekit-test"))
    site = local_runtime_site(cache)
    train_data = load_dataset("digits", "train")
    torch.manual_seed(args.seed)
    model = ResNetTiny(in_ch=1, width=8)
    train(model, train_data, config=TrainConfig(epochs=4, lr=1e-2, batch_size=64, val_size=0), progress=False)
    model.eval()
    shape = (1, 1, 28, 28)
    stem = list(model.stem[0].weight.shape)
    slow = {SLOW_ENV: json.dumps([{"weight_shape": stem, "sleep_ms": args.sleep_ms}])}
    artifacts = work / "artifacts"
    baseline_size = compile_model(model, "host", input_shapes=[shape], out_dir=artifacts).size_bytes
    budget = int(baseline_size * args.size_ratio)

    devices, boards, results = [], [], {}
    with start_tracker() as tracker:
        try:
            for key, count in (("solo", 1), ("trio", 3)):
                for _ in range(count):
                    device = create_device(env={"PYTHONPATH": str(site)})
                    devices.append(device)
                    boards.append(join_board(device, tracker.address, key=key, log_dir=work))
            status = pool_status(tracker.address)

            def search(key: str, name: str):
                pool = PoolDevice(tracker.address, key, runner_path=SLOW_RUNNER_PATH, env=slow,
                                  say=lambda m: print(f"[{name}] {m}", file=sys.stderr))
                started = time.perf_counter()
                result = optimize_model(model, "digits", size_budget_bytes=budget, device=pool, seed=args.seed,
                                        run_dir=work / name, cache_dir=work / f"cache-{name}",
                                        artifacts_dir=artifacts, exclude=("stem.0",), log=lambda m: None, **FAST)
                wall = time.perf_counter() - started
                return {"wall_s": round(wall, 2), "boards": len(status["keys"][key]["boards"]),
                        "status": str(result.status), "met": result.met, "steps": len(result.steps),
                        "chosen_widths": result.chosen["widths"], "chosen_size_bytes": result.chosen["size_bytes"],
                        "chosen_val_accuracy": result.chosen["val_accuracy"], "pool": pool.summary(),
                        # every round: waiting for a board, uploading, the runner on it -- where the time goes
                        "rounds": [{k: h.get(k) for k in ("unit", "kernels", "wall_s", "lease_s", "upload_s",
                                                          "runner_s", "warmup_runs", "samples")}
                                   for h in pool.history]}

            print("warm-up search (compiles every artifact) ...", file=sys.stderr)
            results["warmup"] = search("trio", "warmup")
            for key in ("solo", "trio"):
                print(f"timed search on {key} ...", file=sys.stderr)
                results[key] = search(key, key)
                print(f"  {key}: {results[key]['wall_s']} s", file=sys.stderr)
        finally:
            for board in boards:
                board.leave()
            for device in devices:
                device.remove()

    speedup = results["solo"]["wall_s"] / results["trio"]["wall_s"]
    report = {"what": "optimize_model wall time, 1 vs 3 boards of one key in the pool (same budget, seed, protocol)",
              "machine": {"cpus": os.cpu_count(), **machine()},  # the CPU and its ISA (tools/bench_speed.py)
              "model": "ResNetTiny(width=8) on digits, 28x28", "size_budget_bytes": budget,
              "baseline_size_bytes": baseline_size, "search": FAST, "stem_sleep_ms": args.sleep_ms, "size_ratio": args.size_ratio,
              "one_board": results["solo"], "three_boards": results["trio"], "warmup": results["warmup"],
              "speedup": round(speedup, 3), "target_speedup": 2.0, "met": speedup >= 2.0,
              "same_choice": results["solo"]["chosen_widths"] == results["trio"]["chosen_widths"]}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_pool.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / "bench_pool.md").write_text(_markdown(report))
    print(json.dumps({k: report[k] for k in ("speedup", "met", "same_choice")}))
    return 0


def _markdown(r) -> str:
    one, three = r["one_board"], r["three_boards"]

    def row(name, x):
        p = x["pool"]
        return (f"| {name} | {x['boards']} | {x['wall_s']:.1f} | {p['measurements']} | "
                f"{', '.join(f'{n}' for n in p['per_unit'].values())} | {x['steps']} | {x['status']} | "
                f"{x['chosen_size_bytes']} | {x['chosen_val_accuracy']:.4f} |")

    flagged = sorted(set(one["pool"]["flagged"]) | set(three["pool"]["flagged"]))

    def phases(x):
        import statistics

        rounds = x.get("rounds") or []
        if not rounds:
            return "not recorded"
        return ", ".join(f"{label} {statistics.median(r[k] for r in rounds if r.get(k) is not None):.2f} s"
                         for label, k in (("waiting for a board", "lease_s"), ("uploads", "upload_s"),
                                          ("the runner", "runner_s")))
    return "\n".join([
        "# bench_pool: optimize with 1 and 3 boards in the pool",
        "",
        f"`python tools/bench_pool.py --sleep-ms {r['stem_sleep_ms']:g} --size-ratio {r.get('size_ratio', 0.7):g}` on {r['machine']['cpus']} CPUs "
        f"({r['machine'].get('cpu', '?')}, {r['machine'].get('isa', '?')}). "
        f"{r['model']}, size budget {r['size_budget_bytes']} bytes ({r['baseline_size_bytes']} at the start), "
        f"seed 0, {r['search']['measure_rounds']} measurement rounds of {r['search']['repeats']} runs each, "
        f"at most {r['search']['max_iterations']} iterations.",
        "",
        "| boards (key) | boards | wall s | measurements | per board | steps | status | chosen bytes | val acc |",
        "|---|---|---|---|---|---|---|---|---|",
        row("solo", one),
        row("trio", three),
        "",
        f"**{r['speedup']:.3f}x** faster with three boards (target 2x: {'met' if r['met'] else 'NOT met'}); "
        f"the same model chosen: {'yes' if r['same_choice'] else 'no'}. Units flagged as disagreeing: "
        f"{', '.join(flagged) if flagged else 'none'}.",
        "",
        f"Per measurement round (median): solo: {phases(one)}; trio: {phases(three)}. The board's server forks "
        "the runner from its session worker, which has the TVM runtime imported already (no import per round).",
        "",
        "How honest this is: the four 'boards' are local OpenSSH devices on this machine, sharing its CPUs. "
        "Three of them cannot compute faster than one here, so each measurement is made to be dominated by "
        f"waiting on the device: the stem convolution (excluded from pruning, so every candidate has it) sleeps "
        f"{r['stem_sleep_ms']:g} ms a call in the slow-kernel runner (edgekit/testing/slow_runner.py), as a "
        "slow real board keeps the host waiting. What three boards buy is that a measurement's rounds run at once "
        "on three boards instead of queueing for one in the tracker; fine-tuning, compiling (warm: a warm-up "
        "search built every artifact first) and each round's CPU work (loading the library, timing the kernels "
        "that do not sleep) still run on the shared CPUs and do not "
        "shrink. On real boards the ratio depends on how much of a search is spent waiting on them.",
        "",
    ])


if __name__ == "__main__":
    sys.exit(main())
