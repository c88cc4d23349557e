"""The graphs the spine needs: ring, complete, weights, validation, the dense gossip operator."""
from __future__ import annotations

import math

import networkx as nx
import pytest
import torch

from gossipsim import ConfigError, graphs


@pytest.mark.parametrize("make", [graphs.ring, graphs.complete])
@pytest.mark.parametrize("n", [2, 3, 8, 17])
def test_doubly_stochastic_and_symmetric(make, n):
    W = make(n).mixing(0).dense()
    assert W.shape == (n, n) and W.dtype == torch.float64 and (W >= 0).all()
    torch.testing.assert_close(W, W.T)
    torch.testing.assert_close(W.sum(0), torch.ones(n, dtype=torch.float64))
    torch.testing.assert_close(W.sum(1), torch.ones(n, dtype=torch.float64))


@pytest.mark.parametrize("n", [3, 4, 10, 16, 33])
def test_ring_spectral_gap_closed_form(n):
    # W = (I + S + S^T)/3 has eigenvalues (1 + 2 cos(2 pi k / n)) / 3.
    lam = max(abs(1 + 2 * math.cos(2 * math.pi * k / n)) / 3 for k in range(1, n))
    assert float(graphs.spectral_gap(graphs.ring(n).mixing(0).dense())) == pytest.approx(1 - lam, abs=1e-12)


def test_spectral_gap_refuses_a_matrix_that_is_not_stochastic():
    W = graphs.ring(6).mixing(0).dense()
    with pytest.raises(ConfigError, match="eigenvalue. is 1 .a nonnegative stochastic matrix.; this one.s is 1.5"):
        graphs.spectral_gap(1.5 * W)


def test_neighbours_degrees_and_edges():
    M = graphs.ring(6).mixing(0)
    assert M.neighbors[0] == [1, 5] and M.degrees.tolist() == [2] * 6 and M.edges == 12
    M = graphs.complete(5).mixing(3)
    assert M.degrees.tolist() == [4] * 5
    torch.testing.assert_close(M.dense(), torch.full((5, 5), 0.2, dtype=torch.float64))


def test_metropolis_on_irregular_graph_and_weight_choices(fresh_seed):
    g = nx.star_graph(4)  # hub of degree 4
    W = graphs.mixing_weights(g)
    assert W[0, 1] == pytest.approx(1 / 5) and W[1, 1] == pytest.approx(4 / 5)
    with pytest.raises(ConfigError, match="metropolis"):
        graphs.mixing_weights(g, "uniform")
    for w in graphs.WEIGHTS[2:]:
        Wx = graphs.mixing_weights(g, w)
        torch.testing.assert_close(Wx.sum(1), torch.ones(5, dtype=torch.float64))
        assert float(graphs.spectral_gap(Wx)) > 0


@pytest.mark.parametrize("n,sparse", [(7, False), (40, True), (97, True)])
def test_gossip_keeps_dtype_and_equals_dense_product(n, sparse, fresh_seed):
    M = graphs.ring(n).mixing(0)
    assert M.sparse == sparse and not graphs.complete(n).mixing(0).sparse
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(n, 13, dtype=dtype)
        y = M(x)
        assert y.dtype == dtype and y.shape == x.shape and y.layout == torch.strided
        torch.testing.assert_close(y, (M.dense() @ x.double()).to(dtype), msg=lambda m: f"seed {fresh_seed}: {m}")
    x = torch.randn(n, 5, dtype=torch.float64)
    torch.testing.assert_close(M(x).mean(0), x.mean(0))  # gossip preserves the network mean


@pytest.mark.parametrize("bad", [lambda: graphs.ring(1), lambda: graphs.complete(0),
                                 lambda: graphs.from_networkx(nx.Graph([(0, 1), (2, 3)])),
                                 lambda: graphs.ring(5, weights="nope")])
def test_bad_graphs_give_one_line(bad):
    with pytest.raises(ConfigError) as e:
        bad()
    assert "\n" not in str(e.value)
