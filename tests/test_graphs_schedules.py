"""Time-varying topologies: doubly stochastic every round, reproducible, and they reach consensus."""
from __future__ import annotations

import pytest
import torch

from gossipsim import ConfigError, graphs

SCHEDULES = {
    "one_peer_exponential": lambda: graphs.one_peer_exponential(16),
    "one_peer_exponential_odd": lambda: graphs.one_peer_exponential(12),
    "random_matching": lambda: graphs.random_matching(11, seed=3),
    "link_failures": lambda: graphs.link_failures(graphs.torus(3, 4), 0.3, seed=1),
    "rotating": lambda: graphs.rotating([graphs.ring(12), graphs.relabelled(graphs.ring(12), 1),
                                         graphs.relabelled(graphs.ring(12), 2)], schedule="al_dsgd"),
}


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_doubly_stochastic_every_round_and_reproducible(name):
    topo, again = SCHEDULES[name](), SCHEDULES[name]()
    for t in (7, 0, 3, 100, 3):  # any order: round t's graph does not depend on what was asked before
        W = topo.mixing(t).dense()
        ones = torch.ones(topo.n, dtype=torch.float64)
        torch.testing.assert_close(W.sum(0), ones)
        torch.testing.assert_close(W.sum(1), ones)
        assert (W >= 0).all()
        torch.testing.assert_close(W, again.mixing(torch.tensor(t)).dense(), rtol=0, atol=0)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_gossip_reaches_consensus(name, fresh_seed):
    topo = SCHEDULES[name]()
    x = torch.randn(topo.n, 5, dtype=torch.float64)
    mean = x.mean(0)
    for t in range(300):
        x = topo.mixing(t)(x)
    torch.testing.assert_close(x.mean(0), mean)  # doubly stochastic: the average is kept
    assert (x - mean).abs().max() < 1e-6, f"seed {fresh_seed}"


def test_one_peer_exponential_averages_exactly_in_log2_n_rounds(fresh_seed):
    for n in (2, 8, 32):
        topo = graphs.one_peer_exponential(n)
        P = torch.eye(n, dtype=torch.float64)
        for t in range(n.bit_length() - 1):
            P = topo.mixing(t).dense() @ P
            assert topo.mixing(t).degrees.tolist() == [1] * n
        torch.testing.assert_close(P, torch.full((n, n), 1 / n, dtype=torch.float64))


def test_link_failures_and_rotation_schedules():
    base = graphs.ring(10)
    torch.testing.assert_close(graphs.link_failures(base, 0.0, seed=4).mixing(9).dense(), base.mixing(0).dense())
    edges = [graphs.link_failures(base, 0.5, seed=0).mixing(t).edges for t in range(400)]
    assert abs(sum(edges) / len(edges) / base.mixing(0).edges - 0.5) < 0.05  # half the links survive on average
    g = [graphs.ring(6), graphs.star(6), graphs.complete(6)]
    rot = graphs.rotating(g, schedule="al_dsgd")
    picks = [next(i for i, x in enumerate(g) if torch.equal(rot.mixing(t).dense(), x.mixing(0).dense()))
             for t in range(7)]
    assert picks == [1, 0, 1, 2, 1, 0, 1]  # even -> G1; else divisible by 3 -> G2; else G0
    assert [graphs.rotating(g).mixing(t).n for t in range(3)] == [6, 6, 6]
    with pytest.raises(ConfigError):
        graphs.rotating(g[:2], schedule="al_dsgd")
    with pytest.raises(ConfigError):
        graphs.link_failures(base, 1.0)
