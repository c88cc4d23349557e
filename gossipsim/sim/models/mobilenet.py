"""MobileNetV2 of Sandler et al. 2018, arXiv:1801.04381.

Paper: "MobileNetV2: Inverted Residuals and Linear Bottlenecks".
The CIFAR variant of kuangliu/pytorch-cifar, block for block, so published CIFAR numbers are comparable:
the stem conv and the second stage run at stride 1 (32x32 inputs end at 4x4), ReLU rather than ReLU6,
BatchNorm everywhere, the expansion 1x1 conv kept even when the expansion factor is 1, and a 1x1 conv +
BN projection shortcut on stride-1 blocks that change the width (the paper has no shortcut there).
2,296,922 parameters for 10 classes at width_mult=1. A global average pool replaces the fixed 4x4 pool,
so other input sizes work too. width_mult scales every width, rounded to a multiple of 8 as in the
paper's reference code; the last 1x1 conv keeps 1280 channels unless width_mult > 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gossipsim.errors import ConfigError

from ._common import check_positive

# (expansion t, output channels c, blocks n, first stride s), Table 2 of the paper with the first
# stride-2 stage set to stride 1, as kuangliu/pytorch-cifar does for 32x32 inputs.
CFG: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _divisible(v: float, divisor: int = 8) -> int:
    """Round a scaled width to a multiple of divisor, never below 90% of v (the paper's reference code)."""
    out = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * v else out


class InvertedResidual(nn.Module):
    """Expand 1x1 -> depthwise 3x3 -> linear project 1x1 (Sandler et al. 2018, arXiv:1801.04381)."""

    def __init__(self, in_planes: int, out_planes: int, expansion: int, stride: int) -> None:
        super().__init__()
        planes = expansion * in_planes
        self.stride = stride
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, groups=planes, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride == 1 and in_planes != out_planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, 1, bias=False), nn.BatchNorm2d(out_planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))  # (B, t * in_planes, H, W)
        out = F.relu(self.bn2(self.conv2(out)))  # (B, t * in_planes, H / stride, W / stride)
        out = self.bn3(self.conv3(out))  # (B, out_planes, H / stride, W / stride), no ReLU: linear bottleneck
        # self.stride is a Python int fixed at build time, so this branch never looks at tensor values.
        return out + self.shortcut(x) if self.stride == 1 else out


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al. 2018, arXiv:1801.04381), CIFAR variant of kuangliu/pytorch-cifar."""

    def __init__(self, in_channels: int, num_classes: int, width_mult: float) -> None:
        super().__init__()
        stem = _divisible(32 * width_mult)
        last = _divisible(1280 * max(1.0, width_mult))
        self.conv1 = nn.Conv2d(in_channels, stem, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        blocks: list[nn.Module] = []
        in_planes = stem
        for t, c, n, s in CFG:
            out_planes = _divisible(c * width_mult)
            for stride in [s] + [1] * (n - 1):
                blocks.append(InvertedResidual(in_planes, out_planes, t, stride))
                in_planes = out_planes
        self.layers = nn.Sequential(*blocks)
        self.conv2 = nn.Conv2d(in_planes, last, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(last)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))  # (B, 32, H, W) at width_mult=1
        h = self.layers(h)  # (B, 320, H / 8, W / 8)
        h = F.relu(self.bn2(self.conv2(h)))  # (B, 1280, H / 8, W / 8)
        h = torch.flatten(self.pool(h), 1)  # (B, 1280)
        return self.linear(h)  # (B, num_classes)


def mobilenet_v2(
    in_channels: int = 3,
    num_classes: int = 10,
    width_mult: float = 1.0,
    image_size: int = 32,
) -> MobileNetV2:
    """MobileNetV2 (Sandler et al. 2018, arXiv:1801.04381), kuangliu/pytorch-cifar variant; see module doc.

    image_size is accepted for a uniform zoo signature; global pooling makes the network independent of it.
    """
    check_positive(in_channels=in_channels, num_classes=num_classes, image_size=image_size)
    if isinstance(width_mult, bool) or not isinstance(width_mult, (int, float)) or not width_mult > 0:
        raise ConfigError(f"width_mult must be a positive number, got {width_mult!r}")
    return MobileNetV2(in_channels, num_classes, float(width_mult))
