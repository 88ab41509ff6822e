"""Per-kernel and end-to-end speed of edgekit's dense/reduction schedules vs ONNX Runtime and torch.

Each kernel is a one-op torch module, built three ways in one process: edgekit with its
default schedules, TVM's naive loops (no rule), and ONNX Runtime on the same op exported to
ONNX.  1 thread everywhere.  Rounds are interleaved and medians taken, because the machine
is shared: compare the ratios, not the absolute times.

    python tools/bench_dense_kernels.py            # writes tools/results/bench_dense_kernels.{json,md}
    python tools/bench_dense_kernels.py --only gemm --rounds 3
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TVM_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

torch.set_num_threads(1)


class Matmul(nn.Module):
    def forward(self, a, b):
        return a @ b


class ScoresNT(nn.Module):
    """q @ k^T as attention writes it."""

    def forward(self, q, k):
        return q @ k.transpose(-2, -1)


class Softmax(nn.Module):
    def forward(self, x):
        return torch.softmax(x, dim=-1)


class GlobalAvgPool(nn.Module):
    """NCHW in; edgekit's layout pass makes it NHWC, as a CNN head sees it."""

    def forward(self, x):
        return x.mean(dim=(2, 3))


class LinearGelu(nn.Module):
    def __init__(self, k, n):
        super().__init__()
        self.fc = nn.Linear(k, n)

    def forward(self, x):
        return nn.functional.gelu(self.fc(x))


class EncoderBlock(nn.Module):
    """nn.TransformerEncoderLayer(192, 3, 768, GELU, batch_first, norm_first) written out of
    nn.Linear / LayerNorm / softmax / matmul (the .pt2 import of the nn.MultiheadAttention
    version is another helper's fix).  Same weights layout, same math."""

    def __init__(self, dim=192, heads=3, ff=768):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.ff1, self.ff2 = nn.Linear(dim, ff), nn.Linear(ff, dim)

    def forward(self, x):
        b, n, d = x.shape
        h = self.heads
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4)
        att = torch.softmax((q @ k.transpose(-2, -1)) * (d // h) ** -0.5, dim=-1)
        x = x + self.out((att @ v).transpose(1, 2).reshape(b, n, d))
        return x + self.ff2(nn.functional.gelu(self.ff1(self.norm2(x))))


def kernels():
    """name -> (module, input shapes)."""
    torch.manual_seed(0)
    return {
        "gemv_linear_1x1280_1000": (nn.Linear(1280, 1000), [(1, 1280)]),
        "gemv_linear_1x1024_1000": (nn.Linear(1024, 1000), [(1, 1024)]),  # MobileNetV3-Small's classifier
        "gemm_qkv_197x192x576": (nn.Linear(192, 576), [(197, 192)]),
        "gemm_mlp1_gelu_197x192x768": (LinearGelu(192, 768), [(197, 192)]),
        "gemm_mlp2_197x768x192": (nn.Linear(768, 192), [(197, 768)]),
        "bmm_scores_3x197x64x197": (ScoresNT(), [(3, 197, 64), (3, 197, 64)]),
        "bmm_probs_v_3x197x197x64": (Matmul(), [(3, 197, 197), (3, 197, 64)]),
        "layernorm_197x192": (nn.LayerNorm(192), [(1, 197, 192)]),
        "softmax_3x197x197": (Softmax(), [(1, 3, 197, 197)]),
        "global_avgpool_7x7x1280": (GlobalAvgPool(), [(1, 1280, 7, 7)]),
        "maxpool_3x3s2_112x112x64": (nn.MaxPool2d(3, 2, padding=1), [(1, 64, 112, 112)]),
    }


def end_to_end():
    from edgekit.testing.models import build

    torch.manual_seed(0)
    block, _ = build("transformer")
    return {
        "encoder_block_vit_tiny_197x192": (EncoderBlock().eval(), [(1, 197, 192)]),
        "edgekit_testing_transformer_16x64": (block, [(1, 16, 64)]),
    }


def build_tvm(module, shapes, *, scheduled: bool):
    """(vm callable, schedule log) for the module on the host target, with or without edgekit's rules."""
    import tvm
    from tvm import relax

    from edgekit.compile.build import cpu_pipeline, optimize_graph, resolve_tvm_target
    from edgekit.compile.frontend import import_model
    from edgekit.compile.schedules import ScheduleLog
    from edgekit.targets import load_target

    imported = import_model(module, input_shapes=shapes)
    target = resolve_tvm_target(load_target("host"))
    mod = optimize_graph(imported.mod, target)
    log = ScheduleLog()
    with target:
        if scheduled:
            pipeline = cpu_pipeline(target, schedule_log=log)
        else:
            pipeline = relax.get_default_pipeline(target)
        exe = tvm.compile(mod, target, relax_pipeline=pipeline)
    vm = relax.VirtualMachine(exe, tvm.cpu())
    return vm, log


def ort_session(module, inputs):
    import onnxruntime

    buffer = io.BytesIO()
    names = [f"x{n}" for n in range(len(inputs))]
    torch.onnx.export(module, tuple(torch.from_numpy(x) for x in inputs), buffer, dynamo=False, opset_version=17,
                      input_names=names)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
    feed = dict(zip(names, inputs))
    return lambda: session.run(None, feed)


def timer(fn, min_seconds=0.05):
    """Median seconds of one call, over enough calls to fill min_seconds."""
    fn()
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-7)
    number = max(1, int(min_seconds / once / 5))
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        samples.append((time.perf_counter() - start) / number)
    return statistics.median(samples)


def _output(vm, args):
    got = vm["main"](*args)
    return got.numpy() if hasattr(got, "numpy") else got[0].numpy()


def _rel_error(got, expected) -> float:
    return float(np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-12))


