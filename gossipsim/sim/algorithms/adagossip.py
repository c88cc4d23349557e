"""AdaGossip / AdaG-SGD: CHOCO-SGD with an adaptive, per-parameter consensus step.

Paper: Aketi, Hashemi, Roy, "AdaGossip: Adaptive Consensus Step-size for Decentralized Deep Learning with
Communication Compression", arXiv 2404.05919. Implemented as the official code runs it (ALGORITHMS.md 3),
in CHOCO's paper order:

    X^{t+1/2} = X^t - lr D(X^t)
    X_hat    += C(X^{t+1/2} - X_hat)
    E         = (W - I) X_hat                                  # each agent's gossip error
    U         = beta U + (1 - beta) E * E                      # its second raw moment, elementwise
    Gamma     = min(gamma / (sqrt(U / (1 - beta^t)) + eps), 1) # bias-corrected, clipped at 1 (the code)
    X^{t+1}   = X^{t+1/2} + Gamma * E

t counts gossip rounds from 1. X_hat and U start at 0. The code keeps n_i = sum_(j != i) w_ij x_hat_j up to
date with the neighbours' messages; with a fixed W that equals the W X_hat computed here, and with a
time-varying W this uses the round's W. Communication: as CHOCO, one compressed message per active edge.

Gamma differs across agents and parameters, so sum_i Gamma_i * e_i is not 0: the agents reach agreement, but
the average of X moves (CHOCO's, with one gamma, stays put; with zero gradients AdaGossip settles away from
the initial average, by 0.03 to 0.5 in a 16-agent test).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ... import kernels
from ..local import descend_
from .base import Round, check_range, delivered_bits, register, waiting
from .choco import _parts


class AdaGossipState(NamedTuple):
    x: torch.Tensor  # (N, P)
    x_hat: torch.Tensor  # (N, P) public copies
    u: torch.Tensor  # (N, P) second raw moment of the gossip error
    pending: torch.Tensor  # (N, N) float64: bits of messages not yet delivered, [receiver, sender]
    buf: torch.Tensor | None  # (N, P) local momentum


@register("adagossip")
def adagossip(lr, gamma: float = 1.0, beta: float = 0.999, eps: float = 1e-8,
              compressor: kernels.Compressor | None = None, momentum: float = 0.0, nesterov: bool = False,
              weight_decay: float = 0.0):
    check_range("adagossip", "gamma", gamma, 0, math.inf, low_open=True, high_open=True)
    check_range("adagossip", "beta", beta, 0, 1, high_open=True)
    check_range("adagossip", "eps", eps, 0, math.inf, low_open=True, high_open=True)
    opt, schedule, comp = _parts(lr, momentum, nesterov, weight_decay, compressor)

    def init(x0: torch.Tensor) -> AdaGossipState:
        return AdaGossipState(x0.clone(), torch.zeros_like(x0), torch.zeros_like(x0), waiting(x0), opt.init(x0))

    def step(state: AdaGossipState, rnd: Round):
        loss, g = rnd.grad(state.x)  # (N,), (N, P)
        d, buf = opt.direction(state.x, g, state.buf)
        x = descend_(state.x, d, schedule(rnd.t))  # X^{t+1/2}
        del g, d  # the gradient's memory is free before the compressor's temporaries
        bits = kernels.choco_residual(x, state.x_hat, comp)
        e = rnd.mixing(state.x_hat).sub_(state.x_hat)  # (N, P) gossip error
        u = state.u.mul_(beta).addcmul_(e, e, value=1 - beta)
        # Where little is sent (top-k), u and e * e fall into subnormal floats, which make the CPU's
        # sqrt 14x slower. A floor at the smallest normal float leaves Gamma as it was (clipped at 1 there for
        # any gamma >= 1e-8), and u changes by less than 1.2e-38.
        u.clamp_(min=torch.finfo(u.dtype).tiny)
        correction = 1 - beta ** (torch.as_tensor(rnd.t, dtype=torch.float64) + 1)  # 0-dim; t counts from 1
        step_size = (u / correction).sqrt_().add_(eps).reciprocal_().mul_(gamma).clamp_(max=1.0)  # Gamma (N, P)
        x.addcmul_(step_size, e)
        bits = delivered_bits(state.pending, bits, rnd.mixing, x.shape[1])
        return AdaGossipState(x, state.x_hat, u, state.pending, buf), {"loss": loss, "bits": bits}

    return init, step
