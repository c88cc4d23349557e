"""End-to-end engine runs on the built-in dataset: files, metrics, bit counts, determinism."""
from __future__ import annotations

import json

import pytest
import torch

from gossipsim import ConfigError, sim
from gossipsim.sim import metrics

TIMING_KEYS = {"train_time", "samples_per_s", "eval_time"}


def tiny(tmp_path, **kw):
    values = dict(agents=4, rounds=12, eval_every=6, batch_size=8, progress=False, out=str(tmp_path / "run"),
                  backend="vmap", eval_samples=300)
    values.update(kw)
    return sim.Config.from_dict(values)


def numbers(history):
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in history]


def test_run_directory_and_metrics(tmp_path):
    cfg = tiny(tmp_path)
    engine = sim.build(cfg)
    history = engine.run(cfg.rounds)
    out = tmp_path / "run"
    assert {p.name for p in out.iterdir()} >= {"config.json", "metrics.jsonl", "summary.json", "curves.png",
                                               "partition.txt"}
    lines = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in lines] == [0, 6, 12] == [r["round"] for r in history]
    assert json.loads((out / "config.json").read_text())["agents"] == 4
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 12 and summary["final"]["round"] == 12
    last = history[-1]
    assert 0 <= last["agent_acc_min"] <= last["agent_acc_mean"] <= last["agent_acc_max"] <= 1
    x = engine.state.x.double()
    assert last["consensus"] == pytest.approx(float(((x - x.mean(0)) ** 2).sum(1).mean()), rel=1e-9)
    assert lines[0]["train_loss"] is None and lines[-1]["train_loss"] > 0


@pytest.mark.parametrize("algorithm,per_round", [("dsgd", lambda n, p: 2 * 32 * p),
                                                 ("dpsgd", lambda n, p: 2 * 32 * p),
                                                 ("allreduce", lambda n, p: 2 * (n - 1) / n * 32 * p),
                                                 ("local", lambda n, p: 0)])
def test_bits_sent_per_agent(tmp_path, algorithm, per_round):
    cfg = tiny(tmp_path, algorithm=algorithm, rounds=5, eval_every=5)
    engine = sim.build(cfg)
    last = engine.run(5)[-1]
    assert last["bits_per_agent"] == pytest.approx(5 * per_round(4, engine.model.P))


@pytest.mark.parametrize("algorithm,compressor", [("dsgd", None), ("choco", "top_k:0.01")])
def test_gossiped_batchnorm_statistics_are_counted_in_the_bits(tmp_path, algorithm, compressor):
    def bits(bn):
        cfg = tiny(tmp_path / bn, model="resnet20", dataset="synthetic", agents=3, rounds=2, eval_every=2,
                   batch_size=2, bn=bn, backend="loop", eval_agents=False, algorithm=algorithm, compressor=compressor)
        engine = sim.build(cfg)
        return engine.run(2)[-1]["bits_per_agent"], engine.model.Pbuf

    (local, pbuf), (gossip, _) = bits("local"), bits("gossip")
    assert pbuf > 0 and gossip - local == 2 * 2 * 32 * pbuf  # 2 rounds, 2 ring neighbours, 32 bits a float


@pytest.mark.parametrize("algorithm", ["local", "allreduce", "adacons"])
def test_gossiped_batchnorm_statistics_need_links(algorithm):
    with pytest.raises(ConfigError, match=f"bn=gossip .* algorithm {algorithm} .*: give bn=local"):
        sim.Config.from_dict(dict(algorithm=algorithm, bn="gossip", model="resnet20"))


def test_same_seed_same_numbers(tmp_path):
    runs = [numbers(sim.build(tiny(tmp_path / str(i), partition="dirichlet", augment=True)).run(12))
            for i in range(2)]
    assert runs[0] == runs[1]
    other = numbers(sim.build(tiny(tmp_path / "2", partition="dirichlet", augment=True, seed=1)).run(12))
    assert other != runs[0]


def test_rounds_stepped_by_hand_are_not_in_samples_per_s(tmp_path):
    """engine.step() outside run() is not timed: its rounds counted in samples/s over run()'s time alone (the
    summary said 1e14 samples/s after four rounds stepped by hand)."""
    engine = sim.build(tiny(tmp_path, rounds=5, eval_every=5))
    for _ in range(3):
        engine.step()
    assert engine.evaluate()["samples_per_s"] == 0.0 and engine.summary()["samples_per_s"] == 0.0
    row = engine.run(2)[-1]
    assert engine.untimed_rounds == 3 and row["train_time"] == engine.train_time > 0
    assert row["samples_per_s"] == pytest.approx(2 * 4 * 8 / engine.train_time)
    assert engine.summary()["samples_per_s"] == pytest.approx(2 * 4 * 8 / engine.train_time)


