"""MLP: the "2NN" of McMahan et al. 2017 (FedAvg), arXiv:1602.05629.

Paper: "Communication-Efficient Learning of Deep Networks from Decentralized Data".
Two hidden layers of 200 ReLU units on flattened 28x28 images: 199,210 parameters for 10 classes, the
count that paper reports.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from gossipsim.errors import ConfigError

from ._common import check_positive


class MLP(nn.Module):
    """The 2NN of McMahan et al. (arXiv:1602.05629), any depth; flattens (B, C, H, W) images."""

    def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int) -> None:
        super().__init__()
        widths = [in_features, *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for fan_in, fan_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, num_classes)


def mlp(
    in_features: int | None = None,
    hidden: Sequence[int] = (200, 200),
    num_classes: int = 10,
    *,
    in_channels: int | None = None,
    image_size: int | None = None,
) -> MLP:
    """The 2NN MLP of McMahan et al. (arXiv:1602.05629) on in_channels * image_size**2 inputs.

    in_features defaults to 784, or to in_channels * image_size**2 when either of those is given.

    in_channels and image_size exist so that `make(name, in_channels=, image_size=, num_classes=)`
    builds every model of the zoo; a missing one of the two takes the MNIST value (1 channel, 28).
    """
    derived = None
    if in_channels is not None or image_size is not None:
        c = 1 if in_channels is None else in_channels
        s = 28 if image_size is None else image_size
        check_positive(in_channels=c, image_size=s)
        derived = c * s * s
    if in_features is not None and derived is not None and in_features != derived:
        raise ConfigError(
            f"in_features={in_features} contradicts in_channels*image_size**2={derived}; give only one"
        )
    in_features = in_features if in_features is not None else derived if derived is not None else 784
    if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Iterable):
        raise ConfigError(f"hidden must be a sequence of layer widths, e.g. (200, 200), got {hidden!r}")
    hidden = tuple(hidden)
    check_positive(in_features=in_features, num_classes=num_classes)
    check_positive(**{f"hidden[{i}]": h for i, h in enumerate(hidden)})
    return MLP(in_features, hidden, num_classes)
