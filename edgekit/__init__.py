"""edgekit: take a PyTorch model to an edge device and prove how fast it runs there.

The public verbs, one per pipeline stage, each taking the previous stage's artifact:

    compress_model -> compile_model -> deploy_model / run_artifact -> measure_latency -> optimize_model

They are imported on first use, so ``import edgekit`` stays fast (no torch, no TVM).
"""

from edgekit.__about__ import __version__
from edgekit.artifacts import CompiledArtifact, LatencyReport
from edgekit.errors import EdgekitError
from edgekit.targets import TargetProfile, list_targets, load_target

_LAZY = {
    "compile_model": "edgekit.compile",
    "run_artifact": "edgekit.run",
    "deploy_model": "edgekit.deploy",
    "measure_latency": "edgekit.measure.protocol",
    "compress_model": "edgekit.compress",
    "CompressedModel": "edgekit.compress",
    "optimize_model": "edgekit.optimize",
    "evaluate": "edgekit.evaluate",
}

__all__ = ["__version__", "CompiledArtifact", "LatencyReport", "EdgekitError", "TargetProfile", "list_targets",
           "load_target", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edgekit' has no attribute {name!r}")
