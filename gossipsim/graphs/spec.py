"""Topologies by name, as the command line and config files write them: `ring:16`, `torus:4x4`, `dyck`.

A spec is `name[:args]`; args are `x`- or `,`-separated numbers. Where a spec leaves the size out, `n`
(the run's number of agents) fills it in: `ring` with n = 16 is `ring:16`, `torus` is the most square
r x c = n, `hypercube` needs n a power of two.
"""
from __future__ import annotations

import difflib
import math

from ..errors import ConfigError
from . import topologies as T
from .mixing import Topology

# name -> (builder, how many numeric args it takes, an example)
SPECS = {
    "ring": (T.ring, 1, "ring:16"),
    "complete": (T.complete, 1, "complete:8"),
    "star": (T.star, 1, "star:8"),
    "exponential": (T.exponential, 1, "exponential:16"),
    "torus": (T.torus, 2, "torus:4x4"),
    "grid": (T.grid, 2, "grid:4x4"),
    "hypercube": (T.hypercube, 1, "hypercube:4 (16 agents)"),
    "dyck": (T.dyck, 0, "dyck (32 agents)"),
    "petersen": (T.petersen, 0, "petersen (10 agents)"),
    "erdos_renyi": (T.erdos_renyi, 2, "erdos_renyi:16,0.3"),
    "random_regular": (T.random_regular, 2, "random_regular:16,3"),
    "small_world": (T.small_world, 3, "small_world:16,4,0.1"),
}
RANDOM = ("erdos_renyi", "random_regular", "small_world")


def parse(spec: str, n: int | None = None, *, weights: str = "metropolis", seed: int = 0) -> Topology:
    """Build the topology a spec names; `n` fills in a missing size and must match a given one."""
    name, _, rest = spec.strip().partition(":")
    if name not in SPECS:
        match = difflib.get_close_matches(name, list(SPECS), n=1)
        hint = f" (did you mean {match[0]!r}?)" if match else ""
        raise ConfigError(f"unknown topology {name!r}{hint}; accepted: {', '.join(SPECS)}")
    build, arity, example = SPECS[name]
    try:
        args = [float(a) if "." in a else int(a) for a in rest.replace("x", ",").split(",") if a.strip()]
    except ValueError:
        raise ConfigError(f"topology {spec!r}: arguments must be numbers, e.g. {example}") from None
    if not args and n is not None and arity:
        args = _size_from_n(name, n)
    if name in RANDOM and len(args) == arity - 1 and n is not None:
        args = [n, *args]
    if len(args) != arity:
        raise ConfigError(f"topology {spec!r} needs {arity} argument(s), e.g. {example}")
    kwargs = {"weights": weights, **({"seed": seed} if name in RANDOM else {})}
    topo = build(*args, **kwargs)
    if n is not None and topo.n != n:
        raise ConfigError(f"topology {spec!r} has {topo.n} agents but agents={n}")
    return topo


def _size_from_n(name: str, n: int) -> list[int]:
    if name in ("torus", "grid"):
        r = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
        return [r, n // r]
    if name == "hypercube":
        d = n.bit_length() - 1
        if 2**d != n:
            raise ConfigError(f"hypercube needs a power of two agents, got agents={n}")
        return [d]
    return [n]
