#!/usr/bin/env python3
"""edgekit device runner: load one artifact, check its outputs, time it, print one JSON object.

This file is uploaded to the device and run there, so it must need nothing but
the Python standard library, numpy and the TVM runtime: it never imports edgekit.

    python3 runner.py ARTIFACT_DIR [--warmup N] [--repeats N] [--threads N] [--check-only]

Exit codes: 0 ok (the JSON says whether outputs matched), 20 artifact integrity
failure (sha256), 21 TVM runtime missing, 22 library failed to load.
"""

import argparse
import hashlib
import json
import os
import platform
import socket
import sys
import time

EXIT_INTEGRITY = 20
EXIT_NO_RUNTIME = 21
EXIT_LOAD_FAILED = 22


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact_dir")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--check-only", action="store_true", help="check outputs, do not time")
    args = parser.parse_args(argv)

    manifest = read_manifest(args.artifact_dir)
    problem = verify_files(args.artifact_dir, manifest)
    if problem:
        emit({"ok": False, "error": "integrity", "message": problem})
        return EXIT_INTEGRITY

    # The thread pool reads these once, when the runtime starts.
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")  # runtime only: faster import, less memory
    sys.modules.setdefault("torch", None)  # tvm_ffi imports torch when present; the device needs none
    started = time.perf_counter()
    try:
        import numpy as np
        import tvm
        from tvm.runtime.vm import VirtualMachine
    except ImportError as exc:
        emit({"ok": False, "error": "no_runtime", "message": "cannot import the TVM runtime: %s" % exc,
              "python": sys.executable})
        return EXIT_NO_RUNTIME
    import_s = time.perf_counter() - started

    device = tvm.cuda(0) if manifest["target"]["kind"] == "cuda" else tvm.cpu(0)
    try:
        library = tvm.runtime.load_module(os.path.join(args.artifact_dir, manifest["library"]))
        vm = VirtualMachine(library, device)
    except Exception as exc:  # TVM reports a wrong-arch library as a missing file; say what it really is
        emit({"ok": False, "error": "load_failed", "message": first_line(exc),
              "library_elf_machine": manifest.get("elf_machine"), "device_machine": platform.machine()})
        return EXIT_LOAD_FAILED

    reference = np.load(os.path.join(args.artifact_dir, manifest["reference"]))
    inputs = [tvm.runtime.tensor(reference["in%d" % i], device) for i in range(len(manifest["inputs"]))]
    expected = [reference["out%d" % i] for i in range(len(manifest["outputs"]))]
    actual = as_list(vm["main"](*inputs))
    check = compare(actual, expected, manifest["tolerance"], np)

    report = {"ok": True, "artifact_id": manifest["artifact_id"], "target": manifest["target"]["name"],
              "threads": args.threads, "warmup": args.warmup, "import_s": round(import_s, 3),
              "output_check": check, "device": fingerprint(tvm)}
    if not args.check_only:
        for _ in range(args.warmup):
            vm["main"](*inputs)
        timer = vm.time_evaluator("main", device, number=1, repeat=args.repeats)
        report["samples_ms"] = [s * 1000.0 for s in timer(*inputs).results]
    emit(report)
    return 0


def read_manifest(artifact_dir):
    with open(os.path.join(artifact_dir, "manifest.json")) as f:
        return json.load(f)


def verify_files(artifact_dir, manifest):
    """Nothing is loaded before every file matches the sha256 the host recorded."""
    for name, expected in sorted(manifest["files"].items()):
        path = os.path.join(artifact_dir, name)
        if not os.path.isfile(path):
            return "%s is missing" % name
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != expected:
            return "sha256 of %s is %s, manifest says %s" % (name, digest.hexdigest(), expected)
    return None


def as_list(result):
    if hasattr(result, "numpy"):
        return [result.numpy()]
    return [r.numpy() for r in result]


def compare(actual, expected, tolerance, np):
    atol, rtol = float(tolerance["atol"]), float(tolerance["rtol"])
    max_abs = 0.0
    passed = len(actual) == len(expected)
    for a, e in zip(actual, expected):
        if a.shape != e.shape:
            passed = False
            continue
        diff = np.abs(a.astype("float64") - e.astype("float64"))
        max_abs = max(max_abs, float(diff.max()) if diff.size else 0.0)
        passed = passed and bool(np.all(diff <= atol + rtol * np.abs(e.astype("float64"))))
    return {"passed": passed, "max_abs_error": max_abs, "atol": atol, "rtol": rtol}


def fingerprint(tvm):
    """What makes two measurements comparable: the board, its OS, its clocks and its runtime."""
    return {
        "hostname": socket.gethostname(),
        "machine": platform.machine(),
        "kernel": platform.release(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "governor": read_text("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "temperature_c": temperature_c(),
        "loadavg_1m": os.getloadavg()[0],
        "python": platform.python_version(),
        "tvm": tvm.__version__,
    }


def cpu_model():
    text = read_text("/proc/cpuinfo") or ""
    for line in text.splitlines():
        key = line.split(":")[0].strip().lower()
        if key in ("model name", "hardware", "cpu model"):
            return line.split(":", 1)[1].strip()
    return None


def temperature_c():
    raw = read_text("/sys/class/thermal/thermal_zone0/temp")
    try:
        return int(raw) / 1000.0
    except (TypeError, ValueError):
        return None


def read_text(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def first_line(exc):
    lines = str(exc).strip().splitlines()
    return lines[-1][:400] if lines else type(exc).__name__


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
