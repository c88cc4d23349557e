"""MATCHA: gossip over randomly activated matchings of a base graph under a communication budget.

Paper: Wang, Sahu, Yang, Joshi, Kar, "MATCHA: Speeding Up Decentralized SGD via Matching Decomposition
Sampling", arXiv 1905.09435 (ALGORITHMS.md section 4; the official code is JYWa/MATCHA).

Once, before training:
  1. decompose the base graph into disjoint matchings G_1..G_M, so that L = sum_j L_j;
  2. activation probabilities p maximizing lambda_2(sum_j p_j L_j) subject to sum_j p_j <= C_b M,
     0 <= p_j <= 1 (the code solves it with cvxpy; here: projected supergradient ascent, since
     lambda_2 is concave in p and its supergradient is (v^T L_j v)_j for a Fiedler vector v);
  3. alpha minimizing rho(alpha) = ||E[W^T W] - J||_2 for W = I - alpha sum_j B_j L_j, B_j ~ Bern(p_j):
     E[W^T W] = I - 2 alpha Lbar + alpha^2 (Lbar^2 + 2 Ltilde) with Lbar = sum p_j L_j and
     Ltilde = sum p_j (1 - p_j) L_j (L_j^2 = 2 L_j for a matching). rho is a maximum of convex
     quadratics in alpha, hence convex: a golden-section search finds its minimum.
Each round: B_j ~ Bern(p_j) drawn from (seed, t), the same for every agent, and W_t = I - alpha sum_j B_j L_j.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import networkx as nx
import numpy as np
import torch

from ..errors import ConfigError
from .mixing import Mixing, Topology, upload


class Matcha:
    """A MATCHA schedule over `base`; exposes matchings, probabilities (M,) and alpha."""

    def __init__(self, base: Topology, budget: float, seed: int = 0,
                 matchings: Sequence[Sequence[tuple[int, int]]] | None = None, device: torch.device | str = "cpu"):
        if not 0 < budget <= 1:
            raise ConfigError(f"MATCHA budget C_b must be in (0, 1], got {budget!r}")
        self.base, self.budget, self.seed, self.device = base, float(budget), seed, device
        self.n = base.n
        self.name = f"matcha({base.name}, budget={budget})"
        self.matchings = [list(m) for m in matchings] if matchings is not None else decompose(base)
        self.laplacians = torch.stack([_laplacian(self.n, m) for m in self.matchings])  # (M, N, N)
        _check_matchings(self.matchings, self.laplacians, base)
        self.probabilities = activation_probabilities(self.laplacians, budget)  # (M,)
        self.alpha = mixing_alpha(self.laplacians, self.probabilities)  # 0-dim

    def mixing(self, t: int | torch.Tensor = 0) -> Mixing:
        active = torch.from_numpy(np.random.default_rng([self.seed, int(t)]).random(len(self.matchings)))
        active = (active < self.probabilities).to(torch.float64)  # (M,) B_j
        L = torch.einsum("m,mij->ij", active, self.laplacians)
        W = torch.eye(self.n, dtype=torch.float64) - self.alpha * L  # (N, N) on the host
        return Mixing(upload(W, self.device), host=W, matchings=self.matchings)

    def to(self, device: torch.device | str) -> Matcha:
        return Matcha(self.base, self.budget, self.seed, self.matchings, device)

    def __repr__(self) -> str:
        return f"Matcha({self.base.name}, budget={self.budget}, M={len(self.matchings)}, alpha={float(self.alpha):.4f})"


def matcha(base: Topology, budget: float = 0.5, seed: int = 0,
           matchings: Sequence[Sequence[tuple[int, int]]] | None = None) -> Matcha:
    """MATCHA over `base` with communication budget C_b = `budget` (expected active matchings / M)."""
    return Matcha(base, budget, seed, matchings)


def decompose(base: Topology) -> list[list[tuple[int, int]]]:
    """Disjoint matchings covering every edge of `base`: repeatedly remove a maximum-cardinality matching."""
    return decompose_graph(base.graph if base.graph is not None else nx.from_numpy_array(_links(base).numpy()))


def decompose_graph(g: nx.Graph) -> list[list[tuple[int, int]]]:
    """decompose's matchings of the graph g (nodes relabelled 0..N-1 in sorted order)."""
    g = nx.convert_node_labels_to_integers(nx.Graph(g), ordering="sorted")
    g.remove_edges_from(nx.selfloop_edges(g))
    out = []
    while g.number_of_edges():
        m = sorted(tuple(sorted(e)) for e in nx.max_weight_matching(g, maxcardinality=True))
        g.remove_edges_from(m)
        out.append(m)
    return out


