#!/usr/bin/env python3
"""edgekit device runner: load one artifact, check its outputs, time it, print one JSON object.

This file is uploaded to the device (with device_facts.py beside it) and run there, so it must
need nothing but the Python standard library, numpy and the TVM runtime: it never imports edgekit.
On the host, ``edgekit.run`` starts the same file as a local process.

    python3 runner.py ARTIFACT_DIR [--warmup N] [--repeats N] [--min-repeat-ms MS] [--threads N]
                      [--check-only] [--kernels] [--kernel-repeats N] [--time-limit S] [--watch-stdin]
                      [--site DIR] [--emulated] [--ci-target R] [--time-cap S] [--max-repeats N]
                      [--confidence C] [--warmup-settle R] [--warmup-cap S] [--cpus 0,1]

Every kept sample is one timed repeat; with --min-repeat-ms the model runs as many times in a row
as a repeat needs to last that long, and the sample is their mean (TVM's time_evaluator does this).

Protocol (see edgekit.targets.MeasureProtocol): at least --warmup untimed runs, then more until two
consecutive windows of runs agree within --warmup-settle (or --warmup-cap seconds pass); then --repeats
samples, and with --ci-target more, until the median's confidence interval (order statistics,
order_stats.py) is narrower than that fraction of the median either side, --time-cap seconds of timing
pass, or --max-repeats samples are kept.  Clocks and temperatures are read before and after; the peak
resident memory of the process is reported.

Exit codes: 0 ok (the JSON says whether outputs matched), 20 artifact integrity
failure (sha256), 21 TVM runtime missing, 22 library failed to load, 23 time
limit reached, 24 the client went away (stdin closed, with --watch-stdin).
A crash (segfault) kills the process by its signal; faulthandler prints the
Python stack to stderr first.

Per-kernel timing (--kernels): TVM 0.24+ has no per-layer profiler, so the
runner records every kernel call of one run with the VM's instrument hook
(symbol + arguments), then times each fused kernel alone with the library's
``time_evaluator`` on copies of the arguments it saw.
"""

import argparse
import faulthandler
import json
import os
import platform
import resource
import sys
import threading
import time

if __package__:  # imported by edgekit on the host (for the exit codes below)
    from edgekit.onboard.device_facts import clock_state, file_sha256, machine_facts, read_text
    from edgekit.onboard.order_stats import half_width_ratio, middle
else:  # run as a script: device_facts.py and order_stats.py sit beside this file
    from device_facts import clock_state, file_sha256, machine_facts, read_text
    from order_stats import half_width_ratio, middle

