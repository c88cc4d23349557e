"""CIFAR-style ResNets of He et al. 2016, "Deep Residual Learning for Image Recognition", arXiv:1512.03385.

resnet20 is the paper's CIFAR-10 network (Sec. 4.2): a 3x3 stem and three stages of three BasicBlocks at
16/32/64 channels. resnet18 is the ImageNet layout adapted to 32x32 inputs the way kuangliu/pytorch-cifar
does it (3x3 stem at stride 1, no max pool), 4 stages of 2 BasicBlocks at 64/128/256/512 channels.

Both use the option-B shortcut: a 1x1 conv + norm projection wherever the shape changes, identity
elsewhere. The paper's CIFAR runs used option A (zero-padded identity); option B costs resnet20 another
2,752 parameters (272,474 rather than 269,722 with BatchNorm, 10 classes) and is what the CHOCO-SGD code
(epfml/ChocoSGD, pcode/models/resnet.py) ships, with the same fan-out He init of the convs, so the two
networks match layer for layer. A global average pool before the classifier makes both size-agnostic.

norm: "bn" (BatchNorm2d, default momentum), "gn" (GroupNorm with min(32, channels // 4) groups, i.e.
four channels a group, or gn_groups groups everywhere when given), "none" (Identity; the convs then get
a bias, since nothing else supplies the offset).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import check_norm, check_positive, norm2d


class BasicBlock(nn.Module):
    """The two-conv residual block of He et al. 2016 (arXiv:1512.03385), option-B projection shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int, norm: str, gn_groups: int | None) -> None:
        super().__init__()
        bias = norm == "none"
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=bias)
        self.norm1 = norm2d(norm, planes, gn_groups)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=bias)
        self.norm2 = norm2d(norm, planes, gn_groups)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=bias),
                norm2d(norm, planes, gn_groups),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))  # (B, planes, H / stride, W / stride)
        out = self.norm2(self.conv2(out))
        # Out of place: x may be a vmap-batched input that autograd still needs.
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet of He et al. 2016 (arXiv:1512.03385): stem, stages of BasicBlocks, pool, fc."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        widths: tuple[int, ...],
        blocks: tuple[int, ...],
        norm: str,
        gn_groups: int | None,
    ) -> None:
        super().__init__()
        bias = norm == "none"
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=bias),
            norm2d(norm, widths[0], gn_groups),
            nn.ReLU(),
        )
        stages: list[nn.Module] = []
        in_planes = widths[0]
        for i, (planes, n) in enumerate(zip(widths, blocks, strict=True)):
            # The first stage keeps the stem's resolution; each later one halves it on its first block.
            strides = [1 if i == 0 else 2] + [1] * (n - 1)
            stage = []
            for stride in strides:
                stage.append(BasicBlock(in_planes, planes, stride, norm, gn_groups))
                in_planes = planes
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # He et al. initialise convs with their own (fan-out, ReLU-gain) normal init.
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stages(self.stem(x))  # (B, widths[-1], H / 2**(stages-1), W / 2**(stages-1))
        h = torch.flatten(self.pool(h), 1)  # (B, widths[-1])
        return self.fc(h)  # (B, num_classes)


def resnet20(
    in_channels: int = 3,
    num_classes: int = 10,
    norm: str = "bn",
    width: int = 16,
    image_size: int = 32,
    gn_groups: int | None = None,
) -> ResNet:
    """ResNet-20 for CIFAR (He et al. 2016, arXiv:1512.03385), option-B shortcuts; see the module doc.

    image_size is accepted for a uniform zoo signature; global pooling makes the network independent of it.
    """
    check_positive(in_channels=in_channels, num_classes=num_classes, width=width, image_size=image_size)
    widths = (width, 2 * width, 4 * width)
    check_norm(norm, gn_groups, widths)
    return ResNet(in_channels, num_classes, widths, (3, 3, 3), norm, gn_groups)


def resnet18(
    in_channels: int = 3,
    num_classes: int = 10,
    norm: str = "bn",
    width: int = 64,
    image_size: int = 32,
    gn_groups: int | None = None,
) -> ResNet:
    """ResNet-18 for 32x32 inputs (He et al. 2016, arXiv:1512.03385; kuangliu/pytorch-cifar layout).

    image_size is accepted for a uniform zoo signature; global pooling makes the network independent of it.
    """
    check_positive(in_channels=in_channels, num_classes=num_classes, width=width, image_size=image_size)
    widths = (width, 2 * width, 4 * width, 8 * width)
    check_norm(norm, gn_groups, widths)
    return ResNet(in_channels, num_classes, widths, (2, 2, 2, 2), norm, gn_groups)
