"""Small seeded models, one per op family of today's edge networks, for the compile coverage tests (issue 11).

Each family is a tiny ``nn.Module`` built around the ops that family brings (a ShuffleNet unit, a
ConvNeXt block, an attention layer, ...), with example inputs.  Weights come from a fixed seed and
BatchNorm layers get real statistics, so a compile that mis-handles an op shows up as a numeric
difference, not only as a crash.  ``build_family(name)`` returns ``(model in eval mode, example
inputs as a tuple of tensors)``; ``export_family(name, directory)`` writes both forms a user would
hand edgekit: ``NAME.pt2`` (``torch.export.save``) and ``NAME.onnx`` (``torch.onnx.export``, opset 17).

    from edgekit.testing.op_families import FAMILIES, build_family, export_family
    model, inputs = build_family("shufflenet-unit")
    paths = export_family("shufflenet-unit", tmp_path)         # {"pt2": ..., "onnx": ...}

The models are kept small (a few thousand parameters, 16x16 to 32x32 maps) so that tests can
compile every family from both routes in a couple of minutes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from edgekit.testing.architectures import randomize_batchnorm

DEFAULT_SEED = 0
ONNX_OPSET = 17


def _image(channels: int = 8, size: int = 16) -> tuple[int, ...]:
    return (1, channels, size, size)


def _conv_bn_act(cin, cout, k=3, stride=1, groups=1, act: Callable[[], nn.Module] | None = nn.ReLU):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


# ------------------------------------------------------------------------------------------ activations

class HardSwishNet(nn.Module):
    """MobileNetV3's activations: hard-swish after a conv, a hard-sigmoid gate, both as modules and functions."""

    def __init__(self):
        super().__init__()
        self.conv1 = _conv_bn_act(8, 16, act=nn.Hardswish)
        self.conv2 = nn.Conv2d(16, 16, 1)

    def forward(self, x):
        y = self.conv1(x)
        return F.hardswish(self.conv2(y)) * F.hardsigmoid(y) + nn.functional.relu6(y)


class SiLUNet(nn.Module):
    """EfficientNet's SiLU (swish), as a module and as x * sigmoid(x)."""

    def __init__(self):
        super().__init__()
        self.conv1 = _conv_bn_act(8, 16, act=nn.SiLU)
        self.conv2 = nn.Conv2d(16, 8, 3, padding=1)

    def forward(self, x):
        y = self.conv2(self.conv1(x))
        return y * torch.sigmoid(y)


class SqueezeExcitation(nn.Module):
    """MobileNetV3/EfficientNet SE: global pool, two 1x1 convs, a sigmoid gate multiplied back."""

    def __init__(self, channels: int = 16, squeeze: int = 4, gate: Callable[[], nn.Module] = nn.Hardsigmoid):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.gate = gate()

    def forward(self, x):
        return x * self.gate(self.fc2(F.relu(self.fc1(self.pool(x)))))


class SENet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = _conv_bn_act(8, 16)
        self.se1 = SqueezeExcitation(16, 4, nn.Hardsigmoid)
        self.dw = _conv_bn_act(16, 16, groups=16, act=nn.SiLU)
        self.se2 = SqueezeExcitation(16, 4, nn.Sigmoid)

    def forward(self, x):
        return self.se2(self.dw(self.se1(self.stem(x))))


# ------------------------------------------------------------------------------------------ ConvNeXt

class ConvNeXtBlock(nn.Module):
    """ConvNeXt (Liu et al. 2022): 7x7 depthwise, channels-last LayerNorm, Linear-GELU-Linear, layer scale."""

    def __init__(self, dim: int = 16):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.rand(dim) + 0.5)

    def forward(self, x):
        y = self.dwconv(x).permute(0, 2, 3, 1)  # N C H W -> N H W C
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y)))) * self.gamma
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 4, 4)  # the "patchify" stem
        self.stem_norm = nn.LayerNorm(16, eps=1e-6)
        self.block = ConvNeXtBlock(16)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x)
        x = self.stem_norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = self.block(x)
        return self.head(x.mean((-2, -1)))


# ------------------------------------------------------------------------------------------ attention

class MHANet(nn.Module):
    """``nn.MultiheadAttention`` (packed q/k/v), self-attention, batch first; the weights output too."""

    def __init__(self, dim: int = 32, heads: int = 4):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        out, weights = self.attn(x, x, x, need_weights=True)
        return self.proj(out), weights


