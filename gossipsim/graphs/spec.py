"""Topologies by name, as the command line and config files write them: `ring:16`, `torus:4x4`, `dyck`.

A spec is `name[:args]`; args are `x`- or `,`-separated numbers. Where a spec leaves the size out, `n`
(the run's number of agents) fills it in: `ring` with n = 16 is `ring:16`, `torus` is the most square
r x c = n, `hypercube` needs n a power of two. `circulant:1,4` lists offsets; its size is always n.

Time-varying topologies: the schedules `one_peer_exponential[:n]` and `random_matching[:n]`, or a static
spec with one modifier after `+`: `ring+fail:0.1` (each link fails with probability 0.1 per round),
`torus+matcha:0.5` (MATCHA with budget C_b = 0.5), `erdos_renyi:8,0.5+rotate` (AL-DSGD's three relabelled
copies and its schedule) or `+rotate:k` (k relabelled copies, cyclic). Random draws use `seed`.
"""
from __future__ import annotations

import difflib
import math

from ..errors import ConfigError
from . import topologies as T
from .matcha import matcha
from .mixing import Topology
from .schedules import link_failures, one_peer_exponential, random_matching, relabelled, rotating

# name -> (builder, how many numeric args it takes, an example)
SPECS = {
    "ring": (T.ring, 1, "ring:16"),
    "complete": (T.complete, 1, "complete:8"),
    "star": (T.star, 1, "star:8"),
    "exponential": (T.exponential, 1, "exponential:16"),
    "torus": (T.torus, 2, "torus:4x4"),
    "circulant": (T.circulant, None, "circulant:1,4 (i linked to i +- 1 and i +- 4; size from agents)"),
    "grid": (T.grid, 2, "grid:4x4"),
    "hypercube": (T.hypercube, 1, "hypercube:4 (16 agents)"),
    "dyck": (T.dyck, 0, "dyck (32 agents)"),
    "petersen": (T.petersen, 0, "petersen (10 agents)"),
    "erdos_renyi": (T.erdos_renyi, 2, "erdos_renyi:16,0.3"),
    "random_regular": (T.random_regular, 2, "random_regular:16,3"),
    "small_world": (T.small_world, 3, "small_world:16,4,0.1"),
    "one_peer_exponential": (lambda n, weights: one_peer_exponential(n), 1, "one_peer_exponential:16"),
    "random_matching": (lambda n, weights, seed: random_matching(n, seed), 1, "random_matching:16"),
}
MAX_AGENTS = 2**16
RANDOM = ("erdos_renyi", "random_regular", "small_world", "random_matching")
SCHEDULES = ("one_peer_exponential", "random_matching")

# modifier -> (what it makes of a static base, an example); arg is the number after `:` or None
MODIFIERS = {
    "fail": (lambda base, arg, weights, seed: link_failures(base, _need(arg, "ring+fail:0.1"), seed, weights),
             "ring+fail:0.1"),
    "matcha": (lambda base, arg, weights, seed: matcha(base, 0.5 if arg is None else arg, seed), "torus+matcha:0.5"),
    "rotate": (lambda base, arg, weights, seed: _rotate(base, arg, weights, seed), "erdos_renyi:8,0.5+rotate"),
}


def parse(spec: str, n: int | None = None, *, weights: str = "metropolis", seed: int = 0):
    """Build the topology a spec names; `n` fills in a missing size and must match a given one.

    Returns a Topology, or for a time-varying spec a schedule with the same interface (n, mixing(t), to)."""
    if not isinstance(spec, str):
        raise ConfigError(f"topology spec {spec!r}: accepted: a string like ring, torus:4x4, exponential")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ConfigError(f"seed={seed!r}: accepted: an integer in [0, 2^63)")
    base_spec, plus, modifier = spec.strip().partition("+")
    if not plus:
        return _static(base_spec, n, weights, seed)
    mod, _, arg = modifier.strip().partition(":")
    if mod not in MODIFIERS:
        raise ConfigError(f"unknown topology modifier {mod!r} in {spec!r}; accepted: "
                          + ", ".join(example for _, example in MODIFIERS.values()))
    if "+" in modifier:
        raise ConfigError(f"topology {spec!r}: one modifier at most, e.g. {MODIFIERS[mod][1]}")
    if base_spec.partition(":")[0].strip() in SCHEDULES:
        raise ConfigError(f"topology {spec!r}: +{mod} needs a static base graph, not a schedule")
    try:
        value = float(arg) if arg.strip() else None
    except ValueError:
        raise ConfigError(f"topology {spec!r}: the modifier's argument must be a number, e.g. "
                          f"{MODIFIERS[mod][1]}") from None
    return MODIFIERS[mod][0](_static(base_spec, n, weights, seed), value, weights, seed)


