"""MATCHA: decomposition, budget, probabilities, alpha, and the expected-mixing formula."""
from __future__ import annotations

import copy
import itertools

import pytest
import torch

from gossipsim import ConfigError, graphs
from gossipsim.graphs.matcha import _lambda2, expected_rho


@pytest.mark.parametrize("budget", [0.1, 0.3, 0.5, 0.8, 1.0])
def test_ring_two_matchings_each_active_with_probability_budget(budget):
    m = graphs.matcha(graphs.ring(8), budget=budget, seed=0)
    assert len(m.matchings) == 2 and all(len(x) == 4 for x in m.matchings)
    torch.testing.assert_close(m.probabilities, torch.full((2,), budget, dtype=torch.float64), atol=1e-6, rtol=0)


@pytest.mark.parametrize("budget", [0.25, 0.5, 0.75])
def test_expected_communication_equals_budget_and_lambda2_is_maximal(budget, fresh_seed):
    base = graphs.erdos_renyi(12, 0.4, seed=5)
    m = graphs.matcha(base, budget=budget)
    M = len(m.matchings)
    assert sum(len(x) for x in m.matchings) == base.graph.number_of_edges()
    assert float(m.probabilities.sum()) == pytest.approx(budget * M, abs=1e-9)
    assert ((m.probabilities >= 0) & (m.probabilities <= 1)).all()
    best = _lambda2(m.laplacians, m.probabilities)
    gen = torch.Generator().manual_seed(fresh_seed)
    for _ in range(300):  # no random feasible point on the budget does better
        p = torch.rand(M, generator=gen, dtype=torch.float64)
        p = (p * budget * M / p.sum()).clamp(max=1)
        assert _lambda2(m.laplacians, p) <= best + 1e-6, f"seed {fresh_seed}"


@pytest.mark.parametrize("spec, n, budget", [("exponential", 32, 0.1), ("erdos_renyi:0.5", 8, 0.3),
                                              ("erdos_renyi:0.5", 8, 0.1), ("erdos_renyi:0.2", 32, 0.8)])
def test_no_transfer_of_probability_between_two_matchings_raises_lambda2(spec, n, budget):
    """lambda_2 is concave in p: at the optimum no feasible move helps. The supergradient ascent alone stopped
    where moving 0.01 from one matching to another gained 1.5% (exponential:32 at 0.1, a multiple lambda_2)."""
    m = graphs.matcha(graphs.parse(spec, n, seed=1), budget=budget)
    p, M = m.probabilities, len(m.matchings)
    best = _lambda2(m.laplacians, p)
    for i, j in itertools.permutations(range(M), 2):
        for d in (1e-2, 1e-3, 1e-4):
            q = p.clone()
            q[i] += d
            q[j] -= d
            if q[i] <= 1 and q[j] >= 0:
                assert _lambda2(m.laplacians, q) <= best * (1 + 1e-7), (i, j, d)


def test_alpha_beats_every_alpha_on_a_fine_grid():
    for base in (graphs.ring(8), graphs.erdos_renyi(10, 0.5, seed=1), graphs.torus(3, 4)):
        m = graphs.matcha(base, budget=0.5)
        best = expected_rho(m.laplacians, m.probabilities, float(m.alpha))
        grid = min(expected_rho(m.laplacians, m.probabilities, a / 2000) for a in range(2001))
        assert best <= grid + 1e-9 and 0 < float(m.alpha) < 1 and best < 1


def test_expected_rho_formula_equals_exact_expectation():
    m = graphs.matcha(graphs.erdos_renyi(7, 0.6, seed=2), budget=0.4)
    n, M = m.n, len(m.matchings)
    alpha = float(m.alpha)
    E = torch.zeros(n, n, dtype=torch.float64)
    for bits in itertools.product([0, 1], repeat=M):  # every activation pattern with its probability
        b = torch.tensor(bits, dtype=torch.float64)
        prob = torch.prod(torch.where(b > 0, m.probabilities, 1 - m.probabilities))
        W = torch.eye(n, dtype=torch.float64) - alpha * torch.einsum("m,mij->ij", b, m.laplacians)
        E += prob * W.T @ W
    exact = float(torch.linalg.eigvalsh(E - 1 / n).abs().max())
    assert expected_rho(m.laplacians, m.probabilities, alpha) == pytest.approx(exact, abs=1e-12)


def test_rounds_reproducible_and_consensus_at_the_predicted_rate(fresh_seed):
    m = graphs.matcha(graphs.erdos_renyi(8, 0.5, seed=0), budget=0.5, seed=7)
    again = graphs.matcha(graphs.erdos_renyi(8, 0.5, seed=0), budget=0.5, seed=7)
    for t in (5, 0, 5):
        torch.testing.assert_close(m.mixing(t).dense(), again.mixing(t).dense(), rtol=0, atol=0)
        torch.testing.assert_close(m.mixing(t).dense().sum(1), torch.ones(8, dtype=torch.float64))
    rho = expected_rho(m.laplacians, m.probabilities, float(m.alpha))
    T, runs = 15, 200
    x0 = torch.randn(8, 1, dtype=torch.float64)
    x0 -= x0.mean()
    finals = []
    for r in range(runs):  # E||x_T - xbar||^2 <= rho^T ||x_0 - xbar||^2 over the random activations
        sched = copy.copy(m)  # the same p and alpha, another activation stream
        sched.seed = 1000 + r
        x = x0.clone()
        for t in range(T):
            x = sched.mixing(t)(x)
        finals.append(float((x - x.mean()).pow(2).sum()))
    assert sum(finals) / runs <= 1.25 * rho**T * float(x0.pow(2).sum()), f"seed {fresh_seed}"
    edges = [m.mixing(t).edges / 2 for t in range(2000)]  # undirected active edges per round
    expected = sum(float(p) * len(x) for p, x in zip(m.probabilities, m.matchings))
    assert sum(edges) / len(edges) == pytest.approx(expected, rel=0.05)


def test_given_matchings_and_errors():
    ring = graphs.ring(8)
    given = [[(i, i + 1) for i in range(0, 8, 2)], [(i, (i + 1) % 8) for i in range(1, 8, 2)]]
    m = graphs.matcha(ring, budget=0.5, matchings=given)
    assert m.matchings == [list(x) for x in given]
    with pytest.raises(ConfigError, match="cover"):
        graphs.matcha(ring, budget=0.5, matchings=given[:1])
    with pytest.raises(ConfigError, match="not a matching"):
        graphs.matcha(ring, budget=0.5, matchings=[[(0, 1), (1, 2)]])
    with pytest.raises(ConfigError, match="budget"):
        graphs.matcha(ring, budget=0)
