#!/usr/bin/env python3
"""edgekit peer runner: the same model in another runtime on the device, timed by edgekit's protocol.

Uploaded (with runner.py, device_facts.py and order_stats.py beside it) into a peer directory holding
``model.onnx`` (ONNX Runtime), ``model.pte`` (ExecuTorch, lowered to XNNPACK on the host) or ``model.pt2``
(torch eager), ``reference.npz`` (the artifact's inputs and the
host's outputs) and ``tolerance.json``; run on the device.  It loads the model, checks its outputs against the
reference on the same inputs the artifact is checked with, warms up until the timings settle, times with the
runner's stopping rule, and prints one JSON object.  It needs numpy and the peer runtime only; a runtime the
device cannot import is reported (exit 21), never skipped silently.

    python3 peer_runner.py PEER_DIR --runtime onnxruntime|executorch|torch [the runner's measurement options]
"""

import argparse
import json
import os
import sys
import time

if __package__:
    from edgekit.onboard import runner
    from edgekit.onboard.device_facts import machine_facts
else:
    import runner
    from device_facts import machine_facts

RUNTIMES = ("onnxruntime", "executorch", "torch")


class _PerfTimer:
    """time_evaluator's interface over a Python callable, so the runner's stopping rule times peers too."""

    def __init__(self, run):
        self.run = run

    def time_evaluator(self, name, device, number, repeat, min_repeat_ms):
        def timed(*inputs):
            results = []
            for _ in range(repeat):
                started = time.perf_counter()
                self.run()
                results.append(time.perf_counter() - started)
            return type("Timing", (), {"results": results})()
        return timed


def load_onnxruntime(peer_dir, inputs, threads):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads  # ORT takes every core otherwise
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    session = onnxruntime.InferenceSession(os.path.join(peer_dir, "model.onnx"), options,
                                           providers=["CPUExecutionProvider"])
    feed = {i.name: x for i, x in zip(session.get_inputs(), inputs)}
    return (lambda: session.run(None, feed)), onnxruntime.__version__


def load_executorch(peer_dir, inputs, threads):
    import torch  # the executorch wheel's runtime needs torch's libraries loaded first
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime

    # XNNPACK's threadpool starts with one thread per core; the comparison runs at the artifact's count
    portable_lib._unsafe_reset_threadpool(threads)
    if threads != portable_lib._threadpool_get_thread_count():
        raise ImportError("executorch's threadpool would not run at %d thread(s)" % threads)
    if "XnnpackBackend" not in portable_lib._get_registered_backend_names():
        raise ImportError("this executorch has no XNNPACK backend")
    method = Runtime.get().load_program(os.path.join(peer_dir, "model.pte")).load_method("forward")
    tensors = [torch.from_numpy(x) for x in inputs]

    def run():
        return [t.numpy() for t in method.execute(tensors)]

    from importlib import metadata

    return run, metadata.version("executorch")


def load_torch(peer_dir, inputs, threads):
    import torch

    torch.set_num_threads(threads)
    module = torch.export.load(os.path.join(peer_dir, "model.pt2")).module()
    tensors = [torch.from_numpy(x) for x in inputs]

    def run():
        with torch.no_grad():
            out = module(*tensors)
        return [t.detach().numpy() for t in torch.utils._pytree.tree_leaves(out)]

    return run, torch.__version__


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("peer_dir")
    parser.add_argument("--runtime", choices=RUNTIMES, required=True)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ci-target", type=float, default=0.0)
    parser.add_argument("--time-cap", type=float, default=10.0)
    parser.add_argument("--max-repeats", type=int, default=10000)
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--warmup-settle", type=float, default=0.05)
    parser.add_argument("--warmup-cap", type=float, default=2.0)
    parser.add_argument("--site", action="append", default=[])
    parser.add_argument("--cpus", default="", help="pinned to the same CPUs as the artifact")
    args, _ = parser.parse_known_args(argv)  # the runner's other options (min-repeat-ms...) do not apply
    pinned = runner.pin_to_cpus(args.cpus)
    if isinstance(pinned, str):
        emit({"ok": False, "error": "cpus", "message": pinned})
        return runner.EXIT_BAD_CPUS
    for site in reversed(args.site):
        if os.path.isdir(site):
            sys.path.insert(0, site)
    try:
        import numpy as np

        reference = np.load(os.path.join(args.peer_dir, "reference.npz"))
        count = len([k for k in reference.files if k.startswith("in")])
        inputs = [reference["in%d" % i] for i in range(count)]
        expected = [reference["out%d" % i] for i in range(len([k for k in reference.files if k.startswith("out")]))]
        load = {"onnxruntime": load_onnxruntime, "executorch": load_executorch, "torch": load_torch}[args.runtime]
        run, version = load(args.peer_dir, inputs, args.threads)
    except ImportError as exc:
        emit({"ok": False, "error": "unavailable", "runtime": args.runtime,
              "message": "%s cannot be imported on the device: %s" % (args.runtime, exc)})
        return runner.EXIT_NO_RUNTIME
    with open(os.path.join(args.peer_dir, "tolerance.json")) as f:
        tolerance = json.load(f)
    outputs = run()
    actual = [np.asarray(o) for o in (outputs if isinstance(outputs, (list, tuple)) else [outputs])]
    report = {"ok": True, "runtime": args.runtime, "version": version, "threads": args.threads,
              "output_check": runner.compare(actual, expected, tolerance, np),
              "device": {**machine_facts(), "loadavg_1m": os.getloadavg()[0]}}
    report["warmup_runs"], report["warmup_settled"] = runner.warm_up(run, args.warmup, args.warmup_settle,
                                                                     args.warmup_cap)
    report["samples_ms"], report["stopping"] = runner.timed_samples(_PerfTimer(run), None, [], _Rule(args))
    emit(report)
    return 0


class _Rule:
    """The fields runner.timed_samples reads."""

    def __init__(self, args):
        self.repeats, self.min_repeat_ms, self.ci_target = args.repeats, 0, args.ci_target
        self.time_cap, self.max_repeats, self.confidence = args.time_cap, args.max_repeats, args.confidence


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