def prepare(name, module, shapes, naive: bool) -> dict:
    """Everything for one kernel except the fast-math build: the callables to time, the log."""
    import tvm

    module = module.eval()
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal(s).astype("float32") for s in shapes]
    with torch.no_grad():
        expected = module(*[torch.from_numpy(x) for x in inputs]).numpy()
    args = [tvm.runtime.tensor(x) for x in inputs]
    vm, log = build_tvm(module, shapes, scheduled=True)
    case = {"name": name, "module": module, "shapes": shapes, "args": args, "expected": expected, "log": log,
            "error": _rel_error(_output(vm, args), expected), "candidates": {"edgekit": lambda: vm["main"](*args)}}
    if naive:
        vm0, _ = build_tvm(module, shapes, scheduled=False)
        case["candidates"]["tvm_naive"] = lambda: vm0["main"](*args)
    case["candidates"]["ort"] = ort_session(module, inputs)
    tensors = [torch.from_numpy(x) for x in inputs]

    def eager():
        with torch.no_grad():
            module(*tensors)

    case["candidates"]["torch"] = eager
    return case


def add_fast_math(case) -> None:
    """The same build after edgekit.compile.schedules.fast_math.enable() (process-wide, so last)."""
    vm, _ = build_tvm(case["module"], case["shapes"], scheduled=True)
    args = case["args"]
    case["fast_error"] = _rel_error(_output(vm, args), case["expected"])
    case["candidates"]["edgekit_fastmath"] = lambda: vm["main"](*args)


def measure(case, rounds) -> dict:
    candidates = case["candidates"]
    times = {k: [] for k in candidates}
    for _ in range(rounds):
        for key, fn in candidates.items():
            times[key].append(timer(fn))
    ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    row = {"kernel": case["name"], "ms": ms, "edgekit_over_ort": ms["edgekit"] / ms["ort"],
           "max_rel_error": case["error"], "schedules": case["log"].to_dict()}
    if "edgekit_fastmath" in ms:
        row["fastmath_over_ort"] = ms["edgekit_fastmath"] / ms["ort"]
        row["fastmath_max_rel_error"] = case["fast_error"]
    print(f"{case['name']:40s} " + " ".join(f"{k}={v:.4f}ms" for k, v in ms.items())
          + f"  edgekit/ort={row['edgekit_over_ort']:.2f}  err={case['error']:.1e}  "
          f"unscheduled={case['log'].unscheduled}", flush=True)
    return row


