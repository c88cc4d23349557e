"""The naive simulator: N separate nn.Modules, one torch.optim.SGD each, gossip as explicit per-edge sums.

This is how every existing decentralized simulator runs its agents (one Python iteration per node). It is
the spec the vectorized engine is tested against (in float64), and the `naive loop` of the benchmarks.
Nothing here is vectorized over agents on purpose.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

ALGORITHMS = ("dsgd", "dpsgd", "allreduce", "local", "choco", "choco_parallel", "adagossip", "matcha", "al_dsgd",
              "malcom_psgd", "adacons")


class NaiveSimulator:
    """Agents as separate modules. W (N, N) is the mixing matrix; rows of x0/buf0 initialize each agent."""

    def __init__(self, factory: Callable[[], nn.Module], W: torch.Tensor, algorithm: str, *, lr: float,
                 momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0,
                 x0: torch.Tensor | None = None, buf0: torch.Tensor | None = None, bn: str = "local",
                 dtype: torch.dtype = torch.float64, gamma: float = 0.5, compressor=None, beta: float | None = None,
                 eps: float = 1e-8, c1: float = 0.3, c2: float = 0.1, p1: float = 0.2, p2: float = 0.2,
                 every: int = 1, variant: str = "code", mu: float = 1e-5, rescale: bool = False,
                 matchings: list[list[tuple[int, int]]] | None = None):
        assert algorithm in ALGORITHMS
        self.algorithm, self.bn, self.dtype, self.lr = algorithm, bn, dtype, lr
        self.matchings = matchings  # the base graph's, in order: each agent lists its neighbours by them
        self.set_W(W)
        self.n = W.shape[0]
        beta = beta if beta is not None else 0.99 if algorithm == "adacons" else 0.999
        self.gamma, self.compressor, self.beta, self.eps, self.t = gamma, compressor, beta, eps, 0
        self.c1, self.c2, self.p1, self.p2, self.every, self.variant, self.mu = c1, c2, p1, p2, every, variant, mu
        self.rescale = rescale
        self.m: list[float] | None = None  # AdaCons' momentum of the sorted coefficients
        self.u = [torch.zeros_like(x0[i]) for i in range(self.n)] if x0 is not None else None
        self.x_hat = [torch.zeros_like(x0[i]) for i in range(self.n)] if x0 is not None else None
        self.agents = [factory().to(dtype) for _ in range(self.n)]
        for i, m in enumerate(self.agents):
            if x0 is not None:
                vector_to_parameters(x0[i].clone(), m.parameters())
            if buf0 is not None and buf0.shape[1]:
                _set_buffers(m, buf0[i])
            if algorithm in ("allreduce", "adacons"):  # centralized SGD starts from the average model
                vector_to_parameters(x0.mean(0).clone(), m.parameters())
        self.opts = [torch.optim.SGD(m.parameters(), lr=lr, momentum=momentum, nesterov=nesterov,
                                     weight_decay=weight_decay) for m in self.agents]


    def set_W(self, W: torch.Tensor) -> None:
        """This round's mixing matrix. Each agent knows its neighbour list, as a real deployment does: in the
        order of the matchings that link them where the matchings are given (the official AL-DSGD code's
        lists), else in index order."""
        self.W = W.to(self.dtype)
        self._w = self.W.tolist()  # Python numbers: what add_'s alpha takes
        n = W.shape[0]
        active = [[j for j in range(n) if j != i and self.W[i, j] != 0] for i in range(n)]
        if self.matchings is not None:
            by_matching = [[b if a == i else a for m in self.matchings for a, b in m if i in (a, b)] for i in range(n)]
            active = [[j for j in by_matching[i] if j in active[i]] + [j for j in active[i] if j not in by_matching[i]]
                      for i in range(n)]
        self._neighbours = active

    def neighbours(self, i: int) -> list[int]:
        return self._neighbours[i]

    def gossip(self, vectors: list[torch.Tensor]) -> list[torch.Tensor]:
        """x_i <- W_ii x_i + sum over edges (i, j) of W_ij x_j, one edge at a time, into one buffer per agent
        (as a careful per-agent simulator does: a new tensor per edge made the benchmarks' naive MLP round
        about 10% slower)."""
        out = []
        for i in range(self.n):
            acc = vectors[i] * self._w[i][i]
            for j in self.neighbours(i):
                acc.add_(vectors[j], alpha=self._w[i][j])
            out.append(acc)
        return out

    def step(self, xb: torch.Tensor, yb: torch.Tensor, W: torch.Tensor | None = None) -> torch.Tensor:
        """One round on per-agent batches xb (N, B, ...), yb (N, B), over W (this round's, if given);
        returns the per-agent losses (N,).

        It does no work the engine does not: as the benchmarks' naive loop it must not be slower for
        avoidable reasons (a copy of the old parameters where no algorithm reads them, a loss read back to
        the host per agent, which on a GPU waits for the device N times a round)."""
        if W is not None:
            self.set_W(W)
        losses = []
        for m, opt, x, y in zip(self.agents, self.opts, xb, yb):
            m.train()
            opt.zero_grad()
            loss = F.cross_entropy(m(x), y)
            loss.backward()
            losses.append(loss.detach())
        # parameters_to_vector concatenates: a fresh vector, no clone needed
        old = [parameters_to_vector(m.parameters()).detach() for m in self.agents] \
            if self.algorithm in ("dpsgd", "al_dsgd") else None
        if self.algorithm == "allreduce":
            for ps in zip(*(m.parameters() for m in self.agents)):
                mean = sum(p.grad for p in ps) / self.n
                for p in ps:
                    p.grad = mean.clone()
        if self.algorithm == "adacons":
            self.adacons()
        for opt in self.opts:
            opt.step()
        new = [parameters_to_vector(m.parameters()).detach() for m in self.agents]
        self.t += 1
        if self.algorithm == "al_dsgd":
            mixed = self.al_dsgd(old, new, [float(v) for v in losses])
        elif self.algorithm == "malcom_psgd":
            mixed = [_soft_threshold(v, self.lr * self.mu) for v in self.choco(new)]
        elif self.algorithm == "adagossip":
            mixed = self.adagossip(new)
        elif self.algorithm in ("choco", "choco_parallel"):
            mixed = self.choco(new)
        elif self.algorithm in ("dsgd", "matcha"):
            mixed = self.gossip(new)
        elif self.algorithm == "dpsgd":
            mixed = [avg + (n - o) for avg, n, o in zip(self.gossip(old), new, old)]  # W x - lr d
        else:
            mixed = new
        for m, v in zip(self.agents, mixed):
            vector_to_parameters(v, m.parameters())
        if self.bn == "gossip":
            for m, b in zip(self.agents, self.gossip([buffers_vector(m) for m in self.agents])):
                _set_buffers(m, b)
        return torch.stack(losses)

    def compress(self, r: torch.Tensor) -> torch.Tensor:
        """One agent's message C(r), as its neighbours reconstruct it."""
        if self.compressor is None:
            return r.clone()
        return self.compressor.roundtrip(r.unsqueeze(0))[0][0]

    def choco(self, half: list[torch.Tensor]) -> list[torch.Tensor]:
        """CHOCO's public copies and consensus step, agent by agent and edge by edge (ALGORITHMS.md 2.3)."""
        g = self.gamma
        if self.algorithm in ("choco", "malcom_psgd"):
            for i in range(self.n):
                self.x_hat[i] = self.x_hat[i] + self.compress(half[i] - self.x_hat[i])
            out = []
            for i in range(self.n):
                acc = half[i].clone()
                for j in self.neighbours(i):
                    acc = acc + g * self.W[i, j] * (self.x_hat[j] - self.x_hat[i])
                out.append(acc)
            return out
        # the official code's order: correct with last round's copies, s_i = sum_j w_ij x_hat_j over this
        # round's edges (ALGORITHMS.md 2.3), then send C(y - x_hat)
        ys = []
        for i in range(self.n):
            s = self.W[i, i] * self.x_hat[i]
            for j in self.neighbours(i):
                s = s + self.W[i, j] * self.x_hat[j]
            ys.append(half[i] + g * (s - self.x_hat[i]))
        for i in range(self.n):
            self.x_hat[i] = self.x_hat[i] + self.compress(ys[i] - self.x_hat[i])
        return ys

    def adagossip(self, half: list[torch.Tensor]) -> list[torch.Tensor]:
        """AdaGossip (ALGORITHMS.md 3): CHOCO's copies, then a per-parameter step from the gossip error."""
        for i in range(self.n):
            self.x_hat[i] = self.x_hat[i] + self.compress(half[i] - self.x_hat[i])
        out = []
        for i in range(self.n):
            e = torch.zeros_like(half[i])
            for j in self.neighbours(i):
                e = e + self.W[i, j] * (self.x_hat[j] - self.x_hat[i])
            self.u[i] = self.beta * self.u[i] + (1 - self.beta) * e * e
            step = torch.clamp(self.gamma / (torch.sqrt(self.u[i] / (1 - self.beta**self.t)) + self.eps), max=1.0)
            out.append(half[i] + step * e)
        return out

    def leader(self, i: int, score: list[float]) -> int:
        """The agent of lowest score among i and its neighbours, the first in i's list on a tie (i first)."""
        best = i
        for j in self.neighbours(i):
            if score[j] < score[best]:
                best = j
        return best

    def al_dsgd(self, old: list[torch.Tensor], half: list[torch.Tensor], losses: list[float]) -> list[torch.Tensor]:
        """AL-DSGD (ALGORITHMS.md 5), agent by agent: leaders by loss and by degree, then the code's weighted
        average and pull, or the paper's lr-scaled pull in the local step."""
        # a leader's degree: how many agents mix its model (on a directed W, not how many it mixes)
        degrees = [-sum(1 for i in range(self.n) if i != j and self.W[i, j] != 0) for j in range(self.n)]
        best = [self.leader(i, losses) for i in range(self.n)]
        hub = [self.leader(i, degrees) for i in range(self.n)]
        lead = [(self.t - 1) % self.every == 0 and len(self.neighbours(i)) > 0 for i in range(self.n)]
        c1, c2, p1, p2 = self.c1, self.c2, self.p1, self.p2
        if self.variant == "paper":
            half = [h - self.lr * (p1 * (o - old[best[i]]) + p2 * (o - old[hub[i]])) if lead[i] else h
                    for i, (h, o) in enumerate(zip(half, old))]
        out = []
        for i, y in enumerate(self.gossip(half)):
            if not lead[i]:
                out.append(y)
                continue
            z = (1 - c1 - c2) * y + c1 * half[best[i]] + c2 * half[hub[i]]
            if self.variant == "code":
                z = z - p1 * (z - half[best[i]]) - p2 * (z - half[hub[i]])
            out.append(z)
        return out

    def adacons(self) -> None:
        """AdaCons (ALGORITHMS.md 7): replace every agent's gradient by the adaptive consensus aggregate."""
        grads = [torch.cat([p.grad.reshape(-1) for p in m.parameters()]) for m in self.agents]
        mean = sum(grads) / self.n
        norms = [float(torch.linalg.vector_norm(g)) + self.eps for g in grads]
        a = [float(mean @ g) / nrm for g, nrm in zip(grads, norms)]
        order = sorted(range(self.n), key=lambda i: a[i])  # stable, as torch.sort(stable=True)
        ranked = [a[i] for i in order]
        self.m = ranked if self.m is None else [self.beta * m + (1 - self.beta) * r for m, r in zip(self.m, ranked)]
        w = [0.0] * self.n
        for k, i in enumerate(order):
            w[i] = self.m[k]  # the agent with the k-th smallest coefficient gets the k-th smoothed one
        total = sum(w)
        if total > 1e-3 * sum(abs(v) for v in w):
            scale = sum(norms) / self.n if self.rescale else 1.0
            agg = sum(wi / total * scale / nrm * g for wi, nrm, g in zip(w, norms, grads))
        else:
            agg = mean
        for m in self.agents:
            vector_to_parameters(agg.clone(), [p.grad for p in m.parameters()])

    def x(self) -> torch.Tensor:
        """The agents' parameters stacked (N, P)."""
        return torch.stack([parameters_to_vector(m.parameters()).detach() for m in self.agents])

    def buffers(self) -> torch.Tensor:
        """The agents' floating-point buffers stacked (N, Pbuf)."""
        return torch.stack([buffers_vector(m) for m in self.agents])


def _soft_threshold(v: torch.Tensor, tau: float) -> torch.Tensor:
    return torch.sign(v) * torch.clamp(v.abs() - tau, min=0)


def buffers_vector(m: nn.Module) -> torch.Tensor:
    bufs = [b.detach().reshape(-1) for b in m.buffers() if b.is_floating_point()]
    return torch.cat(bufs) if bufs else torch.zeros(0, dtype=torch.float64)


def _set_buffers(m: nn.Module, vec: torch.Tensor) -> None:
    offset = 0
    for b in m.buffers():
        if b.is_floating_point():
            b.copy_(vec[offset:offset + b.numel()].view_as(b))
            offset += b.numel()
