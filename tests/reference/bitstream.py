"""Reference bitstreams for compressed gossip messages: every code is really written out and read back.

A bitstream is a Python str of '0'/'1' characters. It is slow on purpose: this is the spec that the fast
vectorized bit counter is checked against bit for bit, so every length here is `len()` of a stream that
decodes back to the message, never a formula.

One message is what one agent sends for one layer segment of length d; a model message is the concatenation of
its layers' segments in order (`encode_layers` / `decode_layers`). The receiver knows d and the stated
parameters (k, s), so nothing about them is sent.

Bit widths are computed with integer arithmetic (`int.bit_length`) rather than math.log2, so they are exact for
every d and s; only `golomb_parameter` uses floats, because its formula is defined in float64.

Malformed streams (too short, bits left over, codes out of range) raise ValueError, not AssertionError, so the
checks survive `python -O`.
"""
from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from typing import TypeVar

M = TypeVar("M")

__all__ = [
    "BitReader", "uint_bits", "index_bits", "level_bits",
    "elias_gamma", "read_elias_gamma", "golomb", "read_golomb", "golomb_parameter",
    "float32_bits", "read_float32",
    "encode_identity", "read_identity", "decode_identity",
    "encode_sparse", "read_sparse", "decode_sparse",
    "encode_qsgd_raw", "read_qsgd_raw", "decode_qsgd_raw",
    "encode_sign_raw", "read_sign_raw", "decode_sign_raw",
    "encode_elias_golomb", "read_elias_golomb", "decode_elias_golomb",
    "layer_slices", "encode_layers", "decode_layers",
]


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(what)


# --------------------------------------------------------------------------------------------------- primitives

class BitReader:
    """A cursor over a bitstream. Readers of self-delimiting codes advance it, so segments can be concatenated."""

    def __init__(self, bits: str):
        _check(set(bits) <= {"0", "1"}, "a bitstream holds only '0' and '1'")
        self.bits, self.pos = bits, 0

    def remaining(self) -> int:
        return len(self.bits) - self.pos

    def read(self, n: int) -> str:
        _check(0 <= n <= self.remaining(), f"stream ends at bit {len(self.bits)}, wanted {n} bits at {self.pos}")
        out = self.bits[self.pos:self.pos + n]
        self.pos += n
        return out

    def read_uint(self, n: int) -> int:
        """n bits, MSB first; 0 bits read as 0."""
        return int(self.read(n), 2) if n else 0

    def expect_end(self) -> None:
        _check(self.remaining() == 0, f"{self.remaining()} bits left over after the message")


def uint_bits(v: int, n: int) -> str:
    """v in exactly n bits, MSB first (n = 0 writes nothing and only v = 0 fits)."""
    _check(0 <= v < (1 << n), f"{v} does not fit in {n} bits")
    return format(v, f"0{n}b") if n else ""


def index_bits(d: int) -> int:
    """ceil(log2 d): the width of an index into d positions (0 for d = 1)."""
    _check(d >= 1, f"segment length must be >= 1, got {d}")
    return (d - 1).bit_length()


def level_bits(s: int) -> int:
    """ceil(log2(s + 1)): the width of a quantization level in 0..s."""
    _check(s >= 1, f"number of levels must be >= 1, got {s}")
    return s.bit_length()


def elias_gamma(v: int) -> str:
    """floor(log2 v) zeros, then v in binary: 2 floor(log2 v) + 1 bits."""
    _check(v >= 1, f"Elias gamma codes integers >= 1, got {v}")
    return "0" * (v.bit_length() - 1) + format(v, "b")


def read_elias_gamma(r: BitReader) -> int:
    zeros = 0
    while r.read(1) == "0":
        zeros += 1
    # The '1' just read is the MSB of v, so zeros more bits complete it.
    return (1 << zeros) | r.read_uint(zeros)


def golomb(n: int, m: int) -> str:
    """q = n // m in unary ('1' * q + '0'), then r = n % m in truncated binary."""
    _check(n >= 0 and m >= 1, f"Golomb codes n >= 0 with m >= 1, got n={n}, m={m}")
    q, r = divmod(n, m)
    b = (m - 1).bit_length()  # ceil(log2 m)
    u = (1 << b) - m  # 0 for a power of two, so every remainder takes the b-bit branch, as plain binary
    tail = uint_bits(r, b - 1) if r < u else uint_bits(r + u, b)
    return "1" * q + "0" + tail


