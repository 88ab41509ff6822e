"""Conv kernels and two CNNs: edgekit's default CPU schedules against ONNX Runtime, one thread.

    python tools/bench_conv_kernels.py [--kernels-only] [--models-only] [--baseline] [--out tools/results]

Per kernel: each shape is one torch ``Conv2d`` (+ ReLU), built the way edgekit builds it
(graph passes, NHWC/HWIO layout, fusion, default schedules) and only the fused conv PrimFunc is
timed; ONNX Runtime runs the same conv+ReLU as a one-node-pair ONNX model.  End to end:
MobileNetV2-1.0 and ResNet-18 at 224 written here from plain nn.Conv2d/BatchNorm/ReLU6 blocks
(random weights), the whole edgekit artifact against ORT on the ONNX export of the same
module.  Timings interleave the runtimes and report medians (the machine is shared).
Writes bench_conv_kernels.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TVM_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

# name, (in_ch, out_ch, kernel, hw, stride, padding, groups): MobileNetV2 / ResNet-18 layers at 224.
KERNELS = [
    ("resnet 3x3 64->64 56x56", (64, 64, 3, 56, 1, 1, 1)),
    ("resnet 3x3 128->128 28x28", (128, 128, 3, 28, 1, 1, 1)),
    ("resnet 3x3 512->512 7x7", (512, 512, 3, 7, 1, 1, 1)),
    ("mbv2 1x1 96->576 14x14", (96, 576, 1, 14, 1, 0, 1)),
    ("mbv2 1x1 160->960 7x7", (160, 960, 1, 7, 1, 0, 1)),
    ("mbv2 1x1 24->144 56x56", (24, 144, 1, 56, 1, 0, 1)),
    ("first 3x3 3->32 s2 224", (3, 32, 3, 224, 2, 1, 1)),
    ("dw 3x3 32 112x112 s1", (32, 32, 3, 112, 1, 1, 32)),
    ("dw 3x3 144 56x56 s2", (144, 144, 3, 56, 2, 1, 144)),
    ("dw 3x3 576 14x14 s1", (576, 576, 3, 14, 1, 1, 576)),
]


def _host_isa() -> dict:
    from edgekit.compile.build import resolve_tvm_target
    from edgekit.compile.schedules import cpu_info
    from edgekit.targets import load_target

    target = resolve_tvm_target(load_target("host"))
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = cpu_info(target)
    return {"isa": info.isa, "mcpu": info.mcpu, "vector_bits": info.vector_bits, "cpu_model": model,
            "machine": platform.machine(), "threads": 1}


# ------------------------------------------------------------------------------------------ kernels

def _conv_module(spec, relu=True):
    import torch
    from torch import nn

    ic, oc, k, _hw, stride, pad, groups = spec

    class ConvRelu(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(ic, oc, k, stride, pad, groups=groups)

        def forward(self, x):
            return torch.relu(self.conv(x))

    torch.manual_seed(0)
    return ConvRelu().eval()


def _scheduled_kernel(model, x, with_schedules=True):
    """The fused conv PrimFunc of ``model`` as edgekit builds it for the host, compiled alone."""
    import torch
    from tvm.relax.frontend.torch import from_exported_program

    from edgekit.compile import build
    from edgekit.compile.schedules import ApplySchedules, ScheduleLog
    from edgekit.compile.tvm_env import import_tvm
    from edgekit.targets import load_target

    tvm = import_tvm()
    target = build.resolve_tvm_target(load_target("host"))
    mod = from_exported_program(torch.export.export(model, (x,)), keep_params_as_input=False,
                                unwrap_unit_return_tuple=True)
    mod = build.optimize_graph(mod, target, winograd=False)  # the direct conv rule (Winograd: bench_winograd.py)
    log = ScheduleLog()
    with target:
        passes = list(build.lowering_passes(target))
        if with_schedules:
            passes.append(ApplySchedules(target, log))
        mod = tvm.transform.Sequential(passes)(mod)
    (name, func), = [(gv.name_hint, f) for gv, f in mod.functions_items()
                     if isinstance(f, tvm.tirx.PrimFunc) and "conv" in gv.name_hint]
    func = func.with_attr("global_symbol", name)
    lib = tvm.compile(tvm.IRModule({name: func}), target=target)
    args = [tvm.runtime.tensor(np.random.default_rng(0).standard_normal([int(s) for s in p.shape])
                               .astype("float32")) for p in func.params]
    rule = next((r for r, names in log.by_rule.items() if name in names), None)
    return lib, name, args, rule


def _onnx_conv_session(spec):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    ic, oc, k, hw, stride, pad, groups = spec
    rng = np.random.default_rng(0)
    w = rng.standard_normal((oc, ic // groups, k, k)).astype("float32")
    b = rng.standard_normal(oc).astype("float32")
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[k, k], strides=[stride, stride],
                              pads=[pad] * 4, group=groups),
             helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, ic, hw, hw])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    x = rng.standard_normal((1, ic, hw, hw)).astype("float32")
    return lambda: sess.run(None, {"x": x})


def _median_ms(fn, rounds, inner):
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - t0) * 1e3 / inner)
    return samples


def bench_kernels(baseline: bool) -> list[dict]:
    import torch

    rows = []
    only = os.environ.get("EK_ONLY")
    for label, spec in KERNELS:
        if only and only not in label:
            continue
        ic, _oc, _k, hw, *_ = spec
        model = _conv_module(spec)
        x = torch.randn(1, ic, hw, hw)
        lib, name, args, rule = _scheduled_kernel(model, x)
        kernel = lib[name]
        ort_run = _onnx_conv_session(spec)
        # Calibrate an inner count of ~20 ms, then interleave edgekit and ORT rounds.
        t0 = time.perf_counter()
        kernel(*args)
        one = max(time.perf_counter() - t0, 1e-5)
        inner = max(1, int(0.02 / one))
        ek, ort_s = [], []
        for _ in range(7):
            ek += _median_ms(lambda: kernel(*args), 1, inner)
            ort_s += _median_ms(ort_run, 1, inner)
        row = {"kernel": label, "spec": dict(zip(("in", "out", "k", "hw", "stride", "pad", "groups"), spec)),
               "primfunc": name, "rule": rule, "edgekit_ms": statistics.median(ek), "ort_ms": statistics.median(ort_s)}
        row["edgekit_over_ort"] = row["edgekit_ms"] / row["ort_ms"]
        ic, oc, k, hw, stride, _pad, groups = spec
        out_hw = hw // stride
        row["gflops"] = 2 * out_hw * out_hw * oc * k * k * (ic // groups) / (row["edgekit_ms"] * 1e6)
        if baseline:
            blib, bname, bargs, _ = _scheduled_kernel(model, x, with_schedules=False)
            naive = blib[bname]
            row["unscheduled_ms"] = statistics.median(_median_ms(lambda: naive(*bargs), 3, 1))
        print(f"{label:28s} {rule or 'UNSCHEDULED':14s} edgekit {row['edgekit_ms']:8.3f} ms  ORT {row['ort_ms']:8.3f} ms"
              f"  ratio {row['edgekit_over_ort']:5.2f}  {row['gflops']:6.1f} GFLOP/s", flush=True)
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------- models

def mobilenet_v2(width=1.0, num_classes=1000):
    """MobileNetV2 (Sandler et al. 2018) from plain blocks: inverted residuals, ReLU6, BatchNorm."""
    from torch import nn

    def cbr(i, o, k=3, s=1, g=1):
        return nn.Sequential(nn.Conv2d(i, o, k, s, k // 2, groups=g, bias=False), nn.BatchNorm2d(o), nn.ReLU6())

    class Inverted(nn.Module):
        def __init__(self, i, o, s, t):
            super().__init__()
            h = i * t
            layers = ([cbr(i, h, 1)] if t != 1 else []) + [cbr(h, h, 3, s, h),
                                                             nn.Conv2d(h, o, 1, bias=False), nn.BatchNorm2d(o)]
            self.body = nn.Sequential(*layers)
            self.residual = s == 1 and i == o

        def forward(self, x):
            y = self.body(x)
            return x + y if self.residual else y

    cfg = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    layers, c = [cbr(3, 32, 3, 2)], 32
    for t, o, n, s in cfg:
        for j in range(n):
            layers.append(Inverted(c, o, s if j == 0 else 1, t))
            c = o
    layers.append(cbr(c, 1280, 1))
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1280, num_classes))


def resnet18(num_classes=1000):
    """ResNet-18 (He et al. 2016) from plain BasicBlocks."""
    from torch import nn

    class Basic(nn.Module):
        def __init__(self, i, o, s):
            super().__init__()
            self.a = nn.Sequential(nn.Conv2d(i, o, 3, s, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU(),
                                   nn.Conv2d(o, o, 3, 1, 1, bias=False), nn.BatchNorm2d(o))
            self.skip = (nn.Sequential(nn.Conv2d(i, o, 1, s, bias=False), nn.BatchNorm2d(o))
                         if s != 1 or i != o else nn.Identity())
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.relu(self.a(x) + self.skip(x))

    layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    c = 64
    for o, s in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [Basic(c, o, s), Basic(o, o, 1)]
        c = o
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes))


def _randomize_bn(model):
    import torch

    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


def bench_models() -> list[dict]:
    import tempfile

    import onnxruntime as ort
    import torch

    from edgekit.compile import compile_model
    from edgekit.compile.tvm_env import import_tvm

    tvm = import_tvm()
    rows = []
    for name, ctor in (("MobileNetV2-1.0 224", mobilenet_v2), ("ResNet-18 224", resnet18)):
        torch.manual_seed(0)
        model = _randomize_bn(ctor())
        x = torch.randn(1, 3, 224, 224)
        with tempfile.TemporaryDirectory() as tmp:
            onnx_path = Path(tmp) / "m.onnx"
            torch.onnx.export(model, (x,), str(onnx_path), input_names=["x"], output_names=["y"], dynamo=False)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            opts.inter_op_num_threads = 1
            sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
            t0 = time.perf_counter()
            artifact = compile_model(model, "host", example_inputs=[x], out_dir=Path(tmp) / "art", tuning=False)
            compile_s = time.perf_counter() - t0
            lib = tvm.runtime.load_module(str(artifact.library_path))
            from tvm import relax
            vm = relax.VirtualMachine(lib, tvm.cpu())
            xt = tvm.runtime.tensor(x.numpy())
            xn = {"x": x.numpy()}
            ref = model(x).detach().numpy()
            out = vm["main"](xt).numpy()
            err = float(np.abs(out - ref).max() / np.abs(ref).max())
            ek, ort_s, torch_s = [], [], []
            with torch.inference_mode():
                for _ in range(2):
                    vm["main"](xt), sess.run(None, xn), model(x)
                for _ in range(9):
                    ek += _median_ms(lambda: vm["main"](xt), 1, 3)
                    ort_s += _median_ms(lambda: sess.run(None, xn), 1, 3)
                    torch_s += _median_ms(lambda: model(x), 1, 3)
            sched = artifact.manifest.get("schedules", {})
        row = {"model": name, "edgekit_ms": statistics.median(ek), "ort_ms": statistics.median(ort_s),
               "torch_ms": statistics.median(torch_s), "compile_s": compile_s, "max_rel_err": err,
               "unscheduled": sched.get("unscheduled", []),
               "by_rule": {k: len(v) for k, v in sched.get("by_rule", {}).items()}}
        row["edgekit_over_ort"] = row["edgekit_ms"] / row["ort_ms"]
        print(f"{name:22s} edgekit {row['edgekit_ms']:8.2f} ms  ORT {row['ort_ms']:8.2f} ms  torch "
              f"{row['torch_ms']:8.2f} ms  ratio {row['edgekit_over_ort']:5.2f}  compile {compile_s:.0f} s  "
              f"err {err:.1e}  unscheduled {row['unscheduled']}", flush=True)
        rows.append(row)
    return rows


def _markdown(result) -> str:
    m = result["machine"]
    lines = ["# Conv kernels: edgekit default schedules vs ONNX Runtime", "",
             f"Host: {m['cpu_model']} (`mcpu={m['mcpu']}`, ISA {m['isa']}, {m['vector_bits']}-bit vectors), "
             f"1 thread, batch 1, medians of interleaved rounds. `python tools/bench_conv_kernels.py`.", ""]
    if result.get("kernels"):
        base = any("unscheduled_ms" in r for r in result["kernels"])
        lines += ["| kernel (conv + ReLU) | rule | edgekit ms | ORT ms | edgekit / ORT | GFLOP/s |"
                  + (" unscheduled ms |" if base else ""),
                  "|---|---|---:|---:|---:|---:|" + ("---:|" if base else "")]
        for r in result["kernels"]:
            lines.append(f"| {r['kernel']} | {r['rule']} | {r['edgekit_ms']:.3f} | {r['ort_ms']:.3f} | "
                         f"{r['edgekit_over_ort']:.2f} | {r['gflops']:.0f} |"
                         + (f" {r['unscheduled_ms']:.1f} |" if base else ""))
        lines.append("")
    if result.get("models"):
        lines += ["| model | torch eager ms | ORT ms | edgekit default ms | edgekit / ORT | compile s | unscheduled |",
                  "|---|---:|---:|---:|---:|---:|---|"]
        for r in result["models"]:
            lines.append(f"| {r['model']} | {r['torch_ms']:.2f} | {r['ort_ms']:.2f} | {r['edgekit_ms']:.2f} | "
                         f"{r['edgekit_over_ort']:.2f} | {r['compile_s']:.0f} | {', '.join(r['unscheduled']) or '-'} |")
        ratios = [r["edgekit_over_ort"] for r in result["models"]]
        lines.append(f"| geometric mean | | | | {statistics.geometric_mean(ratios):.2f} | | |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernels-only", action="store_true")
    parser.add_argument("--models-only", action="store_true")
    parser.add_argument("--baseline", action="store_true", help="also time TVM's unscheduled kernel")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    path = args.out / "bench_conv_kernels.json"
    result = json.loads(path.read_text()) if path.exists() else {}  # a partial run keeps the other half
    result.update(machine=_host_isa(), date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    args.out.mkdir(parents=True, exist_ok=True)

    def save():
        path.write_text(json.dumps(result, indent=2) + "\n")
        (args.out / "bench_conv_kernels.md").write_text(_markdown(result))

    if not args.models_only:
        result["kernels"] = bench_kernels(args.baseline)
        save()
    if not args.kernels_only:
        result["models"] = bench_models()
        save()
    print(_markdown(result))


if __name__ == "__main__":
    main()
