"""MATCHA, AL-DSGD, MALCOM-PSGD and AdaCons against the naive per-agent simulator in float64, their identities,
and CHOCO-Gossip's linear convergence."""
from __future__ import annotations

import re
from pathlib import Path

import networkx as nx
import pytest
import torch

from gossipsim import ConfigError, graphs, kernels, sim
from gossipsim.graphs import Mixing
from gossipsim.graphs.matcha import decompose
from gossipsim.sim.algorithms.al_dsgd import leaders
from tests.test_engine_reference import CLASSES, B, N, bn_cnn, irregular_W, mlp, run_both

TOL = dict(rtol=1e-9, atol=1e-11)
SGD = dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)


def irregular_matcha(seed: int, reverse: bool = False) -> graphs.Matcha:
    """MATCHA over the irregular 5-agent graph: W_t and the active degrees change every round. reverse: its
    matchings in the other order, which changes whom agents 2 and 4 list first among neighbours of equal degree."""
    base = graphs.from_networkx(nx.Graph([(0, 1), (1, 2), (2, 3), (3, 4), (1, 3), (0, 4)]))
    matchings = decompose(base)
    return graphs.matcha(base, budget=0.5, seed=seed, matchings=matchings[::-1] if reverse else matchings)


def test_matcha_matches_naive_simulator(fresh_seed):
    topo = irregular_matcha(fresh_seed)
    assert len({tuple(topo.mixing(t).degrees.tolist()) for t in range(10)}) > 1  # the graph does change
    state, _, naive = run_both(mlp, "matcha", topo, "vmap", fresh_seed, **SGD)
    torch.testing.assert_close(state.x, naive.x(), **TOL, msg=lambda m: f"seed {fresh_seed}: {m}")


def directed_W() -> torch.Tensor:
    """Doubly stochastic, directed: agent 1 mixes two agents (0 and 2) and agent 0 is mixed by two (1 and 4), so
    how many an agent mixes and how many mix it differ."""
    eye = torch.eye(N, dtype=torch.float64)
    return 0.5 * eye + 0.25 * eye[[1, 0, 2, 3, 4]] + 0.25 * eye[[1, 2, 3, 4, 0]]


@pytest.mark.parametrize("variant", ["code", "paper"])
@pytest.mark.parametrize("base", ["static", "matcha", "matcha_reversed", "directed"])
def test_al_dsgd_matches_naive_simulator(variant, base, fresh_seed):
    W = {"static": irregular_W, "directed": directed_W}.get(base, lambda: irregular_matcha(
        fresh_seed, reverse=base == "matcha_reversed"))()
    state, _, naive = run_both(mlp, "al_dsgd", W, "vmap", fresh_seed, variant=variant, c1=0.25, c2=0.15, p1=0.1,
                               p2=0.3, **SGD)
    torch.testing.assert_close(state.x, naive.x(), **TOL, msg=lambda m: f"seed {fresh_seed}: {m}")


def test_al_dsgd_leader_step_every_few_rounds_with_batchnorm(fresh_seed):
    state, buffers, naive = run_both(bn_cnn, "al_dsgd", irregular_W(), "loop", fresh_seed, every=3, lr=0.05)
    torch.testing.assert_close(state.x, naive.x(), **TOL, msg=lambda m: f"seed {fresh_seed}: {m}")
    torch.testing.assert_close(buffers, naive.buffers(), **TOL)


@pytest.mark.parametrize("variant", ["code", "paper"])
@pytest.mark.parametrize("base", ["static", "matcha"])
def test_al_dsgd_without_leaders_is_its_base(variant, base, fresh_seed):
    """c1 = c2 = p1 = p2 = 0: AL-DSGD is exactly D-PSGD (ATC) over the same W_t, static or MATCHA."""
    W = irregular_W() if base == "static" else irregular_matcha(fresh_seed)
    al, _, _ = run_both(mlp, "al_dsgd", W, "vmap", fresh_seed, variant=variant, c1=0.0, c2=0.0, p1=0.0, p2=0.0, **SGD)
    plain, _, _ = run_both(mlp, "dsgd" if base == "static" else "matcha", W, "vmap", fresh_seed, **SGD)
    torch.testing.assert_close(al.x, plain.x, rtol=0, atol=0)


