"""All-reduce: centralized minibatch SGD on the mean of the N agents' gradients (the baseline to beat).

Every agent applies the same averaged gradient, so the rows of X stay identical:

    g_bar = (1/N) 1^T G(X);   X^{t+1} = X^t - lr * D(g_bar)   (each row)

init averages x0 so runs with independent initializations still start from consensus. Communication is
counted as a ring all-reduce: each agent sends 2 (N-1)/N * 32 P bits per round.
"""
from __future__ import annotations

import torch

from ..local import LocalSGD, as_schedule, descend_
from .base import BITS_PER_VALUE, Round, SGDState, register


@register("allreduce")
def allreduce(lr, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0):
    opt, schedule = LocalSGD(momentum, nesterov, weight_decay), as_schedule(lr)

    def init(x0: torch.Tensor) -> SGDState:
        x = x0.mean(0, keepdim=True).expand_as(x0).clone()
        return SGDState(x, opt.init(x))

    def step(state: SGDState, rnd: Round):
        loss, g = rnd.grad(state.x)  # (N,), (N, P)
        n, p = g.shape
        g_bar = g.mean(0, keepdim=True).expand_as(g)  # (N, P) view
        d, buf = opt.direction(state.x, g_bar, state.buf)
        x = descend_(state.x, d, schedule(rnd.t))
        bits = torch.full((n,), 2 * (n - 1) / n * BITS_PER_VALUE * p, dtype=torch.float64, device=g.device)
        return SGDState(x, buf), {"loss": loss, "bits": bits}

    return init, step
