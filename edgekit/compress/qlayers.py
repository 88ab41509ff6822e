"""The int8 layers that quantize.py swaps in (module-level classes, so models pickle)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _qrange(unsigned: bool) -> tuple[int, int]:
    return (0, 255) if unsigned else (-128, 127)


def quantize_weight(weight, granularity: str):
    """Symmetric int8 weights (-127..127) and float scales ([out] per channel, [] per tensor)."""
    w = weight.detach().float()
    if granularity == "per_channel":
        amax = w.reshape(w.shape[0], -1).abs().amax(dim=1)
    else:
        amax = w.abs().amax()
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    view = scale.reshape(-1, *([1] * (w.dim() - 1))) if scale.dim() else scale
    q = torch.clamp(torch.round(w / view), -127, 127).to(torch.int8)
    return q, scale.float()


class _QuantMixin:
    def _init_quant(self, layer, granularity: str, act_scale: float, act_unsigned: bool, quantize_act: bool):
        q, scale = quantize_weight(layer.weight, granularity)
        self.register_buffer("weight_int8", q)
        self.register_buffer("weight_scale", scale)
        bias = layer.bias.detach().clone() if layer.bias is not None else torch.zeros(layer.weight.shape[0])
        self.register_buffer("bias", bias.float())
        self.register_buffer("act_scale", torch.tensor(float(act_scale)))
        # Activations are quantized as x * (1 / s), not x / s: the compiled kernels run this in
        # every layer's epilogue, where a vector divide has about 10 times a multiply's reciprocal
        # throughput (MobileNetV2's int8 kernels summed 7-9 ms before, 5.5 ms after, on a loaded host).
        # Stored, so torch and TVM multiply by the very same float32.
        self.register_buffer("act_inv_scale", torch.tensor(1.0 / float(act_scale), dtype=torch.float32))
        self.act_qmin, self.act_qmax = _qrange(act_unsigned)
        self.quantize_act = quantize_act
        self.granularity = granularity

    def dequantized_weight(self):
        w = self.weight_int8.to(torch.float32)
        if self.weight_scale.dim() == 0:
            return w * self.weight_scale
        return w * self.weight_scale.reshape(-1, *([1] * (w.dim() - 1)))

    def _quant_act(self, x):
        if not self.quantize_act:
            return x, None
        inverse = getattr(self, "act_inv_scale", None)  # absent in models pickled before it existed
        scaled = x / self.act_scale if inverse is None else x * inverse
        return torch.clamp(torch.round(scaled), self.act_qmin, self.act_qmax), self.act_scale


class QuantConv2d(_QuantMixin, nn.Module):
    _edgekit_macs = "conv2d"  # count_macs treats it as a conv

    def __init__(self, conv: nn.Conv2d, *, granularity: str, act_scale: float, act_unsigned: bool,
                 quantize_act: bool = True):
        nn.Module.__init__(self)
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride, self.padding = conv.kernel_size, conv.stride, conv.padding
        self.dilation, self.groups = conv.dilation, conv.groups
        # EfficientNet's Conv2dStaticSamePadding pads in a module of its own before the conv.
        padding = getattr(conv, "static_padding", None)
        self.static_padding = padding if isinstance(padding, nn.Module) else nn.Identity()
        self._init_quant(conv, granularity, act_scale, act_unsigned, quantize_act)

    def forward(self, x):
        padding = getattr(self, "static_padding", None)  # absent in models pickled before it existed
        if padding is not None:
            x = padding(x)
        xq, s = self._quant_act(x)
        y = F.conv2d(xq, self.dequantized_weight(), None, self.stride, self.padding, self.dilation, self.groups)
        if s is not None:
            y = y * s
        return y + self.bias.reshape(1, -1, 1, 1)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"groups={self.groups}, int8 {self.granularity}")


class QuantLinear(_QuantMixin, nn.Module):
    _edgekit_macs = "linear"

    def __init__(self, linear: nn.Linear, *, granularity: str, act_scale: float, act_unsigned: bool,
                 quantize_act: bool = True):
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self._init_quant(linear, granularity, act_scale, act_unsigned, quantize_act)

    def forward(self, x):
        xq, s = self._quant_act(x)
        y = F.linear(xq, self.dequantized_weight(), None)
        if s is not None:
            y = y * s
        return y + self.bias

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}, int8 {self.granularity}"
