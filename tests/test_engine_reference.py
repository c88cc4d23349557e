"""The vectorized engine against the naive per-agent simulator, in float64, for every backend."""
from __future__ import annotations

import networkx as nx
import pytest
import torch
from torch import nn

from gossipsim import graphs, sim
from gossipsim.graphs import Mixing
from gossipsim.graphs.matcha import decompose_graph
from gossipsim.sim.model import StackedModel
from tests.reference.naive import NaiveSimulator

N, B, ROUNDS, CLASSES = 5, 6, 10, 4


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 12), nn.Tanh(), nn.Linear(12, CLASSES))


def bn_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(3 * 4 * 4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, CLASSES))


class MaskedPermutedMLP(nn.Module):
    """Integer and bool buffers that are not BatchNorm's: a fixed pixel permutation and a pruning mask."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(7)  # the same constants in every module built
        self.register_buffer("perm", torch.randperm(36, generator=g))
        self.register_buffer("mask", torch.rand(12, 36, generator=g) < 0.5)
        self.fc1, self.fc2 = nn.Linear(36, 12), nn.Linear(12, CLASSES)

    def forward(self, x):
        h = torch.tanh(nn.functional.linear(x.flatten(1)[:, self.perm], self.fc1.weight * self.mask, self.fc1.bias))
        return self.fc2(h)


def irregular_W() -> torch.Tensor:
    """Metropolis weights of a small irregular graph (a path with a chord), so per-edge weights differ."""
    import networkx as nx

    return graphs.mixing_weights(nx.Graph([(0, 1), (1, 2), (2, 3), (3, 4), (1, 3)]))


def run_both(factory, algorithm, W, backend, seed, bn="local", rounds=ROUNDS, same_init=False, same_data=False,
             **hyper):
    """Run the engine's algorithm and the naive simulator side by side in float64, checking the losses every
    round. W: a mixing matrix (N, N), or a topology whose mixing(t) changes with the round. Random compressors
    draw from torch's global generator, reseeded before each side's round so both see the same numbers."""
    model = StackedModel(factory, N, backend=backend, chunk_size=2, bn=bn)
    x0, buf0 = model.init(seed, same_init=same_init, dtype=torch.float64)
    algo = sim.algorithms.make(algorithm, **hyper)
    state, buffers = algo.init(x0), buf0
    topology = W if hasattr(W, "mixing") else None
    # the base graph's matchings, which AL-DSGD's agents list their neighbours by (Mixing.order)
    matchings = (getattr(topology, "matchings", None) if topology is not None
                 else decompose_graph(nx.from_numpy_array((W != 0).numpy())))
    naive = NaiveSimulator(factory, topology.mixing(0).dense() if topology else W, algorithm, x0=x0, buf0=buf0,
                           bn=bn, matchings=matchings, **hyper)
    gen = torch.Generator().manual_seed(seed)
    for t in range(rounds):
        mixing = topology.mixing(t) if topology else Mixing(W)
        rows = 1 if same_data else N  # same_data: one batch that every agent sees
        xb = torch.randn(rows, B, 1, 6, 6, dtype=torch.float64, generator=gen).expand(N, -1, -1, -1, -1)
        yb = torch.randint(0, CLASSES, (rows, B), generator=gen).expand(N, -1)
        new = [buffers]

        def oracle(x, xb=xb, yb=yb, new=new, buffers=buffers):
            loss, g, new[0] = model.grad(x, buffers, xb, yb)
            return loss, g

        torch.manual_seed(seed * 1000 + t)
        state, stats = algo.step(state, sim.Round(torch.tensor(t), oracle, mixing))
        buffers = mixing(new[0]) if bn == "gossip" else new[0]
        torch.manual_seed(seed * 1000 + t)
        losses = naive.step(xb, yb, mixing.dense())
        torch.testing.assert_close(stats["loss"], losses.to(torch.float64),
                                   rtol=1e-10, atol=1e-12, msg=lambda m, t=t: f"seed {seed}, round {t}: {m}")
    return state, buffers, naive


@pytest.mark.parametrize("backend", ["vmap", "loop", "chunked"])
@pytest.mark.parametrize("algorithm", ["dsgd", "dpsgd"])
@pytest.mark.parametrize("factory", [mlp, bn_cnn, MaskedPermutedMLP], ids=["mlp", "bn_cnn", "int_buffers"])
def test_matches_naive_simulator(factory, algorithm, backend, fresh_seed):
    state, buffers, naive = run_both(factory, algorithm, irregular_W(), backend, fresh_seed,
                                     lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)
    torch.testing.assert_close(state.x, naive.x(), rtol=1e-9, atol=1e-11, msg=lambda m: f"seed {fresh_seed}: {m}")
    torch.testing.assert_close(buffers, naive.buffers(), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("algorithm", ["allreduce", "local"])
def test_baselines_match_naive_simulator(algorithm, fresh_seed):
    state, buffers, naive = run_both(bn_cnn, algorithm, irregular_W(), "vmap", fresh_seed, lr=0.05, momentum=0.5)
    torch.testing.assert_close(state.x, naive.x(), rtol=1e-9, atol=1e-11, msg=lambda m: f"seed {fresh_seed}: {m}")
    torch.testing.assert_close(buffers, naive.buffers(), rtol=1e-9, atol=1e-11)


def test_gossiped_batchnorm_buffers_match(fresh_seed):
    state, buffers, naive = run_both(bn_cnn, "dsgd", irregular_W(), "vmap", fresh_seed, bn="gossip", lr=0.05)
    torch.testing.assert_close(buffers, naive.buffers(), rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(state.x, naive.x(), rtol=1e-9, atol=1e-11)


def test_identity_mixing_gives_independent_sgd_runs(fresh_seed):
    """W = I: dsgd and dpsgd are N independent torch.optim.SGD runs (the `local` algorithm, exactly)."""
    eye = torch.eye(N, dtype=torch.float64)
    for algorithm in ("dsgd", "dpsgd"):
        state, _, naive = run_both(bn_cnn, algorithm, eye, "vmap", fresh_seed, lr=0.1, momentum=0.9)
        local_state, _, _ = run_both(bn_cnn, "local", eye, "vmap", fresh_seed, lr=0.1, momentum=0.9)
        torch.testing.assert_close(state.x, local_state.x, rtol=0, atol=0)
        torch.testing.assert_close(state.x, naive.x(), rtol=1e-9, atol=1e-11)


def test_complete_graph_is_minibatch_sgd_on_the_pooled_batch(fresh_seed):
    """W = J with a common x0: every row equals one model trained by SGD on the N*B pooled samples."""
    model = StackedModel(mlp, N, backend="vmap")
    x0, buf0 = model.init(fresh_seed, dtype=torch.float64)
    algo = sim.algorithms.make("dsgd", lr=0.1, momentum=0.9)
    state, mixing = algo.init(x0), graphs.complete(N).mixing(0)
    single = mlp().to(torch.float64)
    torch.nn.utils.vector_to_parameters(x0[0].clone(), single.parameters())
    opt = torch.optim.SGD(single.parameters(), lr=0.1, momentum=0.9)
    gen = torch.Generator().manual_seed(fresh_seed)
    for t in range(ROUNDS):
        xb = torch.randn(N, B, 1, 6, 6, dtype=torch.float64, generator=gen)
        yb = torch.randint(0, CLASSES, (N, B), generator=gen)
        def oracle(x, xb=xb, yb=yb):
            return model.grad(x, buf0, xb, yb)[:2]

        state, _ = algo.step(state, sim.Round(torch.tensor(t), oracle, mixing))
        opt.zero_grad()
        torch.nn.functional.cross_entropy(single(xb.flatten(0, 1)), yb.flatten()).backward()
        opt.step()
    pooled = torch.nn.utils.parameters_to_vector(single.parameters()).detach()
    torch.testing.assert_close(state.x, pooled.expand(N, -1), rtol=1e-9, atol=1e-11,
                               msg=lambda m: f"seed {fresh_seed}: {m}")


def test_float32_runs_in_float32(fresh_seed):
    model = StackedModel(mlp, N, backend="vmap")
    x0, buf0 = model.init(fresh_seed)
    for name in ("dsgd", "dpsgd", "allreduce", "local"):
        algo = sim.algorithms.make(name, lr=sim.local.cosine(0.1, 10), momentum=0.9)
        state = algo.init(x0)
        xb, yb = torch.randn(N, B, 1, 6, 6), torch.randint(0, CLASSES, (N, B))
        oracle = lambda x, xb=xb, yb=yb: model.grad(x, buf0, xb, yb)[:2]  # noqa: E731
        state, stats = algo.step(state, sim.Round(torch.tensor(3), oracle, graphs.ring(N).mixing(0)))
        assert state.x.dtype == torch.float32 and state.buf.dtype == torch.float32, name
        assert stats["bits"].shape == (N,)
