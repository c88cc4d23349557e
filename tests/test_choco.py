"""CHOCO-SGD (paper order and the official code's order) and AdaGossip against the naive per-agent simulator,
in float64."""
from __future__ import annotations

import pytest
import torch

from gossipsim import ConfigError, graphs, kernels, sim
from gossipsim.sim.model import StackedModel
from tests.test_engine_reference import CLASSES, B, N, bn_cnn, irregular_W, mlp, run_both

MLP_LAYERS = tuple(p.numel() for p in mlp().parameters())

COMPRESSORS = {
    "identity": lambda: kernels.identity(),
    "top_k": lambda: kernels.top_k(0.3),
    "top_k_per_layer": lambda: kernels.top_k(0.2, per="layer").with_layers(MLP_LAYERS),
    "sign": lambda: kernels.sign(),
    "sign_per_layer": lambda: kernels.sign(per="layer").with_layers(MLP_LAYERS),
}


@pytest.mark.parametrize("algorithm", ["choco", "choco_parallel"])
@pytest.mark.parametrize("comp", list(COMPRESSORS))
def test_matches_naive_simulator(algorithm, comp, fresh_seed):
    state, _, naive = run_both(mlp, algorithm, irregular_W(), "vmap", fresh_seed, lr=0.05, momentum=0.9,
                               nesterov=True, weight_decay=1e-3, gamma=0.4, compressor=COMPRESSORS[comp]())
    torch.testing.assert_close(state.x, naive.x(), rtol=1e-9, atol=1e-11, msg=lambda m: f"seed {fresh_seed}: {m}")
    torch.testing.assert_close(state.x_hat, torch.stack(naive.x_hat), rtol=1e-9, atol=1e-11)


def test_with_batchnorm_and_a_learning_rate_schedule(fresh_seed):
    state, buffers, naive = run_both(bn_cnn, "choco", irregular_W(), "loop", fresh_seed, lr=0.05,
                                     gamma=0.7, compressor=kernels.top_k(0.5))
    torch.testing.assert_close(state.x, naive.x(), rtol=1e-9, atol=1e-11, msg=lambda m: f"seed {fresh_seed}: {m}")
    torch.testing.assert_close(buffers, naive.buffers(), rtol=1e-9, atol=1e-11)


def test_identity_compressor_and_gamma_one_is_atc_dsgd(fresh_seed):
    """DESIGN's identity: CHOCO with C = I and gamma = 1 gives x_hat = X^{t+1/2}, so X^{t+1} = W X^{t+1/2}."""
    choco, _, _ = run_both(mlp, "choco", irregular_W(), "vmap", fresh_seed, lr=0.1, momentum=0.9, gamma=1.0,
                           compressor=kernels.identity())
    dsgd, _, _ = run_both(mlp, "dsgd", irregular_W(), "vmap", fresh_seed, lr=0.1, momentum=0.9)
    torch.testing.assert_close(choco.x, dsgd.x, rtol=1e-12, atol=1e-13, msg=lambda m: f"seed {fresh_seed}: {m}")


@pytest.mark.parametrize("algorithm", ["choco", "choco_parallel"])
def test_bits_mean_and_state(algorithm, fresh_seed):
    model = StackedModel(mlp, N, backend="vmap")
    x0, buf0 = model.init(fresh_seed)
    comp = kernels.top_k(0.1)
    algo = sim.algorithms.make(algorithm, lr=0.1, gamma=0.5, compressor=comp)
    state = algo.init(x0)
    M = graphs.ring(N).mixing(0)
    xb, yb = torch.randn(N, B, 1, 6, 6), torch.randint(0, CLASSES, (N, B))
    oracle = lambda x: model.grad(x, buf0, xb, yb)[:2]  # noqa: E731
    state, stats = algo.step(state, sim.Round(torch.tensor(0), oracle, M))
    p = x0.shape[1]
    k = int(0.1 * p)
    per_message = k * (32 + (p - 1).bit_length())
    assert stats["bits"].tolist() == [2.0 * per_message] * N  # a ring: two neighbours each
    assert state.x.dtype == state.x_hat.dtype == torch.float32 and state.x.shape == x0.shape
    assert not torch.equal(state.x, x0) and x0.abs().sum() > 0  # init cloned x0: the caller's tensor is untouched


def test_bad_compressor_argument():
    with pytest.raises(ConfigError, match=r"compressor='top_k:0.1': give a kernels.Compressor; "
                                          r"kernels.parse\('top_k:0.1'\) builds one"):
        sim.algorithms.make("choco", lr=0.1, compressor="top_k:0.1")
    with pytest.raises(TypeError, match="Compressor"):  # any other object: the factory's own check
        sim.algorithms.make("choco", lr=0.1, compressor=0.1)


