"""Self-tests of the reference bitstreams: hand-worked codes, round trips, and lengths against closed forms.

The closed forms use math.log2 on small integers (exact there) rather than the module's bit_length, so they
check the widths independently.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from tests.reference import bitstream as bs

SPECIAL_F32 = np.array([0.0, -0.0, np.inf, -np.inf, -1.0, 1.0, -3.5, np.finfo(np.float32).max,
                        -np.finfo(np.float32).max, np.finfo(np.float32).tiny, 1e-45, -1e-45], dtype=np.float32)


def ceil_log2(x: int) -> int:
    return math.ceil(math.log2(x))


def random_f32(rng: np.random.Generator, n: int) -> np.ndarray:
    """Random bit patterns (every exponent, subnormals, infinities; NaNs redrawn) with specials mixed in."""
    x = rng.integers(0, 2**32, size=n, dtype=np.uint32).view(np.float32)
    while np.isnan(x).any():
        x[np.isnan(x)] = rng.integers(0, 2**32, size=int(np.isnan(x).sum()), dtype=np.uint32).view(np.float32)
    x = np.where(rng.random(n) < 0.3, rng.choice(SPECIAL_F32, size=n), x)
    if n >= len(SPECIAL_F32):
        x[rng.choice(n, size=len(SPECIAL_F32), replace=False)] = SPECIAL_F32
    return x


def same_f32(decoded: list[float], original: np.ndarray) -> bool:
    return np.array_equal(np.asarray(decoded, dtype=np.float32).ravel().view(np.uint32),
                          np.asarray(original, dtype=np.float32).ravel().view(np.uint32))


def random_symbols(rng: np.random.Generator, d: int, s: int, density: float) -> np.ndarray:
    nonzero = rng.random(d) < density
    levels = rng.integers(1, s + 1, size=d)
    signs = rng.choice([-1, 1], size=d)
    return np.where(nonzero, signs * levels, 0)


def golomb_len(n: int, m: int) -> int:
    if m == 1:
        return n + 1
    b = ceil_log2(m)
    u = 2**b - m
    return n // m + 1 + (b - 1 if n % m < u else b)


# ------------------------------------------------------------------------------------------------- primitives

def test_elias_gamma_hand_examples():
    assert bs.elias_gamma(1) == "1"
    assert bs.elias_gamma(2) == "010"
    assert bs.elias_gamma(4) == "00100"
    assert bs.elias_gamma(5) == "00101"
    with pytest.raises(ValueError):
        bs.elias_gamma(0)


def test_elias_gamma_lengths_and_round_trip(fresh_seed):
    rng = np.random.default_rng(fresh_seed)
    vs = [1, 2, 3, 4, 7, 8, 255, 256, 2**31 - 1, 2**31] + [int(v) for v in rng.integers(1, 2**40, 200)]
    codes = [bs.elias_gamma(v) for v in vs]
    for v, code in zip(vs, codes):
        assert len(code) == 2 * math.floor(math.log2(v)) + 1, f"seed={fresh_seed} v={v}"
    r = bs.BitReader("".join(codes))
    assert [bs.read_elias_gamma(r) for _ in vs] == vs, f"seed={fresh_seed}"
    r.expect_end()


def test_golomb_hand_examples():
    assert [bs.golomb(n, 3) for n in range(4)] == ["00", "010", "011", "100"]
    assert bs.golomb(5, 4) == "1001"
    assert bs.golomb(3, 1) == "1110"
    assert bs.golomb(0, 1) == "0"


def test_golomb_lengths_and_round_trip(fresh_seed):
    rng = np.random.default_rng(fresh_seed)
    ms = [1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 100, 693, 1024] + [int(m) for m in rng.integers(1, 5000, 10)]
    for m in ms:
        ns = list(range(3 * m + 2)) if m <= 100 else []
        ns += [int(n) for n in rng.integers(0, 20 * m, 50)]
        codes = [bs.golomb(n, m) for n in ns]
        for n, code in zip(ns, codes):
            assert len(code) == golomb_len(n, m), f"seed={fresh_seed} m={m} n={n}"
        r = bs.BitReader("".join(codes))
        assert [bs.read_golomb(r, m) for _ in ns] == ns, f"seed={fresh_seed} m={m}"
        r.expect_end()


def test_golomb_parameter_values():
    assert [bs.golomb_parameter(c, d) for c, d in [(8, 8), (2, 8), (1, 8), (1, 10), (1, 100), (1, 2)]] == \
        [1, 2, 5, 7, 69, 1]
    for c, d in [(0, 8), (9, 8)]:
        with pytest.raises(ValueError):
            bs.golomb_parameter(c, d)


def test_golomb_parameter_is_the_optimal_geometric_parameter(fresh_seed):
    """m is the least integer with (1-p)^m + (1-p)^(m+1) <= 1 (Gallager and Van Voorhis)."""
    rng = np.random.default_rng(fresh_seed)
    for _ in range(300):
        d = int(rng.integers(1, 10**6))
        c = int(rng.integers(1, d + 1))
        p, m = c / d, bs.golomb_parameter(c, d)
        assert (1 - p) ** m * (2 - p) <= 1 + 1e-12, f"seed={fresh_seed} c={c} d={d}"
        assert m == 1 or (1 - p) ** (m - 1) * (2 - p) > 1 - 1e-12, f"seed={fresh_seed} c={c} d={d}"


def test_float32_bits():
    assert bs.float32_bits(1.0) == "0" + "01111111" + "0" * 23
    assert bs.float32_bits(-2.5) == "1" + "10000000" + "01" + "0" * 21
    assert bs.float32_bits(-0.0) == "1" + "0" * 31
    assert bs.float32_bits(np.float32(np.inf)) == "0" + "1" * 8 + "0" * 23
    r = bs.BitReader("".join(bs.float32_bits(x) for x in SPECIAL_F32))
    assert same_f32([bs.read_float32(r) for _ in SPECIAL_F32], SPECIAL_F32)


# --------------------------------------------------------------------------------------------------- messages

@pytest.mark.parametrize("d", [1, 2, 12, 1000])
def test_identity(fresh_seed, d):
    x = random_f32(np.random.default_rng(fresh_seed), d)
    bits = bs.encode_identity(x)
    assert len(bits) == 32 * d, f"seed={fresh_seed}"
    assert same_f32(bs.decode_identity(bits, d), x), f"seed={fresh_seed}"


@pytest.mark.parametrize("d", [1, 2, 3, 1024, 1025])
def test_sparse(fresh_seed, d):
    rng = np.random.default_rng(fresh_seed)
    for k in sorted({0, 1, min(d, 5), d}):
        idx = rng.choice(d, size=k, replace=False)
        vals = random_f32(rng, k)
        bits = bs.encode_sparse(vals, idx, d)
        assert len(bits) == k * (32 + ceil_log2(d)), f"seed={fresh_seed} k={k}"
        got_vals, got_idx = bs.decode_sparse(bits, k, d)
        assert same_f32(got_vals, vals) and got_idx == idx.tolist(), f"seed={fresh_seed} k={k}"


@pytest.mark.parametrize("s", [1, 2, 3, 4, 255])
@pytest.mark.parametrize("d", [1, 7, 500])
def test_qsgd_raw(fresh_seed, d, s):
    rng = np.random.default_rng(fresh_seed)
    for density in [0.0, 0.01, 0.5, 1.0]:
        q = random_symbols(rng, d, s, density)
        norm = random_f32(rng, 1)[0]
        bits = bs.encode_qsgd_raw(q, norm, s)
        assert len(bits) == 32 + d * (1 + ceil_log2(s + 1)), f"seed={fresh_seed} density={density}"
        got, got_norm = bs.decode_qsgd_raw(bits, d, s)
        assert got == q.tolist() and same_f32([got_norm], norm), f"seed={fresh_seed} density={density}"


@pytest.mark.parametrize("d", [1, 9, 1000])
def test_sign_raw(fresh_seed, d):
    rng = np.random.default_rng(fresh_seed)
    signs = rng.choice([-1, 1], size=d)
    scale = random_f32(rng, 1)[0]
    bits = bs.encode_sign_raw(signs, scale)
    assert len(bits) == 32 + d, f"seed={fresh_seed}"
    got, got_scale = bs.decode_sign_raw(bits, d)
    assert got == signs.tolist() and same_f32([got_scale], scale), f"seed={fresh_seed}"
    with pytest.raises(ValueError):
        bs.encode_sign_raw([1, 0], 1.0)


def test_elias_golomb_hand_example():
    q = [0, 1, 0, 0, -2, 0, 1, 0]  # d = 8, s = 2
    # Level 1: c = 2, p = 1/4, m = 2; positions 1, 6 -> gaps 1, 4. Level 2: c = 1, p = 1/8, m = 5; position 4.
    assert (bs.golomb_parameter(2, 8), bs.golomb_parameter(1, 8)) == (2, 5)
    expected = ("00111111100000000000000000000000"  # norm 1.0
                + "011" + "010"  # EliasGamma(2 + 1), EliasGamma(1 + 1)
                + "01" + "1100"  # Golomb_2(1), Golomb_2(4)
                + "0111"  # Golomb_5(4): q = 0, r = 4 >= u = 3, so r + u = 7 in 3 bits
                + "010")  # signs of entries 1, 4, 6
    assert bs.encode_elias_golomb(q, 1.0, 2) == expected
    assert bs.decode_elias_golomb(expected, 8, 2) == (q, 1.0)


def elias_golomb_len(q: np.ndarray, s: int) -> int:
    d, n = len(q), 32
    for level in range(1, s + 1):
        pos = np.flatnonzero(np.abs(q) == level)
        n += 2 * math.floor(math.log2(len(pos) + 1)) + 1
        if len(pos):
            m = bs.golomb_parameter(len(pos), d)
            n += sum(golomb_len(int(g), m) for g in np.diff(pos, prepend=-1) - 1)
    return n + int(np.count_nonzero(q))


@pytest.mark.parametrize("s", [1, 2, 3, 16, 255])
@pytest.mark.parametrize("d", [1, 2, 13, 2000])
def test_elias_golomb(fresh_seed, d, s):
    rng = np.random.default_rng(fresh_seed)
    for density in [0.0, 0.001, 0.05, 0.5, 1.0]:
        q = random_symbols(rng, d, s, density)
        norm = random_f32(rng, 1)[0]
        bits = bs.encode_elias_golomb(q, norm, s)
        assert len(bits) == elias_golomb_len(q, s), f"seed={fresh_seed} density={density}"
        got, got_norm = bs.decode_elias_golomb(bits, d, s)
        assert got == q.tolist() and same_f32([got_norm], norm), f"seed={fresh_seed} density={density}"


def test_elias_golomb_edge_lengths(fresh_seed):
    rng = np.random.default_rng(fresh_seed)
    for s in [1, 255]:
        assert len(bs.encode_elias_golomb([0] * 50, 0.0, s)) == 32 + s  # every count is EliasGamma(1) = '1'
    d = 300
    signs = rng.choice([-1, 1], size=d)
    # s = 1, all nonzero: m = 1, every gap is 0 -> '0'; then one sign bit each.
    assert len(bs.encode_elias_golomb(signs, 1.0, 1)) == 32 + len(bs.elias_gamma(d + 1)) + d + d, \
        f"seed={fresh_seed}"


def test_elias_golomb_very_sparse(fresh_seed):
    rng = np.random.default_rng(fresh_seed)
    d, s = 20000, 7
    q = np.zeros(d, dtype=np.int64)
    where = rng.choice(d, size=3, replace=False)
    q[where] = rng.choice([-1, 1], size=3) * rng.integers(1, s + 1, size=3)
    bits = bs.encode_elias_golomb(q, 2.0, s)
    assert len(bits) == elias_golomb_len(q, s), f"seed={fresh_seed} where={where}"
    assert bs.decode_elias_golomb(bits, d, s) == (q.tolist(), 2.0), f"seed={fresh_seed} where={where}"


def test_malformed_streams_are_rejected():
    good = bs.encode_qsgd_raw([1, 0, -2], 1.0, 2)
    for bad in [good + "0", good[:-1], good.replace("0", "2", 1)]:
        with pytest.raises(ValueError):
            bs.decode_qsgd_raw(bad, 3, 2)
    norm = bs.float32_bits(1.0)
    with pytest.raises(ValueError):  # a negative zero
        bs.decode_qsgd_raw(norm + "100", 1, 2)
    with pytest.raises(ValueError):  # level 3 > s = 2
        bs.decode_qsgd_raw(norm + "011", 1, 2)
    with pytest.raises(ValueError):
        bs.encode_qsgd_raw([3], 1.0, 2)
    with pytest.raises(ValueError):  # index 3 >= d = 3 in 2 index bits
        bs.decode_sparse(norm + "11", 1, 3)
    with pytest.raises(ValueError):
        bs.decode_elias_golomb(bs.encode_elias_golomb([1, 0, -1], 1.0, 1) + "1", 3, 1)
    with pytest.raises(ValueError):  # count 2 > d = 1
        bs.decode_elias_golomb(norm + bs.elias_gamma(3), 1, 1)


# --------------------------------------------------------------------------------------------- model messages

def test_model_messages(fresh_seed):
    rng = np.random.default_rng(fresh_seed)
    sizes, s = [1, 5, 300, 2, 64], 4
    slices = bs.layer_slices(sizes)
    assert [sl.stop - sl.start for sl in slices] == sizes and slices[-1].stop == sum(sizes)

    q = random_symbols(rng, sum(sizes), s, 0.1)
    norms = random_f32(rng, len(sizes))
    bits = bs.encode_layers(sizes, lambda i, sl: bs.encode_elias_golomb(q[sl], norms[i], s))
    assert len(bits) == sum(len(bs.encode_elias_golomb(q[sl], norms[i], s)) for i, sl in enumerate(slices))
    got = bs.decode_layers(bits, sizes, lambda r, i, sl: bs.read_elias_golomb(r, sl.stop - sl.start, s))
    assert [g[0] for g in got] == [q[sl].tolist() for sl in slices], f"seed={fresh_seed}"
    assert same_f32([g[1] for g in got], norms), f"seed={fresh_seed}"

    ks = [min(3, d) for d in sizes]  # the layer index picks each layer's own k
    x = random_f32(rng, sum(sizes))
    idx = [rng.choice(d, size=k, replace=False) for d, k in zip(sizes, ks)]
    bits = bs.encode_layers(sizes, lambda i, sl: bs.encode_sparse(x[sl][idx[i]], idx[i], sizes[i]))
    assert len(bits) == sum(k * (32 + ceil_log2(d)) for d, k in zip(sizes, ks))
    got = bs.decode_layers(bits, sizes, lambda r, i, sl: bs.read_sparse(r, ks[i], sizes[i]))
    for i, sl in enumerate(slices):
        assert got[i][1] == idx[i].tolist() and same_f32(got[i][0], x[sl][idx[i]]), f"seed={fresh_seed} layer={i}"
    with pytest.raises(ValueError):
        bs.decode_layers(bits + "0", sizes, lambda r, i, sl: bs.read_sparse(r, ks[i], sizes[i]))
