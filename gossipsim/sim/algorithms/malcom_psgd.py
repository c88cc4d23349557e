"""MALCOM-PSGD: CHOCO-style compressed gossip on an l1-regularized objective, solved by proximal SGD, with
the residual quantized by dithering and source-coded.

Paper: Campbell, Liu, Woldemariam, Scaglione, "MALCOM-PSGD: Inexact Proximal Stochastic Gradient Descent
for Communication-Efficient Decentralized Machine Learning", arXiv 2311.05760 (v2: "Compressed and Sparse
Models for Non-Convex Decentralized Learning"). No official code; the step order is the paper's
(ALGORITHMS.md 6): SGD, residual compression, encoding and communication, consensus, proximal step.

    X^{t+1/2} = X^t - lr D(X^t)
    X_hat    += Q(X^{t+1/2} - X_hat)                     # Q: dithered quantizer, elias-golomb coded
    X^{t+1}   = S_{lr mu}(X^{t+1/2} + gamma (W - I) X_hat)
    S_tau(v)  = sign(v) max(|v| - tau, 0)                 # the prox of tau ||.||_1, elementwise

minimizing (1/N) sum_i f_i(x) + mu ||x||_1. The soft threshold is lr mu (not scaled by gamma), and both
steps are constant unless lr is given a schedule: ambiguities (b) and (c) of ALGORITHMS.md 6. With mu = 0
this is `choco` exactly. Communication: the coded residual on every active edge; the sparser the model
and its updates, the shorter the code. The engine reports the agents' model sparsity (fraction of zeros).
The defaults (gamma 0.05, mu 1e-5, dithered:16 scaled, per model) are ours, not the paper's, which
were not found (ALGORITHMS.md 6): tune gamma for the problem.
"""
from __future__ import annotations

import torch

from ... import kernels
from ...errors import ConfigError
from ..local import descend_
from .base import Round, check_range, delivered_bits, register, waiting
from .choco import ChocoState, _parts


@register("malcom_psgd")
def malcom_psgd(lr, mu: float = 1e-5, gamma: float = 0.05,
                compressor: kernels.Compressor = kernels.dithered(16, scaled=True),  # noqa: B008 (frozen)
                momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0):
    if not mu >= 0:
        raise ConfigError(f"malcom_psgd mu (the l1 weight) must be >= 0, got {mu}")
    check_range("malcom_psgd", "gamma", gamma, 0, 1, low_open=True)
    opt, schedule, comp = _parts(lr, momentum, nesterov, weight_decay, compressor)

    def init(x0: torch.Tensor) -> ChocoState:
        return ChocoState(x0.clone(), torch.zeros_like(x0), waiting(x0), opt.init(x0))

    def step(state: ChocoState, rnd: Round):
        loss, g = rnd.grad(state.x)  # (N,), (N, P)
        d, buf = opt.direction(state.x, g, state.buf)
        lr_t = schedule(rnd.t)
        x = descend_(state.x, d, lr_t)  # X^{t+1/2}
        del g, d  # the gradient's memory is free before the compressor's temporaries
        bits = kernels.choco_residual(x, state.x_hat, comp)  # x_hat += Q(x - x_hat); (N,) bits a message
        kernels.consensus_step(x, state.x_hat, rnd.mixing, gamma)  # x += gamma (W x_hat - x_hat)
        if mu:
            tau = lr_t * mu
            x.sub_(torch.clamp(x, -tau, tau))  # soft threshold: v - clamp(v, -tau, tau) = S_tau(v)
        bits = delivered_bits(state.pending, bits, rnd.mixing, x.shape[1])
        return ChocoState(x, state.x_hat, state.pending, buf), {"loss": loss, "bits": bits}

    return init, step