def test_from_the_command_line(tmp_path, capsys):
    from gossipsim.sim.cli import main

    out = tmp_path / "run"
    assert main(["run", "--algorithm=choco", "--compressor=top_k:0.1", "--compress_per=layer", "--gamma=0.3",
                 "--agents=4", "--rounds=4", "--eval_every=4", "--batch_size=8", "--progress=false",
                 f"--out={out}"]) == 0
    summary = (out / "summary.json").read_text()
    assert '"algorithm": "choco"' in summary
    assert main(["run", "--algorithm=choco", "--compressor=top_k:2", f"--out={out}2"]) == 2
    assert "top_k fraction kept must be a number in (0, 1], got 2.0" in capsys.readouterr().err


@pytest.mark.parametrize("comp", ["identity", "top_k", "sign_per_layer"])
def test_adagossip_matches_naive_simulator(comp, fresh_seed):
    state, _, naive = run_both(mlp, "adagossip", irregular_W(), "vmap", fresh_seed, lr=0.05, momentum=0.9,
                               nesterov=True, weight_decay=1e-3, gamma=0.05, beta=0.9,
                               compressor=COMPRESSORS[comp]())
    torch.testing.assert_close(state.x, naive.x(), rtol=1e-9, atol=1e-11, msg=lambda m: f"seed {fresh_seed}: {m}")
    torch.testing.assert_close(state.u, torch.stack(naive.u), rtol=1e-9, atol=1e-15)


