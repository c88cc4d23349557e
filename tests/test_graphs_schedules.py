"""Time-varying topologies: doubly stochastic every round, reproducible, and they reach consensus."""
from __future__ import annotations

import re

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


def test_copies_and_failures_of_a_directed_or_reweighted_base():
    star = graphs.star(6, weights="laplacian")  # negative hub weight: not what metropolis would give
    copy = graphs.relabelled(star, 1)
    assert graphs.spectral_gap(copy.mixing(0).dense()) == pytest.approx(float(graphs.spectral_gap(
        star.mixing(0).dense())), abs=1e-12)  # the same weights, relabelled
    # a directed base (doubly stochastic, not symmetric): a relabelled copy stays doubly stochastic
    directed = graphs.from_matrix(graphs.one_peer_exponential(6).mixing(0).dense())
    W = graphs.relabelled(directed, 3).mixing(0).dense()
    for axis in (0, 1):
        torch.testing.assert_close(W.sum(axis), torch.ones(6, dtype=torch.float64))
    # failures of a directed base's links: every link, taken either way, is a link (p = 0 keeps them all)
    cyc = graphs.from_matrix((torch.eye(5, dtype=torch.float64) + torch.roll(torch.eye(5, dtype=torch.float64),
                                                                            1, 0)) / 2)
    kept = graphs.link_failures(cyc, 0.0).mixing(0).dense()
    torch.testing.assert_close(kept, graphs.ring(5).mixing(0).dense())
    m = graphs.matcha(cyc, budget=1.0)  # the matchings of its undirected links
    assert sorted(e for mt in m.matchings for e in mt) == [(0, 1), (0, 4), (1, 2), (2, 3), (3, 4)]


def test_a_schedule_that_never_repeats_is_refused_by_the_measures_of_periodic_ones():
    warm = graphs.rotating([graphs.ring(8), graphs.torus(2, 4)], schedule=lambda t: 0 if t < 3 else 1)
    with pytest.raises(ConfigError, match="does not repeat within 1000 rounds from round 0"):
        graphs.rho_per_round(warm)
    assert warm.mixing(5).n == 8  # it still runs


def _mean_square_deviation(x0, rounds, streams, reseed):
    total = 0.0
    for r in range(streams):
        sched = reseed(r)
        x = x0.clone()
        for t in range(rounds):
            x = sched.mixing(t)(x)
        total += float((x - x.mean(0)).pow(2).sum())
    return total / streams


@pytest.mark.parametrize("n", [10, 11])
def test_random_matching_contracts_at_its_predicted_rate(n, fresh_seed):
    # A matching's W is a projection (W^2 = W), so E[W^T W] = E[W]; each pair is matched with probability
    # 1/(n-1) (n even) or 1/n (n odd), which makes E[W] = rho I + (1 - rho) J on the mean-free space.
    rho = 1 - n / (2 * (n - 1)) if n % 2 == 0 else 0.5
    x0 = torch.randn(n, 3, dtype=torch.float64)
    x0 -= x0.mean(0)
    T = 6
    msd = _mean_square_deviation(x0, T, 400, lambda r: graphs.random_matching(n, seed=10_000 + r))
    assert msd == pytest.approx(rho**T * float(x0.pow(2).sum()), rel=0.2), f"seed {fresh_seed}"


def test_link_failures_contract_at_the_rate_of_their_expected_mixing(fresh_seed):
    base = graphs.torus(3, 4)
    draws = [graphs.link_failures(base, 0.3, seed=99).mixing(t).dense() for t in range(3000)]
    E = sum(W.T @ W for W in draws) / len(draws)
    rho = float(torch.linalg.eigvalsh(E - 1 / base.n).abs().max())  # ||E[W^T W] - J||, estimated
    x0 = torch.randn(base.n, 3, dtype=torch.float64)
    x0 -= x0.mean(0)
    T = 10
    msd = _mean_square_deviation(x0, T, 300, lambda r: graphs.link_failures(base, 0.3, seed=r))
    assert msd <= 1.25 * rho**T * float(x0.pow(2).sum()), f"seed {fresh_seed}"


@pytest.mark.parametrize("spec,n,kind,name", [
    ("ring+fail:0.2", 12, graphs.RandomSchedule, "link_failures(ring12, p=0.2)"),
    ("torus+matcha:0.5", 12, graphs.Matcha, "matcha(torus3x4, budget=0.5)"),
    ("ring:8+matcha", None, graphs.Matcha, "matcha(ring8, budget=0.5)"),
    ("erdos_renyi:0.5+rotate", 10, graphs.Periodic, "rotating(erdos_renyi10,erdos_renyi10~2,erdos_renyi10~3)"),
    ("ring+rotate:2", 6, graphs.Periodic, "rotating(ring6,ring6~2)"),
    ("one_peer_exponential", 8, graphs.Periodic, "one_peer_exponential8"),
    ("random_matching:9", None, graphs.RandomSchedule, "random_matching9"),
])
def test_time_varying_specs(spec, n, kind, name):
    topo = graphs.parse(spec, n, seed=1)
    assert isinstance(topo, kind) and topo.name == name
    again = graphs.parse(spec, n, seed=1)
    for t in (5, 2):
        torch.testing.assert_close(topo.mixing(t).dense(), again.mixing(t).dense(), rtol=0, atol=0)


