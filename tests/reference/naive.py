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

ALGORITHMS = ("dsgd", "dpsgd", "allreduce", "local", "choco", "choco_parallel", "adagossip")


class NaiveSimulator:
    """Agents as separate modules. W (N, N) is the mixing matrix; rows of x0/buf0 initialize each agent."""

    def __init__(self, factory: Callable[[], nn.Module], W: torch.Tensor, algorithm: str, *, lr: float,
                 momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0,
                 x0: torch.Tensor | None = None, buf0: torch.Tensor | None = None, bn: str = "local",
                 dtype: torch.dtype = torch.float64, gamma: float = 0.5, compressor=None, beta: float = 0.999,
                 eps: float = 1e-8):
        assert algorithm in ALGORITHMS
        self.W, self.algorithm, self.bn = W.to(dtype), algorithm, bn
        self.n = W.shape[0]
        self.gamma, self.compressor, self.beta, self.eps, self.t = gamma, compressor, beta, eps, 0
        self.u = [torch.zeros_like(x0[i]) for i in range(self.n)] if x0 is not None else None
        self.x_hat = [torch.zeros_like(x0[i]) for i in range(self.n)] if x0 is not None else None
        self.s = [torch.zeros_like(x0[i]) for i in range(self.n)] if x0 is not None else None
        self.agents = [factory().to(dtype) for _ in range(self.n)]
        for i, m in enumerate(self.agents):
            if x0 is not None:
                vector_to_parameters(x0[i].clone(), m.parameters())
            if buf0 is not None and buf0.shape[1]:
                _set_buffers(m, buf0[i])
            if algorithm == "allreduce":  # centralized SGD starts from the average model
                vector_to_parameters(x0.mean(0).clone(), m.parameters())
        self.opts = [torch.optim.SGD(m.parameters(), lr=lr, momentum=momentum, nesterov=nesterov,
                                     weight_decay=weight_decay) for m in self.agents]

        # Each agent knows its neighbour list, as a real deployment does; found once, not every round.
        self._neighbours = [[j for j in range(self.n) if j != i and self.W[i, j] != 0] for i in range(self.n)]

    def neighbours(self, i: int) -> list[int]:
        return self._neighbours[i]

    def gossip(self, vectors: list[torch.Tensor]) -> list[torch.Tensor]:
        """x_i <- W_ii x_i + sum over edges (i, j) of W_ij x_j, one edge at a time."""
        out = []
        for i in range(self.n):
            acc = self.W[i, i] * vectors[i]
            for j in self.neighbours(i):
                acc = acc + self.W[i, j] * vectors[j]
            out.append(acc)
        return out

    def step(self, xb: torch.Tensor, yb: torch.Tensor) -> list[float]:
        """One round on per-agent batches xb (N, B, ...), yb (N, B); returns the per-agent losses."""
        losses = []
        for m, opt, x, y in zip(self.agents, self.opts, xb, yb):
            m.train()
            opt.zero_grad()
            loss = F.cross_entropy(m(x), y)
            loss.backward()
            losses.append(loss.item())
        old = [parameters_to_vector(m.parameters()).detach().clone() for m in self.agents]
        if self.algorithm == "allreduce":
            for ps in zip(*(m.parameters() for m in self.agents)):
                mean = sum(p.grad for p in ps) / self.n
                for p in ps:
                    p.grad = mean.clone()
        for opt in self.opts:
            opt.step()
        new = [parameters_to_vector(m.parameters()).detach().clone() for m in self.agents]
        if self.algorithm == "adagossip":
            mixed = self.adagossip(new)
        elif self.algorithm in ("choco", "choco_parallel"):
            mixed = self.choco(new)
        elif self.algorithm == "dsgd":
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
        return losses

    def compress(self, r: torch.Tensor) -> torch.Tensor:
        """One agent's message C(r), as its neighbours reconstruct it."""
        if self.compressor is None:
            return r.clone()
        return self.compressor.roundtrip(r.unsqueeze(0))[0][0]

    def choco(self, half: list[torch.Tensor]) -> list[torch.Tensor]:
        """CHOCO's public copies and consensus step, agent by agent and edge by edge (ALGORITHMS.md 2.3)."""
        g = self.gamma
        if self.algorithm == "choco":
            for i in range(self.n):
                self.x_hat[i] = self.x_hat[i] + self.compress(half[i] - self.x_hat[i])
            out = []
            for i in range(self.n):
                acc = half[i].clone()
                for j in self.neighbours(i):
                    acc = acc + g * self.W[i, j] * (self.x_hat[j] - self.x_hat[i])
                out.append(acc)
            return out
        # the official code's order: correct with last round's copies, then send C(y - x_hat)
        ys = [h + g * (s - xh) for h, s, xh in zip(half, self.s, self.x_hat)]
        qs = [self.compress(y - xh) for y, xh in zip(ys, self.x_hat)]
        for i in range(self.n):
            self.x_hat[i] = self.x_hat[i] + qs[i]
            acc = self.W[i, i] * qs[i]
            for j in self.neighbours(i):
                acc = acc + self.W[i, j] * qs[j]
            self.s[i] = self.s[i] + acc
        return ys

    def adagossip(self, half: list[torch.Tensor]) -> list[torch.Tensor]:
        """AdaGossip (ALGORITHMS.md 3): CHOCO's copies, then a per-parameter step from the gossip error."""
        self.t += 1
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

    def x(self) -> torch.Tensor:
        """The agents' parameters stacked (N, P)."""
        return torch.stack([parameters_to_vector(m.parameters()).detach() for m in self.agents])

    def buffers(self) -> torch.Tensor:
        """The agents' floating-point buffers stacked (N, Pbuf)."""
        return torch.stack([buffers_vector(m) for m in self.agents])


def buffers_vector(m: nn.Module) -> torch.Tensor:
    bufs = [b.detach().reshape(-1) for b in m.buffers() if b.is_floating_point()]
    return torch.cat(bufs) if bufs else torch.zeros(0, dtype=torch.float64)


def _set_buffers(m: nn.Module, vec: torch.Tensor) -> None:
    offset = 0
    for b in m.buffers():
        if b.is_floating_point():
            b.copy_(vec[offset:offset + b.numel()].view_as(b))
            offset += b.numel()
