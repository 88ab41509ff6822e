#!/usr/bin/env python3
"""Int8 vs fp32 with default schedules (no tuning), on this host; and int8 accuracy on Fashion-MNIST.

Models: the zoo CNN (zoo:fmnist-resnet, 1x1x28x28, trained) and two 224x224 CNNs defined here
(ResNet-style basic blocks and MobileNetV2-style inverted residuals, seeded random weights,
int8 calibrated on random inputs).  Each is compiled for ``--target`` (default: host) as fp32 and
as int8 (edgekit.compress.quantize, per-channel weights); both artifacts are timed with
edgekit.run.run_artifact (1 thread, batch 1) in interleaved rounds, median of round medians.

The fp32 artifacts can come from another edgekit tree (``--fp32-tree PATH/TO/OTHER/CHECKOUT``: compiled in a
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


# ------------------------------------------------------------------ per kernel, vs a scheduled fp32 conv

KERNEL_SHAPES = (  # (height, width, in, out, kernel, stride): the zoo CNN's and the 224 models' convs
    (14, 14, 24, 24, 3, 1), (14, 14, 24, 48, 3, 2), (7, 7, 48, 48, 3, 1), (56, 56, 64, 64, 3, 1),
    (28, 28, 128, 128, 3, 1), (28, 28, 32, 128, 1, 1), (14, 14, 256, 64, 1, 1))


def conv_module(h, w, cin, cout, k, stride, int8: bool):
    """One NHWC conv + bias + ReLU (+ the int8 requantize) as a Relax module, seeded constants."""
    import numpy as np
    from tvm import relax

    rng = np.random.default_rng(0)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, h, w, cin), "uint8" if int8 else "float32"))
    pad = k // 2
    with bb.function("main", [x]):
        with bb.dataflow():
            if int8:
                weight = relax.const(rng.integers(-127, 128, (cout, k, k, cin)).astype("int8"))
                acc = bb.emit(relax.op.nn.conv2d(x, weight, strides=stride, padding=pad, data_layout="NHWC",
                                                 kernel_layout="OHWI", out_dtype="int32"))
                y = relax.op.astype(acc, "float32") * relax.const(rng.random(cout).astype("float32") * 1e-3)
            else:
                weight = relax.const(rng.standard_normal((cout, k, k, cin)).astype("float32"))
                y = relax.op.nn.conv2d(x, weight, strides=stride, padding=pad, data_layout="NHWC",
                                       kernel_layout="OHWI")
            y = relax.op.nn.relu(y + relax.const(rng.standard_normal(cout).astype("float32")))
            if int8:
                y = relax.op.astype(relax.op.minimum(relax.op.round(y * relax.const(10.0, "float32")),
                                                     relax.const(255.0, "float32")), "uint8")
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


def fp32_reference_schedule(func, registers: int, lanes: int):
    """The DESIGN.md section 11 register-tiled NHWC fp32 schedule (packed weights, FMA over lanes)."""
    from tvm import s_tir

    from edgekit.compile.schedules.int8_conv import register_tile

    sch = s_tir.Schedule(func)
    blocks = [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]
    index = blocks.index("conv2d_nhwc")
    conv = sch.get_sblock("conv2d_nhwc")
    packed = sch.cache_read(conv, 1, "global")
    sch.transform_layout(packed, ("write", 0), lambda o, kh, kw, i: (o // lanes, kh, kw, i, o % lanes))
    n, y, x, o, ky, kx, i = sch.get_loops(conv)
    cout, width = int(sch.get(o).extent), int(sch.get(x).extent)
    o_tile, x_tile = register_tile(cout // lanes, width, registers)
    o_vec, o_lane = sch.split(o, [None, lanes])
    o_out, o_in = sch.split(o_vec, [None, o_tile])
    x_out, x_in = sch.split(x, [None, x_tile])
    sch.reorder(n, y, x_out, o_out, ky, kx, i, x_in, o_in, o_lane)
    *middle, last = blocks[index + 1:]
    for name in middle:
        sch.compute_inline(sch.get_sblock(name))
    sch.reverse_compute_at(sch.get_sblock(last), o_out)
    sch.vectorize(sch.split(sch.get_loops(sch.get_sblock(last))[-1], [None, lanes])[1])
    sch.set_scope(conv, 0, "local")
    sch.vectorize(o_lane)
    sch.unroll(x_in)
    sch.unroll(o_in)
    sch.decompose_reduction(conv, ky)
    return sch


def build_kernel(mod, target, schedule):
    """Relax module -> VM executable, with ``schedule(func)`` applied to the conv PrimFunc."""
    import tvm
    from tvm import relax, tirx

    from edgekit.compile.build import _cpu_pipeline_stages, lowering_passes

    @tvm.transform.module_pass(opt_level=0, name="BenchSchedule")
    def apply(mod, _ctx):
        for gvar, func in list(mod.functions_items()):
            if isinstance(func, tirx.PrimFunc) and "conv2d" in gvar.name_hint:
                mod[gvar] = schedule(func).mod["main"].with_attr("tirx.is_scheduled", True)
        return mod

    @tvm.transform.module_pass(opt_level=0, name="BenchPipeline")
    def pipeline(mod, _ctx):
        stages = _cpu_pipeline_stages()
        with target:
            return tvm.transform.Sequential([*lowering_passes(target), apply, *stages.dataflow_lower_passes(target),
                                             *stages.finalize_passes(target)])(mod)

    with target:
        return relax.VirtualMachine(tvm.compile(mod, target, relax_pipeline=pipeline), tvm.cpu())


def bench_kernels(target_name: str, rounds: int) -> list[dict]:
    import numpy as np
    import tvm

    from edgekit.compile.build import resolve_tvm_target
    from edgekit.compile.schedules import cpu_info
    from edgekit.compile.schedules.int8 import rules, vector_registers
    from edgekit.targets import load_target

    target = resolve_tvm_target(load_target(target_name))
    info = cpu_info(target)
    int8_rule = rules(info)[0]
    rows = []
    for h, w, cin, cout, k, stride in KERNEL_SHAPES:
        log(f"kernel {h}x{w} {cin}->{cout} k{k} s{stride}")
        vms = {"fp32": build_kernel(conv_module(h, w, cin, cout, k, stride, False), target,
                                    lambda f: fp32_reference_schedule(f, vector_registers(info), info.f32_lanes)),
               "int8": build_kernel(conv_module(h, w, cin, cout, k, stride, True), target,
                                    lambda f: int8_rule.apply(f, target, False))}
        rng = np.random.default_rng(1)
        inputs = {"fp32": tvm.runtime.tensor(rng.standard_normal((1, h, w, cin)).astype("float32")),
                  "int8": tvm.runtime.tensor(rng.integers(0, 256, (1, h, w, cin)).astype("uint8"))}
        macs = (h // stride) * (w // stride) * cout * cin * k * k
        number = max(5, int(2e8 / macs))
        medians = {key: [] for key in vms}
        for _ in range(rounds):
            for key, vm in vms.items():
                timer = vm.time_evaluator("main", tvm.cpu(), number=number, repeat=3)
                medians[key].append(statistics.median(timer(inputs[key]).results) * 1e3)
        fp32_ms, int8_ms = (statistics.median(medians[key]) for key in ("fp32", "int8"))
        rows.append({"shape": f"{h}x{w} {cin}->{cout} {k}x{k} s{stride}", "macs": macs,
                     "fp32_ms": round(fp32_ms, 4), "int8_ms": round(int8_ms, 4),
                     "fp32_gmacs": round(macs / fp32_ms / 1e6, 1), "int8_gmacs": round(macs / int8_ms / 1e6, 1),
                     "speedup": round(fp32_ms / int8_ms, 2)})
        log(f"  fp32 {fp32_ms:.4f} ms, int8 {int8_ms:.4f} ms, {fp32_ms / int8_ms:.2f}x")
    return rows


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
    if result.get("kernels"):
        lines += ["", "Per kernel: the int8 rule vs a register-tiled vectorized fp32 NHWC conv scheduled the same way "
                  "(DESIGN.md section 11: packed weights, FMA over the lanes, same register tiles), conv + bias + ReLU "
                  "(+ requantize for int8), TVM time_evaluator, median of interleaved rounds:", "",
                  "| conv (HxW in->out kxk stride) | MMAC | fp32 ms | int8 ms | fp32 GMAC/s | int8 GMAC/s | int8 speed-up |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for k in result["kernels"]:
            lines.append(f"| {k['shape']} | {k['macs'] / 1e6:.1f} | {k['fp32_ms']:.4f} | {k['int8_ms']:.4f} | "
                         f"{k['fp32_gmacs']} | {k['int8_gmacs']} | {k['speedup']:.2f}x |")
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
    ap.add_argument("--kernels-only", action="store_true", help="only the per-kernel table")
    ap.add_argument("--no-kernels", action="store_true", help="skip the per-kernel table")
    args = ap.parse_args(argv)

    import tvm  # noqa: F401  (the ISA line below reads the resolved target)

    from edgekit.compile.build import resolve_tvm_target
    from edgekit.compile.schedules import cpu_info
    from edgekit.targets import load_target

    info = cpu_info(resolve_tvm_target(load_target(args.target)))
    work = Path(tempfile.mkdtemp(prefix="bench-int8-"))
    rows, artifacts = [], {}
    kernels = [] if args.no_kernels else bench_kernels(args.target, args.rounds)
    for name in ([] if args.kernels_only else args.models.split(",")):
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
              "rounds": args.rounds, "fp32_tree": args.fp32_tree or "this tree", "models": rows,
              "kernels": kernels}
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