def read_golomb(r: BitReader, m: int) -> int:
    q = 0
    while r.read(1) == "1":
        q += 1
    b = (m - 1).bit_length()
    u = (1 << b) - m
    if b == 0:
        return q * m
    # The first b - 1 bits decide: below u they are the whole remainder, else one more bit follows.
    x = r.read_uint(b - 1)
    if x >= u:
        x = 2 * x + r.read_uint(1) - u
    return q * m + x


def golomb_parameter(c: int, d: int) -> int:
    """The Golomb parameter for c nonzero symbols among d positions, p = c / d (float64; log(1 - p) as log1p(-p),
    which is what bits.golomb_parameter computes: log(1 - p) rounds 1 - p first, and at p = 1/23357182 that moves
    the ceiling by one)."""
    _check(1 <= c <= d, f"golomb_parameter needs 1 <= c <= d, got c={c}, d={d}")
    p = c / d
    if p >= 1:
        return 1
    return max(1, math.ceil(math.log(2 - p) / (-math.log1p(-p))))


def float32_bits(x: float) -> str:
    """The IEEE-754 float32 bit pattern, big-endian. float64 inputs are rounded to nearest by struct."""
    return format(struct.unpack(">I", struct.pack(">f", float(x)))[0], "032b")


def read_float32(r: BitReader) -> float:
    return struct.unpack(">f", struct.pack(">I", r.read_uint(32)))[0]


def _decode_all(bits: str, read: Callable[..., M], *args: int) -> M:
    r = BitReader(bits)
    out = read(r, *args)
    r.expect_end()
    return out


# ----------------------------------------------------------------------------------------------------- messages

def encode_identity(values: Sequence[float]) -> str:
    """d float32 values."""
    return "".join(float32_bits(v) for v in values)


def read_identity(r: BitReader, d: int) -> list[float]:
    return [read_float32(r) for _ in range(d)]


def decode_identity(bits: str, d: int) -> list[float]:
    return _decode_all(bits, read_identity, d)


def encode_sparse(values: Sequence[float], indices: Sequence[int], d: int) -> str:
    """k pairs (float32 value, index in ceil(log2 d) bits), in the order given: top-k and rand-k."""
    _check(len(values) == len(indices), f"{len(values)} values but {len(indices)} indices")
    w = index_bits(d)
    return "".join(float32_bits(v) + uint_bits(int(i), w) for v, i in zip(values, indices, strict=True))


def read_sparse(r: BitReader, k: int, d: int) -> tuple[list[float], list[int]]:
    w = index_bits(d)
    values, indices = [], []
    for _ in range(k):
        values.append(read_float32(r))
        i = r.read_uint(w)
        _check(i < d, f"index {i} out of range for d={d}")
        indices.append(i)
    return values, indices


def decode_sparse(bits: str, k: int, d: int) -> tuple[list[float], list[int]]:
    return _decode_all(bits, read_sparse, k, d)


def _check_symbols(symbols: Sequence[int], s: int) -> list[int]:
    level_bits(s)
    q = [int(v) for v in symbols]
    _check(all(-s <= v <= s for v in q), f"symbols must lie in [-{s}, {s}]")
    return q


def encode_qsgd_raw(symbols: Sequence[int], norm: float, s: int) -> str:
    """norm as float32, then per entry a sign bit ('1' = negative) and |q_i| in ceil(log2(s + 1)) bits."""
    w = level_bits(s)
    parts = [float32_bits(norm)]
    parts += [("1" if v < 0 else "0") + uint_bits(abs(v), w) for v in _check_symbols(symbols, s)]
    return "".join(parts)


def read_qsgd_raw(r: BitReader, d: int, s: int) -> tuple[list[int], float]:
    w = level_bits(s)
    norm = read_float32(r)
    symbols = []
    for _ in range(d):
        negative = r.read(1) == "1"
        level = r.read_uint(w)
        _check(level <= s, f"level {level} above s={s}")
        # A zero with its sign bit set would be a second code for 0; keep the stream canonical.
        _check(level > 0 or not negative, "a zero symbol must carry sign bit '0'")
        symbols.append(-level if negative else level)
    return symbols, norm


