"""The model zoo: small image classifiers by name, each a plain nn.Module usable under torch.func.

Every factory takes keyword arguments only where they matter and accepts `in_channels`, `num_classes`
and `image_size`, so `make(name, in_channels=1, image_size=28, num_classes=10)` builds any of them.
Models hold no data-dependent init (they build on the meta device) and no in-place ops, `.item()` or
Python branches on tensor values, so `functional_call` + `vmap` + `grad` apply; BatchNorm keeps its
default momentum, so running statistics are buffers an engine can carry per agent.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

from gossipsim.errors import ConfigError

from .lenet import lenet5
from .mlp import mlp
from .mobilenet import mobilenet_v2
from .resnet import resnet18, resnet20

__all__ = ["MODELS", "make", "names", "mlp", "lenet5", "resnet20", "resnet18", "mobilenet_v2"]

MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp,
    "lenet5": lenet5,
    "resnet20": resnet20,
    "resnet18": resnet18,
    "mobilenet_v2": mobilenet_v2,
}


def names() -> list[str]:
    """Every registered model name, sorted."""
    return sorted(MODELS)


def make(name: str, **kwargs: object) -> nn.Module:
    """Build the model registered as name; a bad name or keyword raises a one-line ConfigError."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; accepted: {', '.join(names())}")
    factory = MODELS[name]
    # Checked here, not left to a TypeError, because names and keys usually come from a config file.
    params = inspect.signature(factory).parameters
    accepted = list(params)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    unknown = [] if takes_any else [key for key in kwargs if key not in accepted]
    if unknown:
        raise ConfigError(
            f"model {name!r} does not take {', '.join(map(repr, unknown))}; accepted: {', '.join(accepted)}"
        )
    return factory(**kwargs)
