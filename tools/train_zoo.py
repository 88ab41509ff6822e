#!/usr/bin/env python3
"""Train the zoo models on Fashion-MNIST and write edgekit/data/weights/<name>.pt + zoo.json.

Seeded and single-process: `python tools/train_zoo.py --model fmnist-resnet --epochs 6 --threads 2`
gives the same weights again on the same machine and thread count.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", action="append", help="zoo name (repeat); default: all")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--half-above", type=int, default=200_000,
                    help="store weights as float16 for models with more params than this (0: never)")
    args = ap.parse_args(argv)

    import torch

    from edgekit.compress.distill import TrainConfig, train
    from edgekit.compress.stats import count_params
    from edgekit.data import load_dataset
    from edgekit.data.zoo import ZOO_JSON, build_zoo_model, load_zoo_model, zoo_entry, zoo_metrics, zoo_names
    from edgekit.evaluate import evaluate

    torch.set_num_threads(args.threads)
    train_data = load_dataset("fashion-mnist", "train")
    test_data = load_dataset("fashion-mnist", "test")
    metrics = zoo_metrics()
    for name in args.model or zoo_names():
        entry = zoo_entry(name)
        torch.manual_seed(args.seed)
        model = build_zoo_model(name)
        cfg = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                          weight_decay=1e-4, val_size=5000, patience=args.epochs)
        t0 = time.perf_counter()
        result = train(model, train_data, config=cfg, label=name,
                       on_epoch=lambda r: print(f"{name}: {r}", file=sys.stderr))
        acc = evaluate(model, test_data)
        entry.weights_path.parent.mkdir(parents=True, exist_ok=True)
        state = model.state_dict()
        half = bool(args.half_above) and count_params(model) > args.half_above
        if half:
            # big models (the teacher) ship as float16 to stay a few hundred KB;
            # load_state_dict converts back to float32 on load
            state = {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}
        torch.save(state, entry.weights_path)
        acc_stored = evaluate(load_zoo_model(name), test_data)
        metrics[name] = {
            "architecture": entry.architecture, "kwargs": entry.kwargs, "params": count_params(model),
            "test_accuracy": round(acc_stored, 4), "test_accuracy_fp32": round(acc, 4),
            "weights_dtype": "float16" if half else "float32",
            "dataset": "fashion-mnist (60k train minus 5k val, 10k test)",
            "epochs": result.epochs_run, "best_epoch": result.best_epoch, "lr": args.lr,
            "batch_size": args.batch_size, "seed": args.seed, "threads": args.threads,
            "train_seconds": round(time.perf_counter() - t0, 1), "torch": torch.__version__,
            "weights_bytes": entry.weights_path.stat().st_size,
        }
        print(f"{name}: test accuracy {acc_stored:.4f} (fp32 in memory {acc:.4f})", file=sys.stderr)
        ZOO_JSON.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
