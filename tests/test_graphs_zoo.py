"""The static topology zoo, spectral tools, specs, and `gossipsim graphs`."""
from __future__ import annotations

import math

import networkx as nx
import pytest
import torch

from gossipsim import ConfigError, graphs
from gossipsim.graphs import Mixing
from gossipsim.sim.cli import main

ZOO = {
    "torus4x4": lambda w: graphs.torus(4, 4, weights=w), "torus3x5": lambda w: graphs.torus(3, 5, weights=w),
    "grid3x4": lambda w: graphs.grid(3, 4, weights=w), "dyck": lambda w: graphs.dyck(weights=w),
    "petersen": lambda w: graphs.petersen(weights=w), "star7": lambda w: graphs.star(7, weights=w),
    "hypercube4": lambda w: graphs.hypercube(4, weights=w),
    "exponential12": lambda w: graphs.exponential(12, weights=w),
    "circulant16": lambda w: graphs.circulant(16, [1, 4], weights=w),
    "erdos_renyi": lambda w: graphs.erdos_renyi(14, 0.4, seed=3, weights=w),
    "random_regular": lambda w: graphs.random_regular(14, 3, seed=1, weights=w),
    "small_world": lambda w: graphs.small_world(14, 4, 0.2, seed=2, weights=w),
    "adjacency": lambda w: graphs.from_adjacency(nx.to_numpy_array(nx.wheel_graph(6)), weights=w),
}
REGULAR = {"torus4x4", "torus3x5", "dyck", "petersen", "hypercube4", "exponential12", "circulant16", "random_regular"}


@pytest.mark.parametrize("weights", ["metropolis", "max_degree", "laplacian", "uniform"])
@pytest.mark.parametrize("name", list(ZOO))
def test_every_topology_is_symmetric_doubly_stochastic(name, weights):
    if weights == "uniform" and name not in REGULAR:
        with pytest.raises(ConfigError, match="metropolis"):
            ZOO[name](weights)
        return
    topo = ZOO[name](weights)
    W = topo.mixing(0).dense()
    n = topo.n
    torch.testing.assert_close(W, W.T)
    torch.testing.assert_close(W.sum(1), torch.ones(n, dtype=torch.float64))
    off = W - torch.diag(W.diagonal())
    assert (off >= 0).all() and float(graphs.rho(W)) < 1
    if weights != "laplacian":  # I - alpha L may put a negative weight on a high-degree agent's self loop
        assert (W.diagonal() >= 0).all()
    assert (off > 1e-15).sum() == 2 * topo.graph.number_of_edges()  # weight exactly on the edges


def test_dyck_is_cubic_with_32_nodes_48_edges_girth_6():
    g = graphs.dyck().graph
    assert g.number_of_nodes() == 32 and g.number_of_edges() == 48
    assert {d for _, d in g.degree} == {3} and nx.girth(g) == 6
    torch.testing.assert_close(graphs.dyck().mixing(0).dense().diagonal(), torch.full((32,), 0.25, dtype=torch.float64))


def test_adagossip_torus_is_circulant_1_4_not_a_2d_torus():
    """AdaGossip's code's "torus" (GridGraph, ALGORITHMS.md 3): i linked to i +- 1 and i +- 4 mod N."""
    for n in (16, 32):
        M = graphs.parse("circulant:1,4", n).mixing(0)
        assert M.neighbors == [sorted({(i + s) % n for s in (1, -1, 4, -4)}) for i in range(n)]
    assert graphs.torus(4, 4).mixing(0).neighbors[3] == [0, 2, 7, 15]  # its row wraps: 3's right is 0, not 4


def test_hypercube_neighbours_differ_in_one_bit_and_exponential_distances():
    M = graphs.hypercube(3).mixing(0)
    assert all(bin(i ^ j).count("1") == 1 for i in range(8) for j in M.neighbors[i])
    M = graphs.exponential(16).mixing(0)
    assert M.neighbors[0] == [1, 2, 4, 8, 12, 14, 15]


def test_rho_and_mixing_time(fresh_seed):
    W = graphs.ring(10).mixing(0).dense()
    lam = (1 + 2 * math.cos(2 * math.pi / 10)) / 3
    assert float(graphs.rho(W)) == pytest.approx(lam, abs=1e-12)
    t = graphs.mixing_time(W, 1e-3)
    assert lam**t <= 1e-3 < lam ** (t - 1)
    x = torch.randn(10, 4, dtype=torch.float64)  # gossip alone contracts disagreement by rho per round
    dev = x - x.mean(0)
    for _ in range(t):
        x = W @ x
    assert (x - x.mean(0)).norm() <= 1e-3 * dev.norm() + 1e-12
    assert graphs.mixing_time(graphs.complete(5).mixing(0).dense()) == 1.0


