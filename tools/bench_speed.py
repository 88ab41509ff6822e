#!/usr/bin/env python3
"""How fast edgekit's compiled models are, side by side with torch eager and ONNX Runtime.

One process, one run: the zoo CNN (zoo:fmnist-resnet, 1x1x28x28) and the architecture set of
edgekit.testing.models (mobilenetv2, resnet, transformer), batch 1, 1 and 2 threads:

    torch eager | ONNX Runtime | edgekit untuned | edgekit tuned | edgekit int8

median and p90 latency (ms) and the ratio of each median to ONNX Runtime's.  Tuning starts
from an empty database (a temporary $EDGEKIT_CACHE), so the tuning time stated is the whole
cost; its trial budget and time are in the table.  edgekit numbers come from
``edgekit.run.run_artifact`` (the runner a device gets, in its own process); torch and ORT are
timed in this process.  Samples are taken in interleaved rounds so that load from other
processes on a shared machine falls on every runtime alike.

    python tools/bench_speed.py                      # the committed numbers (about 45 min here)
    python tools/bench_speed.py --quick              # a smoke run: tiny budgets, one model
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

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = ("torch", "ort", "untuned", "tuned", "int8")
LABELS = {"torch": "torch eager", "ort": "ONNX Runtime", "untuned": "edgekit untuned", "tuned": "edgekit tuned",
          "int8": "edgekit int8"}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(samples, q):
    return float(np.percentile(np.asarray(samples), q))


class RandomCalibration:
    """Calibration data for the architecture models (no data set matches their inputs)."""

    def __init__(self, shape, n: int = 64):
        import torch

        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, *shape[1:], generator=generator)

    def batches(self, batch_size):
        for i in range(0, len(self.x), batch_size):
            yield self.x[i:i + batch_size], None


def models(quick: bool):
    from edgekit.data.zoo import load_zoo_model
    from edgekit.testing.models import ARCHITECTURES, build

    yield "zoo:fmnist-resnet", load_zoo_model("fmnist-resnet").eval(), (1, 1, 28, 28)
    if quick:
        return
    for name in ARCHITECTURES:
        model, shape = build(name)
        yield name, model, shape


def calibration_for(name, shape):
    if name.startswith("zoo:"):
        from edgekit.data.datasets import load_dataset

        return load_dataset("fashion-mnist", "train", limit=512)
    return RandomCalibration(shape)


def onnx_session(model, example, threads):
    import onnxruntime
    import torch

    buffer = io.BytesIO()
    torch.onnx.export(model, (example,), buffer, dynamo=False, opset_version=17)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])


def bench_model(name, model, shape, args, out_dir: Path) -> dict:
    import torch

    from edgekit.compile import compile_model
    from edgekit.compile.tune import tune_model
    from edgekit.compress.quantize import QuantizeConfig, quantize_model
    from edgekit.measure.stats import time_calls
    from edgekit.run import run_artifact

    result = {"model": name, "input_shape": list(shape), "tuning": {}, "latency": {}, "notes": []}
    example = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    budgets = args.zoo if name.startswith("zoo:") else args.arch
    trials, budget_s = budgets

    log(f"{name}: compile untuned")
    started = time.monotonic()
    untuned = compile_model(model, "host", input_shapes=[shape], out_dir=out_dir, tuning=False)
    result["compile_untuned_s"] = round(time.monotonic() - started, 1)

    log(f"{name}: tune fp32 ({trials} trials, budget {budget_s} s)")
    report = tune_model(model, "host", trials=trials, time_budget_s=budget_s, input_shapes=[shape], log=log)
    result["tuning"]["fp32"] = _tuning_summary(report)
    started = time.monotonic()
    tuned = compile_model(model, "host", input_shapes=[shape], out_dir=out_dir)
    result["compile_tuned_s"] = round(time.monotonic() - started, 1)
    result["tuned_kernels"] = tuned.manifest.get("tuning", {}).get("kernels_tuned", 0)

    int8 = None
    try:
        log(f"{name}: quantize int8 and compile")
        quantized = quantize_model(model, calibration_for(name, shape), QuantizeConfig(calibration_size=512))
        with torch.no_grad():
            fake_quant_out = quantized(example).numpy()
            float_out = model(example).numpy()
        int8_trials, int8_budget_s = args.int8 if name.startswith("zoo:") else (0, 0)
        if int8_trials:
            log(f"{name}: tune int8 ({int8_trials} trials, budget {int8_budget_s} s)")
            report8 = tune_model(quantized, "host", trials=int8_trials, time_budget_s=int8_budget_s,
                                 input_shapes=[shape], log=log)
            result["tuning"]["int8"] = _tuning_summary(report8)
        # The int8 kernels are exact integer arithmetic; torch's fake quantization rounds its float
        # sums differently, so an activation at a .5 boundary can land one step apart: looser atol.
        try:
            int8 = compile_model(quantized, "host", input_shapes=[shape], out_dir=out_dir, tolerance={"atol": 0.25},
                                 tuning="auto" if int8_trials else False)
        except Exception as exc:
            result["notes"].append(f"int8 with tuning records failed to compile ({type(exc).__name__}: {exc}); "
                                   "measured with default schedules")
            result["tuning"].pop("int8", None)
            int8 = compile_model(quantized, "host", input_shapes=[shape], out_dir=out_dir, tolerance={"atol": 0.25},
                                 tuning=False)
        result["int8_library_bytes"] = (int8.path / "model.so").stat().st_size
        result["fp32_library_bytes"] = (tuned.path / "model.so").stat().st_size
        result["int8_vs_float_model_max_abs"] = float(np.abs(fake_quant_out - float_out).max())

    except Exception as exc:  # the float results still count
        log(f"{name}: int8 failed: {type(exc).__name__}: {exc}")
        result["notes"].append(f"int8 failed: {type(exc).__name__}: {str(exc)[:500]}")
    artifacts = {"untuned": untuned, "tuned": tuned, **({"int8": int8} if int8 is not None else {})}
    for threads in args.threads:
        torch.set_num_threads(threads)
        session = onnx_session(model, example, threads)
        feed = {session.get_inputs()[0].name: example.numpy()}
        samples = {v: [] for v in VARIANTS if v in ("torch", "ort") or v in artifacts}
        checks = {}
        per_round = max(1, args.repeats // args.rounds)
        for round_index in range(args.rounds):
            with torch.no_grad():
                samples["torch"] += time_calls(lambda: model(example), args.warmup, per_round)
            samples["ort"] += time_calls(lambda: session.run(None, feed), args.warmup, per_round)
            for variant, artifact in artifacts.items():
                report_ = run_artifact(artifact, warmup=args.warmup, repeats=per_round, threads=threads,
                                       check_outputs=False)
                samples[variant] += report_.samples_ms
                checks[variant] = report_.output_check
        ort_median = percentile(samples["ort"], 50)
        result["latency"][str(threads)] = {
            v: {"median_ms": round(percentile(s, 50), 4), "p90_ms": round(percentile(s, 90), 4),
                "samples": len(s), "ratio_to_ort": round(percentile(s, 50) / ort_median, 2)}
            for v, s in samples.items()}
        result.setdefault("output_check", {}).update(
            {v: {"passed": c["passed"], "max_abs_error": c["max_abs_error"]} for v, c in checks.items()})
        log(f"{name} threads={threads}: " + ", ".join(
            f"{v} {row['median_ms']:.3f} ms" for v, row in result["latency"][str(threads)].items()))
    return result


def _tuning_summary(report) -> dict:
    return {"trials_run": report.trials_run, "trials_ok": report.trials_ok, "tuning_s": round(report.tuning_s, 1),
            "stopped_by": report.stopped_by, "tasks": len(report.tasks),
            "tasks_tuned": sum(1 for t in report.tasks if t.best_us is not None),
            "estimated_kernels_us": report.estimated_us}


def machine() -> dict:
    import onnxruntime
    import torch

    import tvm

    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    flags = Path("/proc/cpuinfo").read_text()
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni") if f" {f}" in flags]
    return {"cpu": cpu, "isa": isa, "cores": os.cpu_count(), "machine": platform.machine(),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "load_average_start": os.getloadavg(), "python": platform.python_version(),
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "tvm": tvm.__version__,
            "note": "2 cores shared with 3 other agents' builds and tests while this ran: absolute numbers are "
                    "noisy, ratios are taken within interleaved rounds"}


def markdown(doc: dict) -> str:
    m = doc["machine"]
    lines = [f"# edgekit speed: {m['cpu']} ({', '.join(m['isa'])}), {m['cores']} cores, batch 1",
             "",
             f"One run of `tools/bench_speed.py` ({doc['started']}, {doc['wall_s'] / 60:.0f} min). "
             f"{m['note']}; load average at start {m['load_average_start'][0]:.1f}, "
             f"at end {doc['load_average_end'][0]:.1f}. torch {m['torch']}, ONNX Runtime {m['onnxruntime']}, "
             f"TVM {m['tvm']}.",
             "",
             "Median / p90 in ms; **ratio** = median / ONNX Runtime's median (<= 1.00: edgekit at least as fast).",
             ""]
    for result in doc["models"]:
        tuning = result["tuning"]["fp32"]
        lines.append(f"## {result['model']} (input {'x'.join(map(str, result['input_shape']))})")
        lines.append("")
        lines.append(f"Tuned: {tuning['trials_run']} trials ({tuning['trials_ok']} ok), {tuning['tuning_s']:.0f} s "
                     f"of tuning from an empty database, {result['tuned_kernels']} of {tuning['tasks']} kernels "
                     f"tuned, stopped by {tuning['stopped_by']}; a compile with the database took "
                     f"{result['compile_tuned_s']} s (no tuning).")
        if "int8" in result["tuning"]:
            t8 = result["tuning"]["int8"]
            lines.append(f"Int8 tuned: {t8['trials_run']} trials, {t8['tuning_s']:.0f} s.")
        else:
            lines.append("Int8: integer kernels with TVM's default schedules (not tuned).")
        if "int8" in result.get("output_check", {}):
            lines.append(f"Int8 library {result['int8_library_bytes']} bytes vs fp32 {result['fp32_library_bytes']}; "
                         f"output check vs the fake-quantized torch model: max abs error "
                         f"{result['output_check']['int8']['max_abs_error']:.3g}.")
        lines += [f"Note: {note}" for note in result.get("notes", [])]
        lines.append("")
        lines.append("| threads | " + " | ".join(LABELS[v] for v in VARIANTS) + " |")
        lines.append("|---:|" + "---:|" * len(VARIANTS))
        for threads, row in result["latency"].items():
            cells = [f"{row[v]['median_ms']:.3f} / {row[v]['p90_ms']:.3f} (**{row[v]['ratio_to_ort']:.2f}**)"
                     if v in row else "failed" for v in VARIANTS]
            lines.append(f"| {threads} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += doc.get("summary", [])
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo-trials", type=int, default=240)
    parser.add_argument("--zoo-budget-s", type=float, default=1200)
    parser.add_argument("--int8-trials", type=int, default=64)
    parser.add_argument("--int8-budget-s", type=float, default=300)
    parser.add_argument("--arch-trials", type=int, default=32)
    parser.add_argument("--arch-budget-s", type=float, default=150)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="tiny budgets, the zoo model only")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_speed")
    args = parser.parse_args()
    if args.quick:
        args.zoo_trials, args.zoo_budget_s, args.int8_trials, args.int8_budget_s = 8, 60, 4, 30
        args.repeats, args.rounds = 30, 1
    args.zoo = (args.zoo_trials, args.zoo_budget_s)
    args.int8 = (args.int8_trials, args.int8_budget_s)
    args.arch = (args.arch_trials, args.arch_budget_s)

    work = Path(tempfile.mkdtemp(prefix="edgekit-bench-speed-"))
    os.environ["EDGEKIT_CACHE"] = str(work / "cache")  # tuning starts from nothing
    started = time.time()
    doc = {"started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)), "machine": machine(),
           "args": {k: v for k, v in vars(args).items() if k not in ("out",)}, "models": []}
    for name, model, shape in models(args.quick):
        try:
            doc["models"].append(bench_model(name, model, shape, args, work / "artifacts"))
        except Exception as exc:  # keep what was measured; say what failed
            log(f"{name}: FAILED {type(exc).__name__}: {exc}")
            doc.setdefault("failures", []).append({"model": name, "error": f"{type(exc).__name__}: {exc}"[:2000]})
        doc["wall_s"] = round(time.time() - started, 1)
        doc["load_average_end"] = os.getloadavg()
        _write(doc, args.out)
    log(f"done in {(time.time() - started) / 60:.1f} min: {args.out}.json / .md")
    return 0


def _write(doc, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    out.with_suffix(".md").write_text(markdown(doc))


if __name__ == "__main__":
    sys.exit(main())