def activation_probabilities(laplacians: torch.Tensor, budget: float, iterations: int = 400) -> torch.Tensor:
    """argmax_p lambda_2(sum_j p_j L_j) s.t. sum p <= budget * M, 0 <= p <= 1 (MATCHA's code solves this SDP with
    cvxpy). Projected supergradient ascent gets near the optimum; where lambda_2 is a multiple eigenvalue its
    steps zigzag (2.8% short of the optimum on exponential:32 at budget 0.1), so a smoothed ascent finishes."""
    p = _supergradient_ascent(laplacians, budget, iterations)
    return _smoothed_ascent(laplacians, budget * laplacians.shape[0], p)


def _supergradient_ascent(laplacians: torch.Tensor, budget: float, iterations: int) -> torch.Tensor:
    m = laplacians.shape[0]
    cap = budget * m
    p = torch.full((m,), min(budget, 1.0), dtype=torch.float64)  # feasible and symmetric start
    best, best_value = p.clone(), _lambda2(laplacians, p)
    for k in range(iterations):
        ev, vec = torch.linalg.eigh(torch.einsum("m,mij->ij", p, laplacians))
        # Average over the eigenvalues tied with lambda_2 (a ring's is double): a supergradient of their mean.
        tied = vec[:, 1:][:, (ev[1:] - ev[1]).abs() <= 1e-9 * max(1.0, float(ev[-1]))]  # (N, k)
        grad = torch.einsum("ik,mij,jk->m", tied, laplacians, tied) / tied.shape[1]  # (M,)
        p = _project(p + grad / math.sqrt(k + 1), cap)
        value = _lambda2(laplacians, p)
        if value > best_value + 1e-14:
            best, best_value = p.clone(), value
    return best


def _smoothed_ascent(laplacians: torch.Tensor, cap: float, p: torch.Tensor, levels: int = 8,
                     steps: int = 40) -> torch.Tensor:
    """p refined by projected gradient ascent on f_mu(p) = -mu log sum_{i>=2} exp(-lambda_i / mu), a smooth
    concave lower bound of lambda_2 within mu log(N - 1), for mu shrinking from 1e-2 to 1e-7 of lambda_max;
    step lengths adapt by backtracking. Returns the point of largest lambda_2 seen, p included."""
    scale = float(torch.linalg.eigvalsh(laplacians.sum(0))[-1])  # lambda_max with every matching active
    best, best_value = p, _lambda2(laplacians, p)
    step = 1 / scale
    for level in range(levels):
        mu = scale * 1e-2 * 1e-5 ** (level / (levels - 1))
        value, grad, _ = _smoothed(laplacians, p, mu)
        for _ in range(steps):
            while True:  # accept q once f_mu(q) clears the quadratic model of f_mu at p
                q = _project(p + step * grad, cap)
                d = q - p
                q_value, q_grad, q_lambda2 = _smoothed(laplacians, q, mu)
                if q_value >= value + float(grad @ d) - float(d @ d) / (2 * step) or step < 1e-14:
                    break
                step /= 2
            if q_lambda2 > best_value:
                best, best_value = q.clone(), q_lambda2
            p, value, grad, step = q, q_value, q_grad, step * 1.5
            if float(d.abs().max()) < 1e-13:  # converged at this mu
                break
    return best


