#!/usr/bin/env python3
"""How fast edgekit's compiled models are, side by side with torch eager and ONNX Runtime (issue 10).

One process, one run: the zoo CNN (zoo:fmnist-resnet, 1x1x28x28) and the standard edge
architectures of edgekit.testing.architectures at their real resolution (MobileNetV2-1.0,
MobileNetV3-Small, ResNet-18, EfficientNet-Lite0 with its ImageNet weights, ViT-Tiny; 224x224),
batch 1, at each thread count of ``--threads``:

    torch eager | ONNX Runtime | edgekit default | edgekit tuned | edgekit int8

*default* is compile_model with no tuning records (edgekit's default CPU schedules); *tuned*
first tunes the model for ``--tune-budget-s`` seconds from an empty database (a temporary
$EDGEKIT_CACHE); *int8* is edgekit.compress.quantize's post-training quantization (per-channel
weights, calibrated on seeded random inputs) compiled with the default schedules.  All five run
in this process: edgekit artifacts are loaded with the TVM runtime (its thread pool resized per
thread count), and samples are taken in interleaved rounds so that load from other processes on a
shared machine falls on every runtime alike.  Median and p90 in ms, the ratio of each median to
ONNX Runtime's, the compile time of the default build, and a geometric-mean row.

    python tools/bench_speed.py                          # the full run (tuning: 10 min a model)
    python tools/bench_speed.py --models zoo:fmnist-resnet,mobilenetv2 --skip-tuned --repeats 20 \\
        --out tools/results/bench_speed_quick           # a quick run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "tools" / "results"
VARIANTS = ("torch", "ort", "default", "tuned", "int8")
LABELS = {"torch": "torch eager", "ort": "ONNX Runtime", "default": "edgekit default", "tuned": "edgekit tuned",
          "int8": "edgekit int8"}
ZOO_MODEL = "zoo:fmnist-resnet"
CALIBRATION_SIZE = 32
SETTLE_S = 0.2


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(samples, q) -> float:
    return float(np.percentile(np.asarray(samples), q))


def geometric_mean(values) -> float | None:
    values = [v for v in values if v is not None and v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


# ------------------------------------------------------------------------------------------ models

def all_model_names() -> list[str]:
    from edgekit.testing.architectures import ARCHITECTURES

    return [ZOO_MODEL, *ARCHITECTURES]


def load_model(name: str):
    """(model in eval mode, input shape) at the model's real resolution."""
    if name.startswith("zoo:"):
        from edgekit.data.zoo import load_zoo_model, zoo_entry

        return load_zoo_model(name.removeprefix("zoo:")).eval(), (1, *zoo_entry(name.removeprefix("zoo:")).input_shape)
    from edgekit.testing.architectures import build_architecture

    return build_architecture(name)


class SeededCalibration:
    """Calibration batches of seeded normal inputs (the architectures have random weights: no data set fits)."""

    def __init__(self, shape, n: int = CALIBRATION_SIZE):
        import torch

        self.x = torch.randn(n, *shape[1:], generator=torch.Generator().manual_seed(1))

    def batches(self, batch_size):
        for i in range(0, len(self.x), batch_size):
            yield self.x[i:i + batch_size], None


# ------------------------------------------------------------------------------------------ runtimes

def onnx_session(model, example, threads: int):
    import io

    import onnxruntime
    import torch

    buffer = io.BytesIO()
    torch.onnx.export(model, (example,), buffer, dynamo=False, opset_version=17)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])


class LoadedArtifact:
    """An edgekit artifact's library in this process's TVM runtime, with its reference input."""

    def __init__(self, artifact):
        from edgekit.compile.tvm_env import import_tvm

        tvm = import_tvm()
        from tvm.runtime.vm import VirtualMachine

        self.artifact = artifact
        self.vm = VirtualMachine(tvm.runtime.load_module(str(artifact.library_path)), tvm.cpu())
        reference = np.load(artifact.path / artifact.manifest["reference"])
        self.inputs = [tvm.runtime.tensor(reference[f"in{i}"]) for i in range(len(artifact.manifest["inputs"]))]
        self.expected = reference["out0"]

    def __call__(self):
        return self.vm["main"](*self.inputs)

    def relative_error(self) -> float:
        """max |output - reference| / max |reference| (the reference is the model compiled, in torch)."""
        result = self()
        actual = result.numpy() if hasattr(result, "numpy") else result[0].numpy()
        return float(np.abs(actual.astype(np.float64) - self.expected).max() / max(np.abs(self.expected).max(), 1e-12))


