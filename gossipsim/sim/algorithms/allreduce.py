"""All-reduce: centralized minibatch SGD on the mean of the N agents' gradients (the baseline to beat).

Every agent applies the same averaged gradient, so the rows of X stay identical:

    g_bar = (1/N) 1^T G(X);   X^{t+1} = X^t - lr * D(g_bar)   (each row)

init averages x0 so runs with independent initializations still start from consensus. Communication is
counted as a ring all-reduce: each agent sends 2 (N-1)/N * 32 P bits per round.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from ..local import LocalSGD, as_schedule
from .base import BITS_PER_VALUE, Round, register


class AllReduceState(NamedTuple):
    x: torch.Tensor  # (N, P), all rows equal
    buf: torch.Tensor | None  # (N, P) momentum, all rows equal


@register("allreduce")
def allreduce(lr, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0):
    opt, schedule = LocalSGD(momentum, nesterov, weight_decay), as_schedule(lr)

    def init(x0: torch.Tensor) -> AllReduceState:
        x = x0.mean(0, keepdim=True).expand_as(x0).clone()
        return AllReduceState(x, opt.init(x))

    def step(state: AllReduceState, rnd: Round):
        loss, g = rnd.grad(state.x)  # (N,), (N, P)
        n, p = g.shape
        g_bar = g.mean(0, keepdim=True).expand_as(g)  # (N, P) view
        d, buf = opt.direction(state.x, g_bar, state.buf)
        x = state.x - schedule(rnd.t) * d
        bits = torch.full((n,), 2 * (n - 1) / n * BITS_PER_VALUE * p, dtype=torch.float64, device=g.device)
        return AllReduceState(x, buf), {"loss": loss, "bits": bits}

    return init, step
