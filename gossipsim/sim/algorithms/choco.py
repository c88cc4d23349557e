"""CHOCO-SGD: decentralized SGD with compressed gossip and error feedback through public copies.

Papers: Koloskova, Stich, Jaggi, "Decentralized Stochastic Optimization and Gossip Algorithms with
Compressed Communication", arXiv 1902.00340; Koloskova, Lin, Stich, Jaggi, "Decentralized Deep Learning
with Arbitrary Communication Compression", arXiv 1907.09356 (Algorithm 1, the deep-learning version).

`choco`, the paper's order (ALGORITHMS.md 2.3):

    X^{t+1/2} = X^t - lr D(X^t)                    # D: the local optimizer's direction
    X_hat    += C(X^{t+1/2} - X_hat)               # each agent sends C(.) to its neighbours
    X^{t+1}   = X^{t+1/2} + gamma (W - I) X_hat

`choco_parallel`, the official code's order (epfml/ChocoSGD `parallel_choco`): the consensus correction
uses the public copies of the previous round, so communication can overlap computation:

    Y      = X^t - lr D(X^t) + gamma (W_t - I) X_hat   # last round's public copies
    Q      = C(Y - X_hat);  X_hat += Q;  X^{t+1} = Y

X_hat starts at 0, so round 0 does not mix: agents that start from different points (same_init=false)
average one round later than under `choco`.

The official code keeps S = W X_hat as a running sum S += W Q, since an agent receives only Q. That sum
is W X_hat only while W never changes: on a time-varying topology (link failures, MATCHA, random
matchings) it mixes old rounds' weights and the agents never agree. Here (W_t - I) X_hat is formed each
round, as `choco` forms it (every agent holding current copies of this round's neighbours): the same
numbers on a static W up to rounding, one gossip product a round as before, and no (N, P) S to keep.

X_hat starts at 0. gamma's default 0.5 is not the paper's (it is tuned per graph and compressor): the
official example scripts use 0.45 and 0.5 with sign, their argparse default is 0.9 (ALGORITHMS.md 2).
Communication: one compressed message per agent to each active neighbour, its bits
from the compressor's encoding; on a time-varying topology a message made while a link was down is paid
for when the link is next up, at most a full copy of x_hat (base.delivered_bits). State tensors are updated
in place. On CUDA the fused kernels allocate no (N, P) a round; the torch path holds x - x_hat, the
compressor's work and W x_hat's output, one or two at a time (tests/test_memory.py measures them).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from ... import kernels
from ..local import LocalSGD, as_schedule, descend_
from .base import Round, check_range, delivered_bits, register, waiting


class ChocoState(NamedTuple):
    x: torch.Tensor  # (N, P)
    x_hat: torch.Tensor  # (N, P) public copies: what every neighbour knows of agent i
    pending: torch.Tensor  # (N, N) float64: bits of messages not yet delivered, [receiver, sender]
    buf: torch.Tensor | None  # (N, P) local momentum, None without momentum


def _parts(lr, momentum, nesterov, weight_decay, compressor):
    comp = kernels.identity() if compressor is None else compressor
    if not isinstance(comp, kernels.Compressor):
        raise TypeError(f"compressor must be a gossipsim.kernels.Compressor, got {type(comp).__name__}")
    return LocalSGD(momentum, nesterov, weight_decay), as_schedule(lr), comp


@register("choco")
def choco(lr, gamma: float = 0.5, compressor: kernels.Compressor | None = None, momentum: float = 0.0,
          nesterov: bool = False, weight_decay: float = 0.0):
    check_range("choco", "gamma", gamma, 0, 1, low_open=True)
    opt, schedule, comp = _parts(lr, momentum, nesterov, weight_decay, compressor)

    def init(x0: torch.Tensor) -> ChocoState:
        return ChocoState(x0.clone(), torch.zeros_like(x0), waiting(x0), opt.init(x0))

    def step(state: ChocoState, rnd: Round):
        loss, g = rnd.grad(state.x)  # (N,), (N, P)
        d, buf = opt.direction(state.x, g, state.buf)
        x = descend_(state.x, d, schedule(rnd.t))  # X^{t+1/2}
        del g, d  # the gradient's memory is free before the compressor's temporaries
        bits = kernels.choco_residual(x, state.x_hat, comp)  # x_hat += C(x - x_hat); (N,) bits a message
        kernels.consensus_step(x, state.x_hat, rnd.mixing, gamma)  # x += gamma (W x_hat - x_hat)
        bits = delivered_bits(state.pending, bits, rnd.mixing, x.shape[1])
        return ChocoState(x, state.x_hat, state.pending, buf), {"loss": loss, "bits": bits}

    return init, step


@register("choco_parallel")
def choco_parallel(lr, gamma: float = 0.5, compressor: kernels.Compressor | None = None, momentum: float = 0.0,
                   nesterov: bool = False, weight_decay: float = 0.0):
    check_range("choco_parallel", "gamma", gamma, 0, 1, low_open=True)
    opt, schedule, comp = _parts(lr, momentum, nesterov, weight_decay, compressor)

    def init(x0: torch.Tensor) -> ChocoState:
        return ChocoState(x0.clone(), torch.zeros_like(x0), waiting(x0), opt.init(x0))

    def step(state: ChocoState, rnd: Round):
        loss, g = rnd.grad(state.x)
        d, buf = opt.direction(state.x, g, state.buf)
        y = descend_(state.x, d, schedule(rnd.t))
        del g, d  # the gradient's memory is free before the gossip product's and the compressor's temporaries
        kernels.consensus_step(y, state.x_hat, rnd.mixing, gamma)  # last round's public copies
        bits = kernels.choco_residual(y, state.x_hat, comp)  # x_hat += C(y - x_hat); (N,) bits a message
        bits = delivered_bits(state.pending, bits, rnd.mixing, y.shape[1])
        return ChocoState(y, state.x_hat, state.pending, buf), {"loss": loss, "bits": bits}

    return init, step
