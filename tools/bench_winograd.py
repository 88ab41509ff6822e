"""3x3 conv layers: edgekit's Winograd path against its direct conv and ONNX Runtime, one thread, one run.

    python tools/bench_winograd.py [--out tools/results/bench_winograd]

Each row is one NHWC conv2d 3x3 stride 1 pad 1 + bias + ReLU with random weights, built the way
edgekit builds a model for the host (graph passes, fusion, default schedules), once with Winograd
(``optimize_graph(winograd=True)``: what every x86 build does where the cost model takes the conv)
and once without, and timed as a whole (every kernel of the layer) in this process.  ONNX Runtime
runs the same conv + ReLU (NCHW, its native layout).  Rounds interleave the three; medians.
Layers: ResNet-18's four stages at 224, VGG-16-style and YOLO-style wide maps, and pruned widths
off the power-of-two grid.  Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TVM_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

# name, (channels in, channels out, height = width)
LAYERS = [
    ("resnet18 layer1 64->64 56x56", (64, 64, 56)),
    ("resnet18 layer2 128->128 28x28", (128, 128, 28)),
    ("resnet18 layer3 256->256 14x14", (256, 256, 14)),
    ("resnet18 layer4 512->512 7x7", (512, 512, 7)),
    ("vgg16 block2 128->128 112x112", (128, 128, 112)),
    ("yolo-style 32->64 80x80", (32, 64, 80)),
    ("pruned 45->45 28x28", (45, 45, 28)),
    ("pruned 24->40 56x56", (24, 40, 56)),
    ("small 16->16 56x56", (16, 16, 56)),
]
ROUNDS = 7


def build_layer(spec, winograd: bool):
    """(VM, input, kernel names, the conv's Winograd tile or None) for conv 3x3 + bias + ReLU."""
    from tvm import relax

    from edgekit.compile import build
    from edgekit.compile.tvm_env import import_tvm
    from edgekit.compile.winograd import match_winograd_conv
    from edgekit.targets import load_target

    tvm = import_tvm()
    c, k, hw = spec
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((3, 3, c, k)) / np.sqrt(9 * c)).astype("float32")
    bias = rng.standard_normal((1, 1, 1, k)).astype("float32")
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, hw, hw, c), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            conv = relax.op.nn.conv2d(x, relax.const(weight), padding=[1, 1, 1, 1], data_layout="NHWC",
                                      kernel_layout="HWIO", out_layout="NHWC")
            tile = match_winograd_conv(conv)
            y = bb.emit(relax.op.nn.relu(relax.op.add(bb.emit(conv), relax.const(bias))))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    target = build.resolve_tvm_target(load_target("host"))
    mod = build.optimize_graph(bb.get(), target, winograd=winograd)
    with target:
        executable = tvm.compile(mod, target, relax_pipeline=build.cpu_pipeline(target))
    vm = relax.VirtualMachine(executable, tvm.cpu())
    data = tvm.runtime.tensor(rng.standard_normal((1, hw, hw, c)).astype("float32"))
    names = sorted(gv.name_hint for gv, f in mod.functions_items() if not isinstance(f, relax.Function))
    reference = _reference(weight, bias, data.numpy())
    error = float(np.abs(vm["main"](data).numpy() - reference).max() / np.abs(reference).max())
    return vm, data, names, (tile.m if tile is not None and winograd else None), error


def _reference(weight, bias, x):
    import torch

    conv = torch.nn.functional.conv2d(torch.from_numpy(x).permute(0, 3, 1, 2).double(),
                                      torch.from_numpy(weight).permute(3, 2, 0, 1).double(), padding=1)
    return torch.relu(conv.permute(0, 2, 3, 1) + torch.from_numpy(bias).double()).numpy()


def onnx_layer(spec):
    from bench_conv_kernels import _onnx_conv_session

    c, k, hw = spec
    return _onnx_conv_session((c, k, 3, hw, 1, 1, 1))


def _timed_ms(fn, inner: int) -> float:
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - t0) * 1e3 / inner


