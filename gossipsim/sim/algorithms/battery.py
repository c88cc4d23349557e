"""The battery every registered algorithm passes, and a new one is run through: `check(name, **hyper)`.

A convex problem with a known answer, in float64: agent i holds f_i(x) = 1/2 sum_j a_ij (x_j - c_ij)^2 with
a_ij in [0.5, 1.5] and c_ij ~ N(0, 1), so the minimizer of sum_i f_i is x*_j = sum_i a_ij c_ij / sum_i a_ij, and
the agents disagree about it (their own minimizers c_i differ). The battery checks that

    state:         init gives a NamedTuple with x (N, P) whose fields are tensors or None, and runs on a meta
                   tensor too (runs size the state there before allocating it); every step returns the same
                   type, shapes and dtypes, all finite, and a loss (N,) and bits (N,) in its statistics, any
                   other statistic a 0-dim or (N,) tensor (runs record its mean);
    deterministic: the same inputs and torch seed give the same iterates, bit for bit;
    converges:     the agents' mean ends within `tolerance` of x*, relative to where it started (x0 = 0);
    agrees:        the agents' disagreement ends within `disagreement` of their minimizers' spread.

tolerance=None and disagreement=None skip the last two (an algorithm that never communicates).

A constant step leaves decentralized SGD a bias of order lr on this problem (at lr = 0.1 on a ring of 8, over 40
seeds: D-PSGD's mean up to 0.13 of the starting distance, disagreement up to 0.07; MATCHA's up to 0.11 and 0.17),
hence the defaults 0.2 and 0.25; an algorithm whose fixed point is not x* by design is checked with wider ones.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ... import graphs
from ...errors import ConfigError
from ..metrics import reserved
from .base import Round, init_on_meta, make


def quadratic(n: int = 8, p: int = 5, seed: int = 0) -> tuple[Callable, torch.Tensor, torch.Tensor]:
    """(oracle x -> (loss (N,), g (N, P)), x* (P,), c (N, P)): the battery's problem, in float64."""
    gen = torch.Generator().manual_seed(seed)
    a = 0.5 + torch.rand(n, p, generator=gen, dtype=torch.float64)  # (N, P) curvatures
    c = torch.randn(n, p, generator=gen, dtype=torch.float64)  # (N, P) each agent's own minimizer

    def oracle(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r = x - c
        return 0.5 * (a * r * r).sum(1), a * r

    return oracle, (a * c).sum(0) / a.sum(0), c


def run(algorithm, topology, oracle: Callable, x0: torch.Tensor, rounds: int) -> tuple[Any, list[dict]]:
    """(final state, every round's statistics) of `rounds` rounds from x0 (N, P)."""
    state, stats = algorithm.init(x0.clone()), []
    for t in range(rounds):
        state, s = algorithm.step(state, Round(t=torch.tensor(t), grad=oracle, mixing=topology.mixing(t)))
        stats.append(s)
    return state, stats


def check(name: str, topology=None, *, n: int = 8, p: int = 5, rounds: int = 300, tolerance: float | None = 0.2,
          disagreement: float | None = 0.25, seed: int = 0, **hyper: Any) -> dict[str, float]:
    """Run the battery on the registered algorithm `name` with `hyper` (lr defaults to 0.1) on `topology`
    (default a ring of n); raises AssertionError naming the failed check, else returns what it measured."""
    topology = graphs.ring(n) if topology is None else topology
    n = topology.n
    hyper.setdefault("lr", 0.1)
    oracle, x_star, c = quadratic(n, p, seed)
    x0 = torch.zeros(n, p, dtype=torch.float64)

    def go(rounds: int):
        torch.manual_seed(seed)  # a compressor's random draws
        return run(make(name, **hyper), topology, oracle, x0, rounds)

    try:
        meta = init_on_meta(make(name, **hyper), n, p, torch.float64)
    except ConfigError as e:
        raise AssertionError(str(e)) from e
    state, stats = go(rounds)
    first = make(name, **hyper).init(x0.clone())
    _expect([_describe(v) for v in meta] == [_describe(v) for v in first],
            f"{name}: init on a meta tensor gives other fields than on a real one")
    _expect(hasattr(state, "_fields") and "x" in state._fields, f"{name}: init must return a NamedTuple with x")
    _expect(type(state) is type(first), f"{name}: step returned {type(state).__name__}, init {type(first).__name__}")
    for field, a, b in zip(state._fields, state, first):
        if (a is None) != (b is None) or (a is not None and (a.shape != b.shape or a.dtype != b.dtype)):
            _expect(False, f"{name}: state field {field} changed from {_describe(b)} to {_describe(a)}")
        _expect(a is None or torch.isfinite(a).all(), f"{name}: state field {field} is not finite")
    _expect(state.x.shape == (n, p) and state.x.dtype == torch.float64, f"{name}: x is {_describe(state.x)}")
    for key in ("loss", "bits"):
        _expect(key in stats[-1] and stats[-1][key].shape == (n,), f"{name}: statistics need {key} of shape (N,)")
    for key, value in stats[-1].items():
        _expect(key in ("loss", "bits") or not reserved(key),
                f"{name}: statistic {key} has the name of a metric, a results.csv column or a config key")
        _expect(torch.is_tensor(value) and value.shape in ((), (n,)),
                f"{name}: statistic {key} must be a 0-dim or (N,) tensor, got {value!r:.60}")

    again, _ = go(rounds)
    _expect(torch.equal(state.x, again.x), f"{name}: the same inputs and seed gave different iterates")

    mean = state.x.mean(0)
    distance = float((mean - x_star).norm() / x_star.norm())  # x0 = 0: relative to the starting distance
    _expect(tolerance is None or distance <= tolerance,
            f"{name}: after {rounds} rounds the agents' mean is {distance:.3g} of the starting distance from x*, "
            f"more than tolerance {tolerance}")
    spread = float((state.x - mean).pow(2).sum(1).mean() / (c - c.mean(0)).pow(2).sum(1).mean())
    if disagreement is not None:
        _expect(spread <= disagreement, f"{name}: the agents' disagreement is {spread:.3g} of their minimizers' "
                                        f"spread, more than {disagreement}")
    return {"distance_to_optimum": distance, "disagreement": spread,
            "bits_per_agent": float(sum(s["bits"] for s in stats).mean())}


def _describe(t: torch.Tensor | None) -> str:
    return "None" if t is None else f"{tuple(t.shape)} {t.dtype}"


def _expect(ok: bool, message: str) -> None:
    if not ok:  # an exception rather than assert: the battery must check under python -O too
        raise AssertionError(message)
