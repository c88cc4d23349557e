"""The registry drives the battery: every registered algorithm passes it, and it catches what it should."""
from __future__ import annotations

import re

import pytest
import torch

from gossipsim import ConfigError, graphs, kernels, sim
from gossipsim.sim import algorithms
from gossipsim.sim.algorithms import SGDState, battery

# Where an algorithm's fixed point is not x* by design, or it never communicates, with the reason.
WIDER = {  # the largest values over 40 seeds in a comment
    "adacons": dict(tolerance=None),  # weights each agent's gradient by its alignment: a reweighted sum (1.7)
    "al_dsgd": dict(tolerance=None),  # its pull towards the lowest-loss neighbour is not lr-scaled (1.5)
    # top-40% compression adds to the step's bias; over 400 seeds (0.32, 0.14) and (0.33, 0.14)
    "choco": dict(tolerance=0.45, disagreement=0.3),
    "choco_parallel": dict(tolerance=0.45, disagreement=0.3),
    "local": dict(tolerance=None, disagreement=None),  # each agent goes to its own minimizer
    "malcom_psgd": dict(tolerance=0.75, disagreement=0.9),  # the l1 proximal step shrinks towards 0 (0.51, 0.64)
}


@pytest.mark.parametrize("name", algorithms.names())
def test_every_registered_algorithm_passes_the_battery(name, fresh_seed):
    topology = graphs.matcha(graphs.ring(8), budget=0.5, seed=fresh_seed) if name == "matcha" else None
    hyper = {"compressor": kernels.top_k(0.4), "gamma": 0.5} if name in ("choco", "choco_parallel") else {}
    measured = algorithms.check(name, topology, seed=fresh_seed, **hyper, **WIDER.get(name, {}))
    assert measured["bits_per_agent"] > 0 or name == "local"


def test_the_battery_fails_what_it_should():
    @algorithms.register("battery_broken")
    def broken(lr):
        def init(x0):
            return SGDState(x0.clone(), None)

        def step(state, rnd):
            loss, g = rnd.grad(state.x)
            return SGDState(state.x + lr * g, None), {"loss": loss, "bits": torch.zeros_like(loss)}  # ascends

        return init, step

    @algorithms.register("battery_shapes")
    def shapes(lr):
        def init(x0):
            return SGDState(x0.clone(), None)

        def step(state, rnd):
            loss, g = rnd.grad(state.x)
            return SGDState(state.x - lr * g, g.float()), {"loss": loss, "bits": torch.zeros_like(loss)}

        return init, step

    try:
        with pytest.raises(AssertionError, match="state field x is not finite|starting distance"):
            algorithms.check("battery_broken")
        with pytest.raises(AssertionError, match="state field buf changed from None to"):
            algorithms.check("battery_shapes")
    finally:
        del algorithms.base._REGISTRY["battery_broken"], algorithms.base._REGISTRY["battery_shapes"]


def test_a_training_key_the_algorithm_lacks_is_refused_not_dropped(tmp_path):
    """A user's algorithm without momentum: momentum=0.9 in its config is an error, not a plain run."""
    _sgd_with("battery_plain")  # its factory takes lr alone
    try:
        cfg = dict(algorithm="battery_plain", agents=4, progress=False, out=str(tmp_path / "run"))
        sim.build(sim.Config(**cfg))  # the defaults build
        for key, value in (("momentum", 0.9), ("weight_decay", 1e-3)):
            with pytest.raises(ConfigError, match=f"battery_plain takes no {key}"):
                sim.build(sim.Config(**cfg, **{key: value}))
    finally:
        del algorithms.base._REGISTRY["battery_plain"]


def test_the_problem_has_the_stated_minimizer(fresh_seed):
    oracle, x_star, _ = battery.quadratic(6, 4, fresh_seed)
    _, g = oracle(x_star.expand(6, 4))
    assert torch.allclose(g.sum(0), torch.zeros(4, dtype=torch.float64), atol=1e-12)


def _sgd_with(name: str, init_fn=None, stats_fn=None):
    """Register plain SGD under name, with another init, or more statistics (stats_fn(loss, g) -> dict)."""
    @algorithms.register(name, replace=True)
    def factory(lr):
        schedule = sim.local.as_schedule(lr)

        def init(x0):
            return init_fn(x0) if init_fn else SGDState(x0.clone(), None)

        def step(state, rnd):
            loss, g = rnd.grad(state.x)
            more = stats_fn(loss, g) if stats_fn else {}
            return type(state)(state.x - schedule(rnd.t) * g, *state[1:]), \
                {"loss": loss, "bits": torch.zeros_like(loss, dtype=torch.float64), **more}

        return init, step


def test_a_state_a_run_cannot_size_or_save_is_refused_by_the_battery_and_the_run(tmp_path):
    from typing import NamedTuple

    class WithCounter(NamedTuple):
        x: torch.Tensor
        count: int

    cases = {
        "battery_item": (lambda x0: SGDState(x0.clone(), torch.full_like(x0, float(x0.sum().item()))),
                         "battery_item: init fails on a meta tensor (RuntimeError: Tensor.item()"),
        "battery_counter": (lambda x0: WithCounter(x0.clone(), 0),
                            "battery_counter: state field count is of type int; every field is a tensor or None"),
        "battery_tuple": (lambda x0: (x0.clone(),), "battery_tuple: init must return a NamedTuple with a field x"),
    }
    try:
        for name, (init, needle) in cases.items():
            _sgd_with(name, init_fn=init)
            with pytest.raises(AssertionError) as e:
                algorithms.check(name)
            assert needle in str(e.value), str(e.value)
            with pytest.raises(ConfigError) as e:
                sim.build(sim.Config(algorithm=name, agents=3, progress=False, out=str(tmp_path / name)))
            assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)
    finally:
        for name in cases:
            algorithms.base._REGISTRY.pop(name, None)


