"""D-PSGD as Lian et al. state it (combine-then-adapt): gossip and gradient run in parallel.

Paper: Lian et al., "Can Decentralized Algorithms Outperform Centralized Algorithms? A Case Study for
Decentralized Parallel Stochastic Gradient Descent", arXiv 1705.09056, Algorithm 1.

    X^{t+1} = W X^t - lr * D(X^t)

The gradient is taken at the old iterate X^t, not at W X^t. D is the local optimizer's direction
(torch.optim.SGD semantics per row). Communication: 32*P bits per active edge per round.
"""
from __future__ import annotations

import torch

from ..local import LocalSGD, as_schedule, descend_
from .base import Round, SGDState, gossip_bits, register


@register("dpsgd")
def dpsgd(lr, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0):
    opt, schedule = LocalSGD(momentum, nesterov, weight_decay), as_schedule(lr)

    def init(x0: torch.Tensor) -> SGDState:
        return SGDState(x0, opt.init(x0))

    def step(state: SGDState, rnd: Round):
        loss, g = rnd.grad(state.x)  # (N,), (N, P)
        d, buf = opt.direction(state.x, g, state.buf)
        x = descend_(rnd.mixing(state.x), d, schedule(rnd.t))  # into W x, a fresh tensor
        return SGDState(x, buf), {"loss": loss, "bits": gossip_bits(rnd.mixing, x.shape[1])}

    return init, step
