"""The per-agent local optimizer over (N, P) rows, and learning-rate schedules.

LocalSGD reproduces torch.optim.SGD (momentum, Nesterov, weight decay; dampening 0) row by row: every
agent keeps its own momentum buffer, which is never gossiped (what every decentralized DL code base
does). It returns the update *direction* d, so an algorithm can place the step where its paper puts
it: ATC applies x - lr*d before gossip, Lian et al.'s D-PSGD adds -lr*d after it.

A schedule is a callable of the round t (a Python int or a 0-dim tensor) returning the learning rate
as a 0-dim float64 tensor, built from tensor ops only so that a tensor t never forces a host sync.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..errors import ConfigError

Schedule = Callable[[int | torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class LocalSGD:
    """torch.optim.SGD semantics on every row: d = g + wd*x; buf = m*buf + d; d = d + m*buf (Nesterov) or buf."""

    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        for key in ("momentum", "weight_decay"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ConfigError(f"{key} must be a number, got {value!r}")
        if not isinstance(self.nesterov, bool):  # "False", a non-empty string, would switch it on
            raise ConfigError(f"nesterov must be True or False, got {self.nesterov!r}")
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.nesterov and self.momentum == 0:
            raise ConfigError("nesterov=True needs momentum > 0")

    def init(self, x: torch.Tensor) -> torch.Tensor | None:
        """The momentum buffer (N, P), or None without momentum.

        Zeros reproduce torch's first step, which copies the gradient into the buffer (dampening is 0)."""
        return torch.zeros_like(x) if self.momentum else None

    def direction(self, x: torch.Tensor, g: torch.Tensor, buf: torch.Tensor | None
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The step direction d (N, P) with x_next = x - lr*d, and the new momentum buffer: the caller's `buf`
        itself, updated in place, so a round allocates at most one (N, P) here (two with weight decay and
        Nesterov). g is never written: it may be a broadcast view (all-reduce's mean gradient)."""
        d = torch.add(g, x, alpha=self.weight_decay) if self.weight_decay else g
        if buf is None:
            return d, None
        buf.mul_(self.momentum).add_(d)
        return (torch.add(d, buf, alpha=self.momentum) if self.nesterov else buf), buf


def _t(t: int | torch.Tensor) -> torch.Tensor:
    return t.to(torch.float64) if isinstance(t, torch.Tensor) else torch.tensor(float(t), dtype=torch.float64)


def constant(lr: float) -> Schedule:
    """lr every round."""
    _check_lr(lr)
    return lambda t: torch.full_like(_t(t), lr)


def multistep(lr: float, milestones: Sequence[int], factor: float = 0.1) -> Schedule:
    """lr * factor^(number of milestones <= t), as torch's MultiStepLR counted in rounds."""
    _check_lr(lr)
    ms = sorted(int(m) for m in milestones)

    def schedule(t: int | torch.Tensor) -> torch.Tensor:
        tt = _t(t)
        passed = sum((tt >= m).to(torch.float64) for m in ms) if ms else torch.zeros_like(tt)
        return lr * factor**passed

    return schedule


def cosine(lr: float, rounds: int, final: float = 0.0) -> Schedule:
    """Cosine annealing from lr at t = 0 to `final` at t = rounds (held there afterwards)."""
    _check_lr(lr)
    if rounds < 1:
        raise ConfigError(f"cosine schedule needs rounds >= 1, got {rounds}")
    return lambda t: final + (lr - final) * (1 + torch.cos(math.pi * _t(t).clamp(max=rounds) / rounds)) / 2


def warmup(schedule: Schedule, rounds: int) -> Schedule:
    """Linear warmup over the first `rounds` rounds: factor (t+1)/rounds, then `schedule` unchanged."""
    if rounds < 0:
        raise ConfigError(f"warmup rounds must be >= 0, got {rounds}")
    if rounds == 0:
        return schedule
    return lambda t: schedule(t) * ((_t(t) + 1) / rounds).clamp(max=1.0)


def descend_(x: torch.Tensor, d: torch.Tensor, lr_t) -> torch.Tensor:
    """x -= lr_t d in place, with no (N, P) temporary; lr_t a number, or a 0-dim tensor from a schedule."""
    return x.addcmul_(d, lr_t, value=-1) if torch.is_tensor(lr_t) else x.sub_(d, alpha=lr_t)


def as_schedule(lr: float | Schedule) -> Schedule:
    """A float becomes a constant schedule; a callable is taken as is."""
    return lr if callable(lr) else constant(float(lr))


def _check_lr(lr: float) -> None:
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ConfigError(f"learning rate must be a positive number, got {lr!r}")