def test_leaders_prefer_self_then_the_first_matching():
    """Ties go to the agent itself, then to the neighbour its list names first: by the matchings that link
    them, as the official code lists neighbours (ALGORITHMS.md 5), not by index."""
    W = graphs.mixing_weights(nx.Graph([(0, 1), (1, 2), (2, 3)]))  # a path; agent 3 has one neighbour
    found = Mixing(W).order  # decompose's matchings: [(0, 1), (2, 3)], then [(1, 2)]
    given = Mixing(W, matchings=[[(1, 2)], [(0, 1), (2, 3)]]).order
    assert given[1].tolist()[:3] == [2, 0, 1] and found[1].tolist()[:3] == [1, 0, 2]
    loss = torch.tensor([1.0, 0.5, 0.5, 2.0], dtype=torch.float64)
    assert leaders(W, loss, given).tolist() == [1, 1, 2, 2]  # 2 keeps itself on a tie with 1
    loss = torch.tensor([0.5, 1.0, 0.5, 2.0], dtype=torch.float64)  # 1's neighbours 0 and 2 tie
    assert leaders(W, loss, given).tolist() == [0, 2, 2, 2]
    assert leaders(W, loss, found).tolist() == [0, 0, 2, 2]
    deg = torch.tensor([1.0, 2.0, 2.0, 1.0], dtype=torch.float64)
    assert leaders(W, -deg, given).tolist() == [1, 1, 2, 2]
    assert leaders(W, torch.full((4,), float("nan"), dtype=torch.float64), given).tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("comp", ["dithered", "top_k_per_layer"])
def test_malcom_matches_naive_simulator(comp, fresh_seed):
    """The dithered quantizer is random: both sides draw the same numbers (run_both reseeds each round)."""
    sizes = tuple(p.numel() for p in mlp().parameters())
    c = kernels.dithered(4) if comp == "dithered" else kernels.top_k(0.3, per="layer").with_layers(sizes)
    state, _, naive = run_both(mlp, "malcom_psgd", irregular_W(), "vmap", fresh_seed, mu=0.05, gamma=0.4,
                               compressor=c, **SGD)
    torch.testing.assert_close(state.x, naive.x(), **TOL, msg=lambda m: f"seed {fresh_seed}: {m}")
    assert (state.x == 0).any()  # the prox did threshold something


def test_malcom_without_l1_is_choco(fresh_seed):
    kw = dict(gamma=0.4, compressor=kernels.dithered(4), **SGD)
    malcom, _, _ = run_both(mlp, "malcom_psgd", irregular_W(), "vmap", fresh_seed, mu=0.0, **kw)
    choco, _, _ = run_both(mlp, "choco", irregular_W(), "vmap", fresh_seed, **kw)
    torch.testing.assert_close(malcom.x, choco.x, rtol=0, atol=0)
    torch.testing.assert_close(malcom.x_hat, choco.x_hat, rtol=0, atol=0)


@pytest.mark.parametrize("rescale", [False, True], ids=["paper", "rescaled"])
@pytest.mark.parametrize("factory", [mlp, bn_cnn], ids=["mlp", "bn_cnn"])
def test_adacons_matches_naive_simulator(factory, rescale, fresh_seed):
    state, buffers, naive = run_both(factory, "adacons", irregular_W(), "vmap", fresh_seed, beta=0.9, rescale=rescale,
                                     **SGD)
    torch.testing.assert_close(state.x, naive.x(), **TOL, msg=lambda m: f"seed {fresh_seed}: {m}")
    torch.testing.assert_close(buffers, naive.buffers(), **TOL)


