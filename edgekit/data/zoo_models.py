"""The zoo's architectures: small edge-style CNNs for 1x28x28 inputs, 10 classes.

Widths are chosen so that the 3x3 convolutions dominate the compute: removing half
of the channels then removes about three quarters of the MACs, and untuned TVM code
(which is compute-bound at these sizes) gets measurably faster, not just smaller.
"""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F


def _conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv-BN, identity or 1x1-projection shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv_bn(cin, cout, 3, stride)
        self.conv2 = _conv_bn(cout, cout, 3, 1)
        self.shortcut = _conv_bn(cin, cout, 1, stride) if (stride != 1 or cin != cout) else nn.Identity()

    def forward(self, x):
        out = F.relu(self.conv1(x))
        return F.relu(self.conv2(out) + self.shortcut(x))


class ResNetCNN(nn.Module):
    """stem 3x3/2 -> [block w] at 14x14 -> [block 2w /2, block 2w] at 7x7 -> avgpool -> fc."""

    def __init__(self, width: int = 24, num_classes: int = 10):
        super().__init__()
        w = width
        self.stem = _conv_bn(1, w, 3, 2)
        self.layer1 = BasicBlock(w, w)
        self.layer2 = nn.Sequential(BasicBlock(w, 2 * w, 2), BasicBlock(2 * w, 2 * w))
        self.fc = nn.Linear(2 * w, num_classes)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = self.layer2(self.layer1(x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear project; residual when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        self.expand = _conv_bn(cin, hidden, 1)
        self.depthwise = _conv_bn(hidden, hidden, 3, stride, groups=hidden)
        self.project = _conv_bn(hidden, cout, 1)

    def forward(self, x):
        out = F.relu6(self.expand(x))
        out = F.relu6(self.depthwise(out))
        out = self.project(out)
        return x + out if self.use_residual else out


class MobileNetV2CNN(nn.Module):
    def __init__(self, width: int = 16, expand: int = 4, num_classes: int = 10):
        super().__init__()
        w = width
        self.stem = _conv_bn(1, w, 3, 2)  # 14x14
        self.blocks = nn.Sequential(
            InvertedResidual(w, w, 1, expand),
            InvertedResidual(w, 2 * w, 2, expand),  # 7x7
            InvertedResidual(2 * w, 2 * w, 1, expand),
            InvertedResidual(2 * w, 2 * w, 1, expand),
        )
        self.head = _conv_bn(2 * w, 8 * w, 1)
        self.fc = nn.Linear(8 * w, num_classes)

    def forward(self, x):
        x = F.relu6(self.stem(x))
        x = self.blocks(x)
        x = F.relu6(self.head(x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)