@pytest.mark.parametrize("spec,n,name", [("ring", 12, "ring12"), ("torus", 12, "torus3x4"),
                                         ("torus:4x4", None, "torus4x4"), ("circulant:1,4", 16, "circulant16(1,4)"),
                                         ("hypercube", 8, "hypercube3"), ("erdos_renyi:0.5", 10, "erdos_renyi10"),
                                         ("small_world:10,4,0.1", 10, "small_world10")])
def test_specs(spec, n, name):
    assert graphs.parse(spec, n).name == name


@pytest.mark.parametrize("spec,n,needle", [("tours", 8, "did you mean 'torus'"), ("dyck", 16, "32 agents"),
                                           ("hypercube", 12, "power of two"), ("ring:a", None, "numbers"),
                                           ("torus:4", None, "needs 2"), ("erdos_renyi:10,0.01", None, "disconnected"),
                                           ("circulant:1,4", None, "number of agents"), ("torus", 7, "torus:1x7"),
                                           ("circulant:16", 16, r"\[1, 15\]"), ("ring:", 16, "numbers"),
                                           ("torus:4x", 16, "numbers"), ("complete:x", 8, "numbers"),
                                           ("hypercube:100", 16, "has 1267650600228229401496703205376 agents but"),
                                           ("ring:50000000", None, "at most 65536"),
                                           ("ring+rotate:inf", 8, "whole number k >= 2 of graphs, got inf"),
                                           ("ring+rotate:nan", 8, "got nan")])
def test_bad_specs(spec, n, needle):
    with pytest.raises(ConfigError, match=needle):
        graphs.parse(spec, n)


def test_the_smallest_hypercube():
    assert graphs.parse("hypercube:1").n == graphs.parse("hypercube", 2).n == 2  # a traceback before
    g = graphs.hypercube(4).graph
    assert nx.is_isomorphic(g, nx.hypercube_graph(4)) and all(bin(a ^ b).count("1") == 1 for a, b in g.edges)


def test_graphs_command(tmp_path, capsys):
    png = tmp_path / "g.png"
    assert main(["graphs", "ring:8", "torus:3x3", "dyck", f"--draw={png}"]) == 0
    out = capsys.readouterr().out
    assert "| dyck | 32 | 3 | 5 | 0.1910 |" in out and png.stat().st_size > 0
    assert main(["graphs", "ring:1"]) == 2


@pytest.mark.parametrize("W,needle", [
    (torch.ones(2, 3) / 3, "square"),
    (torch.ones(1, 1), "at least 2"),
    (torch.tensor([[1.2, -0.2], [-0.2, 1.2]]), "negative weight W[0, 1]"),
    (torch.tensor([[0.5, 0.5, 0.0], [0.25, 0.5, 0.25], [0.0, 0.25, 0.5]]), "row 2 sums to 0.75"),
    (torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.25, 0.25], [0.0, 0.5, 0.5]]), "column 1 sums to 1.25"),
    (torch.eye(3), "disconnected"),
    (torch.tensor([[0.0, 1.0], [1.0, 0.0]]), "never averages"),  # a swap: x, then its mirror, forever
    (torch.roll(torch.eye(5), 1, 0), "never averages: an eigenvalue besides 1 has modulus 1"),  # a cyclic shift
])
def test_user_matrix_validation(W, needle):
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[").replace("]", r"\]")) as e:
        graphs.from_matrix(W)
    assert "\n" not in str(e.value)


def test_user_matrix_accepted(fresh_seed):
    W = graphs.ring(6, weights="laplacian").mixing(0).dense()
    topo = graphs.from_matrix(W)
    torch.testing.assert_close(topo.mixing(3).dense(), W)
    directed = graphs.one_peer_exponential(8).mixing(0).dense()  # doubly stochastic, not symmetric
    assert graphs.from_matrix(directed).n == 8
    # float32, torch's default: its sums are 1 only to float32 rounding; accepted, and made exact in float64
    for w32 in (torch.full((3, 3), 1 / 3), graphs.ring(7).mixing(0).dense().float(),
                torch.rand(5, 5, dtype=torch.float64).add(torch.eye(5)).float()):
        if not torch.allclose(w32.sum(0), torch.ones(len(w32))):  # a random one: made doubly stochastic first
            w = w32.double()
            for _ in range(200):
                w = w / w.sum(1, keepdim=True)
                w = w / w.sum(0, keepdim=True)
            w32 = w.float()
        exact = graphs.from_matrix(w32).mixing(0).dense()
        for axis in (0, 1):
            assert (exact.sum(axis) - 1).abs().max() <= 1e-15, fresh_seed
        torch.testing.assert_close(exact, w32.double(), rtol=0, atol=1e-6)
        assert torch.equal(exact != 0, w32 != 0)


