"""Local SGD with no communication at all: N independent runs, the lower bound gossip must beat.

    X^{t+1} = X^t - lr * D(X^t)

With a non-iid partition each agent only ever sees its own shard; the averaged model is still reported.
"""
from __future__ import annotations

import torch

from ..local import LocalSGD, as_schedule, descend_
from .base import Round, SGDState, register


@register("local")
def local(lr, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0):
    opt, schedule = LocalSGD(momentum, nesterov, weight_decay), as_schedule(lr)

    def init(x0: torch.Tensor) -> SGDState:
        return SGDState(x0.clone(), opt.init(x0))  # its own copy: the step descends in place

    def step(state: SGDState, rnd: Round):
        loss, g = rnd.grad(state.x)  # (N,), (N, P)
        d, buf = opt.direction(state.x, g, state.buf)
        x = descend_(state.x, d, schedule(rnd.t))
        return SGDState(x, buf), {"loss": loss, "bits": torch.zeros_like(loss, dtype=torch.float64)}

    return init, step
