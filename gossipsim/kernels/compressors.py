"""Compression operators: what each agent sends, and its exact size in bits.

Every compressor acts on all agents' rows at once, r (N, P), and on each row's segments: the whole row
(per="model") or each layer (per="layer", the official CHOCO and AdaGossip code), layer sizes from the
model's parameters. `compress(r) -> message`, `decompress(message) -> (N, P)`, `roundtrip(r) -> (dense,
bits (N,))`. The pure-torch code here is the spec; kernels/ops.py fuses it into the algorithms' steps.

Messages: `Sparse` (values and indices, top-k and rand-k), `Quantized` (integer symbols and one scale per
segment, QSGD and sign) and `Dense` (identity). Bits follow an encoding (kernels/bits.py): `raw` (32 bits a
value, ceil(log2 d) an index, 32 a norm or scale), `entropy` and `elias-golomb` (quantized messages only).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, replace
from typing import Any, ClassVar, NamedTuple

import torch

from ..errors import ConfigError
from . import bits as B


class Dense(NamedTuple):
    values: torch.Tensor  # (N, P)


class Sparse(NamedTuple):
    values: torch.Tensor  # (N, K) the kept entries, K = sum over segments of k_l
    indices: torch.Tensor  # (N, K) int64 positions in the row, increasing
    width: int  # P


class Quantized(NamedTuple):
    symbols: torch.Tensor  # (N, P) integers in [-s, s]: the entry is scales[segment] * symbol
    scales: torch.Tensor  # (N, L) one float per segment
    levels: int  # s


def segment_sum(v: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:
    """(N, P) -> (N, L): sums over each segment, in float64 when v is float64, else float32 (a half-precision
    sum of squares overflows past 65504)."""
    acc = torch.float64 if v.dtype == torch.float64 else torch.float32
    if len(sizes) == 1:
        return v.sum(1, keepdim=True, dtype=acc)
    # one reduction per segment over a column slice: 20x faster on a CPU than index_add_ with segment ids
    return torch.stack([c.sum(1, dtype=acc) for c in v.split(sizes, dim=1)], dim=1)


CPU_BLOCK_BYTES = 4 << 20  # a row block of one (N, P) array; with a few temporaries it fits a CPU's cache


def row_blocks(x: torch.Tensor) -> list[slice]:
    """Row slices of x (N, P) for a chain of elementwise passes: on a CPU, blocks of about CPU_BLOCK_BYTES, so
    that each pass after the first reads from cache instead of memory; elsewhere all rows at once."""
    n, p = x.shape
    if x.device.type != "cpu":
        return [slice(0, n)]
    rows = max(1, CPU_BLOCK_BYTES // max(1, p * x.element_size()))
    return [slice(a, a + rows) for a in range(0, n, rows)] or [slice(0, 0)]  # (0, P): one empty block


def expand(per_segment: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:
    """(N, L) -> (N, P): each segment's value repeated over its columns."""
    if len(sizes) == 1:
        return per_segment.expand(-1, sizes[0])
    # output_size: without it the result's size is read back from the device
    return per_segment.repeat_interleave(B.constant(sizes, torch.int64, per_segment.device), dim=1,
                                         output_size=sum(sizes))


