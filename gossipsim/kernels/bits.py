"""Exact message sizes in bits, computed on the device and vectorized over agents.

Encodings (one message = what an agent sends one neighbour; a row is cut into segments, each coded alone):
- raw: 32 bits a float value, ceil(log2 d) bits an index into a segment of d, 32 bits a norm or scale;
  quantized symbols as a sign bit and ceil(log2(s + 1)) level bits each.
- entropy: 32 + d H(symbols) a segment, H the empirical entropy of its symbols (a lower bound, for reference).
- elias-golomb (MALCOM-PSGD's source coding): 32 for the norm; for each level l = 1..s the count c_l as
  EliasGamma(c_l + 1); for each level present, the gaps between its positions as Golomb codes with
  parameter m = golomb_parameter(c_l, d); one sign bit per nonzero symbol.
tests/reference/bitstream.py writes these bitstreams for real and decodes them; the counts here equal
their lengths bit for bit.
"""
from __future__ import annotations

import functools

import torch


def index_bits(d: int) -> int:
    """ceil(log2 d), in integers: math.log2(2^k + 1) rounds to k for k >= 49, a ceiling one short."""
    return (int(d) - 1).bit_length() if d > 1 else 0


def level_bits(s: int) -> int:
    """ceil(log2(s + 1))."""
    return int(s).bit_length()


def _full(n: int, value: float, device) -> torch.Tensor:
    return torch.full((n,), float(value), dtype=torch.float64, device=device)


def sparse_raw(sizes, ks, n: int, device, value_bits: int = 32) -> torch.Tensor:
    """k (value + index) per segment: top-k and rand-k."""
    return _full(n, sum(k * (value_bits + index_bits(d)) for d, k in zip(sizes, ks)), device)


def quantized_raw(sizes, s: int, n: int, device) -> torch.Tensor:
    """A norm per segment, then a sign and a level for every entry: QSGD."""
    return _full(n, sum(32 + d * (1 + level_bits(s)) for d in sizes), device)


def sign_raw(sizes, n: int, device) -> torch.Tensor:
    """A scale per segment and one bit an entry."""
    return _full(n, sum(32 + d for d in sizes), device)


def constant(values, dtype: torch.dtype, device) -> torch.Tensor:
    """A small constant (segment sizes, taus) on the device, copied there once: a copy from pageable host
    memory each round would wait for the device. Shared: never modify it in place. Traced by torch.compile, it
    is a constant of the graph: no cache to look up (Dynamo warned of the lru_cache at every compile)."""
    if torch.compiler.is_compiling():
        return torch.tensor(tuple(values), dtype=dtype, device=device)
    return _constant(tuple(values), dtype, torch.device(device))


@functools.lru_cache(maxsize=256)
def _constant(values: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype, device=device)


@functools.lru_cache(maxsize=64)
def _segment_table(sizes: tuple[int, ...], device: torch.device) -> torch.Tensor:
    return torch.repeat_interleave(torch.arange(len(sizes), device=device), torch.tensor(sizes, device=device))


def _segments(sizes, device) -> torch.Tensor:
    """(P,) int64: the segment of each column (cached: a compressor asks for the same one every round)."""
    return _segment_table(tuple(sizes), torch.device(device))


def entropy(symbols: torch.Tensor, sizes, s: int) -> torch.Tensor:
    """(N,) float64: sum over segments of 32 + d H, H the empirical entropy of the segment's symbols."""
    n, _ = symbols.shape
    L, k = len(sizes), 2 * s + 1
    key = _segments(sizes, symbols.device) * k + (symbols.to(torch.int64) + s)  # (N, P)
    counts = torch.zeros(n, L * k, dtype=torch.float64, device=symbols.device)
    counts.scatter_add_(1, key, torch.ones_like(key, dtype=torch.float64))
    d = constant(sizes, torch.float64, symbols.device).repeat_interleave(k)  # (L k,)
    p = counts / d
    h = -(counts * torch.log2(p.clamp_min(1e-300))).sum(1)  # sum over segments of d_l H_l, in bits
    return h + 32.0 * L


def gamma_bits(v: torch.Tensor) -> torch.Tensor:
    """Elias gamma code length of integers v >= 1: 2 floor(log2 v) + 1 (exact for v < 2^40)."""
    return 2 * torch.floor(torch.log2(v.to(torch.float64))) + 1


def golomb_parameter(c: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """m = max(1, ceil(log(2 - p) / -log(1 - p))) with p = c/d: the optimal Golomb parameter for gaps
    between c positions among d (Gallager and van Voorhis 1975); 1 where p = 1."""
    p = c.to(torch.float64) / d.to(torch.float64)
    m = torch.ceil(torch.log(2 - p) / -torch.log1p(-p)).nan_to_num(nan=1.0, posinf=1.0)
    return torch.where(p >= 1, 1.0, m).clamp_min(1.0)


def golomb_bits(gap: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Golomb code length of gaps >= 0 with parameters m >= 1 (float64 holding integers): unary quotient
    and a zero, then the remainder in truncated binary."""
    q = torch.floor(gap / m)
    r = gap - q * m
    b = torch.ceil(torch.log2(m))
    short = r < (2**b - m)  # never true where m is a power of two
    return q + 1 + torch.where(short, b - 1, b)


# Always eager: its shapes follow the number of nonzero symbols, so a compiled round (compile="round") would
# specialize on that number and recompile every round; disabled, it is one graph break.
@torch.compiler.disable
def elias_golomb(symbols: torch.Tensor, sizes, s: int) -> torch.Tensor:
    """(N,) float64: the elias-golomb length of each row's message (see the module docstring)."""
    n, width = symbols.shape
    device = symbols.device
    L = len(sizes)
    seg = _segments(sizes, device)  # (P,)
    starts = constant((0, *sizes[:-1]), torch.int64, device).cumsum(0)  # (L,) each segment's first column
    # Only nonzero symbols carry counts and positions: a message is mostly zeros, so never touch all N P.
    mag = symbols.abs()  # (N, P)
    row, col = (mag != 0).nonzero(as_tuple=True)  # row-major: sorted by (row, col)
    group = seg[col] * s + (mag[row, col].to(torch.int64) - 1)  # (nnz,) which (segment, level) an entry belongs to
    key = row * (L * s) + group
    counts = torch.bincount(key, minlength=n * L * s).view(n, L, s).to(torch.float64)  # c_l for levels 1..s
    header = 32.0 * L + gamma_bits(counts + 1).sum((1, 2))
    d = constant(sizes, torch.int64, device).view(1, L, 1)
    m = golomb_parameter(counts, d).view(n, L * s)  # (N, L s)
    # gaps between the positions of one (row, segment, level): a stable sort by it keeps columns in order
    order = torch.sort(key, stable=True).indices
    row, col, group = row[order], col[order], group[order]
    first = torch.ones_like(row, dtype=torch.bool)
    first[1:] = (row[1:] != row[:-1]) | (group[1:] != group[:-1])
    prev = torch.empty_like(col)
    prev[1:] = col[:-1]
    gap = torch.where(first, col - starts[seg[col]], col - prev - 1).to(torch.float64)
    lengths = golomb_bits(gap, m[row, group])
    positions = torch.zeros(n, dtype=torch.float64, device=device).index_add_(0, row, lengths)
    signs = torch.bincount(row, minlength=n).to(torch.float64)
    return header + positions + signs