# The host maps each of these to its error (edgekit.artifacts.LatencyReport.from_runner).
EXIT_INTEGRITY = 20
EXIT_NO_RUNTIME = 21
EXIT_LOAD_FAILED = 22
EXIT_TIME_LIMIT = 23
EXIT_CLIENT_GONE = 24
EXIT_BAD_CPUS = 25


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact_dir")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--min-repeat-ms", type=float, default=0, help="a timed repeat lasts at least this long")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--check-only", action="store_true", help="check outputs, do not time")
    parser.add_argument("--kernels", action="store_true", help="also time each fused kernel alone")
    parser.add_argument("--kernel-repeats", type=int, default=10)
    parser.add_argument("--time-limit", type=float, default=0, help="seconds; 0 = none")
    parser.add_argument("--watch-stdin", action="store_true", help="exit when stdin closes (client gone)")
    parser.add_argument("--site", action="append", default=[], help="extra site-packages dir (device runtime)")
    parser.add_argument("--emulated", action="store_true", help="mark the device as emulated")
    parser.add_argument("--ci-target", type=float, default=0.0,
                        help="keep timing until the median's CI half-width is this fraction of it (0: --repeats)")
    parser.add_argument("--time-cap", type=float, default=10.0, help="seconds of timing the CI rule may spend")
    parser.add_argument("--max-repeats", type=int, default=10000, help="most samples the CI rule may keep")
    parser.add_argument("--confidence", type=float, default=0.95, help="of the median's interval")
    parser.add_argument("--warmup-settle", type=float, default=0.05,
                        help="warm up until two windows' medians differ by less than this fraction (0: --warmup)")
    parser.add_argument("--warmup-cap", type=float, default=2.0, help="seconds warm-up may spend settling")
    parser.add_argument("--cpus", default="", help="comma-separated CPU ids to pin the process to")
    args = parser.parse_args(argv)
    faulthandler.enable()  # a segfault prints the Python stack to stderr before the process dies
    if args.time_limit > 0:
        start_time_limit(args.time_limit)
    if args.watch_stdin:
        start_stdin_watch()
    for site in reversed(args.site):
        if os.path.isdir(site):
            sys.path.insert(0, site)

    manifest = read_manifest(args.artifact_dir)
    problem = verify_files(args.artifact_dir, manifest)
    if problem:
        emit({"ok": False, "error": "integrity", "message": problem})
        return EXIT_INTEGRITY

    pinned = pin_to_cpus(args.cpus)
    if isinstance(pinned, str):
        emit({"ok": False, "error": "cpus", "message": pinned})
        return EXIT_BAD_CPUS
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
    runtime_rss = rss_bytes()  # the runtime alone, before the library and its constants are loaded
    if manifest["target"]["kind"] == "cuda":
        problem = load_cuda_runtime(tvm)
        if problem:
            emit({"ok": False, "error": "no_runtime", "message": problem})
            return EXIT_NO_RUNTIME

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
              "threads": args.threads, "warmup": args.warmup, "repeats": args.repeats,
              "min_repeat_ms": args.min_repeat_ms, "import_s": round(import_s, 3),
              "output_check": check, "device": fingerprint(tvm, args.emulated)}
    report["emulated"] = report["device"]["emulated"]
    report["device"]["runtime_threads"] = runtime_threads(tvm)  # what --threads really gave
    report["device"]["pinned_cpus"] = sorted(os.sched_getaffinity(0)) if pinned else None
    if not args.check_only:
        report["clocks_before"] = clock_state()
        report["warmup_runs"], report["warmup_settled"] = warm_up(lambda: vm["main"](*inputs), args.warmup,
                                                                  args.warmup_settle, args.warmup_cap)
        timing_started = time.perf_counter()
        report["samples_ms"], report["stopping"] = timed_samples(vm, device, inputs, args)
        report["timed_s"] = round(time.perf_counter() - timing_started, 4)  # wall time of the timed repeats
        report["clocks_after"] = clock_state()
    # before per-kernel timing, whose argument copies are not the model's memory
    report["memory"] = {**memory_use(runtime_rss), "artifact": manifest.get("memory")}
    if not args.check_only and args.kernels:
        report["kernels"] = time_kernels(tvm, library, vm, inputs, device, args.kernel_repeats)
    emit(report)
    return 0


def pin_to_cpus(text):
    """Pin this process (and the runtime threads it starts) to the CPUs listed; an error message if it cannot."""
    if not text:
        return None
    try:
        cpus = {int(c) for c in text.split(",") if c.strip()}
        os.sched_setaffinity(0, cpus)
    except (ValueError, OSError) as exc:
        return "cannot pin to CPUs %s: %s (this device has %s)" % (text, exc, sorted(os.sched_getaffinity(0)))
    os.environ["TVM_BIND_THREADS"] = "0"  # TVM binds its workers to cores of its own choosing otherwise
    return cpus


