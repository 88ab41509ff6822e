#!/usr/bin/env python3
"""A device runner on a noisy device: edgekit's real runner, with real random sleeps inside the timed runs.

A board shared with other work (a daemon waking, an interrupt storm) delays some runs by random amounts.
``EDGEKIT_NOISE`` is JSON ``{"probability": P, "max_ms": M, "seed": S}``: each timed whole-model run sleeps,
with probability P, a uniform 0..M ms, inside the clock.  Nothing is faked after the fact: the time comes
from the clock around the run and the sleep.  The stopping rule cannot narrow such an interval quickly, so
it runs to its time cap and says the interval is wide.

    python3 noisy_runner.py ARTIFACT_DIR [the runner's options]

Like onboard/runner.py it needs only numpy and the TVM runtime, and never imports edgekit.
"""

import json
import os
import random
import sys
import time

NOISE_ENV = "EDGEKIT_NOISE"
RUNNER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "onboard", "runner.py")


class _Result:
    def __init__(self, results):
        self.results = results


def install(probability, max_ms, seed):
    """Replace the VM's whole-model time evaluator with a loop whose runs are randomly delayed."""
    from tvm.runtime.vm import VirtualMachine

    rng = random.Random(seed)

    def vm_te(self, func_name, dev, number=1, repeat=1, min_repeat_ms=0, *a, **kw):
        fn = self[func_name]

        def timed(*args):
            results = []
            for _ in range(max(1, repeat)):
                start = time.perf_counter()
                fn(*args)
                if rng.random() < probability:
                    time.sleep(rng.uniform(0.0, max_ms) / 1000.0)
                results.append(time.perf_counter() - start)
            return _Result(results)

        return timed

    VirtualMachine.time_evaluator = vm_te


def main(argv):
    threads = argv[argv.index("--threads") + 1] if "--threads" in argv else "1"
    os.environ["TVM_NUM_THREADS"] = threads  # the runner sets these before importing tvm; we import it first
    os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")
    sys.modules.setdefault("torch", None)
    sys.path.insert(0, os.path.dirname(RUNNER))
    import runner  # edgekit/onboard/runner.py, imported as a plain script module

    noise = json.loads(os.environ.get(NOISE_ENV, "{}"))
    install(float(noise.get("probability", 0.5)), float(noise.get("max_ms", 2.0)), int(noise.get("seed", 0)))
    return runner.main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
