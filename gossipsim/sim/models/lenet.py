"""LeNet-5 of LeCun et al. 1998 (Proc. IEEE; no arXiv id).

Paper: "Gradient-Based Learning Applied to Document Recognition".
The modern variant: ReLU instead of scaled tanh, max pooling instead of trainable subsampling, and a full
C3 (every map sees all 6 inputs) instead of the paper's sparse connection table. On 1x28x28 MNIST the
first conv pads by 2 so the network sees the 32x32 field of the original: 61,706 parameters for 10
classes; on 3x32x32 CIFAR it does not pad: 62,006 parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from gossipsim.errors import ConfigError

from ._common import check_positive


def _feature_side(image_size: int, padding: int) -> int:
    """Side of the (16, s, s) map after conv5 -> pool2 -> conv5 -> pool2."""
    s = image_size + 2 * padding - 4
    s = s // 2 - 4
    return s // 2


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al. 1998, Proc. IEEE, no arXiv id) with ReLU and max pooling."""

    def __init__(self, in_channels: int, num_classes: int, image_size: int) -> None:
        super().__init__()
        # Padding 2 on 28x28 reproduces the classic 32x32 geometry, so the fc sizes are the paper's.
        padding = 2 if image_size == 28 else 0
        side = _feature_side(image_size, padding)
        if side < 1:
            raise ConfigError(f"image_size={image_size} is too small for lenet5; it needs at least 16")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, kernel_size=5, padding=padding),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, kernel_size=5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * side * side, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)  # (B, 16, s, s), s = 5 on 28x28 and 32x32 inputs
        return self.classifier(h)  # (B, num_classes)


def lenet5(in_channels: int = 1, num_classes: int = 10, image_size: int = 28) -> LeNet5:
    """LeNet-5 (LeCun et al. 1998, Proc. IEEE, no arXiv id); fc sizes follow image_size."""
    check_positive(in_channels=in_channels, num_classes=num_classes, image_size=image_size)
    return LeNet5(in_channels, num_classes, image_size)