def _static(spec: str, n: int | None, weights: str, seed: int):
    name, colon, rest = spec.strip().partition(":")
    name = name.strip()
    if name not in SPECS:
        match = difflib.get_close_matches(name, list(SPECS), n=1)
        hint = f" (did you mean {match[0]!r}?)" if match else ""
        raise ConfigError(f"unknown topology {name!r}{hint}; accepted: {', '.join(SPECS)}")
    build, arity, example = SPECS[name]
    try:  # after a colon every part is a number: `ring:` and `torus:4x` are mistakes, not "size from agents"
        args = [_number(a.strip()) for a in rest.replace("x", ",").split(",")] if colon else []
    except ValueError:
        raise ConfigError(f"topology {spec!r}: arguments must be numbers, e.g. {example}") from None
    if arity is None:  # circulant: every number is an offset, the size is the run's
        if n is None or not args:
            raise ConfigError(f"topology {spec!r} needs offsets and a number of agents, e.g. {example}")
        args = [n, args]
    elif not args and n is not None and arity:
        if name in RANDOM and arity > 1:  # the size comes from agents; its other numbers from nowhere
            rest_of = example.split(":")[1].split(",", 1)[1]
            raise ConfigError(f"topology {spec!r} needs its {arity - 1} number(s) besides the size, which comes "
                              f"from agents: e.g. {name}:{rest_of}")
        args = _size_from_n(name, n)
    if name in RANDOM and len(args) == arity - 1 and n is not None:
        args = [n, *args]
    if arity is not None and len(args) != arity:
        raise ConfigError(f"topology {spec!r} needs {arity} argument(s), e.g. {example}")
    if name in SCHEDULES and any(not isinstance(a, int) for a in args):
        raise ConfigError(f"topology {spec!r}: the size must be a whole number, e.g. {example}")
    size = _size(name, args, n)  # checked before building: hypercube:100 would fill any memory
    if n is not None and size is not None and size != n:
        raise ConfigError(f"topology {spec!r} has {size} agents but agents={n}")
    if size is not None and size > MAX_AGENTS:
        raise ConfigError(f"topology {spec!r} has {size} agents; at most {MAX_AGENTS}: each round's W is a dense "
                          f"(N, N) float64 matrix, 34 GB at {MAX_AGENTS}")
    kwargs = {"weights": weights, **({"seed": seed} if name in RANDOM else {})}
    topo = build(*args, **kwargs)
    if n is not None and topo.n != n:
        raise ConfigError(f"topology {spec!r} has {topo.n} agents but agents={n}")
    return topo


def _size(name: str, args: list, n: int | None) -> int | None:
    """The number of agents a spec's numbers give, before anything is built (None where they are not whole
    numbers: the builder names that mistake)."""
    if not all(isinstance(a, int) for a in args[:2 if name in ("torus", "grid") else 1]):
        return None
    if name in ("torus", "grid"):
        return args[0] * args[1]
    if name == "hypercube":
        return 2 ** args[0] if args[0] >= 0 else None
    return {"dyck": 32, "petersen": 10, "circulant": n}.get(name, args[0] if args else None)


def _number(text: str) -> int | float:
    """'16' -> 16, '0.3' and '3e-1' -> 0.3."""
    try:
        return int(text)
    except ValueError:
        return float(text)


def _size_from_n(name: str, n: int) -> list[int]:
    if name in ("torus", "grid"):
        r = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
        if r == 1:  # 1 x n would be a ring (torus) or a path (grid) under another name
            raise ConfigError(f"{name} with agents={n}: no r x c = {n} with both sides >= 2; give {name}:1x{n} "
                              f"for a single row, or another number of agents")
        return [r, n // r]
    if name == "hypercube":
        d = n.bit_length() - 1
        if 2**d != n:
            raise ConfigError(f"hypercube needs a power of two agents, got agents={n}")
        return [d]
    return [n]


def _need(arg: float | None, example: str) -> float:
    if arg is None:
        raise ConfigError(f"this topology modifier needs a number, e.g. {example}")
    return arg


def _rotate(base: Topology, k: float | None, weights: str, seed: int):
    """AL-DSGD's dynamic graphs: the base and relabelled copies of it (copy 0 is the base itself)."""
    if k is not None and (not math.isfinite(k) or k != int(k) or k < 2):
        raise ConfigError(f"rotate:k needs a whole number k >= 2 of graphs, got {k!r}")
    count = 3 if k is None else int(k)
    copies = [base] + [relabelled(base, seed + i, weights) for i in range(1, count)]
    return rotating(copies, "al_dsgd" if k is None else "cyclic")
