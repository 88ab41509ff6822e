#!/usr/bin/env python3
"""Latency of the bundled CNN on this machine: edgekit's TVM artifact vs torch eager vs ONNX Runtime.

All three are measured in one run, batch 1, the same thread count, the same
number of kept samples after the same warm-up; the table reports each one's
median and p90 and its ratio to ONNX Runtime.  Writes JSON and a markdown table.

    python tools/bench_runtimes.py [--model zoo:fmnist-resnet] [--threads 1] [--repeats 200]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path


RESULTS = Path(__file__).resolve().parent / "results"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="zoo:fmnist-resnet")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_runtimes")
    args = parser.parse_args()

    import onnxruntime
    import torch

    from edgekit.compile import compile_model
    from edgekit.data.zoo import load_zoo_model, zoo_entry
    from edgekit.measure.stats import summarize, time_calls
    from edgekit.run import run_artifact

    torch.set_num_threads(args.threads)
    name = args.model.removeprefix("zoo:")
    model = load_zoo_model(name)
    shape = (1, *zoo_entry(name).input_shape)
    example = torch.randn(*shape, generator=torch.Generator().manual_seed(0))

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        artifact = compile_model(model, "host", input_shapes=[shape], out_dir=tmp, tuning=False)
        compile_s = time.perf_counter() - started
        tvm_report = run_artifact(artifact, warmup=args.warmup, repeats=args.repeats, threads=args.threads)

    with torch.no_grad():
        torch_samples = time_calls(lambda: model(example), args.warmup, args.repeats)

    buffer = io.BytesIO()
    torch.onnx.export(model, (example,), buffer, dynamo=False, opset_version=17)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: example.numpy()}
    ort_samples = time_calls(lambda: session.run(None, feed), args.warmup, args.repeats)

    rows = {
        "edgekit (TVM, default pipeline, untuned)": tvm_report.stats,
        "torch eager": summarize(torch_samples),
        "ONNX Runtime": summarize(ort_samples),
    }
    ort_median = rows["ONNX Runtime"]["median_ms"]
    result = {
        "model": args.model, "input_shape": list(shape), "threads": args.threads, "warmup": args.warmup,
        "repeats": args.repeats, "compile_s": round(compile_s, 2),
        "tvm_output_check": tvm_report.output_check,
        "machine": {"cpu": tvm_report.device.get("cpu_model"), "cores": os.cpu_count(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "onnxruntime": onnxruntime.__version__, "tvm": tvm_report.device.get("tvm")},
        "results": {k: {**v, "ratio_to_ort": v["median_ms"] / ort_median} for k, v in rows.items()},
        "note": "TVM's default pipeline without tuning; tuning is `edgekit tune` (tools/bench_speed.py).",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# {args.model} on {result['machine']['cpu']} ({args.threads} thread(s), batch 1)", "",
             f"{args.repeats} kept samples after {args.warmup} warm-up runs each, measured in one run.", "",
             "| runtime | median ms | p90 ms | cv | ratio to ORT (median) |", "|---|---:|---:|---:|---:|"]
    for label, stats in result["results"].items():
        lines.append(f"| {label} | {stats['median_ms']:.3f} | {stats['p90_ms']:.3f} | {stats['cv']:.1%} | "
                     f"{stats['ratio_to_ort']:.2f} |")
    lines += ["", result["note"]]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
