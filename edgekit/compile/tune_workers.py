"""MetaSchedule's builder and runner as edgekit uses them, and the environment of their workers.

Traps worked around here (DESIGN.md section 8):
- the stock builder's workers import ``tvm.s_tir.tensor_intrin`` (about 30 s here) against a
  30 s timeout, so every trial times out and tuning "finishes" with nothing: ``build_candidate``
  skips that import and the timeout is longer;
- every builder/runner worker is a fresh ``python -m tvm.exec.popen_worker`` and tvm_ffi
  imports torch when it can (2-3 s of a worker's start on this machine): the workers get a
  ``PYTHONPATH`` entry where ``import torch`` fails at once (they never need torch).
"""

from __future__ import annotations

import os

from edgekit.compile.tvm_env import cache_dir, import_tvm

# Seconds one candidate may take to compile in a builder worker (the worker's own start included).
BUILD_TIMEOUT_S = 180.0
RUN_TIMEOUT_S = 60.0
# How each candidate is timed: 8 repeats of at least 20 ms each (the call count grows to fill them).
# Kernel comparisons take the fastest repeat (tune_gain): load from other processes only ever adds
# time, and on a shared 2-core machine a 50 ms repeat was rarely free of it.
EVALUATOR = {"number": 3, "repeat": 8, "min_repeat_ms": 20, "enable_cpu_cache_flush": False}


# Pickled by reference into MetaSchedule's popen workers: module level, no torch import.
def build_candidate(mod, target, _params):
    """``default_build`` minus ``import tvm.s_tir.tensor_intrin`` (30 s here, not needed on CPU)."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target)


def export_shared(mod, compiler: str | None = None) -> str:
    """A ready-to-load .so (a board has no compiler to link the stock .tar export)."""
    import tempfile

    import tvm.support.cc as cc

    path = os.path.join(tempfile.mkdtemp(prefix="edgekit-ms-"), "candidate.so")
    kwargs = {"fcompile": cc.cross_compiler(compiler)} if compiler else {}
    mod.export_library(path, **kwargs)
    return path


class Measurer:
    """The builder (candidates built here) and runner (measured here, or on the device of ``session``).

    Made on first use: LocalBuilder and LocalRunner each start a worker process to check
    themselves (10-20 s on this loaded 2-core machine), which a run with nothing to measure
    should not pay.
    """

    def __init__(self, tvm_target, profile, session):
        self.tvm_target, self.profile, self.session = tvm_target, profile, session
        self._builder = self._runner = None

    @property
    def builder(self):
        if self._builder is None:
            import functools

            import_tvm()
            from tvm.s_tir import meta_schedule as ms

            self._builder = ms.builder.LocalBuilder(
                max_workers=num_cores(self.tvm_target) if self.session is None else max(1, os.cpu_count() or 1),
                timeout_sec=BUILD_TIMEOUT_S, f_build=build_candidate,
                f_export=functools.partial(export_shared, compiler=self.profile.cross_compiler)
                if self.session else None)
        return self._builder

    @property
    def runner(self):
        if self._runner is None:
            import_tvm()
            from tvm.s_tir import meta_schedule as ms

            self._runner = self.session.runner() if self.session else ms.runner.LocalRunner(
                timeout_sec=RUN_TIMEOUT_S, evaluator_config=ms.runner.EvaluatorConfig(**EVALUATOR))
        return self._runner


def num_cores(tvm_target) -> int:
    try:
        return int(tvm_target.attrs["num-cores"])
    except (KeyError, TypeError, ValueError):
        return os.cpu_count() or 1


def import_cpu_tensor_intrinsics() -> None:
    """Register the CPU tensor intrinsics only.

    Every ``TuneContext`` imports ``tvm.s_tir.tensor_intrin``, whose CUDA part builds
    hundreds of TIR functions: 30 s to 2 min on this machine, for a CPU target that never
    uses them.  A package object that loads just the x86 and Arm submodules (1-5 s) takes
    its place when it was not imported yet.
    """
    import importlib
    import importlib.util
    import sys
    import types

    name = "tvm.s_tir.tensor_intrin"
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    package = types.ModuleType(name, "CPU tensor intrinsics only (edgekit.compile.tune_workers)")
    package.__path__ = list(spec.submodule_search_locations)
    package.__package__ = name
    sys.modules[name] = package
    for sub in ("x86", "arm_cpu"):
        setattr(package, sub, importlib.import_module(f"{name}.{sub}"))


class worker_environment:
    """Environment the popen workers inherit: no torch, and the thread count measured."""

    def __init__(self, threads: int):
        self.threads = threads
        self.saved: dict[str, str | None] = {}

    def __enter__(self):
        blocker = cache_dir() / "no-torch"
        stub = blocker / "torch" / "__init__.py"
        if not stub.exists():
            stub.parent.mkdir(parents=True, exist_ok=True)
            stub.write_text('raise ImportError("edgekit tuning workers do not load torch")\n')
        path = os.pathsep.join(p for p in (str(blocker), os.environ.get("PYTHONPATH")) if p)
        for key, value in (("PYTHONPATH", path), ("TVM_NUM_THREADS", str(self.threads))):
            self.saved[key] = os.environ.get(key)
            os.environ[key] = value
        return self

    def __exit__(self, *exc):
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        return False