def test_independent_inits_and_learning(tmp_path):
    engine = sim.build(tiny(tmp_path, same_init=False, rounds=1))
    assert engine.history == [] and float(sim.engine.consensus_distance(engine.state.x)) > 0
    history = sim.build(tiny(tmp_path / "b", rounds=60, eval_every=60, lr=0.1, batch_size=16)).run(60)
    assert history[-1]["test_acc"] > 0.3 > history[0]["test_acc"]  # chance is 0.1


def test_batchnorm_model_gossiped_buffers_and_resume_in_memory(tmp_path):
    cfg = tiny(tmp_path, model="resnet20", norm="bn", dataset="synthetic", agents=3, rounds=2, eval_every=2,
               batch_size=4, bn="gossip", backend="loop", eval_agents=False)
    engine = sim.build(cfg)
    engine.run(2)
    b = engine.buffers
    assert b.shape == (3, engine.model.Pbuf) and engine.model.Pbuf > 0
    assert not torch.equal(b, engine.model.init(0)[1])  # running statistics moved
    engine.run(1)  # a second call continues from round 2
    assert engine.t == 3 and engine.history[-1]["round"] == 3


def test_auto_backend_picks_a_real_backend(tmp_path):
    engine = sim.build(tiny(tmp_path, backend="auto", rounds=2, eval_every=2))
    engine.run(2)
    assert engine.model.backend in ("vmap", "loop", "chunked")
    assert set(engine.model.timings) >= {"vmap", "loop"}


@pytest.mark.parametrize("n,p,block", [(1, 5, 3), (3, 1001, 7), (4, 10, 1000)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_consensus_distance_by_column_blocks(n, p, block, dtype, fresh_seed):
    x = torch.randn(n, p, generator=torch.Generator().manual_seed(fresh_seed), dtype=dtype)
    before = x.clone()
    xd = x.double()
    expect = (xd - xd.mean(0, keepdim=True)).pow(2).sum() / n
    got = metrics.consensus_distance(x, block_entries=block)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expect, rtol=1e-12, atol=1e-12, msg=lambda m: f"seed {fresh_seed}: {m}")
    assert torch.equal(x, before)  # its block is worked on in place: a copy, even of float64 x


@pytest.mark.parametrize("n,p,block", [(1, 5, 3), (7, 1001, 20), (4, 10, 1000), (3, 0, 10)])
def test_the_averaged_model_is_the_mean_of_the_rows_in_float64(n, p, block, fresh_seed):
    x = torch.randn(n, p, generator=torch.Generator().manual_seed(fresh_seed))
    got = metrics.average(x, block_entries=block)
    assert got.dtype == x.dtype and got.shape == (1, p)
    assert torch.equal(got, x.double().mean(0, keepdim=True).float())
    # N equal rows (an all-reduce's agents) average to that row exactly; float32's own mean missed it
    same = x[:1].expand(n, p)
    assert torch.equal(metrics.average(same, block_entries=block), x[:1])


def test_an_algorithms_own_statistic_that_is_not_finite_is_written_as_null(tmp_path, monkeypatch):
    from gossipsim.sim.algorithms import base

    def nan_stat(lr):
        init, step = base._factory("dsgd")(lr)

        def counted(state, rnd):
            state, stats = step(state, rnd)
            return state, {**stats, "ratio": torch.zeros_like(stats["loss"]) / 0.0}  # 0/0

        return init, counted

    monkeypatch.setitem(base._REGISTRY, "nan_stat", nan_stat)
    engine = sim.build(tiny(tmp_path, algorithm="nan_stat", rounds=2, eval_every=2))
    assert engine.run(2)[-1]["ratio"] is None
    line = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1]
    assert '"ratio": null' in line and json.loads(line, parse_constant=lambda c: pytest.fail(c))["ratio"] is None


def test_runs_started_in_the_same_second_get_their_own_default_directories(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("time.strftime", lambda fmt, *a: "20260101-000000")  # one second for all
    outs = [sim.build(tiny(tmp_path, out=None)).run_dir.path for _ in range(3)]
    assert [str(o) for o in outs] == ["runs/dsgd-ring4-20260101-000000", "runs/dsgd-ring4-20260101-000000-2",
                                      "runs/dsgd-ring4-20260101-000000-3"]
