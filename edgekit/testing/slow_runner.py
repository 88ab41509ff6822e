#!/usr/bin/env python3
"""A device runner with deliberately slow kernels: edgekit's real runner, plus real sleeps.

Used to build a device whose latency is known to be non-monotone in a layer's width (a test
device; real boards do this too, e.g. when a width falls off a SIMD or cache sweet spot).
``EDGEKIT_SLOW_KERNELS`` is a JSON list of ``{"weight_shape": [O, I, KH, KW], "out_shape": [...], "sleep_ms": S}``:
every call of a kernel whose second argument (the weight) has that shape, and whose last argument (the
output) has ``out_shape`` when given, sleeps ``S`` ms.

Nothing is faked after the fact: the timed function really sleeps, and the time comes from the
clock around it.  Whole-model timings sleep once per slow kernel call of one inference (counted
with the VM's instrument hook); per-kernel timings sleep inside each timed repeat.

    python3 slow_runner.py ARTIFACT_DIR [the runner's options]

Like onboard/runner.py it needs only numpy and the TVM runtime, and never imports edgekit.
"""

import json
import math
import os
import sys
import time

SLOW_ENV = "EDGEKIT_SLOW_KERNELS"
# A runner without per-kernel timing (like an older edgekit on the board): --kernels is ignored.
NO_KERNELS_ENV = "EDGEKIT_RUNNER_NO_KERNELS"
RUNNER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "onboard", "runner.py")


def slow_specs():
    try:
        specs = json.loads(os.environ.get(SLOW_ENV, "[]"))
    except json.JSONDecodeError:
        return []
    return [(_dims(s["weight_shape"]), [int(d) for d in s["out_shape"]] if s.get("out_shape") else None,
             float(s["sleep_ms"]) / 1000.0) for s in specs]


def _dims(shape):
    """A shape as a sorted tuple: the same spec then holds whether the kernel is NCHW/OIHW or NHWC/OHWI."""
    return tuple(sorted(int(d) for d in shape))


def sleep_for(args, specs):
    """Seconds one call with these arguments must sleep (0 unless its weight, and output, shapes are slow)."""
    if len(args) < 2 or not hasattr(args[1], "shape"):
        return 0.0
    weight = _dims(args[1].shape)
    out = _dims(args[-1].shape) if hasattr(args[-1], "shape") else None
    return sum(s for w, o, s in specs if _same_weight(w, weight) and (o is None or _same_output(o, weight, out)))


def _same_output(spec_out, weight, out) -> bool:
    """The spec's output [N, O, OH, OW] in any layout, or a Winograd GEMM's [(m+2)^2, tiles, O] for it."""
    if _dims(spec_out) == out:
        return True
    if len(weight) != 3 or len(spec_out) != 4:
        return False
    n, channels, height, width = spec_out
    for alpha2, m in ((16, 2), (36, 4)):
        tiles = n * -(-height // m) * -(-width // m)
        if alpha2 in weight and _dims([alpha2, tiles, channels]) == out:
            return True
    return False


def _same_weight(spec, weight) -> bool:
    """The spec's [O, I, KH, KW] in any layout, or packed at compile time by output-channel tile (5-D,
    [O/t, KH, KW, I, t]: the same elements, the tile's split of O in other dims), or, for a 3x3 conv built
    as Winograd F(4x4) or F(2x2) (edgekit.compile.winograd), its GEMM's transformed weight [36 or 16, I, O]."""
    if spec == weight:
        return True
    if len(weight) == 5 and len(spec) == 4 and math.prod(spec) == math.prod(weight):
        return True
    if len(weight) != 3 or len(spec) != 4 or list(spec).count(3) < 2:
        return False
    channels = list(spec)
    channels.remove(3)
    channels.remove(3)
    return any(sorted([alpha2, *channels]) == list(weight) for alpha2 in (16, 36))


class _Result:
    def __init__(self, results):
        self.results = results
        self.mean = sum(results) / len(results) if results else 0.0


def _loop(fn, args, repeat, extra_s):
    results = []
    for _ in range(max(1, repeat)):
        start = time.perf_counter()
        fn(*args)
        if extra_s > 0:
            time.sleep(extra_s)
        results.append(time.perf_counter() - start)
    return _Result(results)


def install(specs):
    """Wrap the TVM runtime's time evaluators so that slow kernels really take longer."""
    import tvm
    from tvm.runtime.vm import VirtualMachine

    module_cls = tvm.runtime.Module
    original_module_te = module_cls.time_evaluator
    original_vm_te = VirtualMachine.time_evaluator

    def module_te(self, func_name, dev, number=10, repeat=1, *a, **kw):
        inner = original_module_te(self, func_name, dev, number, repeat, *a, **kw)
        fn = self.get_function(func_name)

        def timed(*args):
            extra = sleep_for(args, specs)
            return _loop(fn, args, repeat, extra) if extra > 0 else inner(*args)

        return timed

    def vm_te(self, func_name, dev, number=10, repeat=1, *a, **kw):
        inner = original_vm_te(self, func_name, dev, number, repeat, *a, **kw)

        def timed(*args):
            extra = [0.0]

            def count(func, symbol, before_run, ret_value, *call_args):
                if before_run:
                    extra[0] += sleep_for(call_args, specs)
                return 0

            self.set_instrument(count)
            try:
                self[func_name](*args)
            finally:
                self.set_instrument(lambda *x: 0)
            return _loop(self[func_name], args, repeat, extra[0]) if extra[0] > 0 else inner(*args)

        return timed

    module_cls.time_evaluator = module_te
    VirtualMachine.time_evaluator = vm_te


def main(argv):
    # The runner sets these before it imports tvm; we import tvm first, so set them the same way.
    threads = "1"
    if "--threads" in argv:
        threads = argv[argv.index("--threads") + 1]
    os.environ["TVM_NUM_THREADS"] = threads
    os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")
    sys.modules.setdefault("torch", None)
    sys.path.insert(0, os.path.dirname(RUNNER))
    import runner  # edgekit/onboard/runner.py, imported as a plain script module

    install(slow_specs())
    if os.environ.get(NO_KERNELS_ENV):
        argv = list(argv)
        if "--kernel-repeats" in argv:
            i = argv.index("--kernel-repeats")
            del argv[i:i + 2]
        argv = [a for a in argv if a != "--kernels"]
    return runner.main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
