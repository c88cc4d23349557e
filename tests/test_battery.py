"""The registry drives the battery: every registered algorithm passes it, and it catches what it should."""
from __future__ import annotations

import pytest
import torch

from gossipsim import ConfigError, graphs, kernels, sim
from gossipsim.sim import algorithms
from gossipsim.sim.algorithms import SGDState, battery

# Where an algorithm's fixed point is not x* by design, or it never communicates, with the reason.
WIDER = {  # the largest values over 40 seeds in a comment
    "adacons": dict(tolerance=None),  # weights each agent's gradient by its alignment: a reweighted sum (1.7)
    "al_dsgd": dict(tolerance=None),  # its pull towards the lowest-loss neighbour is not lr-scaled (1.5)
    "choco": dict(tolerance=0.3, disagreement=0.3),  # top-40% compression adds to the step's bias (0.17, 0.14)
    "choco_parallel": dict(tolerance=0.3, disagreement=0.3),  # (0.20, 0.16)
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
    @algorithms.register("battery_plain")
    def plain(lr):
        def init(x0):
            return SGDState(x0.clone(), None)

        def step(state, rnd):
            loss, g = rnd.grad(state.x)
            return SGDState(state.x - lr(rnd.t) * g, None), {"loss": loss, "bits": torch.zeros_like(loss)}

        return init, step

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
