"""Small helpers shared by the model families: argument checks and the normalization switch."""

from __future__ import annotations

from torch import nn

from gossipsim.errors import ConfigError

NORMS = ("bn", "gn", "none")


def check_positive(**values: int) -> None:
    """Raise a one-line ConfigError for the first argument that is not a positive int."""
    for key, value in values.items():
        # bool is an int subclass, but `num_classes=True` is a mistake, not a 1.
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key} must be a positive integer, got {value!r}")


def check_norm(norm: str, gn_groups: int | None, channels: tuple[int, ...]) -> None:
    """Validate a norm choice up front, so a bad value fails before any layer is built."""
    if norm not in NORMS:
        raise ConfigError(f"unknown norm {norm!r}; accepted: {', '.join(NORMS)}")
    if gn_groups is None:
        return
    if norm != "gn":
        raise ConfigError(f"gn_groups={gn_groups!r} only applies to norm='gn', got norm={norm!r}")
    check_positive(gn_groups=gn_groups)
    bad = [c for c in channels if c % gn_groups]
    if bad:
        raise ConfigError(f"gn_groups={gn_groups} must divide every channel count; it does not divide {bad}")


def gn_groups_for(channels: int, gn_groups: int | None = None) -> int:
    """Groups for GroupNorm: gn_groups if given, else min(32, channels // 4) (4 channels a group).

    Four channels a group keeps the statistics meaningful on the 16-channel ResNet-20 stem, and the
    cap of 32 is the default of the GroupNorm paper (Wu & He 2018, arXiv:1803.08494) for wide layers.
    """
    if gn_groups is not None:
        return gn_groups
    target = max(1, min(32, channels // 4))
    # Widths that 4-channel groups do not tile (width multipliers) take the nearest smaller divisor.
    return next(g for g in range(target, 0, -1) if channels % g == 0)


def norm2d(norm: str, channels: int, gn_groups: int | None = None) -> nn.Module:
    """BatchNorm2d (default momentum), GroupNorm, or Identity, by name (validated by check_norm)."""
    if norm == "bn":
        return nn.BatchNorm2d(channels)
    if norm == "gn":
        return nn.GroupNorm(gn_groups_for(channels, gn_groups), channels)
    if norm == "none":
        return nn.Identity()
    raise ConfigError(f"unknown norm {norm!r}; accepted: {', '.join(NORMS)}")