def decode_qsgd_raw(bits: str, d: int, s: int) -> tuple[list[int], float]:
    return _decode_all(bits, read_qsgd_raw, d, s)


def encode_sign_raw(signs: Sequence[int], scale: float) -> str:
    """scale as float32, then d sign bits ('1' = negative); signs are +1 / -1 only."""
    q = [int(v) for v in signs]
    _check(all(v in (1, -1) for v in q), "signs must be +1 or -1")
    return float32_bits(scale) + "".join("1" if v < 0 else "0" for v in q)


def read_sign_raw(r: BitReader, d: int) -> tuple[list[int], float]:
    scale = read_float32(r)
    return [-1 if r.read(1) == "1" else 1 for _ in range(d)], scale


def decode_sign_raw(bits: str, d: int) -> tuple[list[int], float]:
    return _decode_all(bits, read_sign_raw, d)


def encode_elias_golomb(symbols: Sequence[int], norm: float, s: int) -> str:
    """MALCOM-PSGD-style source coding of symbols in [-s, s]^d.

    norm as float32; EliasGamma(c_l + 1) for l = 1..s; for each level with c_l > 0 the gaps between its
    positions, Golomb-coded with m = golomb_parameter(c_l, d); then one sign bit per nonzero entry in index order.
    """
    q = _check_symbols(symbols, s)
    d = len(q)
    index_bits(d)
    positions: list[list[int]] = [[] for _ in range(s + 1)]
    for i, v in enumerate(q):
        positions[abs(v)].append(i)
    parts = [float32_bits(norm)]
    parts += [elias_gamma(len(positions[level]) + 1) for level in range(1, s + 1)]
    for level in range(1, s + 1):
        where = positions[level]
        if not where:
            continue
        m = golomb_parameter(len(where), d)
        prev = -1  # so the first gap, i_1 - (-1) - 1, is i_1 itself
        for i in where:
            parts.append(golomb(i - prev - 1, m))
            prev = i
    parts += ["1" if v < 0 else "0" for v in q if v != 0]
    return "".join(parts)


def read_elias_golomb(r: BitReader, d: int, s: int) -> tuple[list[int], float]:
    index_bits(d)
    level_bits(s)
    norm = read_float32(r)
    counts = [read_elias_gamma(r) - 1 for _ in range(s)]
    _check(sum(counts) <= d, f"{sum(counts)} nonzero symbols among d={d} positions")
    symbols = [0] * d
    for level, c in enumerate(counts, start=1):
        if c == 0:
            continue
        m = golomb_parameter(c, d)
        i = -1
        for _ in range(c):
            i += read_golomb(r, m) + 1
            # Levels' positions are disjoint in any stream the encoder writes.
            _check(i < d and symbols[i] == 0, f"position {i} out of range or given two levels")
            symbols[i] = level
    for i, v in enumerate(symbols):
        if v and r.read(1) == "1":
            symbols[i] = -v
    return symbols, norm


def decode_elias_golomb(bits: str, d: int, s: int) -> tuple[list[int], float]:
    return _decode_all(bits, read_elias_golomb, d, s)


# ---------------------------------------------------------------------------------------------- model messages

def layer_slices(layer_sizes: Sequence[int]) -> list[slice]:
    """Each layer's slice of the flat parameter vector."""
    out, start = [], 0
    for d in layer_sizes:
        index_bits(d)
        out.append(slice(start, start + d))
        start += d
    return out


def encode_layers(layer_sizes: Sequence[int], encode_layer: Callable[[int, slice], str]) -> str:
    """Concatenate encode_layer(layer index, its slice of the flat vector) over the layers, in order."""
    return "".join(encode_layer(i, sl) for i, sl in enumerate(layer_slices(layer_sizes)))


def decode_layers(bits: str, layer_sizes: Sequence[int], read_layer: Callable[[BitReader, int, slice], M]) -> list[M]:
    """Read each layer with read_layer(reader, layer index, slice) in order; the stream must end exactly."""
    r = BitReader(bits)
    out = [read_layer(r, i, sl) for i, sl in enumerate(layer_slices(layer_sizes))]
    r.expect_end()
    return out