def _smoothed(laplacians: torch.Tensor, p: torch.Tensor, mu: float) -> tuple[float, torch.Tensor, float]:
    """(f_mu(p), its gradient (M,), lambda_2(p)) from one eigendecomposition."""
    ev, vec = torch.linalg.eigh(torch.einsum("m,mij->ij", p, laplacians))
    z = -(ev[1:] - ev[1]) / mu  # (N-1,) the eigenvalues above the constant vector's 0
    grad = torch.einsum("ik,mij,jk,k->m", vec[:, 1:], laplacians, vec[:, 1:], torch.softmax(z, 0))
    return float(ev[1] - mu * torch.logsumexp(z, 0)), grad, float(ev[1])


def mixing_alpha(laplacians: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """argmin_alpha ||E[W^T W] - J||_2 by golden-section search on [0, 1] (the objective is convex)."""
    lo, hi = 0.0, 1.0
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = expected_rho(laplacians, p, a), expected_rho(laplacians, p, b)
    for _ in range(80):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = expected_rho(laplacians, p, a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = expected_rho(laplacians, p, b)
    return torch.tensor((lo + hi) / 2, dtype=torch.float64)


def expected_rho(laplacians: torch.Tensor, p: torch.Tensor, alpha: float) -> float:
    """||E[W^T W] - J||_2 for W = I - alpha sum_j B_j L_j with B_j ~ Bern(p_j) independent."""
    n = laplacians.shape[1]
    Lbar = torch.einsum("m,mij->ij", p, laplacians)
    Ltil = torch.einsum("m,mij->ij", p * (1 - p), laplacians)
    E = torch.eye(n, dtype=torch.float64) - 2 * alpha * Lbar + alpha**2 * (Lbar @ Lbar + 2 * Ltil)
    return float(torch.linalg.eigvalsh(E - 1 / n).abs().max())


def _lambda2(laplacians: torch.Tensor, p: torch.Tensor) -> float:
    return float(torch.linalg.eigvalsh(torch.einsum("m,mij->ij", p, laplacians))[1])


def _project(q: torch.Tensor, cap: float) -> torch.Tensor:
    """Euclidean projection onto {0 <= p <= 1, sum p <= cap}: clip(q - tau, 0, 1), tau >= 0 by bisection."""
    p = q.clamp(0, 1)
    if p.sum() <= cap:
        return p
    lo, hi = 0.0, float(q.max())
    for _ in range(100):
        tau = (lo + hi) / 2
        lo, hi = (tau, hi) if (q - tau).clamp(0, 1).sum() > cap else (lo, tau)
    return (q - hi).clamp(0, 1)


def _links(base: Topology) -> torch.Tensor:
    """(N, N) int64 0/1: the base's links either way (a directed W's too), no self-loops."""
    W = base.mixing(0).dense().cpu()
    A = ((W != 0) | (W.T != 0)).to(torch.int64)
    A.fill_diagonal_(0)
    return A


def _laplacian(n: int, edges: Sequence[tuple[int, int]]) -> torch.Tensor:
    L = torch.zeros(n, n, dtype=torch.float64)
    for e in edges:
        if len(e) != 2 or not all(isinstance(v, numbers.Integral) and 0 <= v < n for v in e):
            raise ConfigError(f"matching edge {tuple(e)!r} does not link two of the agents 0..{n - 1}")
        i, j = e
        L[i, j] = L[j, i] = -1
        L[i, i] += 1
        L[j, j] += 1
    return L


def _check_matchings(matchings, laplacians: torch.Tensor, base: Topology) -> None:
    for k, m in enumerate(matchings):
        nodes = [v for e in m for v in e]
        if len(nodes) != len(set(nodes)) or any(i == j for i, j in m):
            raise ConfigError(f"matching {k} is not a matching: some agent appears in two of its edges")
    A = _links(base).to(torch.float64)
    covered = -laplacians.sum(0)
    covered.fill_diagonal_(0)
    if not torch.equal(covered, A):
        raise ConfigError("the matchings must cover every edge of the base graph exactly once")