@dataclass(frozen=True)
class Compressor:
    """Base: `name`, `per` ("model" | "layer"), `layers` (sizes, set by `with_layers`), `encoding`."""

    per: str = "model"
    layers: tuple[int, ...] | None = None
    encoding: str = "raw"

    name: ClassVar[str] = "compressor"
    encodings: ClassVar[tuple[str, ...]] = ("raw",)

    def __post_init__(self) -> None:
        if self.per not in ("model", "layer"):
            raise ConfigError(f"per must be 'model' or 'layer', got {self.per!r}")
        if self.encoding not in self.encodings:
            raise ConfigError(f"{self.name} messages have no {self.encoding!r} encoding; accepted: "
                              f"{', '.join(self.encodings)}")

    def with_layers(self, sizes) -> Compressor:
        """This compressor bound to the model's parameter sizes (used when per="layer")."""
        bad = ConfigError(f"layer sizes must be a non-empty sequence of positive integers, got {sizes!r}")
        try:
            sizes = tuple(sizes)
        except TypeError:
            raise bad from None
        if not sizes or any(not isinstance(s, numbers.Integral) or isinstance(s, bool) or s < 1 for s in sizes):
            raise bad
        return replace(self, layers=tuple(int(s) for s in sizes))

    def segments(self, width: int) -> tuple[int, ...]:
        """Segment sizes for rows of `width` P."""
        if self.per == "model":
            return (width,)
        if self.layers is None:
            raise ConfigError(f"{self.name}(per='layer') needs the layer sizes: compressor.with_layers(sizes)")
        if sum(self.layers) != width:
            raise ConfigError(f"layer sizes sum to {sum(self.layers)} but rows have {width} entries")
        return self.layers

    def check(self, r: torch.Tensor) -> None:
        """r must be (N, P), a row an agent, P >= 1, of floats; per="layer", the layer sizes must sum to P."""
        if r.dim() != 2 or r.shape[1] < 1:
            raise ConfigError(f"{self.name} compresses an (N, P) tensor, a row an agent with P >= 1; got shape "
                              f"{tuple(r.shape)}")
        if not r.is_floating_point():  # integer rows would be rounded silently (sign's scale) or fail deep in torch
            raise ConfigError(f"{self.name} compresses floating-point rows, got {r.dtype}")
        self.segments(r.shape[1])  # per="layer": the layer sizes are given and cover the row (identity ignored them)

    def compress(self, r: torch.Tensor, generator: torch.Generator | None = None):
        """Each agent's message for its row of r (N, P)."""
        self.check(r)
        return self._compress(r, generator)

    def _compress(self, r: torch.Tensor, generator: torch.Generator | None):
        raise NotImplementedError

    def decompress(self, message) -> torch.Tensor:
        raise NotImplementedError

    def bits(self, message) -> torch.Tensor:
        """(N,) float64: the exact size of each agent's message to one neighbour."""
        raise NotImplementedError

    def roundtrip(self, r: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(what the neighbours reconstruct (N, P), bits (N,)); fused Triton kernels where they apply."""
        from .ops import roundtrip

        return roundtrip(self, r, generator)

    def delta(self, d: int) -> float:
        """The contraction constant: E||C(x) - x||^2 <= (1 - delta) ||x||^2 for a segment of length d
        (0 where the compressor is not a contraction)."""
        return 0.0

    def __repr__(self) -> str:
        return self.name


@dataclass(frozen=True, repr=False)
class Identity(Compressor):
    name: ClassVar[str] = "identity"

    def _compress(self, r, generator=None):
        return Dense(r)

    def decompress(self, message):
        return _message(self, message, Dense).values

    def bits(self, message):
        n, p = _message(self, message, Dense).values.shape
        return torch.full((n,), 32.0 * p, dtype=torch.float64, device=message.values.device)

    def delta(self, d):
        return 1.0


def _check_fraction(name: str, fraction: Any) -> None:
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0 < fraction <= 1:
        raise ConfigError(f"{name} fraction kept must be a number in (0, 1], got {fraction!r}")


def _plain_fraction(comp: Compressor, name: str) -> None:
    _check_fraction(name, comp.fraction)
    if type(comp.fraction) not in (int, float):  # a NumPy scalar (np.linspace) as a plain float
        object.__setattr__(comp, "fraction", float(comp.fraction))


def _message(comp: Compressor, message: Any, kind: type) -> Any:
    """message, if it is what comp.compress returns (a tensor in its place is the likely mistake)."""
    if not isinstance(message, kind):
        raise ConfigError(f"{comp.name}: decompress and bits take what compress returns (a {kind.__name__}), got "
                          f"{type(message).__name__}; roundtrip(r) gives the dense rows and bits at once")
    return message


def kept(d: int, fraction: float) -> int:
    """Entries a segment of d keeps: max(1, floor(d f)), as the official code's int(d (1 - ratio))."""
    return max(1, min(d, math.floor(d * fraction + 1e-9)))


@dataclass(frozen=True, repr=False)
class TopK(Compressor):
    """Keeps the k = max(1, floor(f d)) entries of largest magnitude in each segment; ties go to the lowest
    index, so the selection is exact and the same on every path (threshold selection, not a sort)."""

    fraction: float = 0.01

    @property
    def name(self):
        return f"top_k({self.fraction:g})"

    def __post_init__(self):
        super().__post_init__()
        _plain_fraction(self, "top_k")

    def ks(self, width: int) -> list[int]:
        return [kept(d, self.fraction) for d in self.segments(width)]

    def _compress(self, r, generator=None):
        sizes, parts, start = self.segments(r.shape[1]), [], 0
        for d, k in zip(sizes, self.ks(r.shape[1])):
            parts.append(top_indices(r[:, start:start + d].abs(), k) + start)
            start += d
        indices = torch.cat(parts, 1) if len(parts) > 1 else parts[0]  # (N, K) increasing in each row
        return Sparse(r.gather(1, indices), indices, r.shape[1])

    def decompress(self, message):
        values, indices, width = _message(self, message, Sparse)
        return torch.zeros(values.shape[0], width, dtype=values.dtype, device=values.device).scatter_(
            1, indices, values)

    def bits(self, message):
        message = _message(self, message, Sparse)
        return B.sparse_raw(self.segments(message.width), self.ks(message.width), message.values.shape[0],
                            message.values.device)

    def delta(self, d):
        return kept(d, self.fraction) / d


_AS_INT = {torch.float64: torch.int64, torch.float32: torch.int32, torch.float16: torch.int16,
           torch.bfloat16: torch.int16}


# Eager under torch.compile: topk is an aten call either way, and the tie branch, taken in the odd round, would
# otherwise compile a new graph mid-run (measured: 1 s in round 30 of a CHOCO top-5% run on 2 CPU cores).
@torch.compiler.disable
def top_indices(a: torch.Tensor, k: int) -> torch.Tensor:
    """(N, k) int64, increasing: positions of the k largest entries of each row of a >= 0, ties at the
    threshold going to the lowest index (the rule the Triton radix select follows).

    torch.topk ranks the float bits as integers, as the radix select does: the same order for values >= 0,
    faster on a CPU, and a NaN (from a diverged run) ranks above inf instead of matching nothing. Which of
    several entries equal to the k-th largest it returns is unspecified, so it is asked for k + 1: where the
    (k+1)-th largest is below the k-th, the k largest are unique and are the answer; a row where they are
    equal (a tie across the threshold) is chosen again in index order (_top_indices_tied).
    """
    n, d = a.shape
    if k >= d:
        return torch.arange(d, device=a.device).expand(n, d)
    a = a.view(_AS_INT.get(a.dtype, a.dtype))
    values, idx = a.topk(k + 1, dim=1, sorted=False)  # (N, k+1)
    last, at = values.min(1, keepdim=True)  # (N, 1) the (k+1)-th largest and where topk put it
    # the k largest: the last column moved into the (k+1)-th largest's place, then dropped
    cols = idx.scatter(1, at, idx[:, k:])[:, :k]  # (N, k)
    tied = (values.scatter(1, at, values[:, k:])[:, :k] == last).any(1)  # (N,) k-th largest == (k+1)-th
    if tied.any():  # a sync, as the tie pass's nonzero was; rare for real-valued data
        rows = tied.nonzero()[:, 0]
        cols[rows] = _top_indices_tied(a[rows], k)
    return cols.sort(1).values


def _top_indices_tied(a: torch.Tensor, k: int) -> torch.Tensor:
    """top_indices for rows (integer keys) whose threshold tau is tied: every entry above tau, then the
    entries equal to tau in index order until k are kept."""
    n, d = a.shape
    values, idx = a.topk(k, dim=1, sorted=False)  # (N, k)
    tau = values.min(1, keepdim=True).values  # (N, 1)
    above = values > tau
    room = k - above.sum(1)  # (N,) entries equal to tau to keep
    tie_row, tie_col = (a == tau).nonzero(as_tuple=True)  # row-major: each row's ties in index order
    counts = torch.bincount(tie_row, minlength=n)
    rank = torch.arange(tie_row.numel(), device=a.device) - (counts.cumsum(0) - counts)[tie_row]
    keep = rank < room[tie_row]
    rows = torch.cat([above.nonzero(as_tuple=True)[0], tie_row[keep]])
    cols = torch.cat([idx[above], tie_col[keep]])
    return cols[torch.sort(rows * d + cols).indices].view(n, k)


@dataclass(frozen=True, repr=False)
class RandK(Compressor):
    """Keeps k = max(1, floor(f d)) entries per segment drawn uniformly without replacement by the sender
    (the indices travel with the values); `scaled` multiplies by d/k, which makes it unbiased."""

    fraction: float = 0.01
    scaled: bool = False

    @property
    def name(self):
        return f"rand_k({self.fraction:g}{', scaled' if self.scaled else ''})"

    def __post_init__(self):
        super().__post_init__()
        _plain_fraction(self, "rand_k")

    def ks(self, width: int) -> list[int]:
        return [kept(d, self.fraction) for d in self.segments(width)]

    def _compress(self, r, generator=None):
        n, width = r.shape
        parts, start = [], 0
        for d, k in zip(self.segments(width), self.ks(width)):
            # A random order per row: the k largest of (N, d) uniform keys, drawn a block of rows at a time on a
            # CPU (row_blocks: the same draws as one (N, d) tensor, which at 8 bytes a key would be twice r).
            # float64: float32 keys take 2^24 values, so a 10M layer has ties, which topk breaks by position (the
            # first of a tied pair at the cut is kept), not at random
            seg = r[:, start:start + d]  # (N, d)
            idx = torch.cat([torch.rand(seg[rows].shape, generator=generator, device=r.device, dtype=torch.float64)
                             .topk(k, dim=1, sorted=False).indices for rows in row_blocks(seg)])  # (N, k)
            parts.append(idx.sort(1).values + start)
            start += d
        indices = torch.cat(parts, 1)  # (N, K)
        values = r.gather(1, indices)
        if self.scaled:  # d/k in at least float32: bf16 rounds 1000/3 to 334
            work = torch.promote_types(r.dtype, torch.float32)
            scale = torch.cat([torch.full((k,), d / k, dtype=work, device=r.device)
                               for d, k in zip(self.segments(width), self.ks(width))])
            values = (values * scale).to(r.dtype)
        return Sparse(values, indices, width)

    decompress = TopK.decompress

    def bits(self, message):
        message = _message(self, message, Sparse)
        return B.sparse_raw(self.segments(message.width), self.ks(message.width), message.values.shape[0],
                            message.values.device)

    def delta(self, d):
        return 0.0 if self.scaled else kept(d, self.fraction) / d


@dataclass(frozen=True, repr=False)
class QSGD(Compressor):
    """QSGD (Alistarh et al. 2017, arXiv 1610.02132) with s levels, per segment:
    Q(x) = tau ||x||_2 sign(x) l / s with l = floor(s|x|/||x||) + Bernoulli(frac) (stochastic rounding).
    Unscaled (tau = 1) it is unbiased; `scaled` uses tau = 1 / (1 + min(d/s^2, sqrt(d)/s)), which makes it a
    contraction with delta = tau (ALGORITHMS.md section 2)."""

    levels: int = 16
    scaled: bool = False
    encodings: ClassVar[tuple[str, ...]] = ("raw", "entropy", "elias-golomb")

    @property
    def name(self):
        return f"qsgd({self.levels}{', scaled' if self.scaled else ''})"

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.levels, numbers.Integral) or isinstance(self.levels, bool) or \
                not 1 <= self.levels <= 2**15 - 1:
            raise ConfigError(f"qsgd levels must be an integer in [1, 32767], got {self.levels!r}")
        object.__setattr__(self, "levels", int(self.levels))  # a NumPy integer (np.arange) as a plain one

    def tau(self, d: int) -> float:
        s = self.levels
        return 1 / (1 + min(d / s**2, math.sqrt(d) / s)) if self.scaled else 1.0

    def _compress(self, r, generator=None):
        # Half precision is quantized in float32, its scales sent in its own dtype: in bf16 arithmetic (an 8-bit
        # mantissa) the stochastic rounding was biased by about 2% of a level.
        work = r.to(torch.promote_types(r.dtype, torch.float32))
        # A block of rows at a time on a CPU (row_blocks): the same draws as one (N, P) uniform tensor, which the
        # round then never holds beside r and the symbols
        parts = [self.quantize(work[rows], torch.rand(work[rows].shape, generator=generator, device=r.device,
                                                      dtype=work.dtype))
                 for rows in row_blocks(work)]  # Quantized of (rows, P) symbols and (rows, L) scales
        symbols = parts[0].symbols if len(parts) == 1 else torch.cat([m.symbols for m in parts])  # (N, P) int16
        scales = torch.cat([m.scales for m in parts]) if len(parts) > 1 else parts[0].scales  # (N, L)
        return Quantized(symbols, scales.to(r.dtype), self.levels)

    def norms(self, r: torch.Tensor) -> torch.Tensor:
        """(N, L) the l2 norm of each segment."""
        sizes = self.segments(r.shape[1])
        if len(sizes) == 1:
            return torch.linalg.vector_norm(r, dim=1, keepdim=True)  # no (N, P) temporary
        return segment_sum(r * r, sizes).sqrt().to(r.dtype)

    def quantize(self, r: torch.Tensor, u: torch.Tensor) -> Quantized:
        """QSGD with the uniform draws u (N, P) given: the reference the fused kernels are checked against."""
        sizes = self.segments(r.shape[1])
        s = self.levels
        norms = self.norms(r)  # (N, L)
        inv = (s / norms).nan_to_num(posinf=0.0)  # (N, L), 0 where ||x|| = 0
        symbols = torch.empty(r.shape, dtype=torch.int16, device=r.device)
        for rows in row_blocks(r):  # on a CPU, the passes of _levels then read a block from cache
            symbols[rows] = self._levels(r[rows], u[rows], expand(inv[rows], sizes))
        taus = B.constant(tuple(self.tau(d) for d in sizes), r.dtype, r.device)
        return Quantized(symbols, norms * taus / s, s)

    def _levels(self, r: torch.Tensor, u: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
        """sign(r) l, l = floor(s|r|/||r||) rounded up where u < its fractional part; float, as r."""
        frac = r.abs().mul_(inv)  # s|x|/||x||
        level = torch.floor(frac)
        frac.sub_(level)
        # stochastic rounding up with probability frac: ceil(frac - u) is 1 exactly where u < frac and 0 (or -0)
        # elsewhere, since a float difference is 0 only for equal operands and keeps the sign of the exact one;
        # adding the bool u < frac instead converts it to float first: an extra pass over (N, P) on a CPU
        level.add_(frac.sub_(u).ceil_()).clamp_(max=self.levels)
        return level.copysign_(r)  # level 0 where r = 0: -0 becomes symbol 0

    def decompress(self, message):
        symbols, scales, _ = _message(self, message, Quantized)
        # (N, P) in place: the cast made it, and an (N, P) product beside it would be one temporary more
        return symbols.to(scales.dtype).mul_(expand(scales, self.segments(symbols.shape[1])))

    def bits(self, message):
        message = _message(self, message, Quantized)
        sizes = self.segments(message.symbols.shape[1])
        if self.encoding == "raw":
            return B.quantized_raw(sizes, message.levels, message.symbols.shape[0], message.symbols.device)
        if self.encoding == "entropy":
            return B.entropy(message.symbols, sizes, message.levels)
        return B.elias_golomb(message.symbols, sizes, message.levels)

    def delta(self, d):
        return self.tau(d) if self.scaled else 0.0


@dataclass(frozen=True, repr=False)
class Sign(Compressor):
    """Sign with the mean magnitude as scale, per segment: C(x) = (||x||_1 / d) sign(x), sign(0) = +1 so
    that a message is exactly one bit an entry (Bernstein et al. 2018; Karimireddy et al. 2019, 1901.09847)."""

    encodings: ClassVar[tuple[str, ...]] = ("raw", "entropy")
    name: ClassVar[str] = "sign"

    def _compress(self, r, generator=None):
        sizes = self.segments(r.shape[1])
        total = segment_sum(r.abs(), sizes)  # (N, L), float32 or float64: d may exceed what float16 holds
        scales = (total / B.constant(sizes, total.dtype, r.device)).to(r.dtype)
        symbols = (r < 0).to(torch.int16).mul_(-2).add_(1)  # sign with sign(0) = +1; 6x faster than where()
        return Quantized(symbols, scales, 1)

    decompress = QSGD.decompress

    def bits(self, message):
        message = _message(self, message, Quantized)
        sizes = self.segments(message.symbols.shape[1])
        if self.encoding == "raw":
            return B.sign_raw(sizes, message.symbols.shape[0], message.symbols.device)
        return B.entropy(message.symbols, sizes, 1)

    def delta(self, d):
        return 1 / d  # ||x||_1^2 / (d ||x||_2^2) >= 1/d, attained by a one-hot x


@dataclass(frozen=True, repr=False)
class Chain(Compressor):
    """top_k then QSGD on the kept values: a Sparse message whose values are quantized.

    Bits (raw): per segment k (ceil(log2 d) index + 1 sign + ceil(log2(s+1)) level bits) + 32 for the norm.
    """

    fraction: float = 0.01
    levels: int = 16
    scaled: bool = False

    @property
    def name(self):
        return f"top_k({self.fraction:g})+qsgd({self.levels}{', scaled' if self.scaled else ''})"

    def __post_init__(self):
        super().__post_init__()
        TopK(fraction=self.fraction)  # validates
        QSGD(levels=self.levels)

    def parts(self, width: int) -> tuple[TopK, QSGD]:
        top = TopK(self.per, self.layers, fraction=self.fraction)
        ks = tuple(top.ks(width))
        return top, QSGD("layer", ks, levels=self.levels, scaled=self.scaled)

    def _compress(self, r, generator=None):
        top, q = self.parts(r.shape[1])
        sparse = top.compress(r)
        return sparse._replace(values=q.decompress(q.compress(sparse.values, generator)))

    decompress = TopK.decompress

    def bits(self, message):
        top, q = self.parts(_message(self, message, Sparse).width)
        sizes, ks = self.segments(message.width), top.ks(message.width)
        n, device = message.values.shape[0], message.values.device
        return B.sparse_raw(sizes, ks, n, device, value_bits=1 + B.level_bits(self.levels)) + 32.0 * len(sizes)

    def delta(self, d):
        k = kept(d, self.fraction)
        return (k / d) * QSGD(levels=self.levels, scaled=True).tau(k) if self.scaled else 0.0


def identity(**kw) -> Identity:
    """No compression: 32 bits a value."""
    return Identity(**kw)


def top_k(fraction: float = 0.01, per: str = "model", **kw) -> TopK:
    """Keep the `fraction` of entries with the largest magnitude (top_k(0.01): 1%)."""
    return TopK(per=per, fraction=fraction, **kw)


def rand_k(fraction: float = 0.01, scaled: bool = False, per: str = "model", **kw) -> RandK:
    """Keep a random `fraction` of entries; scaled=True multiplies by d/k (unbiased)."""
    return RandK(per=per, fraction=fraction, scaled=scaled, **kw)


def qsgd(levels: int = 16, scaled: bool = False, per: str = "model", encoding: str = "raw", **kw) -> QSGD:
    """QSGD with `levels` s and stochastic rounding; scaled=True makes it a contraction."""
    return QSGD(per=per, levels=levels, scaled=scaled, encoding=encoding, **kw)


def sign(per: str = "model", **kw) -> Sign:
    """sign(x) times the mean |x| of the segment."""
    return Sign(per=per, **kw)


def top_k_qsgd(fraction: float = 0.01, levels: int = 16, scaled: bool = False, per: str = "model", **kw) -> Chain:
    """top_k, then QSGD on the kept values."""
    return Chain(per=per, fraction=fraction, levels=levels, scaled=scaled, **kw)


def dithered(levels: int = 16, scaled: bool = False, per: str = "model", encoding: str = "elias-golomb",
             **kw) -> QSGD:
    """MALCOM-PSGD's residual quantizer: QSGD-style dithered (stochastically rounded) uniform quantization of
    the normalized residual, source-coded with run lengths (Golomb) and counts (Elias). Unscaled it is
    unbiased; `scaled` shrinks it by tau into a contraction, which error feedback through public copies
    needs when d / s^2 is large."""
    return QSGD(per=per, levels=levels, scaled=scaled, encoding=encoding, **kw)


# name -> (factory of the numbers after ':' and the word `scaled`, an example)
SPECS = {
    "identity": (lambda nums, scaled, **kw: identity(*nums, **kw), "identity"),
    "top_k": (lambda nums, scaled, **kw: top_k(*nums, **kw), "top_k:0.01"),
    "rand_k": (lambda nums, scaled, **kw: rand_k(*nums, scaled=scaled, **kw), "rand_k:0.01,scaled"),
    "qsgd": (lambda nums, scaled, **kw: qsgd(*map(_whole, nums), scaled=scaled, **kw), "qsgd:16,scaled"),
    "sign": (lambda nums, scaled, **kw: sign(*nums, **kw), "sign"),
    "top_k_qsgd": (lambda nums, scaled, **kw: top_k_qsgd(*nums[:1], *map(_whole, nums[1:]), scaled=scaled, **kw),
                   "top_k_qsgd:0.01,16"),
    "dithered": (lambda nums, scaled, **kw: dithered(*map(_whole, nums), scaled=scaled, **kw), "dithered:16,scaled"),
}


def _whole(v: float) -> int:
    if not math.isfinite(v) or v != int(v):
        raise ConfigError(f"quantization levels must be a whole number, got {v:g}")
    return int(v)


def parse(spec: str, per: str = "model") -> Compressor:
    """A compressor from its spec, as config files and the command line write it: `top_k:0.01`, `qsgd:16,scaled`,
    `rand_k:0.05`, `sign`, `identity`, `top_k_qsgd:0.01,16`, `dithered:4`."""
    if not isinstance(spec, str):
        raise ConfigError(f"compressor spec {spec!r}: accepted: a string, one of "
                          + ", ".join(example for _, example in SPECS.values()))
    name, colon, rest = spec.strip().partition(":")
    name = name.strip()
    if name not in SPECS:
        accepted = ", ".join(example for _, example in SPECS.values())
        raise ConfigError(f"unknown compressor {name!r}; accepted: {accepted}")
    build, example = SPECS[name]
    words = [w.strip() for w in rest.split(",")] if colon else []
    if "" in words or words.count("scaled") > 1:  # `top_k:`, `qsgd:16,,scaled`, `qsgd:16,scaled,scaled`
        raise ConfigError(f"compressor {spec!r}: expected numbers like {example}")
    scaled = "scaled" in words
    if scaled and name in ("identity", "top_k", "sign"):
        raise ConfigError(f"compressor {spec!r}: {name} has no scaled form; e.g. {example}")
    try:
        nums = [float(w) for w in words if w != "scaled"]
    except ValueError:
        raise ConfigError(f"compressor {spec!r}: expected numbers like {example}") from None
    try:
        return build(nums, scaled, per=per)
    except TypeError:  # too many numbers for the factory
        raise ConfigError(f"compressor {spec!r}: too many numbers; it is written like {example}") from None
