"""What every algorithm is: a factory returning init and step over a NamedTuple state; and the registry.

An algorithm owns one round. It never sees data, RNG streams, BatchNorm buffers or logging: the engine
hands it a Round with the round index, the gradient oracle and the round's Mixing, and gets back the
new state and a dict of per-agent statistics (device tensors; no host sync).
"""
from __future__ import annotations

import difflib
import inspect
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from ...errors import ConfigError

Oracle = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # x (N, P) -> loss (N,), g (N, P)

# The simulated wire format sends float32 values whatever dtype the simulation runs in.
BITS_PER_VALUE = 32


class Round(NamedTuple):
    """One round's inputs: t (0-dim tensor), grad(x) -> (loss (N,), g (N, P)), mixing (a graphs.Mixing)."""

    t: torch.Tensor
    grad: Oracle
    mixing: Any


class SGDState(NamedTuple):
    """State of an algorithm whose only per-agent memory besides x is the local optimizer's."""

    x: torch.Tensor  # (N, P)
    buf: torch.Tensor | None  # (N, P) local momentum, None without momentum


class Algorithm(NamedTuple):
    init: Callable[[torch.Tensor], NamedTuple]
    step: Callable[[NamedTuple, Round], tuple[NamedTuple, dict[str, torch.Tensor]]]
    name: str
    hyper: dict[str, Any]


_REGISTRY: dict[str, Callable[..., Algorithm]] = {}


