"""AL-DSGD: adjacent leaders. Each agent also averages with, and is pulled towards, two leaders among
its active neighbours (itself included): the one with the lowest training loss and the one of highest degree.

Paper: He, Wang, Choromanska, "AL-DSGD: Adjacent Leader Decentralized Stochastic Gradient Descent",
arXiv 2405.11389. Base: the round's W (D-PSGD on a static topology, MATCHA on `BASE+matcha:CB`); the
dynamic graphs are the topology `BASE+rotate` (graphs.rotating). With one-hot leader selectors A_N
(lowest minibatch loss at X^t) and A_tau (highest active degree: how many agents mix its model this round, which
on a directed W may differ from how many it mixes), ties to the agent itself, then to the neighbour whose matching
comes first (as the official code lists them; Mixing.order):

variant="code" (default; the official code, HectorHHZ/Adjacent_Leader_Dencentralized_SGD, which
produced the paper's numbers): the pull is a fixed fraction, applied after averaging

    X^{t+1/2} = X^t - lr D(X^t)
    Z         = (1 - c1 - c2) W X^{t+1/2} + c1 A_N X^{t+1/2} + c2 A_tau X^{t+1/2}
    X^{t+1}   = Z - p1 (Z - A_N X^{t+1/2}) - p2 (Z - A_tau X^{t+1/2})

variant="paper": the corrective force enters the local step, scaled by the learning rate

    X^{t+1/2} = X^t - lr (D(X^t) + p1 (X^t - A_N X^t) + p2 (X^t - A_tau X^t))
    X^{t+1}   = (1 - c1 - c2) W X^{t+1/2} + c1 A_N X^{t+1/2} + c2 A_tau X^{t+1/2}

The leader step runs every `every` rounds (the code's --iteration); other rounds, and agents with no
active neighbour, only gossip. Rounds are counted from the start of the run: the official code counts them
within each epoch (its batch index), so where an epoch's length is not a multiple of `every` (or, for the
dynamic graphs' schedule, of 6) the two pick different rounds after the first epoch. Communication: the
float32 model and two scalars (loss, degree) on every active edge.

The leader terms make each round's combined matrix row-stochastic but not column-stochastic (an agent
chosen as leader by many pulls them all): on irregular or changing graphs the average moves, and with
data that differ across agents the fixed point minimizes a weighted sum_i pi_i f_i (pi: the stationary
weights of that matrix), not sum_i f_i. On a regular static graph leader ties go to the agent itself and
the average is kept.
"""
from __future__ import annotations

import torch

from ...errors import ConfigError
from ..local import LocalSGD, as_schedule, descend_
from .base import BITS_PER_VALUE, Round, SGDState, check_range, register


def leaders(W: torch.Tensor, score: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Each agent's argmin of `score` (N,) over itself and its active neighbours in W (N, N); ties go to the
    first in its list, `order` (N, N) (Mixing.order: itself, then its neighbours by matching). (N,) int64."""
    n = W.shape[0]
    A = W != 0
    A.fill_diagonal_(True)
    vals = torch.where(A, score.unsqueeze(0), torch.inf)  # (N, N)
    best = vals == vals.min(1, keepdim=True).values
    first = torch.where(best, order, 4 * n * n).argmin(1)  # order is below 2 N^2 + 1
    return torch.where(best.any(1), first, torch.arange(n, device=W.device))  # a NaN loss: stay with oneself


@register("al_dsgd")
def al_dsgd(lr, c1: float = 0.3, c2: float = 0.1, p1: float = 0.2, p2: float = 0.2, every: int = 1,
            variant: str = "code", momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0):
    if variant not in ("code", "paper"):
        raise ConfigError(f"al_dsgd variant must be 'code' or 'paper', got {variant!r}")
    for name, v in (("c1", c1), ("c2", c2), ("p1", p1), ("p2", p2), ("c1 + c2", c1 + c2)):
        check_range("al_dsgd", name, v, 0, 1)
    if variant == "code":  # Z - p1 (Z - L1) - p2 (Z - L2) weighs Z by 1 - p1 - p2: a negative weight beyond 1
        check_range("al_dsgd", "p1 + p2", p1 + p2, 0, 1)
    if not isinstance(every, int) or every < 1:
        raise ConfigError(f"al_dsgd every must be an integer >= 1, got {every!r}")
    opt, schedule = LocalSGD(momentum, nesterov, weight_decay), as_schedule(lr)

    def init(x0: torch.Tensor) -> SGDState:
        return SGDState(x0.clone(), opt.init(x0))  # its own copy: the step descends in place

    def step(state: SGDState, rnd: Round):
        loss, g = rnd.grad(state.x)  # (N,), (N, P)
        W, deg, order = rnd.mixing.dense(), rnd.mixing.degrees, rnd.mixing.order  # (N, N), (N,), (N, N)
        best, hub = leaders(W, loss.to(W.dtype), order), leaders(W, -deg.to(W.dtype), order)  # (N,) leaders
        # a per-row switch, not a branch, so the round index never has to leave the device: a leader round, for an
        # agent with a neighbour to follow, one it mixes (deg counts those that mix it: on a directed W, others)
        lead = rnd.t % every == 0  # 0-dim bool
        on = (lead & rnd.mixing.links.any(1)).to(state.x.dtype).unsqueeze(1)  # (N, 1)
        d, buf = opt.direction(state.x, g, state.buf)
        del g  # what the step needs of it is in d: unless d is g, its memory is free before the pulls
        if variant == "paper":  # d + on (p1 (x - x_best) + p2 (x - x_hub)), one gathered (N, P) at a time
            pull = torch.mul(state.x, p1 + p2).sub_(state.x[best], alpha=p1).sub_(state.x[hub], alpha=p2)  # (N, P)
            d = pull.mul_(on).add_(d)
        half = descend_(state.x, d, schedule(rnd.t))  # X^{t+1/2}, in place: x is not read again
        del d  # free before the gossip product allocates its output
        keep = 1 - p1 - p2 if variant == "code" else 1.0
        to_best = keep * c1 + (p1 if variant == "code" else 0.0)
        to_hub = keep * c2 + (p2 if variant == "code" else 0.0)
        x = rnd.mixing(half).mul_(1 - on + on * (keep * (1 - c1 - c2)))
        x.addcmul_(half[best], on * to_best).addcmul_(half[hub], on * to_hub)
        # on a leader round every agent also sends its loss and degree to those that mix it
        bits = deg.to(torch.float64) * BITS_PER_VALUE * (x.shape[1] + 2 * lead.to(torch.float64))
        return SGDState(x, buf), {"loss": loss, "bits": bits}

    return init, step