def bench_layer(label, spec) -> dict:
    direct_vm, data, direct_names, _, direct_error = build_layer(spec, winograd=False)
    wino_vm, _, wino_names, tile, wino_error = build_layer(spec, winograd=True)
    runs = {"direct": lambda: direct_vm["main"](data), "winograd": lambda: wino_vm["main"](data),
            "ort": onnx_layer(spec)}
    for run in runs.values():
        run()
    inner = max(1, int(0.05 / max(_timed_ms(runs["direct"], 1) / 1e3, 1e-5)))
    samples = {name: [] for name in runs}
    for _ in range(ROUNDS):
        for name, run in runs.items():
            samples[name].append(_timed_ms(run, inner))
    row = {"layer": label, "in": spec[0], "out": spec[1], "hw": spec[2], "winograd_tile": tile,
           "kernels_direct": direct_names, "kernels_winograd": wino_names,
           "relative_error_direct": direct_error, "relative_error_winograd": wino_error}
    for name, values in samples.items():
        row[f"{name}_ms"] = statistics.median(values)
    row["direct_over_winograd"] = row["direct_ms"] / row["winograd_ms"]
    row["winograd_over_ort"] = row["winograd_ms"] / row["ort_ms"]
    row["direct_over_ort"] = row["direct_ms"] / row["ort_ms"]
    return row


def markdown(result) -> str:
    isa = result["host"]
    lines = [f"# Winograd 3x3 convs: edgekit Winograd vs direct vs ONNX Runtime ({isa['cpu_model']}, ISA "
             f"{isa['isa']}, mcpu {isa['mcpu']}, {isa['vector_bits']}-bit vectors), 1 thread, batch 1", "",
             f"One run of `python tools/bench_winograd.py` ({result['started']}, {result['minutes']:.0f} min, load "
             f"average {result['load'][0]:.1f} at start). Each layer: conv 3x3 stride 1 pad 1 + bias + ReLU, NHWC, "
             "random weights; every kernel of the layer timed together in-process; medians of "
             f"{ROUNDS} interleaved rounds. Tile: the F(m x m, 3 x 3) the cost model chose (edgekit.compile.winograd), "
             "- where it keeps the conv direct (the Winograd column then is the direct conv again).", "",
             "| layer | tile | direct ms | Winograd ms | ORT ms | direct / Winograd | Winograd / ORT | error |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in result["layers"]:
        tile = f"F({r['winograd_tile']}x{r['winograd_tile']})" if r["winograd_tile"] else "-"
        lines.append(f"| {r['layer']} | {tile} | {r['direct_ms']:.3f} | {r['winograd_ms']:.3f} | {r['ort_ms']:.3f} | "
                     f"**{r['direct_over_winograd']:.2f}** | {r['winograd_over_ort']:.2f} | "
                     f"{r['relative_error_winograd']:.1e} |")
    taken = [r for r in result["layers"] if r["winograd_tile"]]
    if taken:
        gm = float(np.exp(np.mean([np.log(r["direct_over_winograd"]) for r in taken])))
        lines += ["", f"Geometric mean speed-up over direct on the {len(taken)} layers Winograd takes: **{gm:.2f}x**. "
                  "Error: max |Winograd - float64 reference| / max |reference|."]
    return "\n".join(lines) + "\n"


def main() -> None:
    from bench_conv_kernels import _host_isa

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="tools/results/bench_winograd")
    parser.add_argument("--layers", default="", help="only layers whose name contains this")
    args = parser.parse_args()
    started = time.time()
    result = {"host": _host_isa(), "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
              "load": list(os.getloadavg()), "layers": []}
    for label, spec in LAYERS:
        if args.layers and args.layers not in label:
            continue
        row = bench_layer(label, spec)
        print(f"{label}: direct {row['direct_ms']:.3f} ms, winograd {row['winograd_ms']:.3f} ms "
              f"(F{row['winograd_tile']}), ort {row['ort_ms']:.3f} ms", flush=True)
        result["layers"].append(row)
    result["minutes"] = (time.time() - started) / 60
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