def warm_up(run, minimum, settle_ratio, cap_s, clock=time.perf_counter):
    """Untimed runs until the timings settle: ``minimum`` runs, then windows of runs until the medians of two
    consecutive windows differ by at most ``settle_ratio`` (caches, page faults, clocks ramping up), or
    ``cap_s`` seconds pass.  Returns (runs made, settled).  ``clock`` is injectable so the rule can be tested
    without depending on how busy the machine is."""
    window = max(3, minimum // 2)
    times = []
    for _ in range(minimum):
        started = clock()
        run()
        times.append(clock() - started)
    if minimum == 0 or settle_ratio <= 0:
        return minimum, None  # the user asked for a fixed warm-up
    deadline = clock() + cap_s
    previous = sorted(times[-window:])
    while True:
        current = []
        for _ in range(window):
            started = clock()
            run()
            current.append(clock() - started)
        times += current
        current.sort()
        before, now = middle(previous), middle(current)
        if before > 0 and abs(now - before) / before <= settle_ratio:
            return len(times), True
        if clock() >= deadline:
            return len(times), False
        previous = current


def timed_samples(vm, device, inputs, args):
    """The timed repeats, and how the measurement stopped (``stopping``).

    Without --ci-target: exactly --repeats samples.  With it: batches of samples until the median's
    interval is narrow enough, the time cap is spent, or --max-repeats samples are kept.
    """
    def batch(n):
        # time_evaluator raises `number` until one repeat lasts min_repeat_ms (an integer there)
        timer = vm.time_evaluator("main", device, number=1, repeat=n, min_repeat_ms=int(round(args.min_repeat_ms)))
        return [s * 1000.0 for s in timer(*inputs).results]

    started = time.perf_counter()
    samples = batch(args.repeats)
    if args.ci_target <= 0:
        return samples, {"rule": "fixed", "reason": "repeats"}
    while True:
        ratio = half_width_ratio(sorted(samples), args.confidence)
        elapsed = time.perf_counter() - started
        if ratio <= args.ci_target:
            reason = "ci_reached"
        elif elapsed >= args.time_cap:
            reason = "time_cap"
        elif len(samples) >= args.max_repeats:
            reason = "max_repeats"
        else:
            # half as many again, but no more than fit into what is left of the cap
            per_sample = elapsed / len(samples)
            fit = int((args.time_cap - elapsed) / per_sample) + 1 if per_sample > 0 else args.max_repeats
            samples += batch(max(1, min(max(10, len(samples) // 2), fit, args.max_repeats - len(samples))))
            continue
        return samples, {"rule": "ci", "reason": reason, "ci_target_ratio": args.ci_target,
                         "ci_half_width_ratio": ratio if ratio != float("inf") else None,
                         "time_cap_s": args.time_cap, "max_repeats": args.max_repeats, "elapsed_s": round(elapsed, 4)}


def rss_bytes():
    """This process's resident memory now (VmRSS), or None where /proc is absent."""
    return _status_bytes("VmRSS")


def _status_bytes(field):
    for line in (read_text("/proc/self/status") or "").splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # "VmHWM:   91234 kB"
    return None


def memory_use(runtime_rss):
    """Peak resident memory of this run: the kernel's high-water mark, and ru_maxrss where /proc is absent."""
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    maxrss_bytes = maxrss if sys.platform == "darwin" else maxrss * 1024  # kB on Linux, bytes on macOS
    hwm = _status_bytes("VmHWM")
    return {"peak_rss_bytes": hwm or maxrss_bytes, "ru_maxrss_bytes": maxrss_bytes, "vm_hwm_bytes": hwm,
            "runtime_rss_bytes": runtime_rss}


def runtime_threads(tvm):
    """The size of the TVM runtime's thread pool: what --threads really gave (None if it cannot say)."""
    count = tvm.get_global_func("runtime.NumThreads", allow_missing=True)
    return int(count()) if count is not None else None


def start_time_limit(limit_s):
    """Stop at the limit even when the model hangs in native code.

    A Python thread reports the limit in JSON when it can get the GIL; faulthandler's
    C-level watchdog (no GIL needed) ends the process two seconds later regardless.
    """
    def expire():
        emit({"ok": False, "error": "time_limit", "message": "runner exceeded its time limit of %gs" % limit_s})
        os._exit(EXIT_TIME_LIMIT)

    timer = threading.Timer(limit_s, expire)
    timer.daemon = True
    timer.start()
    faulthandler.dump_traceback_later(limit_s + 2, exit=True)


def start_stdin_watch():
    """The host keeps our stdin open while it waits; EOF means it went away, so stop."""
    def watch():
        try:  # os.read, not sys.stdin: a daemon thread inside a buffered read aborts interpreter shutdown
            while os.read(0, 4096):
                pass
        except OSError:
            pass
        os._exit(EXIT_CLIENT_GONE)

    threading.Thread(target=watch, daemon=True).start()


def time_kernels(tvm, library, vm, inputs, device, repeats):
    """Time each fused kernel the model calls, alone, on copies of the arguments of one real run."""
    owners = {}

    def owner_of(symbol):
        if symbol not in owners:
            owners[symbol] = None
            for module in [library] + list(library.imports):
                try:
                    module.get_function(symbol)
                    owners[symbol] = module
                    break
                except Exception:
                    continue
        return owners[symbol]

    calls = []

    def instrument(func, symbol, before_run, ret_value, *args):
        if before_run and owner_of(symbol) is not None:
            calls.append((symbol, [copy_arg(tvm, a, device) for a in args]))
        return 0  # VMInstrumentReturnKind.NO_OP

    vm.set_instrument(instrument)
    try:
        vm["main"](*inputs)
    finally:
        vm.set_instrument(lambda *a: 0)
    kernels, index = [], {}
    for symbol, args in calls:
        key = (symbol, tuple(str(describe_arg(a)) for a in args))
        if key in index:
            kernels[index[key]]["calls"] += 1
            continue
        timer = owner_of(symbol).time_evaluator(symbol, device, number=1, repeat=repeats, min_repeat_ms=1)
        samples = [s * 1000.0 for s in timer(*args).results]
        index[key] = len(kernels)
        kernels.append({"name": symbol, "calls": 1, "args": [describe_arg(a) for a in args],
                        "samples_ms": samples, "median_ms": sorted(samples)[len(samples) // 2]})
    for k in kernels:
        k["total_ms"] = k["median_ms"] * k["calls"]
    return kernels


def copy_arg(tvm, arg, device):
    if hasattr(arg, "numpy") and hasattr(arg, "shape"):
        return tvm.runtime.tensor(arg.numpy(), device)
    return arg


def describe_arg(arg):
    if hasattr(arg, "shape") and hasattr(arg, "dtype"):
        return {"shape": [int(d) for d in arg.shape], "dtype": str(arg.dtype)}
    return repr(arg)


def load_cuda_runtime(tvm):
    """Load TVM's CUDA runtime, which runtime-only TVM (no compiler library, as on a device) skips.

    Without it, loading a CUDA artifact fails with "loader of that name is not registered".
    """
    import ctypes

    if tvm.get_global_func("device_api.cuda", allow_missing=True) is not None:
        return None
    path = os.path.join(os.path.dirname(tvm.__file__), "lib", "libtvm_runtime_cuda.so")
    try:
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    except OSError as exc:
        return "cannot load TVM's CUDA runtime %s: %s (needs libcudart 13 and an NVIDIA driver)" % (path, exc)
    return None


def read_manifest(artifact_dir):
    with open(os.path.join(artifact_dir, "manifest.json")) as f:
        return json.load(f)


def verify_files(artifact_dir, manifest):
    """Nothing is loaded before every file matches the sha256 the host recorded."""
    for name, expected in sorted(manifest["files"].items()):
        path = os.path.join(artifact_dir, name)
        if not os.path.isfile(path):
            return "%s is missing" % name
        actual = file_sha256(path)
        if actual != expected:
            return "sha256 of %s is %s, manifest says %s" % (name, actual, expected)
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


def fingerprint(tvm, emulated=False):
    """What makes two measurements comparable: the board, its OS, its clocks and its runtime."""
    facts = machine_facts()
    return {**facts, "emulated": bool(emulated) or facts["emulated"], "loadavg_1m": os.getloadavg()[0],
            "tvm": tvm.__version__}


def first_line(exc):
    lines = str(exc).strip().splitlines()
    return lines[-1][:400] if lines else type(exc).__name__


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