def check_range(algorithm: str, key: str, value: float, low: float, high: float, low_open: bool = False,
                high_open: bool = False) -> None:
    """One ConfigError naming the algorithm, the key, the interval and the value, unless low <= value <= high
    (strict on an open side); NaN is never in range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{algorithm} {key} must be a number, got {value!r}")
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    if not (above and below):
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ConfigError(f"{algorithm} {key} must be in {interval}, got {value!r}")


def register(name: str, replace: bool = False) -> Callable:
    """Decorator: register a factory `f(**hyper) -> (init, step)` under `name`. replace=True lets a notebook cell
    that defines an algorithm run again; otherwise a second registration of a name is an error."""

    def wrap(factory: Callable) -> Callable:
        if name in _REGISTRY and not replace:
            raise ConfigError(f"algorithm {name!r} registered twice (replace=True to redefine it)")
        _REGISTRY[name] = factory
        return factory

    return wrap


def names() -> list[str]:
    """Every registered algorithm, sorted."""
    return sorted(_REGISTRY)


def hyperparameters(name: str) -> dict[str, Any]:
    """The hyperparameters `name` accepts by name, with their defaults (inspect.Parameter.empty when required);
    a factory's **kwargs takes any other name besides."""
    params = inspect.signature(_factory(name)).parameters.values()
    return {p.name: p.default for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def takes_any(name: str) -> bool:
    """Whether the factory of `name` has **kwargs."""
    return any(p.kind is p.VAR_KEYWORD for p in inspect.signature(_factory(name)).parameters.values())


def make(name: str, /, **hyper: Any) -> Algorithm:
    """Build a registered algorithm; unknown names and hyperparameters are answered with the closest valid one."""
    factory = _factory(name)
    accepted = hyperparameters(name)
    for key in hyper:
        if key not in accepted and not takes_any(name):
            raise ConfigError(f"{name} has no hyperparameter {key!r}{_closest(key, accepted)}; "
                              f"accepted: {', '.join(accepted)}")
    missing = [k for k, v in accepted.items() if v is inspect.Parameter.empty and k not in hyper]
    if missing:
        raise ConfigError(f"{name} needs {', '.join(missing)}")
    if isinstance(hyper.get("compressor"), str):  # objects in the library; the spec strings are the CLI's
        raise ConfigError(f"compressor={hyper['compressor']!r}: give a kernels.Compressor; "
                          f"kernels.parse({hyper['compressor']!r}) builds one from that spec")
    init, step = factory(**hyper)
    return Algorithm(init, _checked(step), name, {**{k: v for k, v in accepted.items()
                                           if v is not inspect.Parameter.empty}, **hyper})


def _checked(step: Callable) -> Callable:
    """step, with its round's oracle held to the contract grad(x) -> (loss (N,), g shaped like x): a g of
    another shape would be broadcast into a wrong update, silently."""
    def checked(state, rnd):
        if not isinstance(rnd, Round):
            return step(state, rnd)
        grad = rnd.grad

        def oracle(x):
            out = grad(x)
            if not isinstance(out, tuple) or len(out) != 2:
                got = f"{len(out)} values" if isinstance(out, (tuple, list)) else type(out).__name__
                raise ConfigError(f"the round's grad(x) must return a tuple (loss (N,), g (N, P)), got {got} "
                                  f"(StackedModel.grad returns three: take [:2])")
            loss, g = out
            if tuple(loss.shape) != tuple(x.shape[:1]) or g.shape != x.shape:
                raise ConfigError(f"the round's grad(x) for x of shape {tuple(x.shape)} must return loss "
                                  f"{tuple(x.shape[:1])} and g {tuple(x.shape)}, got {tuple(loss.shape)} and "
                                  f"{tuple(g.shape)}")
            return out

        return step(state, rnd._replace(grad=oracle))

    return checked


def init_on_meta(algorithm: Algorithm, n: int, p: int, dtype: torch.dtype) -> NamedTuple:
    """The algorithm's state for N x P built on the meta device, where nothing is allocated (the memory
    preflight sizes it there), its structure checked: one line for an init that cannot run there."""
    try:
        state = algorithm.init(torch.empty(n, p, dtype=dtype, device="meta"))
    except (NotImplementedError, RuntimeError) as e:
        if "meta" not in str(e).lower():  # a mistake in init itself: its traceback is what its author needs
            raise
        raise ConfigError(f"{algorithm.name}: init fails on a meta tensor ({type(e).__name__}: {str(e)[:200]}); "
                          "runs build the state there first to size it, so init may use tensor operations only "
                          "(no .item(), .tolist() or numpy on x0)") from e
    check_state(algorithm.name, state)
    return state


def check_state(name: str, state: Any) -> None:
    """A state is a NamedTuple with a field x whose every field is a tensor or None."""
    if not (isinstance(state, tuple) and "x" in getattr(state, "_fields", ())):
        raise ConfigError(f"{name}: init must return a NamedTuple with a field x, got {type(state).__name__}")
    for field, value in zip(state._fields, state):
        if value is not None and not torch.is_tensor(value):
            raise ConfigError(f"{name}: state field {field} is of type {type(value).__name__}; every field is a "
                              f"tensor or None (a counter: a 0-dim tensor), which checkpoints save and devices hold")


def _factory(name: str) -> Callable:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown algorithm {name!r}{_closest(name, _REGISTRY)}; accepted: {', '.join(names())}")
    return _REGISTRY[name]


def _closest(word: str, choices) -> str:
    match = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def waiting(x0: torch.Tensor) -> torch.Tensor:
    """The pending bits of a new state (delivered_bits): none, (N, N) float64."""
    return torch.zeros(x0.shape[0], x0.shape[0], dtype=torch.float64, device=x0.device)


def delivered_bits(pending: torch.Tensor, bits: torch.Tensor, mixing, p: int) -> torch.Tensor:
    """Bits each agent sends this round when its messages update public copies (CHOCO's x_hat), which every
    agent that mixes them must hold current: (N,) float64.

    bits (N,): each agent's message of this round. pending (N, N) float64 [receiver, sender], updated in place:
    the bits of the messages a sender made since it last reached that receiver. A link active this round
    delivers what waited on it. On a static topology that is bits * degree; on a time-varying one a message
    made while a link is down is paid for when the link is next up (a copy cannot catch up for free), but the
    catch-up never costs more than the public copy itself, 32 P bits (or this round's message, if larger): past
    that, the sender sends its x_hat whole.
    """
    bits = bits.to(pending.dtype)
    pending.add_(bits)  # this round's message waits at every receiver
    links = mixing.links  # (N, N) bool [receiver, sender]
    owed = torch.maximum(pending.clamp(max=BITS_PER_VALUE * p), bits)  # (N, N): a sender's bits, along its column
    sent = owed.mul_(links).sum(0)  # (N,) what each sender's active links carry
    pending.masked_fill_(links, 0.0)
    return sent


def gossip_bits(mixing, p: int) -> torch.Tensor:
    """Bits each agent sends in one uncompressed gossip round: a float32 model to each active neighbour. (N,)"""
    return mixing.degrees.to(torch.float64) * (BITS_PER_VALUE * p)
