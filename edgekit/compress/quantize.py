"""Post-training int8 quantization: BN folded, int8 weights with per-channel (or per-tensor)
symmetric scales, activation scales calibrated on real data (min-max or percentile).

Each Conv2d/Linear becomes a :class:`QuantConv2d`/:class:`QuantLinear` that stores its
weights as int8 plus float scales and computes, in plain torch ops that torch.export and
TVM 0.27's Relax torch frontend both handle (mul, round, clamp, to, conv2d/linear):

    x_q = clamp(round(x * (1 / s_x)), qmin, qmax)    # the activation on the int8 grid (1/s_x stored)
    w   = w_int8.float() * s_w[c]                    # per output channel c
    y   = conv(x_q, w) * s_x + b

i.e. inference that is numerically the int8 model: every weight and every input
activation of a conv/linear takes one of 256 values, and torch runs it as is.
compile_model recognises this chain and rewrites it into int8 x int8 -> int32 kernels
(edgekit.compile.graph_passes.integer_quantized_ops); without that rewrite TVM would fold
the weight dequantize into an fp32 constant and run float kernels with the same results.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from edgekit.errors import RecipeError

GRANULARITIES = ("per_channel", "per_tensor")
CALIBRATIONS = ("minmax", "percentile")
# The output check of a compiled int8 model (compile_model's tolerance): a rounding step that lands
# differently in TVM and in torch moves a logit by one quantization step, so allow that much.  Used by
# `edgekit compress --target`, compile_model(CompressedModel) and the optimize loop alike.
INT8_CHECK_TOLERANCE = {"atol": 5e-2, "rtol": 1e-2}


@dataclass(frozen=True, kw_only=True)
class QuantizeConfig:
    granularity: str = "per_channel"  # of the weight scales (axis 0 = output channels)
    calibration: str = "minmax"  # activation range: min-max or percentile of |x|
    percentile: float = 99.99
    calibration_size: int = 512  # images from the training data
    quantize_input: bool = True  # also put the first layer's input on the int8 grid
    bits: int = 8

    def __post_init__(self):
        if self.granularity not in GRANULARITIES:
            raise RecipeError(f"unknown quantize granularity {self.granularity!r}; "
                              f"available: {', '.join(GRANULARITIES)}")
        if self.calibration not in CALIBRATIONS:
            raise RecipeError(f"unknown quantize calibration {self.calibration!r}; "
                              f"available: {', '.join(CALIBRATIONS)}")
        if not 50.0 < self.percentile <= 100.0:
            raise RecipeError(f"quantize percentile must be in (50, 100], got {self.percentile!r}")
        if self.bits != 8:
            raise RecipeError(f"quantize bits: only 8 is supported, got {self.bits!r}")
        if self.calibration_size < 1:
            raise RecipeError(f"quantize calibration_size must be >= 1, got {self.calibration_size!r}")


def quantize_weight(weight, granularity: str):
    """Symmetric int8 weights (-127..127) and float scales ([out] per channel, [] per tensor)."""
    from edgekit.compress.qlayers import quantize_weight as _qw

    return _qw(weight, granularity)


def quant_classes():
    """(QuantConv2d, QuantLinear); they live in qlayers.py, which imports torch."""
    from edgekit.compress.qlayers import QuantConv2d, QuantLinear

    return QuantConv2d, QuantLinear


# ---------------------------------------------------------------- BN folding

def fold_batchnorm(model):
    """A copy of ``model`` with every BatchNorm that directly follows a conv folded into it.

    The BN becomes ``nn.Identity``; found on the FX graph, so only a BN whose input is the
    conv's sole use is folded (otherwise the conv output is needed unnormalised elsewhere).
    """
    import torch
    import torch.fx as fx
    import torch.nn as nn

    from edgekit.errors import UnsupportedOperatorError

    model = copy.deepcopy(model).eval()
    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds here
        raise UnsupportedOperatorError(
            f"cannot trace {type(model).__name__} with torch.fx to fold BatchNorm: {type(exc).__name__}: {exc}",
            hint="data-dependent Python control flow cannot be traced; move it out of forward()") from None
    modules = dict(model.named_modules())
    with torch.no_grad():
        for node in gm.graph.nodes:
            if node.op != "call_module" or not isinstance(modules.get(node.target), (nn.BatchNorm2d,)):
                continue
            src = node.args[0]
            if not (isinstance(src, fx.Node) and src.op == "call_module" and len(src.users) == 1
                    and isinstance(modules.get(src.target), nn.Conv2d)):
                continue
            conv, bn = modules[src.target], modules[node.target]
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else \
                1.0 / torch.sqrt(bn.running_var + bn.eps)
            shift = (bn.bias if bn.affine else 0.0) - bn.running_mean * scale
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            conv.weight = nn.Parameter(conv.weight * scale.reshape(-1, 1, 1, 1))
            conv.bias = nn.Parameter(bias * scale + shift)
            _set_module(model, node.target, nn.Identity())
    return model


def _set_module(model, dotted: str, new):
    parent_name, _, attr = dotted.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


# ---------------------------------------------------------------- calibration + swap

class _Observer:
    """Running min/max of a layer's input and a capped sample of |x| for percentiles."""

    def __init__(self, keep: int = 200_000):
        self.min = float("inf")
        self.max = float("-inf")
        self.samples = []
        self.kept = 0
        self.keep = keep

    def __call__(self, module, inputs):
        import torch

        x = inputs[0].detach()
        self.min = min(self.min, float(x.min()))
        self.max = max(self.max, float(x.max()))
        flat = x.abs().flatten()
        if self.kept < self.keep:
            take = flat[torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(self.kept))[
                :min(flat.numel(), 20_000)]]
            self.samples.append(take)
            self.kept += take.numel()

    def scale(self, config: QuantizeConfig) -> tuple[float, bool]:
        import torch

        unsigned = self.min >= 0.0  # after a ReLU: use 0..255 instead of wasting the sign bit
        if config.calibration == "percentile" and self.samples:
            amax = float(torch.quantile(torch.cat(self.samples)[:1_000_000].float(), config.percentile / 100.0))
        else:
            amax = max(abs(self.min), abs(self.max))
        amax = amax if amax > 0 else 1.0
        return amax / (255.0 if unsigned else 127.0), unsigned