def set_tvm_threads(threads: int) -> None:
    # The pool is sized from TVM_NUM_THREADS when the runtime starts (main() sets it to the largest
    # count asked for); config_threadpool then picks how many of its workers a kernel uses.
    from edgekit.compile.tvm_env import import_tvm

    tvm = import_tvm()
    tvm.get_global_func("runtime.config_threadpool")(1, threads)
    actual = tvm.get_global_func("runtime.NumThreads")()
    if actual != threads:
        raise RuntimeError(f"TVM runtime uses {actual} threads, not {threads} (TVM_NUM_THREADS too low?)")


def time_calls(fn, warmup: int, repeats: int) -> list[float]:
    from edgekit.measure.stats import time_calls as _time_calls

    return _time_calls(fn, warmup, repeats)


# ------------------------------------------------------------------------------------------ one model

def bench_model(name: str, args, out_dir: Path) -> dict:
    import torch

    from edgekit.compile import compile_model

    model, shape = load_model(name)
    result = {"model": name, "input_shape": list(shape), "latency": {}, "accuracy": {}, "notes": []}
    example = torch.randn(*shape, generator=torch.Generator().manual_seed(0))

    log(f"{name}: export")
    program = torch.export.export(model, (example,))
    log(f"{name}: compile default")
    started = time.monotonic()
    artifacts = {"default": compile_model(program, "host", out_dir=out_dir, tuning=False)}
    result["compile_default_s"] = round(time.monotonic() - started, 1)
    result["unscheduled_kernels"] = artifacts["default"].manifest.get("schedules", {}).get("unscheduled", [])
    log(f"{name}: default build {result['compile_default_s']} s, "
        f"{len(result['unscheduled_kernels'])} kernels left unscheduled")

    if not args.skip_tuned:
        artifacts["tuned"] = _tuned(name, program, shape, args, out_dir, result)
    if not args.skip_int8:
        artifacts["int8"] = _int8(name, model, example, shape, out_dir, result)
    artifacts = {k: v for k, v in artifacts.items() if v is not None}

    loaded = {variant: LoadedArtifact(a) for variant, a in artifacts.items()}
    for variant, runner in loaded.items():
        result["accuracy"][f"{variant}_relative_error"] = runner.relative_error()

    with torch.no_grad():
        eager = lambda: model(example)  # noqa: E731
        for threads in args.threads:
            torch.set_num_threads(threads)
            set_tvm_threads(threads)
            session = onnx_session(model, example, threads)
            feed = {session.get_inputs()[0].name: example.numpy()}
            runs = {"torch": eager, "ort": lambda: session.run(None, feed), **loaded}
            samples = {variant: [] for variant in runs}
            per_round = max(1, args.repeats // args.rounds)
            for _ in range(args.rounds):  # interleaved: every runtime sees the same load
                for variant, fn in runs.items():
                    # Let the previous runtime's worker threads (OpenMP, ORT and TVM pools spin after
                    # each call) go idle first, or with 2 threads they fight this one for the cores.
                    time.sleep(SETTLE_S)
                    samples[variant] += time_calls(fn, args.warmup, per_round)
            ort_median = percentile(samples["ort"], 50)
            result["latency"][str(threads)] = {
                v: {"median_ms": round(percentile(s, 50), 4), "p90_ms": round(percentile(s, 90), 4),
                    "samples": len(s), "ratio_to_ort": round(percentile(s, 50) / ort_median, 3)}
                for v, s in samples.items()}
            log(f"{name} threads={threads}: " + ", ".join(
                f"{v} {row['median_ms']:.3f} ms" for v, row in result["latency"][str(threads)].items()))
    return result


def _tuned(name, program, shape, args, out_dir, result):
    from edgekit.compile import compile_model
    from edgekit.compile.tune import tune_model

    log(f"{name}: tune for {args.tune_budget_s:.0f} s")
    try:
        # The trial count is only a ceiling: the time budget is what stops the search.
        report = tune_model(program, "host", trials=100_000, time_budget_s=args.tune_budget_s, log=log)
        result["tuning"] = {"trials_run": report.trials_run, "trials_ok": report.trials_ok,
                            "tuning_s": round(report.tuning_s, 1), "stopped_by": report.stopped_by,
                            "tasks": len(report.tasks),
                            "tasks_tuned": sum(1 for t in report.tasks if t.best_us is not None),
                            "knob_variants": sum(k.variants for k in report.knob_search),
                            "knob_records": sum(1 for k in report.knob_search if k.recorded),
                            "kernel_gain_us": round(report.kernel_gain_us, 1)}
        started = time.monotonic()
        tuned = compile_model(program, "host", out_dir=out_dir, tuning="auto")
        result["compile_tuned_s"] = round(time.monotonic() - started, 1)
        result["tuning"]["kernels_applied"] = tuned.manifest.get("tuning", {}).get("kernels_tuned", 0)
        return tuned
    except Exception as exc:  # the other columns still count
        log(f"{name}: tuning failed: {type(exc).__name__}: {exc}")
        result["notes"].append(f"tuned failed: {type(exc).__name__}: {str(exc)[:400]}")
        return None


def _int8(name, model, example, shape, out_dir, result):
    import torch

    from edgekit.compile import compile_model
    from edgekit.compress.quantize import QuantizeConfig, quantize_model

    log(f"{name}: quantize int8 (PTQ, {CALIBRATION_SIZE} seeded inputs) and compile")
    try:
        quantized = quantize_model(model, SeededCalibration(shape), QuantizeConfig(calibration_size=CALIBRATION_SIZE))
        with torch.no_grad():
            fake, real = quantized(example), model(example)
        result["accuracy"]["int8_torch_vs_float_relative"] = float((fake - real).abs().max() / real.abs().max())
        started = time.monotonic()
        # Exact integer kernels vs torch's float fake quantization: a value at a rounding boundary can land
        # one int8 step apart, so the artifact's own check is looser (the relative error is recorded).
        int8 = compile_model(quantized, "host", input_shapes=[shape], example_inputs=[example], out_dir=out_dir,
                             tuning=False, tolerance={"atol": 0.25})
        result["compile_int8_s"] = round(time.monotonic() - started, 1)
        return int8
    except Exception as exc:
        log(f"{name}: int8 failed: {type(exc).__name__}: {exc}")
        result["notes"].append(f"int8 failed: {type(exc).__name__}: {str(exc)[:400]}")
        return None


# ------------------------------------------------------------------------------------------ report

def machine() -> dict:
    import onnxruntime
    import torch

    from edgekit.compile.build import resolve_tvm_target
    from edgekit.compile.schedules import cpu_info
    from edgekit.compile.tvm_env import import_tvm
    from edgekit.targets import load_target

    tvm = import_tvm()
    cpuinfo = Path("/proc/cpuinfo").read_text()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
               platform.processor() or "unknown")
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    target = resolve_tvm_target(load_target("host"))
    info = cpu_info(target)
    return {"cpu": cpu, "isa": info.isa, "mcpu": info.mcpu, "vector_bits": info.vector_bits,
            "cpu_flags": [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni") if f in flags],
            "tvm_target": str(target), "cores": os.cpu_count(), "machine": platform.machine(),
            "load_average_start": os.getloadavg(), "python": platform.python_version(),
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "tvm": tvm.__version__,
            "edgekit_git": _git_head()}


def _git_head() -> str | None:
    import subprocess

    done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or None


def summarize(doc: dict) -> dict:
    """Per thread count, the geometric mean of each variant's ratio to ONNX Runtime over the models."""
    summary = {}
    for threads in doc["args"]["threads"]:
        rows = [m["latency"].get(str(threads), {}) for m in doc["models"]]
        summary[str(threads)] = {v: geometric_mean([r[v]["ratio_to_ort"] for r in rows if v in r])
                                 for v in VARIANTS}
    return summary


def markdown(doc: dict) -> str:
    m = doc["machine"]
    shown = [v for v in VARIANTS if any(v in r for model in doc["models"] for r in model["latency"].values())]
    lines = [f"# edgekit speed: {m['cpu']}, ISA {m['isa']} (mcpu {m['mcpu']}, {m['vector_bits']}-bit vectors), "
             f"batch 1",
             "",
             f"One run of `tools/bench_speed.py {' '.join(doc['argv'])}` ({doc['started']}, "
             f"{doc['wall_s'] / 60:.0f} min, edgekit {m['edgekit_git']}). {m['cores']} cores, load average "
             f"{m['load_average_start'][0]:.1f} at start, {doc['load_average_end'][0]:.1f} at end (a shared "
             f"machine: absolute numbers are noisy, ratios are taken within interleaved rounds). "
             f"torch {m['torch']}, ONNX Runtime {m['onnxruntime']}, TVM {m['tvm']}, Python {m['python']}.",
             "",
             "Median ms (p90) and **ratio** = median / ONNX Runtime's median (<= 1.00: at least as fast). "
             "edgekit default: no tuning records, edgekit's default CPU schedules; compile = the default build, "
             "seconds.", ""]
    if doc["args"]["skip_tuned"]:
        lines.append("Tuned: not run (`--skip-tuned`).")
    if doc["args"]["skip_int8"]:
        lines.append("Int8: not run (`--skip-int8`).")
    for threads in doc["args"]["threads"]:
        lines += ["", f"## {threads} thread{'s' if threads > 1 else ''}", "",
                  "| model | input | " + " | ".join(LABELS[v] for v in shown) + " | compile (s) |",
                  "|---|---|" + "---:|" * (len(shown) + 1)]
        for model in doc["models"]:
            row = model["latency"].get(str(threads), {})
            cells = [f"{row[v]['median_ms']:.3f} ({row[v]['p90_ms']:.3f}) **{row[v]['ratio_to_ort']:.2f}**"
                     if v in row else "-" for v in shown]
            lines.append(f"| {model['model']} | {'x'.join(map(str, model['input_shape'][1:]))} | "
                         + " | ".join(cells) + f" | {model['compile_default_s']:.0f} |")
        means = doc["summary"][str(threads)]
        lines.append("| **geometric mean** (ratio) | | " + " | ".join(
            f"**{means[v]:.2f}**" if means.get(v) else "-" for v in shown) + " | |")
    lines += ["", "## Per model", ""]
    for model in doc["models"]:
        acc = model["accuracy"]
        parts = [f"default vs torch: relative error {acc['default_relative_error']:.1e}"]
        if "tuning" in model:
            t = model["tuning"]
            parts.append(f"tuned: knob search {t.get('knob_variants', 0)} variants, {t.get('knob_records', 0)} "
                         f"kernels recorded; MetaSchedule {t['trials_run']} trials ({t['trials_ok']} ok); "
                         f"{t['tuning_s']:.0f} s in all, {t['tasks_tuned']}/{t['tasks']} kernels with a record, "
                         f"{t.get('kernels_applied', 0)} applied (gain {t.get('kernel_gain_us', 0):.0f} us of kernel "
                         f"time), stopped by {t['stopped_by']}, "
                         f"relative error {acc.get('tuned_relative_error', float('nan')):.1e}")
        if "int8_relative_error" in acc:
            parts.append(f"int8 vs fake-quantized torch: relative error {acc['int8_relative_error']:.1e} "
                         f"(fake-quantized vs float torch {acc['int8_torch_vs_float_relative']:.1e}); "
                         f"compile {model['compile_int8_s']:.0f} s")
        unscheduled = model.get("unscheduled_kernels", [])
        parts.append(f"{len(unscheduled)} kernels left unscheduled by the default rules")
        lines.append(f"- **{model['model']}**: " + "; ".join(parts) + ".")
        lines += [f"  - note: {note}" for note in model.get("notes", [])]
    for failure in doc.get("failures", []):
        lines.append(f"- **{failure['model']}**: FAILED {failure['error'][:300]}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ main

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(all_model_names()),
                        help="comma-separated; default: %(default)s")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts (default: 1,2)")
    parser.add_argument("--tune-budget-s", type=float, default=600, help="tuning time per model (default: 600)")
    parser.add_argument("--skip-tuned", action="store_true", help="no tuning, no tuned column")
    parser.add_argument("--skip-int8", action="store_true", help="no int8 column")
    parser.add_argument("--repeats", type=int, default=150, help="timed calls per runtime (default: 150)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds the repeats are split into")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls before each round's samples")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_speed", help="writes OUT.json and OUT.md")
    args = parser.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.threads = [int(t) for t in args.threads.split(",")]
    unknown = [m for m in args.models if m not in all_model_names()]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; available: {', '.join(all_model_names())}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    # Before TVM starts: its thread pool is sized once, from this (see set_tvm_threads).
    os.environ["TVM_NUM_THREADS"] = str(max(args.threads))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a model hub
    work = Path(tempfile.mkdtemp(prefix="edgekit-bench-speed-"))
    os.environ["EDGEKIT_CACHE"] = str(work / "cache")  # tuning starts from an empty database
    started = time.time()
    doc = {"started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
           "argv": sys.argv[1:] if argv is None else list(argv), "machine": machine(),
           "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "models": []}
    log(f"ISA {doc['machine']['isa']} ({doc['machine']['cpu']}); models: {', '.join(args.models)}")
    for name in args.models:
        try:
            doc["models"].append(bench_model(name, args, work / "artifacts"))
        except Exception as exc:  # keep what was measured; say what failed
            log(f"{name}: FAILED {type(exc).__name__}: {exc}")
            doc.setdefault("failures", []).append({"model": name, "error": f"{type(exc).__name__}: {exc}"[:2000]})
        doc["wall_s"] = round(time.time() - started, 1)
        doc["load_average_end"] = os.getloadavg()
        doc["summary"] = summarize(doc)
        _write(doc, args.out)
    log(f"done in {(time.time() - started) / 60:.1f} min: {args.out}.json / .md")
    return 0 if not doc.get("failures") else 1


def _write(doc, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    out.with_suffix(".md").write_text(markdown(doc))


if __name__ == "__main__":
    sys.exit(main())