def test_adacons_with_identical_gradients_steps_along_their_unit_direction(fresh_seed):
    """Identical gradients g: the paper's aggregate is g / (||g|| + eps); rescaled, it is g, as `allreduce`."""
    kw = dict(same_init=True, same_data=True, lr=0.05, rounds=1)
    ada, _, _ = run_both(mlp, "adacons", irregular_W(), "vmap", fresh_seed, **kw)
    rescaled, _, _ = run_both(mlp, "adacons", irregular_W(), "vmap", fresh_seed, rescale=True, **kw)
    mean, _, _ = run_both(mlp, "allreduce", irregular_W(), "vmap", fresh_seed, **kw)
    double = run_both(mlp, "allreduce", irregular_W(), "vmap", fresh_seed, **{**kw, "lr": 0.1})[0].x
    g, x0 = (mean.x - double) / 0.05, 2 * mean.x - double  # (N, P): x0 - 0.05 g and x0 - 0.1 g solved
    torch.testing.assert_close(ada.x, x0 - 0.05 * g / (g[0].norm() + 1e-8), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(rescaled.x, mean.x, rtol=1e-12, atol=1e-14)


def test_adacons_weights_and_guard(fresh_seed):
    """The agreed direction is amplified and a straying one damped relative to the mean; coefficients that
    cancel (sum_j w_j = 0) fall back to the mean instead of dividing by zero."""
    gen = torch.Generator().manual_seed(fresh_seed)
    algo = sim.algorithms.make("adacons", lr=1.0, beta=0.0)
    x0 = torch.zeros(3, 7, dtype=torch.float64)
    u = torch.randn(7, dtype=torch.float64, generator=gen)
    v = torch.randn(7, dtype=torch.float64, generator=gen)
    v -= (v @ u) / (u @ u) * u
    u, v = u / u.norm(), v / v.norm()  # orthonormal

    def aggregate(g):
        state, _ = algo.step(algo.init(x0), sim.Round(torch.tensor(0), lambda x: (torch.zeros(3), g), None))
        return -state.x[0]  # one step of lr 1 from 0

    g = torch.stack([u, u, u + 3 * v])  # two agree, one strays; the mean is u + v
    c = 4 / 10**0.5  # the coefficients <u + v, g_i> / ||g_i||: 1, 1, c
    agg = aggregate(g)
    torch.testing.assert_close(agg, (2 * u + c * (u + 3 * v) / 10**0.5) / (2 + c), rtol=0, atol=1e-7)
    assert agg @ v < 0.55 * (agg @ u)  # the mean's ratio is 1
    g = torch.stack([u, -2 * u, torch.zeros(7, dtype=torch.float64)])  # coefficients -1/3, 1/3, 0
    torch.testing.assert_close(aggregate(g), g.mean(0), rtol=0, atol=0)


@pytest.mark.parametrize("comp, gamma, rounds", [
    (kernels.top_k(0.1), 0.2, 250), (kernels.qsgd(16, scaled=True), 0.4, 100), (kernels.sign(), 0.02, 500),
], ids=["top_k", "qsgd", "sign"])
def test_choco_gossip_converges_linearly_on_a_ring(comp, gamma, rounds, fresh_seed):
    gen = torch.Generator().manual_seed(fresh_seed)
    x0 = 3 * torch.randn(8, 301, dtype=torch.float64, generator=gen) + 1
    torch.manual_seed(fresh_seed)
    out = sim.algorithms.choco_gossip(x0, graphs.ring(8), comp, gamma=gamma, rounds=3 * rounds)
    e = out.error / out.error[0]
    assert e[rounds] < 0.05 and e[2 * rounds] < 0.05 * e[rounds] and e[3 * rounds] < 0.05 * e[2 * rounds], e[::rounds]
    torch.testing.assert_close(out.x.mean(0), x0.mean(0), rtol=0, atol=1e-12)  # the average is kept exactly
    assert out.bits.shape == (8,) and float(out.bits[0]) == 3 * rounds * 2 * float(comp.roundtrip(x0[:1])[1][0])


SEED_ALGORITHMS = ["choco", "choco_parallel", "adagossip", "matcha", "al_dsgd", "malcom_psgd", "adacons"]
ALLOWED = {"choco": ["top_k", "rand_k", "qsgd", "sign"], "choco_parallel": ["top_k", "qsgd", "sign"],
           "adagossip": ["top_k", "qsgd"], "malcom_psgd": ["dithered", "qsgd"]}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("algorithm", SEED_ALGORITHMS)
def test_every_seed_algorithm_with_every_allowed_compressor(algorithm, dtype, fresh_seed):
    """Momentum, Nesterov, weight decay and a BatchNorm model: shapes, dtype and finiteness over 4 rounds."""
    model = sim.StackedModel(bn_cnn, N, backend="vmap")
    x0, buf0 = model.init(fresh_seed, dtype=dtype)
    topo = irregular_matcha(fresh_seed) if algorithm == "matcha" else graphs.from_matrix(irregular_W())
    sizes = model.param_sizes
    for spec in ALLOWED.get(algorithm, [None]):
        hyper = {} if spec is None else {"compressor": kernels.parse(
            {"top_k": "top_k:0.2", "rand_k": "rand_k:0.2", "qsgd": "qsgd:16,scaled", "sign": "sign",
             "dithered": "dithered:4"}[spec], per="layer").with_layers(sizes)}
        algo = sim.algorithms.make(algorithm, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4, **hyper)
        state = algo.init(x0)
        gen = torch.Generator().manual_seed(fresh_seed)
        for t in range(4):
            xb = torch.randn(N, B, 1, 6, 6, dtype=dtype, generator=gen)
            yb = torch.randint(0, CLASSES, (N, B), generator=gen)
            def oracle(x, xb=xb, yb=yb):
                return model.grad(x, buf0, xb, yb)[:2]

            state, stats = algo.step(state, sim.Round(torch.tensor(t), oracle, topo.mixing(t)))
        assert state.x.shape == x0.shape and state.x.dtype == dtype, (algorithm, spec)
        assert torch.isfinite(state.x).all() and not torch.equal(state.x, x0), (algorithm, spec)
        assert stats["bits"].shape == (N,) and stats["bits"].dtype == torch.float64 and (stats["bits"] >= 0).all()


def test_bad_hyperparameters_get_one_line():
    with pytest.raises(ConfigError, match="variant must be 'code' or 'paper', got 'papr'"):
        sim.algorithms.make("al_dsgd", lr=0.1, variant="papr")
    with pytest.raises(ConfigError, match=r"c1 \+ c2 must be in \[0, 1\], got 1.2"):
        sim.algorithms.make("al_dsgd", lr=0.1, c1=0.6, c2=0.6)
    with pytest.raises(ConfigError, match=r"p1 \+ p2 must be in \[0, 1\], got 1.5"):
        sim.algorithms.make("al_dsgd", lr=0.1, p1=0.8, p2=0.7)  # the code variant would weigh Z by -0.5
    sim.algorithms.make("al_dsgd", lr=0.1, p1=0.8, p2=0.7, variant="paper")  # there lr-scaled forces
    with pytest.raises(ConfigError, match="mu .* must be >= 0, got -1"):
        sim.algorithms.make("malcom_psgd", lr=0.1, mu=-1)
    with pytest.raises(ConfigError, match="every must be an integer >= 1, got 0"):
        sim.algorithms.make("al_dsgd", lr=0.1, every=0)
    for name, key, value, interval in [("choco", "gamma", float("nan"), "(0, 1]"), ("choco", "gamma", 2, "(0, 1]"),
                                       ("choco_parallel", "gamma", 0, "(0, 1]"),
                                       ("malcom_psgd", "gamma", float("inf"), "(0, 1]"),
                                       ("adagossip", "gamma", -1, "(0, inf)"), ("adagossip", "beta", 1, "[0, 1)"),
                                       ("adagossip", "eps", 0, "(0, inf)"), ("adacons", "beta", -0.5, "[0, 1]"),
                                       ("adacons", "eps", float("inf"), "(0, inf)")]:
        with pytest.raises(ConfigError, match=f"{name} {key} must be in {re.escape(interval)}, got {value!r}"):
            sim.algorithms.make(name, lr=0.1, **{key: value})


def test_config_keys_reach_the_algorithm_and_misplaced_ones_are_refused():
    cfg = sim.Config(algorithm="al_dsgd", c1=0.5, variant="paper", every=2)
    assert cfg.algorithm_hyper(layers=None) == {"c1": 0.5, "variant": "paper", "every": 2}
    with pytest.raises(ConfigError, match="dsgd has no hyperparameter 'mu'; it is for malcom_psgd"):
        sim.Config(algorithm="dsgd", mu=0.1)
    with pytest.raises(ConfigError, match="give BASE\\+matcha:CB, e.g. torus\\+matcha:0.5"):
        sim.Config(algorithm="matcha", topology="torus")
    with pytest.raises(ConfigError, match="c1 \\+ c2 must be in"):
        sim.Config(algorithm="al_dsgd", c1=0.7, c2=0.7)


def test_compress_per_layer_applies_to_the_factory_default_compressor():
    layers = [6, 4]
    given = sim.Config(algorithm="malcom_psgd", compressor="dithered:16,scaled", compress_per="layer")
    default = sim.Config(algorithm="malcom_psgd", compress_per="layer")  # was its per-model default, silently
    assert default.algorithm_hyper(layers)["compressor"] == given.algorithm_hyper(layers)["compressor"]
    assert given.algorithm_hyper(layers)["compressor"].layers == (6, 4)
    assert "compressor" not in sim.Config(algorithm="malcom_psgd").algorithm_hyper(layers)


def test_graph_seed_keeps_one_graph_across_training_seeds(tmp_path):
    def W(**keys):
        cfg = sim.Config(topology="erdos_renyi:0.5", agents=8, rounds=1, out=str(tmp_path / "r"), progress=False,
                         eval_samples=10, **keys)
        return sim.build(cfg).topology.mixing(0).dense()

    assert torch.equal(W(seed=0, graph_seed=3), W(seed=1, graph_seed=3))
    assert not torch.equal(W(seed=0), W(seed=1))


@pytest.mark.parametrize("argv", [
    ["--algorithm=matcha", "--topology=ring+matcha:0.5"],
    ["--algorithm=al_dsgd", "--topology=ring+rotate", "--variant=paper"],
    ["--algorithm=malcom_psgd", "--mu=1e-3", "--compressor=dithered:15,scaled", "--compress_per=layer"],
    ["--algorithm=adacons", "--beta=0.9"],
])
def test_from_the_command_line(argv, tmp_path):
    import json

    from gossipsim.sim.cli import main

    out = tmp_path / "run"
    assert main(["run", *argv, "--agents=4", "--rounds=4", "--eval_every=4", "--batch_size=8", "--progress=false",
                 "--eval_samples=100", f"--out={out}"]) == 0
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["round"] == 4 and 0 <= row["sparsity"] <= 1 and row["bits_per_agent"] > 0


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.toml")),
                         ids=lambda p: p.stem)
def test_every_config_is_valid_and_starts(path, tmp_path):
    """Every paper setup, with the runs benchmarks/reproduce.py compares on it: valid keys and values; with the
    data present, two rounds on the CPU (the full-size files name device = "cuda")."""
    import importlib.util

    from gossipsim.sim.config import load_toml

    spec = importlib.util.spec_from_file_location("reproduce", path.parents[1] / "benchmarks" / "reproduce.py")
    reproduce = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reproduce)
    setup = next((s for s, f in reproduce.FILES.items() if path.stem in (f, f + "_cpu")), None)
    values = {**load_toml(path), "device": "cpu", "rounds": 2, "eval_every": 2, "eval_samples": 50,
              "progress": False}
    for i, (_, keys) in enumerate(reproduce.SETUPS[setup] if setup else [("", {})]):
        cfg = sim.Config.from_dict({**values, **keys, "out": str(tmp_path / str(i))})
        if not Path("/usr/share/datasets/fashion-mnist").exists() and cfg.dataset == "fashion-mnist":
            continue
        assert sim.build(cfg).run(2)[-1]["round"] == 2