def test_adagossip_with_a_huge_gamma_is_choco_with_gamma_one(fresh_seed):
    # a huge gamma: every step clips to 1, which is CHOCO with gamma = 1
    ada, _, _ = run_both(mlp, "adagossip", irregular_W(), "vmap", fresh_seed, lr=0.05, gamma=1e6,
                         compressor=kernels.top_k(0.3))
    cho, _, _ = run_both(mlp, "choco", irregular_W(), "vmap", fresh_seed, lr=0.05, gamma=1.0,
                         compressor=kernels.top_k(0.3))
    torch.testing.assert_close(ada.x, cho.x, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("algorithm", ["choco", "choco_parallel"])
def test_matches_naive_simulator_on_a_time_varying_graph(algorithm, fresh_seed):
    from tests.test_seed_algorithms import irregular_matcha

    state, _, naive = run_both(mlp, algorithm, irregular_matcha(fresh_seed), "vmap", fresh_seed, lr=0.05,
                               momentum=0.9, gamma=0.4, compressor=kernels.top_k(0.3))
    torch.testing.assert_close(state.x, naive.x(), rtol=1e-9, atol=1e-11, msg=lambda m: f"seed {fresh_seed}: {m}")
    torch.testing.assert_close(state.x_hat, torch.stack(naive.x_hat), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("spec", ["ring+fail:0.3", "ring+matcha:0.5", "random_matching"])
@pytest.mark.parametrize("algorithm", ["choco", "choco_parallel", "adagossip", "malcom_psgd"])
def test_compressed_gossip_reaches_consensus_on_time_varying_graphs(algorithm, spec, fresh_seed):
    """Zero gradients and exact messages: pure gossip, which must agree whatever W_t does (choco_parallel
    kept the official code's running sum of W q, which stopped at distance 4 here); on the mean but for
    AdaGossip, whose per-agent, per-parameter steps do not keep it."""
    n = 8
    x0 = torch.randn(n, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(fresh_seed))
    topo = graphs.parse(spec, n, seed=fresh_seed)
    hyper = dict(mu=0.0) if algorithm == "malcom_psgd" else {}
    algo = sim.algorithms.make(algorithm, lr=0.1, gamma=0.5, compressor=kernels.identity(), **hyper)
    state = algo.init(x0.clone())
    still = lambda x: (torch.zeros(n, dtype=x.dtype), torch.zeros_like(x))  # noqa: E731
    for t in range(300):
        state, _ = algo.step(state, sim.Round(torch.tensor(t), still, topo.mixing(t)))
    target = state.x.mean(0) if algorithm == "adagossip" else x0.mean(0)
    torch.testing.assert_close(state.x, target.expand(n, -1), rtol=0, atol=1e-8,
                               msg=lambda m: f"seed {fresh_seed}: {m}")


@pytest.mark.parametrize("algorithm", ["choco", "choco_parallel", "adagossip", "malcom_psgd"])
def test_a_message_made_while_a_link_is_down_is_paid_for_when_it_is_up(algorithm, fresh_seed):
    """Public copies must hold every increment: on a time-varying graph each link carries, when active, all
    its sender's messages since it was last active. Counting the active links alone gave CHOCO on
    ring+fail:0.5 about half the bits its copies need."""
    n, p, rounds = 6, 40, 12
    topo = graphs.parse("ring+fail:0.5", n, seed=fresh_seed)
    comp = kernels.top_k(0.35)  # k = 14 of 40: 14 * (32 + 6) bits a message, 0.42 of a full copy
    algo = sim.algorithms.make(algorithm, lr=0.1, gamma=0.5, compressor=comp)
    gen = torch.Generator().manual_seed(fresh_seed)
    state = algo.init(torch.randn(n, p, dtype=torch.float64, generator=gen))
    grad = lambda x: (x.pow(2).sum(1), 2 * x)  # noqa: E731
    sent = torch.zeros(n, dtype=torch.float64)
    for t in range(rounds):
        state, stats = algo.step(state, sim.Round(torch.tensor(t), grad, topo.mixing(t)))
        sent += stats["bits"]
    message = float(comp.roundtrip(torch.randn(1, p, dtype=torch.float64))[1][0])  # top-k: a fixed size
    expected = torch.zeros(n, dtype=torch.float64)
    for i in range(n):
        for j in ((i - 1) % n, (i + 1) % n):  # j's messages to i: all those since their link was last up
            waited = 0.0
            for t in range(rounds):
                waited += message
                if topo.mixing(t).links[i, j]:  # ... but never more than x_hat_j itself, 32 p bits
                    expected[j] += min(waited, 32 * p)
                    waited = 0.0
    torch.testing.assert_close(sent, expected, rtol=0, atol=0)
    assert sum(bool(topo.mixing(t).links.sum() < 2 * n) for t in range(rounds)) > 0  # links did fail
    assert message * 3 > 32 * p > message * 2  # so a link down two rounds in a row pays the cap


@pytest.mark.parametrize("spec", ["random_matching", "ring+matcha:0.5", "one_peer_exponential"])
def test_compressed_gossip_never_pays_more_than_a_full_copy_a_link(spec, fresh_seed):
    """With identity messages CHOCO sends what D-SGD sends: x_hat whole to each active neighbour. The backlog of a
    sparse schedule charged up to 6 times that (every message of the rounds a link was down)."""
    n, p = 8, 30
    topo = graphs.parse(spec, n, seed=fresh_seed)
    state = (algo := sim.algorithms.make("choco", lr=0.1, gamma=0.5, compressor=kernels.identity())).init(
        torch.randn(n, p, dtype=torch.float64, generator=torch.Generator().manual_seed(fresh_seed)))
    grad = lambda x: (x.pow(2).sum(1), 2 * x)  # noqa: E731
    for t in range(20):
        mixing = topo.mixing(t)
        state, stats = algo.step(state, sim.Round(torch.tensor(t), grad, mixing))
        torch.testing.assert_close(stats["bits"], sim.algorithms.gossip_bits(mixing, p), rtol=0, atol=0)

    # on a static ring a message larger than a dense copy (top-k keeping everything, with its indices) is paid as
    # its own encoding says: the cap is on the catch-up alone
    comp = kernels.top_k(1.0)
    algo = sim.algorithms.make("choco", lr=0.1, gamma=0.5, compressor=comp)
    state, ring = algo.init(torch.randn(n, p, dtype=torch.float64)), graphs.ring(n).mixing(0)
    state, stats = algo.step(state, sim.Round(torch.tensor(0), grad, ring))
    message = float(comp.roundtrip(torch.randn(1, p, dtype=torch.float64))[1][0])
    assert message > 32 * p and stats["bits"].tolist() == [2 * message] * n


def test_a_choco_written_from_the_public_pieces_is_the_built_in_one_bits_included(fresh_seed):
    """README's recipe for an algorithm of one's own whose messages update public copies: kernels.choco_residual,
    kernels.consensus_step and waiting/delivered_bits. Multiplying the message bits by the active degree alone,
    all that was documented before, paid about half the built-in's bits on ring+fail:0.5."""
    from typing import NamedTuple

    from gossipsim.sim.algorithms import delivered_bits, waiting

    class Mine(NamedTuple):
        x: torch.Tensor  # (N, P)
        x_hat: torch.Tensor  # (N, P)
        pending: torch.Tensor  # (N, N)

    def mine(lr, gamma, compressor):
        def init(x0):
            return Mine(x0.clone(), torch.zeros_like(x0), waiting(x0))

        def step(s, rnd):
            loss, g = rnd.grad(s.x)
            x = s.x - lr * g
            bits = kernels.choco_residual(x, s.x_hat, compressor)  # x_hat += C(x - x_hat)
            kernels.consensus_step(x, s.x_hat, rnd.mixing, gamma)  # x += gamma (W x_hat - x_hat)
            return s._replace(x=x), {"loss": loss, "bits": delivered_bits(s.pending, bits, rnd.mixing, x.shape[1])}

        return init, step

    n, p = 6, 40
    topo = graphs.parse("ring+fail:0.5", n, seed=fresh_seed)
    x0 = torch.randn(n, p, dtype=torch.float64, generator=torch.Generator().manual_seed(fresh_seed))
    grad = lambda x: (x.pow(2).sum(1), 2 * x)  # noqa: E731
    ours = sim.algorithms.make("choco", lr=0.1, gamma=0.4, compressor=kernels.top_k(0.2))
    init, step = mine(0.1, 0.4, kernels.top_k(0.2))
    a, b = ours.init(x0), init(x0)
    for t in range(12):
        rnd = sim.Round(torch.tensor(t), grad, topo.mixing(t))
        (a, sa), (b, sb) = ours.step(a, rnd), step(b, rnd)
        torch.testing.assert_close(b.x, a.x, rtol=0, atol=1e-14)
        torch.testing.assert_close(sb["bits"], sa["bits"], rtol=0, atol=0)