@pytest.mark.parametrize("spec,needle", [
    ("ring+fial:0.1", "unknown topology modifier 'fial'"), ("ring+fail", "needs a number, e.g. ring+fail:0.1"),
    ("ring+fail:x", "must be a number"), ("ring+fail:1.5", "in [0, 1)"), ("ring+matcha:0", "(0, 1]"),
    ("ring+rotate:1", "k >= 2"), ("ring+fail:0.1+matcha", "one modifier at most"),
    ("random_matching+fail:0.1", "static base graph"), ("one_peer_exponential:2.5", "whole number"),
    # the size from agents, not its other numbers (which read as "edge probability ... got 8" before)
    ("erdos_renyi", "needs its 1 number(s) besides the size, which comes from agents: e.g. erdos_renyi:0.3"),
    ("small_world", "e.g. small_world:4,0.1"),
])
def test_bad_time_varying_specs(spec, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)) as e:
        graphs.parse(spec, 8)
    assert "\n" not in str(e.value)


def test_failed_links_keep_every_round_averaging_and_their_weights_valid():
    with pytest.raises(ConfigError, match="failed links make irregular"):  # at the first failure, before
        graphs.parse("ring+fail:0.1", 8, weights="uniform")
    topo = graphs.parse("ring+fail:0.3", 16, weights="laplacian", seed=3)
    split = 0
    for t in range(64):  # a round split in pieces gave W an eigenvalue -1: a mode that never decays
        W = topo.mixing(t).dense()
        ev = torch.linalg.eigvalsh(W)
        assert float(ev[0]) > -1 + 1e-9, t
        split += int(torch.isclose(ev, torch.ones_like(ev)).sum()) > 1
    assert split > 0  # some rounds were disconnected
    assert graphs.parse("erdos_renyi:3e-1", 16).name == "erdos_renyi16"
    with pytest.raises(ConfigError, match=re.escape("seed=-1: accepted: an integer in [0, 2^63)")):
        graphs.parse("random_matching", 8, seed=-1)


def test_rho_per_round(fresh_seed):
    ring = graphs.ring(10)
    assert graphs.rho_per_round(ring) == pytest.approx(float(graphs.rho(ring.mixing(0).dense())), abs=1e-12)
    assert graphs.rho_per_round(graphs.one_peer_exponential(16)) == 0  # exact average within a period
    assert graphs.rho_per_round(graphs.parse("complete+rotate", 9)) == 0  # not float noise to the power 1/6
    assert graphs.one_peer_exponential(12).period == 4 and graphs.parse("ring+rotate", 8).period == 6
    # random matchings: E[W^T W] = E[W] has rho^2 = 1 - n / (2 (n - 1)) on the mean-free space; the plain
    # norm of the sampled mean read 6% high on n = 16
    for n in (10, 16):
        assert graphs.rho_per_round(graphs.random_matching(n, seed=fresh_seed % 1000)) ** 2 == pytest.approx(
            1 - n / (2 * (n - 1)), rel=0.06)
    m = graphs.matcha(graphs.ring(8), budget=0.5)
    from gossipsim.graphs.matcha import expected_rho

    assert graphs.rho_per_round(m) ** 2 == pytest.approx(expected_rho(m.laplacians, m.probabilities, float(m.alpha)))


def test_time_varying_topology_in_a_run(tmp_path, capsys):
    from gossipsim.sim.cli import main

    assert main(["run", "--topology=ring+fail:0.3", "--agents=4", "--rounds=4", "--eval_every=4",
                 "--batch_size=8", f"--out={tmp_path / 'r'}"]) == 0
    assert "link_failures(ring4, p=0.3)" in (tmp_path / "r" / "summary.json").read_text()
    assert main(["graphs", "ring+matcha:0.5", "one_peer_exponential", "random_matching", "--agents=8"]) == 0
    out = capsys.readouterr().out
    assert "| one_peer_exponential | 8 | 1 | - | - | 0.0000 | 1.0000 | 3 |" in out
    assert "| ring+matcha:0.5 | 8 | 0..2 |" in out
    # exact averaging where 1/n is not a float32 number: the mixing time's loop compared with float32's 1/3 and
    # never ended
    assert main(["graphs", "complete:3", "ring:3", "complete:6+rotate"]) == 0
    assert [line.split("|")[-2].strip() for line in capsys.readouterr().out.splitlines()[2:]] == ["1", "1", "1"]
    # MATCHA's alpha can give rounds with negative self-weights that expand disagreement: the worst-round column
    assert main(["graphs", "erdos_renyi:0.2+matcha:0.5", "--agents=16", "--seed=2"]) == 0
    worst = float(capsys.readouterr().out.strip().splitlines()[-1].split("|")[7])
    assert worst > 1.5
    assert main(["run", "--topology=ring+fial:0.3", "--agents=4"]) == 2
