"""D-PSGD in adapt-then-combine order (ATC), the form the MATCHA, AL-DSGD and CHOCO code bases run.

Paper: Lian et al., "Can Decentralized Algorithms Outperform Centralized Algorithms? A Case Study for
Decentralized Parallel Stochastic Gradient Descent", arXiv 1705.09056 (its update is `dpsgd`).

    X^{t+1} = W (X^t - lr * D(X^t))

D is the local optimizer's direction (torch.optim.SGD semantics per row; momentum buffers stay local).
Communication: the full float32 model to every active neighbour, 32*P bits per edge per round.
"""
from __future__ import annotations

import torch

from ..local import LocalSGD, as_schedule, descend_
from .base import Round, SGDState, gossip_bits, register


@register("dsgd")
def dsgd(lr, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0):
    opt, schedule = LocalSGD(momentum, nesterov, weight_decay), as_schedule(lr)

    def init(x0: torch.Tensor) -> SGDState:
        return SGDState(x0.clone(), opt.init(x0))  # its own copy: the step descends in place

    def step(state: SGDState, rnd: Round):
        loss, g = rnd.grad(state.x)  # (N,), (N, P)
        d, buf = opt.direction(state.x, g, state.buf)
        half = descend_(state.x, d, schedule(rnd.t))  # X - lr D, in place
        del g, d  # the gradient's memory is free before the gossip product allocates its output
        x = rnd.mixing(half)  # W (X - lr D), the one (N, P) the step allocates
        return SGDState(x, buf), {"loss": loss, "bits": gossip_bits(rnd.mixing, x.shape[1])}

    return init, step