def quantize_model(model, calibration_data, config: QuantizeConfig = QuantizeConfig()):
    """A quantized copy of ``model``: BN folded, every Conv2d/Linear replaced by its int8 twin."""
    import torch
    import torch.nn as nn

    QuantConv2d, QuantLinear = quant_classes()
    folded = fold_batchnorm(model)
    layers = {n: m for n, m in folded.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))
              and _swappable(folded, n, m)}
    if not layers:
        raise RecipeError("quantize: the model has no Conv2d or Linear layer to quantize")
    observers = {n: _Observer() for n in layers}
    hooks = [layers[n].register_forward_pre_hook(observers[n]) for n in layers]
    data = calibration_data.subset(config.calibration_size, seed=0) if hasattr(calibration_data, "subset") \
        else calibration_data
    try:
        with torch.no_grad():
            for x, _ in data.batches(256):
                folded(x)
    finally:
        for h in hooks:
            h.remove()
    first = next(iter(layers))
    for name, layer in layers.items():
        scale, unsigned = observers[name].scale(config)
        quantize_act = config.quantize_input or name != first
        cls = QuantConv2d if isinstance(layer, nn.Conv2d) else QuantLinear
        _set_module(folded, name, cls(layer, granularity=config.granularity, act_scale=scale,
                                      act_unsigned=unsigned, quantize_act=quantize_act))
    return folded.eval()


def _swappable(model, name: str, layer) -> bool:
    """Whether ``layer`` can be replaced by its int8 twin without changing what the model computes.

    Not when its parent reads the weights itself (nn.MultiheadAttention's out_proj goes through
    F.multi_head_attention_forward, never through the Linear's forward), nor when a subclass's own
    forward does more than the convolution, unless it is the "same" padding of EfficientNet's
    Conv2dStaticSamePadding (a ``static_padding`` module before the conv), which QuantConv2d keeps.
    Such layers stay float, with a warning naming them.
    """
    import warnings

    import torch.nn as nn

    parent_name = name.rpartition(".")[0]
    parent = model.get_submodule(parent_name) if parent_name else None
    if isinstance(parent, nn.MultiheadAttention):
        return False
    base = nn.Conv2d if isinstance(layer, nn.Conv2d) else nn.Linear
    if type(layer).forward is base.forward or isinstance(getattr(layer, "static_padding", None), nn.Module):
        return True
    warnings.warn(f"quantize: {name} ({type(layer).__name__}) has its own forward(); it stays float",
                  stacklevel=3)
    return False


def weight_quantization_error(layer, granularity: str):
    """(max |w - dequant(w)| per output channel, scale per output channel) for a float layer."""
    q, scale = quantize_weight(layer.weight, granularity)
    w = layer.weight.detach().float()
    s = scale.reshape(-1, *([1] * (w.dim() - 1))) if scale.dim() else scale
    err = (w - q.float() * s).abs().reshape(w.shape[0], -1).amax(dim=1)
    per_channel_scale = scale if scale.dim() else scale.expand(w.shape[0])
    return err, per_channel_scale
