"""The fused operations algorithms call, and the one dispatch point between Triton and pure torch.

    backend(x)                               "triton" for float32 CUDA tensors when Triton imports, else "torch";
                                             GOSSIPSIM_KERNELS=torch|triton forces one
    roundtrip(comp, r, gen)   -> (q, bits)   C(r) as the neighbours see it, and bits (N,)
    choco_residual(x, x_hat, comp, gen) -> bits   x_hat += C(x - x_hat), in place: one or two passes
    consensus_step(x, x_hat, mixing, gamma)  x += gamma (W x_hat - x_hat), in place, each neighbour row read once
    gossip(mixing, y)         -> W y         the sparse gossip product on the Triton path

The torch branch of each is the spec (it calls the compressors' own compress/decompress); the Triton
branch must equal it (tests/test_kernels.py, on the CPU under TRITON_INTERPRET=1). Triton kernels are
float32; other dtypes take the torch branch. QSGD draws its stochastic rounding inside the kernel
(Philox keyed by a seed drawn on the device), so the two branches round with different random numbers: same
law, not the same draws.
"""
from __future__ import annotations

import functools
import os

import torch

from ..errors import ConfigError
from . import bits as B
from .compressors import QSGD, Compressor, Identity, Sign, TopK

KERNELS = ("torch", "triton")


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def backend(x: torch.Tensor) -> str:
    """Which implementation runs the fused ops on x."""
    forced = os.environ.get("GOSSIPSIM_KERNELS", "")
    if forced and forced not in KERNELS:
        raise ConfigError(f"GOSSIPSIM_KERNELS={forced!r} is not one of {', '.join(KERNELS)}")
    if x.dtype != torch.float32 or forced == "torch":
        return "torch"
    if forced == "triton":
        if not triton_available():
            raise ConfigError("GOSSIPSIM_KERNELS=triton but Triton is not installed (pip install triton)")
        if not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise ConfigError("GOSSIPSIM_KERNELS=triton on CPU tensors needs TRITON_INTERPRET=1")
        return "triton"
    return "triton" if x.is_cuda and triton_available() else "torch"


def _triton():
    from . import triton_ops

    return triton_ops


@functools.lru_cache(maxsize=64)
def _cached_table(sizes: tuple[int, ...], device: torch.device, block: int):
    return _triton().blocks(sizes, device, block)


def _table(sizes: tuple[int, ...], device: torch.device):
    return _cached_table(sizes, device, _triton().SEG_BLOCK)


def fused(comp: Compressor) -> bool:
    """Whether the Triton path implements this compressor (raw bits; entropy codes need the symbols)."""
    return type(comp) in (Identity, QSGD, Sign, TopK) and comp.encoding == "raw"


def raw_bits(comp: Compressor, n: int, width: int, device) -> torch.Tensor:
    """Bits of a raw-encoded message, which depend on the shapes alone."""
    sizes = comp.segments(width)
    if isinstance(comp, Identity):
        return torch.full((n,), 32.0 * width, dtype=torch.float64, device=device)
    if isinstance(comp, TopK):
        return B.sparse_raw(sizes, comp.ks(width), n, device)
    if isinstance(comp, QSGD):
        return B.quantized_raw(sizes, comp.levels, n, device)
    return B.sign_raw(sizes, n, device)


def _seed(generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """A fresh Philox seed, (1,) int64 drawn on the device (from `generator` if given, on that device, as the
    reference's draws are): no host value, so a round captured as a CUDA graph draws a new one each replay.
    Below 2^38, so that the kernel's keys seed * 2^24 + row (one stream per agent) of two calls coincide only if
    their seeds do."""
    return torch.randint(2**38, (1,), generator=generator, device=device)  # seed * 2^24 + row < 2^63


def _apply(comp: Compressor, x: torch.Tensor, h: torch.Tensor | None, out: torch.Tensor, generator) -> None:
    """out = h + C(x - h) (h None: out = C(x)) on the Triton path."""
    T = _triton()
    n, width = x.shape
    sizes = comp.segments(width)
    table = _table(sizes, x.device)
    L = len(sizes)
    if isinstance(comp, TopK):
        T.top_k(x, h, out, _cached_table(sizes, x.device, T.TOPK_BLOCK), tuple(comp.ks(width)), sizes)
    elif isinstance(comp, QSGD):
        norms = T.segment_sums(x, h, table, L, 2).sqrt_()  # (N, L)
        s = comp.levels
        taus = B.constant(tuple(comp.tau(d) for d in sizes), torch.float32, x.device)
        inv = (s / norms).nan_to_num_(posinf=0.0)
        T.residual(x, h, out, 1, table, L, norms * taus / s, inv, seed=_seed(generator, x.device), levels=s)
    elif isinstance(comp, Sign):
        scale = T.segment_sums(x, h, table, L, 1) / B.constant(sizes, torch.float32, x.device)
        T.residual(x, h, out, 2, table, L, scale, scale)
    else:
        T.residual(x, h, out, 0, table, L, x, x)  # identity reads neither


def roundtrip(comp: Compressor, r: torch.Tensor, generator: torch.Generator | None = None):
    """(C(r) (N, P), bits (N,)): Triton where it applies, else the compressor's reference."""
    comp.check(r)
    if backend(r) == "triton" and fused(comp):
        r = r.contiguous()
        out = torch.empty_like(r)
        _apply(comp, r, None, out, generator)
        return out, raw_bits(comp, *r.shape, r.device)
    message = comp.compress(r, generator)
    return comp.decompress(message), comp.bits(message)


def choco_residual(x: torch.Tensor, x_hat: torch.Tensor, comp: Compressor,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """CHOCO's public-copy update x_hat += C(x - x_hat), in place; returns the message bits (N,).

    Triton: QSGD and sign take one pass for the segment norms and one to quantize and update (the
    difference is never stored); top-k reads x and x_hat once (and a sample) and writes x_hat only where it
    changes (triton_ops.top_k).
    """
    comp.check(x)
    if backend(x) == "triton" and fused(comp) and x.is_contiguous() and x_hat.is_contiguous():
        _apply(comp, x, x_hat, x_hat, generator)
        return raw_bits(comp, *x.shape, x.device)
    message = comp.compress(x - x_hat, generator)
    x_hat += comp.decompress(message)
    return comp.bits(message)


def consensus_step(x: torch.Tensor, x_hat: torch.Tensor, mixing, gamma: float) -> torch.Tensor:
    """x += gamma (W x_hat - x_hat), in place; `mixing` is a graphs.Mixing."""
    if backend(x) == "triton" and x.is_contiguous() and x_hat.is_contiguous():
        idx, w = mixing.table(x.dtype, x.device)
        return _triton().mix(x_hat, idx, w, x=x, gamma=float(gamma), out=x)
    return x.add_(mixing(x_hat).sub_(x_hat), alpha=gamma)  # W x_hat's own output holds the difference


def gossip(idx: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """W y from a neighbour table on the Triton path (graphs.Mixing dispatches here on CUDA)."""
    return _triton().mix(y.contiguous(), idx, w)


__all__ = ["KERNELS", "backend", "choco_residual", "consensus_step", "gossip", "roundtrip"]