def test_an_algorithms_own_statistics_are_recorded_and_resumed(tmp_path):
    _sgd_with("battery_stats", stats_fn=lambda loss, g: {"twice_loss": 2 * loss, "grad_norm": g.norm()})
    _sgd_with("battery_clash", stats_fn=lambda loss, g: {"test_acc": loss})
    _sgd_with("battery_wide", stats_fn=lambda loss, g: {"per_entry": g})
    try:
        assert set(algorithms.check("battery_stats", tolerance=None, disagreement=None)) >= {"distance_to_optimum"}
        cfg = dict(agents=3, rounds=4, eval_every=2, batch_size=4, eval_samples=50, backend="vmap", progress=False)
        engine = sim.build(sim.Config(algorithm="battery_stats", out=str(tmp_path / "r"), **cfg))
        rows = engine.run(4)
        assert "twice_loss" not in rows[0]  # round 0: no round has run
        for row in rows[1:]:  # the window's mean over agents and rounds, as train_loss is
            assert row["twice_loss"] == pytest.approx(2 * row["train_loss"], rel=1e-12)
            assert row["grad_norm"] > 0
        # a checkpoint inside a window keeps its sums: the resumed run's rows equal an uninterrupted run's
        short = sim.build(sim.Config(algorithm="battery_stats", out=str(tmp_path / "s"), **cfg))
        short.run(2)
        short.step()  # a round into the next window, then checkpointed there
        short.save_checkpoint()
        resumed = sim.experiment.resume(tmp_path / "s")
        resumed.run(4 - resumed.t)
        assert [r["twice_loss"] for r in resumed.history[1:]] == pytest.approx([r["twice_loss"] for r in rows[1:]])
        for name, needle in (("battery_clash", "statistic 'test_acc' has the name of a metric, a results.csv "
                                               "column or a config key"),
                             ("battery_wide", "statistic 'per_entry' must be a real 0-dim or (3,) tensor")):
            with pytest.raises(AssertionError, match="statistic"):
                algorithms.check(name)
            with pytest.raises(ConfigError, match=re.escape(needle)):
                sim.build(sim.Config(algorithm=name, **cfg), out=None).run(1)  # writes no run directory
    finally:
        for name in ("battery_stats", "battery_clash", "battery_wide"):
            algorithms.base._REGISTRY.pop(name, None)


def test_the_engines_metrics_are_the_ones_named_reserved():
    from gossipsim.sim.metrics import METRICS

    engine = sim.build(sim.Config(agents=3, rounds=1, batch_size=4, eval_samples=50, progress=False), out=None)
    assert list(engine.run(1)[-1]) == list(METRICS)


def test_statistics_a_run_cannot_record_are_one_line_naming_the_run_directory(tmp_path, capsys):
    from gossipsim.sim.cli import main

    cases = {
        "stats_no_loss": (lambda loss, g: {"loss": None}, "statistics need loss of shape (3,), one value per agent"),
        "stats_wide_bits": (lambda loss, g: {"bits": g}, "statistics need bits of shape (3,)"),
        "stats_seed": (lambda loss, g: {"seed": loss}, "statistic 'seed' has the name of a metric, a results.csv"),
        "stats_run": (lambda loss, g: {"run": loss}, "statistic 'run' has the name"),
        "stats_hyper": (lambda loss, g: {"hyper.x": loss}, "statistic 'hyper.x' has the name"),
    }
    small = ["--agents=3", "--rounds=2", "--eval_every=2", "--batch_size=4", "--eval_samples=50", "--backend=vmap"]
    try:
        for name, (stats, needle) in cases.items():
            _sgd_with(name, stats_fn=lambda loss, g, stats=stats: {k: v for k, v in stats(loss, g).items()})
            capsys.readouterr()
            assert main(["run", f"--algorithm={name}", *small, f"--out={tmp_path / name}"]) == 2
            last = capsys.readouterr().err.splitlines()[-1]  # after the partition and memory lines
            assert last.startswith("gossipsim: error: ") and needle in last, last
            assert f"{tmp_path / name} holds the files it wrote before: remove it or give another --out" in last
    finally:
        for name in cases:
            algorithms.base._REGISTRY.pop(name, None)


def test_a_statistic_some_rounds_leave_out_is_averaged_over_the_rounds_that_give_it():
    calls = []

    def every_other_round(loss, g):
        calls.append(1)
        return {"one": torch.ones(())} if len(calls) % 2 else {}

    _sgd_with("stats_sometimes", stats_fn=every_other_round)
    try:
        engine = sim.build(sim.Config(algorithm="stats_sometimes", agents=3, rounds=4, eval_every=4, batch_size=4,
                                      eval_samples=50, progress=False), out=None)
        row = engine.run(4)[-1]
        assert len(calls) == 4 and row["one"] == 1.0  # given in 2 of the 4 rounds: their mean, not 0.5
    finally:
        algorithms.base._REGISTRY.pop("stats_sometimes", None)


def test_a_mistake_in_init_itself_keeps_its_traceback():
    _sgd_with("init_typo", init_fn=lambda x0: SGDState(x0.clone(1), None))  # fails on any device
    try:
        with pytest.raises(TypeError):
            sim.build(sim.Config(algorithm="init_typo", agents=3, progress=False))
    finally:
        algorithms.base._REGISTRY.pop("init_typo", None)