def machine() -> dict:
    import tvm

    from edgekit.compile.build import resolve_tvm_target
    from edgekit.compile.schedules import cpu_info
    from edgekit.targets import load_target

    cpu_name = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu_name = line.split(":", 1)[1].strip()
            break
    target = resolve_tvm_target(load_target("host"))
    info = cpu_info(target)
    import onnxruntime

    return {"cpu": cpu_name, "isa": info.isa, "mcpu": info.mcpu, "f32_lanes": info.f32_lanes,
            "cores": os.cpu_count(), "machine": platform.machine(), "threads": 1,
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "tvm": tvm.__version__,
            "load_average_start": os.getloadavg(),
            "note": "2 cores shared with other agents' builds and tests: absolute times are noisy; ratios "
                    "come from interleaved rounds in one process (medians)"}


def markdown(doc) -> str:
    m = doc["machine"]
    lines = ["# Dense / reduction kernels: edgekit default schedules vs ONNX Runtime", "",
             f"{m['cpu']}, ISA {m['isa']} (mcpu {m['mcpu']}, {m['f32_lanes']} f32 lanes), 1 thread, "
             f"TVM {m['tvm']}, ORT {m['onnxruntime']}, torch {m['torch']}. {m['note']}.", "",
             "edgekit = what edgekit ships today (default schedules). +fastmath = the same build after "
             "edgekit.compile.schedules.fast_math.enable() (exp and erf lowered to vectorizable polynomials "
             "instead of scalar libm calls), a proposed change to edgekit.compile.build.", "",
             "| kernel | edgekit ms | +fastmath ms | ORT ms | torch ms | TVM naive ms | edgekit / ORT | "
             "+fastmath / ORT | max rel err (+fastmath) | rules |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for row in doc["rows"]:
        ms = row["ms"]
        naive = f"{ms['tvm_naive']:.4f}" if "tvm_naive" in ms else "-"
        rules = ", ".join(sorted(row["schedules"]["by_rule"]))
        if row["schedules"]["unscheduled"]:
            rules += f"; unscheduled: {', '.join(row['schedules']['unscheduled'])}"
        fast = f"{ms['edgekit_fastmath']:.4f}" if "edgekit_fastmath" in ms else "-"
        fast_ratio = f"{row['fastmath_over_ort']:.2f}" if "fastmath_over_ort" in row else "-"
        fast_err = f" ({row['fastmath_max_rel_error']:.1e})" if "fastmath_max_rel_error" in row else ""
        lines.append(f"| {row['kernel']} | {ms['edgekit']:.4f} | {fast} | {ms['ort']:.4f} | {ms['torch']:.4f} | "
                     f"{naive} | {row['edgekit_over_ort']:.2f} | {fast_ratio} | {row['max_rel_error']:.1e}{fast_err} | "
                     f"{rules} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", default="", help="substring of the kernel names to run")
    parser.add_argument("--no-naive", action="store_true", help="skip the unscheduled TVM build (slow kernels)")
    parser.add_argument("--no-fast-math", action="store_true", help="skip the fast exp/erf column")
    parser.add_argument("--out", default=str(ROOT / "tools" / "results" / "bench_dense_kernels"))
    args = parser.parse_args()
    doc = {"machine": machine(), "rows": []}
    cases = [prepare(name, module, shapes, naive=not args.no_naive)
             for name, (module, shapes) in {**kernels(), **end_to_end()}.items()
             if not args.only or args.only in name]
    if not args.no_fast_math:
        from edgekit.compile.schedules import fast_math

        fast_math.enable()
        for case in cases:
            add_fast_math(case)
    doc["rows"] = [measure(case, args.rounds) for case in cases]
    if not args.only:
        Path(args.out + ".json").write_text(json.dumps(doc, indent=2) + "\n")
        Path(args.out + ".md").write_text(markdown(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
