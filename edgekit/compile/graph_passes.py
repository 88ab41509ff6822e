"""Graph-level rewrites edgekit adds before TVM's default pipeline (measured in tools/bench_speed.py).

Layout: PyTorch graphs arrive NCHW.  At edge sizes the output width is 7 or 14, which
no 8-lane AVX2 (or 4-lane NEON) vector divides, while channel counts (16, 24, 48, ...)
usually are multiples of the vector width.  NHWC puts the channels innermost, so tuned
convolutions vectorize over output channels with contiguous loads.  The weight
transposes this needs are folded into constants at compile time; only the network's
input and output get a transpose at run time.
"""

from __future__ import annotations

import os

from edgekit.compile.tvm_env import import_tvm

# NHWC activations, OHWI weights for CPU (the pair TVM's layout inference handles).
CPU_CONV_LAYOUT = ("NHWC", "OHWI")


def conv_layout(target) -> tuple[str, str] | None:
    """The conv2d layout edgekit compiles ``target`` with; None keeps the model's own (NCHW)."""
    override = os.environ.get("EDGEKIT_CONV_LAYOUT")  # "NCHW" or "NHWC,OHWI": for measuring layouts
    if override:
        return None if override.upper() == "NCHW" else tuple(override.split(","))
    return CPU_CONV_LAYOUT if target.kind.name == "llvm" else None


def layout_passes(target) -> list:
    """ConvertLayout, then fold the weight transposes it leaves into the constants.

    Run it after BatchNorm folding and constant folding: TVM 0.27's ConvertLayout crashes
    (segfault) on a conv2d whose weight is still an expression rather than a constant.
    """
    import_tvm()
    from tvm import relax

    layout = conv_layout(target)
    if layout is None:
        return []
    return [relax.transform.ConvertLayout({"relax.nn.conv2d": list(layout)}),
            relax.transform.FoldConstant(), relax.transform.CanonicalizeBindings()]