class TransformerEncoderNet(nn.Module):
    """``nn.TransformerEncoderLayer`` twice: post-norm ReLU and pre-norm GELU (the ViT form)."""

    def __init__(self, dim: int = 32, heads: int = 4):
        super().__init__()
        self.post = nn.TransformerEncoderLayer(dim, heads, 64, dropout=0.0, batch_first=True)
        self.pre = nn.TransformerEncoderLayer(dim, heads, 64, dropout=0.0, activation="gelu", batch_first=True,
                                              norm_first=True)

    def forward(self, x):
        return self.pre(self.post(x))


class SDPANet(nn.Module):
    """``F.scaled_dot_product_attention`` on split heads, plain and causal."""

    def __init__(self, dim: int = 32, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v) + F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(b, n, d))


class PatchEmbedNet(nn.Module):
    """ViT patch embedding: strided conv, flatten, transpose, a class token and position embeddings."""

    def __init__(self, dim: int = 32, patch: int = 8, resolution: int = 32):
        super().__init__()
        tokens = (resolution // patch) ** 2
        self.proj = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.5)
        self.pos_embed = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.5)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        x = self.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.norm(x)


# ------------------------------------------------------------------------------------------ ShuffleNet, groups

def channel_shuffle(x, groups: int):
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).contiguous().view(b, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit (Ma et al. 2018): chunk in two, 1x1-dw3x3-1x1 on one half, concat, channel shuffle."""

    def __init__(self, channels: int = 16):
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(_conv_bn_act(half, half, 1), _conv_bn_act(half, half, 3, groups=half, act=None),
                                    _conv_bn_act(half, half, 1))

    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat([a, self.branch(b)], dim=1), 2)


class ShuffleNet(nn.Module):
    """Two ShuffleNetV2 units, a grouped conv, an uneven split and a view/transpose shuffle of a part."""

    def __init__(self):
        super().__init__()
        self.stem = _conv_bn_act(3, 16, stride=2)
        self.unit1 = ShuffleUnit(16)
        self.unit2 = ShuffleUnit(16)
        self.grouped = _conv_bn_act(16, 32, 3, groups=4)  # ShuffleNetV1's grouped conv
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        x = self.grouped(self.unit2(self.unit1(self.stem(x))))
        left, mid, right = torch.split(x, [8, 16, 8], dim=1)
        x = torch.cat([right, channel_shuffle(mid, 4), left], dim=1)
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


class ChannelShuffleModule(nn.Module):
    """``nn.ChannelShuffle`` (torch.export writes it as view/permute) and ``torch.native_channel_shuffle``
    called directly (which stays an op of its own); torch has no ONNX export for either: .pt2 only."""

    def __init__(self):
        super().__init__()
        self.conv = _conv_bn_act(8, 16, 3, groups=4)
        self.shuffle = nn.ChannelShuffle(4)
        self.conv2 = nn.Conv2d(16, 16, 1, groups=4)

    def forward(self, x):
        return self.conv2(torch.native_channel_shuffle(self.shuffle(self.conv(x)), 2))


class GroupedConvNet(nn.Module):
    """Grouped convolutions (ResNeXt cardinality 4, and groups == channels / 2), strided and dilated."""

    def __init__(self):
        super().__init__()
        self.c1 = _conv_bn_act(8, 16, 3, groups=4)
        self.c2 = nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=8)
        self.c3 = nn.Conv2d(16, 32, 3, padding=2, dilation=2, groups=2)

    def forward(self, x):
        return self.c3(F.relu(self.c2(self.c1(x))))


# ------------------------------------------------------------------------------------------ audio / 1-D

class KeywordSpotter(nn.Module):
    """A 1-D keyword spotter (MFCC frames in): conv1d stack, temporal max via ``amax``, a classifier."""

    def __init__(self, features: int = 10, classes: int = 12):
        super().__init__()
        self.conv1 = nn.Conv1d(features, 32, 5, padding=2)
        self.bn1 = nn.BatchNorm1d(32)
        self.conv2 = nn.Conv1d(32, 32, 3, stride=2, padding=1, groups=4)
        self.conv3 = nn.Conv1d(32, 32, 3, padding=2, dilation=2)
        self.fc = nn.Linear(32, classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.conv3(F.relu(self.conv2(x))))
        return self.fc(torch.amax(x, dim=-1))


class ReductionsNet(nn.Module):
    """amax / max (values and indices' values) / min / mean / sum over one, several and negative dims."""

    def forward(self, x):
        a = torch.amax(x, dim=(2, 3))  # (1, C)
        b = torch.amin(x, dim=(1, -1), keepdim=True).flatten(1)  # (1, H)
        c = x.max(dim=1).values.mean(dim=(-1, -2))  # (1,)
        d = x.min(dim=-1)[0].sum(dim=1)  # (1, H)
        e = x.mean(dim=(0, 2), keepdim=True).flatten(1)  # (1, C*W)
        f = torch.amax(x, dim=1) - torch.mean(x, dim=1)
        return torch.cat([a, b, c[:, None], d, e, f.flatten(1), x.amax().reshape(1, 1)], dim=1)


# ------------------------------------------------------------------------------------------ pooling, resize

class AdaptivePoolNet(nn.Module):
    """Adaptive pooling to sizes that divide the input (average and max, 2-D and 1-D): ONNX can express these."""

    def forward(self, x):
        a = F.adaptive_avg_pool2d(x, (3, 4)).flatten(1)
        b = F.adaptive_max_pool2d(x, (2, 2)).flatten(1)
        c = F.adaptive_avg_pool2d(x, 1).flatten(1)
        d = F.adaptive_avg_pool1d(x.flatten(2), 8).flatten(1)
        return torch.cat([a, b, c, d], dim=1)


class AdaptivePoolUnevenNet(nn.Module):
    """Adaptive pooling to any size (overlapping, uneven windows).  torch.onnx.export refuses these
    ("output size that are not factor of input size"), so this family has the .pt2 route only."""

    def forward(self, x):
        a = F.adaptive_avg_pool2d(x, (3, 5)).flatten(1)
        b = F.adaptive_max_pool2d(x, (2, 3)).flatten(1)
        c = F.adaptive_avg_pool1d(x.flatten(2), 7).flatten(1)
        return torch.cat([a, b, c], dim=1)


class UpsampleDecoder(nn.Module):
    """A segmentation-style decoder: transposed convs, nearest and bilinear resizes, a skip connection."""

    def __init__(self):
        super().__init__()
        self.down = _conv_bn_act(8, 16, stride=2)
        self.up1 = nn.ConvTranspose2d(16, 16, 4, stride=2, padding=1)
        self.up2 = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.head = nn.Conv2d(8, 4, 1)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")

    def forward(self, x):
        y = self.down(x)  # 8x8
        y = F.relu(self.up1(y)) + self.upsample(y)  # 16x16
        z = self.head(F.relu(self.up2(y)))  # 32x32
        bilinear = F.interpolate(y[:, :4], scale_factor=2, mode="bilinear", align_corners=False)
        aligned = F.interpolate(y[:, 4:8], size=(32, 32), mode="bilinear", align_corners=True)
        nearest = F.interpolate(x[:, :4], size=(32, 32), mode="nearest")
        return z + bilinear + aligned + nearest


# ------------------------------------------------------------------------------------------ re-parameterizable

class RepVGGBlock(nn.Module):
    """RepVGG (Ding et al. 2021) training-time block: 3x3+BN, 1x1+BN and BN identity branches, summed."""

    def __init__(self, channels: int = 16):
        super().__init__()
        self.dense = _conv_bn_act(channels, channels, 3, act=None)
        self.one = _conv_bn_act(channels, channels, 1, act=None)
        self.identity = nn.BatchNorm2d(channels)

    def forward(self, x):
        return F.relu(self.dense(x) + self.one(x) + self.identity(x))


class MobileOneBlock(nn.Module):
    """MobileOne-style (Vasu et al. 2023): k over-parameterized depthwise branches plus scale branch, then 1x1."""

    def __init__(self, channels: int = 16, k: int = 2):
        super().__init__()
        self.branches = nn.ModuleList(_conv_bn_act(channels, channels, 3, groups=channels, act=None)
                                      for _ in range(k))
        self.scale = _conv_bn_act(channels, channels, 1, groups=channels, act=None)
        self.pw = _conv_bn_act(channels, channels, 1)

    def forward(self, x):
        y = self.scale(x) + sum(b(x) for b in self.branches)
        return self.pw(F.relu(y))


class ReparamNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = _conv_bn_act(8, 16)
        self.rep = RepVGGBlock(16)
        self.mobileone = MobileOneBlock(16)

    def forward(self, x):
        return self.mobileone(self.rep(self.stem(x)))


# ------------------------------------------------------------------------------------------ several in / out

class MultiInputTupleOutput(nn.Module):
    """Two inputs (an image and a feature vector), a tuple of three outputs of different ranks."""

    def __init__(self):
        super().__init__()
        self.conv = _conv_bn_act(8, 16)
        self.fc = nn.Linear(6, 16)
        self.cls = nn.Linear(16, 5)

    def forward(self, image, features):
        y = self.conv(image)
        pooled = y.mean((2, 3)) + self.fc(features)
        return self.cls(pooled), y, torch.sigmoid(pooled)


class DictOutput(nn.Module):
    """Detection-head style: a dict of tensors out (boxes, scores), from one feature map."""

    def __init__(self):
        super().__init__()
        self.body = _conv_bn_act(8, 16)
        self.boxes = nn.Conv2d(16, 4, 1)
        self.scores = nn.Conv2d(16, 3, 1)

    def forward(self, x):
        y = self.body(x)
        return {"boxes": self.boxes(y).flatten(2).transpose(1, 2), "scores": self.scores(y).softmax(1)}


# ------------------------------------------------------------------------------------------ the registry

# name -> (factory, input shapes)
_FAMILIES: dict[str, tuple[Callable[[], nn.Module], tuple[tuple[int, ...], ...]]] = {
    "hardswish": (HardSwishNet, (_image(),)),
    "silu": (SiLUNet, (_image(),)),
    "squeeze-excitation": (SENet, (_image(),)),
    "convnext-block": (ConvNeXtNet, ((1, 3, 32, 32),)),
    "multihead-attention": (MHANet, ((1, 10, 32),)),
    "transformer-encoder": (TransformerEncoderNet, ((1, 10, 32),)),
    "sdpa": (SDPANet, ((1, 10, 32),)),
    "patch-embedding": (PatchEmbedNet, ((1, 3, 32, 32),)),
    "shufflenet-unit": (ShuffleNet, ((1, 3, 32, 32),)),
    "channel-shuffle-module": (ChannelShuffleModule, (_image(),)),
    "grouped-conv": (GroupedConvNet, (_image(),)),
    "keyword-spotter": (KeywordSpotter, ((1, 10, 49),)),
    "reductions": (ReductionsNet, ((1, 6, 5, 7),)),
    "adaptive-pool": (AdaptivePoolNet, ((1, 4, 12, 16),)),
    "adaptive-pool-uneven": (AdaptivePoolUnevenNet, ((1, 4, 11, 13),)),
    "upsample-decoder": (UpsampleDecoder, (_image(),)),
    "reparam-blocks": (ReparamNet, (_image(),)),
    "multi-input-tuple-output": (MultiInputTupleOutput, (_image(), (1, 6))),
    "dict-output": (DictOutput, (_image(),)),
}
FAMILIES = tuple(_FAMILIES)
# Families torch cannot export to ONNX at all (no ONNX form for the op): compiled from .pt2 only.
PT2_ONLY = frozenset({"adaptive-pool-uneven", "channel-shuffle-module"})


def routes(name: str) -> tuple[str, ...]:
    """The model files a user can make for family ``name``: ("pt2", "onnx") or ("pt2",)."""
    return ("pt2",) if name in PT2_ONLY else ("pt2", "onnx")


def build_family(name: str, *, seed: int = DEFAULT_SEED) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """``(model in eval mode, example inputs)`` for op family ``name`` (see FAMILIES)."""
    if name not in _FAMILIES:
        raise KeyError(f"unknown op family '{name}'; available: {', '.join(FAMILIES)}")
    factory, shapes = _FAMILIES[name]
    torch.manual_seed(seed)
    model = factory().eval()
    randomize_batchnorm(model, seed)
    generator = torch.Generator().manual_seed(seed + 2)
    inputs = tuple(torch.randn(*shape, generator=generator) for shape in shapes)
    return model, inputs


def input_names(name: str) -> list[str]:
    return [f"input{i}" for i in range(len(_FAMILIES[name][1]))]


def export_family(name: str, directory: str | Path, *, seed: int = DEFAULT_SEED) -> dict[str, Path]:
    """Write ``NAME.pt2`` and ``NAME.onnx`` (opset 17) into ``directory`` as a user would: {route: path}
    (no .onnx for the PT2_ONLY families)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model, inputs = build_family(name, seed=seed)
    pt2 = directory / f"{name}.pt2"
    onnx_path = directory / f"{name}.onnx"
    torch.export.save(torch.export.export(model, inputs), pt2)
    if "onnx" not in routes(name):
        return {"pt2": pt2}
    export_onnx(model, inputs, onnx_path, input_names=input_names(name))
    return {"pt2": pt2, "onnx": onnx_path}


def export_onnx(model: nn.Module, inputs, path, *, input_names=None) -> None:
    """``torch.onnx.export`` at opset 17 with the TorchScript exporter (what most user scripts still call)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, tuple(inputs), str(path), dynamo=False, opset_version=ONNX_OPSET,
                          input_names=input_names)
