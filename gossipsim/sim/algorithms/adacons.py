"""AdaCons: all-reduce with adaptive consensus weights in place of the plain mean of the gradients.

Paper: Choukroun, Azoulay, Kisilev, "Adaptive Consensus Gradients Aggregation for Scaled Distributed
Training", arXiv 2411.03742; as its sample code (yoniLc/AdaCons `AdaConsAggregator`) computes it, over the
whole flattened model. Centralized, like `allreduce`: every agent applies the same aggregate.

    g_bar   = (1/N) sum_j g_j
    a_i     = <g_bar, g_i> / (||g_i|| + eps)                   # g_bar projected on agent i's direction
    m       = sort(a)  at the first step,  beta m + (1 - beta) sort(a)  after      # subspace momentum
    w       = m mapped back by the inverse permutation: the agent with the k-th smallest a_i gets m_k
    alpha   = w / sum_j w_j                                    # weights sum to 1 (unbiasedness)
    g       = sum_i alpha_i g_i / (||g_i|| + eps)               # a combination of unit directions
    X^{t+1} = X^t - lr D(g)                                    # each row; D the local optimizer

One deliberate difference from the sample code (ALGORITHMS.md 7): it gathers m with the sort permutation
itself (`m[sorted_idx]`), which is the inverse mapping only when the permutation is an involution. When
sum_j w_j <= GUARD sum_j |w_j| (conflicting gradients; the code has no guard) the round falls back to g_bar.

The aggregate has about unit norm, whatever the gradients' size (the sample code pairs it with a
line-search step size): under plain SGD, lr is a step length, not allreduce's lr. rescale=True (not in
the paper) multiplies g by s = (1/N) sum_i (||g_i|| + eps), the mean gradient norm: the step gets the
size of the averaged gradient, lr means what it means for `allreduce`, and identical gradients give
`allreduce` exactly.
beta's default 0.99 is the sample code's example; its constructor's default is 0 (no momentum).
Communication: two ring all-reduces of P floats and an all-gather of N scalars per agent.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ..local import LocalSGD, as_schedule, descend_
from .base import BITS_PER_VALUE, Round, check_range, register

GUARD = 1e-3  # weights may cancel to at most 1/GUARD times their sum before AdaCons gives up on a round


class AdaConsState(NamedTuple):
    x: torch.Tensor  # (N, P), identical rows
    buf: torch.Tensor | None  # (N, P) momentum of the optimizer
    m: torch.Tensor  # (N,) momentum of the sorted coefficients
    steps: torch.Tensor  # 0-dim int64: aggregations so far


@register("adacons")
def adacons(lr, beta: float = 0.99, eps: float = 1e-8, rescale: bool = False, momentum: float = 0.0,
            nesterov: bool = False, weight_decay: float = 0.0):
    check_range("adacons", "beta", beta, 0, 1)
    check_range("adacons", "eps", eps, 0, math.inf, low_open=True, high_open=True)
    opt, schedule = LocalSGD(momentum, nesterov, weight_decay), as_schedule(lr)

    def init(x0: torch.Tensor) -> AdaConsState:
        x = x0.mean(0, keepdim=True).expand_as(x0).clone()
        m = torch.zeros(x0.shape[0], dtype=x0.dtype, device=x0.device)
        return AdaConsState(x, opt.init(x), m, torch.zeros((), dtype=torch.int64, device=x0.device))

    def step(state: AdaConsState, rnd: Round):
        loss, g = rnd.grad(state.x)  # (N,), (N, P)
        n, p = g.shape
        g_bar = g.mean(0)  # (P,)
        norms = torch.linalg.vector_norm(g, dim=1) + eps  # (N,)
        a, order = torch.sort((g @ g_bar) / norms, stable=True)  # (N,) ascending, a = coefficients[order]
        m = torch.where(state.steps == 0, a, beta * state.m + (1 - beta) * a)
        w = torch.empty_like(m).scatter_(0, order, m)  # w[order[k]] = m[k]
        total = w.sum()
        ok = total > GUARD * w.abs().sum()
        scale = norms.mean() if rescale else 1.0
        agg = torch.where(ok, (w / total * scale / norms) @ g, g_bar)  # (P,)
        del g  # only its aggregate is needed now: free before weight decay and Nesterov allocate theirs
        d, buf = opt.direction(state.x, agg.expand(n, p), state.buf)
        x = descend_(state.x, d, schedule(rnd.t))
        bits = (2 * 2 * (n - 1) / n * BITS_PER_VALUE * p + BITS_PER_VALUE * (n - 1))
        return AdaConsState(x, buf, m, state.steps + 1), {
            "loss": loss, "bits": torch.full((n,), bits, dtype=torch.float64, device=x.device)}

    return init, step