def test_networkx_graphs_of_every_kind():
    import networkx as nx

    with pytest.raises(ConfigError, match="from_networkx takes an undirected graph"):
        graphs.from_networkx(nx.DiGraph([(0, 1), (1, 2), (2, 0)]))
    multi = nx.MultiGraph([(0, 1), (0, 1), (1, 2), (2, 0)])  # a parallel edge is one link
    torch.testing.assert_close(graphs.from_networkx(multi).mixing(0).dense(), graphs.ring(3).mixing(0).dense())
    mixed = nx.Graph([("a", 1), (1, 2.5), (2.5, "a")])  # labels that do not sort: the graph's order
    torch.testing.assert_close(graphs.from_networkx(mixed).mixing(0).dense(), graphs.ring(3).mixing(0).dense())
    with pytest.raises(ConfigError, match=r"matching edge \(3, 4\) does not link two of the agents 0..3"):
        graphs.matcha(graphs.ring(4), matchings=[[(0, 1), (2, 3)], [(1, 2), (3, 4)]])
    with pytest.raises(ConfigError, match="gossip mixes floating-point rows, got torch.int64"):
        graphs.ring(5).mixing(0)(torch.full((5, 2), 6))


@pytest.mark.parametrize("make,auto", [
    (lambda: graphs.ring(9), "dense"), (lambda: graphs.ring(2), "dense"),
    (lambda: graphs.ring(64, weights="laplacian"), "sparse"), (lambda: graphs.torus(3, 5), "dense"),
    (lambda: graphs.torus(2, 16), "sparse"), (lambda: graphs.exponential(64), "sparse"),
    (lambda: graphs.circulant(48, [1, 4]), "sparse"),
    (lambda: graphs.random_regular(40, 3, seed=0), "sparse"), (lambda: graphs.grid(6, 6), "sparse"),
    (lambda: graphs.complete(40), "dense"), (lambda: graphs.petersen(), "dense"),
    (lambda: graphs.from_matrix(graphs.ring(8, weights="max_degree").mixing(0).dense()), "dense"),
])
def test_every_gossip_path_equals_dense_product(make, auto, fresh_seed, monkeypatch):
    topo = make()
    M = topo.mixing(0)
    assert M.path_on("cpu") == M.path_on("cuda") == M.path == auto
    monkeypatch.setattr(Mixing, "CPU_BLOCK_BYTES", 1)  # blocks of 256 columns: P = 600 is 3, the last short
    for path in ("dense", "sparse") + (("circulant",) if M.shifts is not None else ()):
        forced = Mixing(M.dense(), topo.grid, path=path)
        for dtype, tol in ((torch.float64, 1e-13), (torch.float32, 1e-5)):
            for p in (1, 37, 600):
                x = torch.randn(M.n, p, dtype=dtype)
                y = forced(x)
                assert y.dtype == dtype and y.shape == x.shape and y.is_contiguous()
                torch.testing.assert_close(y, (M.dense() @ x.double()).to(dtype), rtol=tol, atol=tol,
                                           msg=lambda m, path=path, p=p: f"{path} P={p} seed {fresh_seed}: {m}")
        v = torch.randn(M.n, dtype=torch.float64)  # one value an agent: (N,) in, (N,) out
        torch.testing.assert_close(forced(v), M.dense() @ v, rtol=1e-13, atol=1e-13)
        for dtype in (torch.bfloat16, torch.float16):  # the CPU CSR product has no half kernels: dense instead
            x = torch.randn(M.n, 37).to(dtype)
            y = forced(x)
            assert y.dtype == dtype and y.shape == x.shape
            torch.testing.assert_close(y.double(), M.dense() @ x.double(), rtol=2e-2, atol=2e-2)


def test_forced_paths_are_checked():
    with pytest.raises(ConfigError, match="circulant"):
        Mixing(graphs.petersen().mixing(0).dense(), path="circulant")
    with pytest.raises(ConfigError, match="'fast' is not one of dense, sparse, circulant"):
        Mixing(graphs.ring(4).mixing(0).dense(), path="fast")


def test_non_circulant_weights_on_a_grid_fall_back():
    W = graphs.ring(6).mixing(0).dense().clone()
    W[0, 1] = W[1, 0] = 0.2
    W[0, 0] = W[1, 1] = 1 - 0.2 - 1 / 3
    M = graphs.Mixing(W, grid=(6,))
    assert M.shifts is None and M.path == "dense"
