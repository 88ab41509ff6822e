#!/usr/bin/env python3
"""Int8 vs fp32 with default schedules (no tuning), on this host; and int8 accuracy on Fashion-MNIST.

Models: the zoo CNN (zoo:fmnist-resnet, 1x1x28x28, trained) and two 224x224 CNNs defined here
(ResNet-style basic blocks and MobileNetV2-style inverted residuals, seeded random weights,
int8 calibrated on random inputs).  Each is compiled for ``--target`` (default: host) as fp32 and
as int8 (edgekit.compress.quantize, per-channel weights); both artifacts are timed with
edgekit.run.run_artifact (1 thread, batch 1) in interleaved rounds, median of round medians.

The fp32 artifacts can come from another edgekit tree (``--fp32-tree /work/main``: compiled in a
subprocess with that tree on PYTHONPATH), so int8 is compared with whatever fp32 default
schedules that tree has; timing is always here, in one process, interleaved.

Accuracy: the zoo CNN's fp32 and int8 artifacts evaluated with edgekit.evaluate on a seeded
subset of the Fashion-MNIST test set (``--eval-limit``, 2000 by default).

    python tools/bench_int8.py                   # writes tools/results/bench_int8.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "tools" / "results"
sys.path.insert(0, str(ROOT))


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def build_model(name: str):
    """(torch model, input shape, trained?) for a benchmark model name."""
    import torch
    from torch import nn

    if name == "zoo:fmnist-resnet":
        from edgekit.data import load_zoo_model

        return load_zoo_model("fmnist-resnet"), (1, 1, 28, 28), True

    def bn_relu(c):
        return [nn.BatchNorm2d(c), nn.ReLU()]

    class Basic(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), *bn_relu(cout),
                                      nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
            self.short = (nn.Identity() if stride == 1 and cin == cout else
                          nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

        def forward(self, x):
            return torch.relu(self.body(x) + self.short(x))

    class Inverted(nn.Module):
        def __init__(self, cin, cout, stride, expand=4):
            super().__init__()
            hidden = cin * expand
            self.residual = stride == 1 and cin == cout
            self.body = nn.Sequential(
                nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
                nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
                nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            y = self.body(x)
            return x + y if self.residual else y

    torch.manual_seed(0)
    if name == "resnet-224":
        model = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1, bias=False), *bn_relu(32),
                              Basic(32, 64, 2), Basic(64, 64, 1), Basic(64, 128, 2), Basic(128, 128, 1),
                              nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 1000))
    elif name == "mobilenetv2-224":
        model = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6(),
                              Inverted(16, 24, 2), Inverted(24, 24, 1), Inverted(24, 32, 2), Inverted(32, 32, 1),
                              Inverted(32, 64, 2), Inverted(64, 64, 1), nn.Conv2d(64, 256, 1), nn.ReLU6(),
                              nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, 1000))
    else:
        raise SystemExit(f"unknown model {name!r}")
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():  # fresh BN layers are identities: give them statistics
        if isinstance(module, nn.BatchNorm2d):
            with torch.no_grad():
                module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    return model.eval(), (1, 3, 224, 224), False


class RandomCalibration:
    def __init__(self, shape, n: int = 16):
        import torch

        self.x = torch.randn(n, *shape[1:], generator=torch.Generator().manual_seed(0))

    def batches(self, batch_size):
        for i in range(0, len(self.x), batch_size):
            yield self.x[i:i + batch_size], None


def quantized(name: str):
    from edgekit.compress.quantize import QuantizeConfig, quantize_model

    model, shape, trained = build_model(name)
    if trained:
        from edgekit.data import load_dataset

        calibration, n = load_dataset("fashion-mnist", "train", limit=256), 256
    else:
        calibration, n = RandomCalibration(shape), 16
    return quantize_model(model, calibration, QuantizeConfig(calibration_size=n)), shape


def compile_variant(name: str, variant: str, target: str, out: Path) -> dict:
    """Compile one (model, variant) here; returns {path, compile_s, schedules}."""
    from edgekit.compile import compile_model

    if variant == "int8":
        model, shape = quantized(name)
        tolerance = {"atol": 0.5, "rtol": 1e-3}  # an int8 step may round the other way on random inputs
    else:
        model, shape, _ = build_model(name)
        tolerance = None
    start = time.perf_counter()
    artifact = compile_model(model, target, input_shapes=[shape], out_dir=out, tuning=False, tolerance=tolerance)
    manifest = json.loads((artifact.path / "manifest.json").read_text())
    return {"path": str(artifact.path), "compile_s": round(time.perf_counter() - start, 1),
            "schedules": manifest.get("schedules", {})}


def compile_in_tree(name: str, variant: str, target: str, out: Path, tree: Path) -> dict:
    """compile_variant in a subprocess with ``tree`` first on PYTHONPATH."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    code = (f"import json, sys; sys.path.insert(0, {str(tree)!r}); sys.path.insert(1, {str(ROOT / 'tools')!r}); "
            f"import bench_int8 as b; from pathlib import Path; "
            f"print('@@' + json.dumps(b.compile_variant({name!r}, {variant!r}, {target!r}, Path({str(out)!r}))))")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=str(tree))
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("@@")), None)
    if done.returncode != 0 or line is None:
        raise SystemExit(f"compiling {name} {variant} in {tree} failed:\n{done.stderr[-3000:]}")
    return json.loads(line[2:])


def time_interleaved(paths: dict[str, str], rounds: int, budget_s: float) -> dict[str, dict]:
    """Median of round medians per artifact; every round runs each artifact once, in turn."""
    from edgekit.run import run_artifact

    probe = {key: run_artifact(path, warmup=1, repeats=2, threads=1).stats["median_ms"] for key, path in paths.items()}
    repeats = {key: max(3, min(200, int(budget_s * 1000 / max(ms, 1e-3)))) for key, ms in probe.items()}
    medians: dict[str, list[float]] = {key: [] for key in paths}
    for _ in range(rounds):
        for key, path in paths.items():
            report = run_artifact(path, warmup=min(10, repeats[key]), repeats=repeats[key], threads=1)
            medians[key].append(report.stats["median_ms"])
    return {key: {"median_ms": round(statistics.median(v), 4), "round_medians_ms": [round(x, 4) for x in v],
                  "repeats": repeats[key]} for key, v in medians.items()}


def accuracy(paths: dict[str, str], limit: int) -> dict:
    from edgekit.data import load_dataset
    from edgekit.evaluate import evaluate

    data = load_dataset("fashion-mnist", "test", limit=limit)
    return {key: round(100 * evaluate(path, data), 2) for key, path in paths.items()}


def markdown(result: dict) -> str:
    lines = [f"# int8 vs fp32, default schedules ({result['target']}, ISA {result['isa']})", "",
             f"{result['when']}, {result['machine']}; 1 thread, batch 1, median of {result['rounds']} interleaved "
             f"round medians (edgekit.run.run_artifact). fp32 from: {result['fp32_tree']}.", "",
             "| model | fp32 default (ms) | int8 default (ms) | int8 speed-up | int8 kernels by the int8 rule "
             "| compile fp32 / int8 (s) |",
             "|---|---:|---:|---:|---:|---:|"]
    for row in result["models"]:
        lines.append(f"| {row['model']} | {row['fp32_ms']:.3f} | {row['int8_ms']:.3f} | {row['speedup']:.2f}x | "
                     f"{row['int8_rule_kernels']} | {row['compile_s']['fp32']} / {row['compile_s']['int8']} |")
    acc = result.get("accuracy")
    if acc:
        lines += ["", f"Accuracy of zoo:fmnist-resnet on {acc['images']} Fashion-MNIST test images (seeded "
                  "subset), compiled artifacts via edgekit.evaluate: "
                  f"fp32 {acc['fp32']:.2f}%, int8 {acc['int8']:.2f}% (difference {acc['int8'] - acc['fp32']:+.2f} "
                  "points)."]
    lines += ["", "Unscheduled kernels of the int8 builds (left to other rules or naive):", ""]
    for row in result["models"]:
        lines.append(f"- {row['model']}: {', '.join(row['int8_unscheduled']) or 'none'}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="zoo:fmnist-resnet,resnet-224,mobilenetv2-224")
    ap.add_argument("--target", default="host")
    ap.add_argument("--fp32-tree", default=None, help="compile fp32 with this edgekit tree (default: this one)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--budget-s", type=float, default=1.0, help="timed seconds per artifact per round (about)")
    ap.add_argument("--eval-limit", type=int, default=2000)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)

    import tvm  # noqa: F401  (the ISA line below reads the resolved target)

    from edgekit.compile.build import resolve_tvm_target
    from edgekit.compile.schedules import cpu_info
    from edgekit.targets import load_target

    info = cpu_info(resolve_tvm_target(load_target(args.target)))
    work = Path(tempfile.mkdtemp(prefix="bench-int8-"))
    rows, artifacts = [], {}
    for name in args.models.split(","):
        log(f"compiling {name}")
        int8 = compile_variant(name, "int8", args.target, work)
        fp32 = (compile_in_tree(name, "fp32", args.target, work, Path(args.fp32_tree)) if args.fp32_tree
                else compile_variant(name, "fp32", args.target, work))
        artifacts[name] = {"fp32": fp32, "int8": int8}
    for name, pair in artifacts.items():
        log(f"timing {name}")
        times = time_interleaved({k: v["path"] for k, v in pair.items()}, args.rounds, args.budget_s)
        schedules = pair["int8"]["schedules"]
        rows.append({"model": name, "fp32_ms": times["fp32"]["median_ms"], "int8_ms": times["int8"]["median_ms"],
                     "speedup": round(times["fp32"]["median_ms"] / times["int8"]["median_ms"], 2), "timing": times,
                     "compile_s": {k: v["compile_s"] for k, v in pair.items()},
                     "int8_rule_kernels": len(schedules.get("by_rule", {}).get("Int8Conv2D", [])),
                     "int8_schedules": schedules, "int8_unscheduled": schedules.get("unscheduled", []),
                     "fp32_schedules": pair["fp32"]["schedules"]})
        log(f"{name}: fp32 {rows[-1]['fp32_ms']} ms, int8 {rows[-1]['int8_ms']} ms, {rows[-1]['speedup']}x")
    result = {"target": args.target, "isa": info.isa, "cpu": info.mcpu, "machine": platform.processor() or
              platform.machine(), "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "rounds": args.rounds, "fp32_tree": args.fp32_tree or "this tree", "models": rows}
    if "zoo:fmnist-resnet" in artifacts and args.eval_limit:
        log("accuracy")
        acc = accuracy({k: v["path"] for k, v in artifacts["zoo:fmnist-resnet"].items()}, args.eval_limit)
        result["accuracy"] = {"images": args.eval_limit, **acc}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_int8.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "bench_int8.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
