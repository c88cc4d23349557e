"""Triton kernels for CUDA (and for the CPU under TRITON_INTERPRET=1, which is how CI tests them).

Launchers take float32 (N, P) tensors and the segment block table of `blocks(sizes)`: every kernel that
works per segment runs one program per (row, block), blocks never straddling two segments, so a partial
sum goes to its segment with one atomic add. Grids put rows on axis 0 so that programs running together
share column blocks: neighbour rows re-read by gossip then come from L2, not memory.
Each launcher's pure-torch twin is in ops.py; tests/test_kernels.py checks they agree at odd shapes.
"""
from __future__ import annotations

import functools
import itertools
import math

import torch
import triton
import triton.language as tl

BLOCK = 1024  # columns a gossip program: rows sharing a block keep its neighbour rows in L2
SEG_BLOCK = 4096  # columns a program of the per-segment kernels (norms, quantize, top-k): 16 KB of float32
SEG_WARPS = 8
# top-k's compaction holds more live values a column than a norm or a quantizer: at 4096 columns and 8 warps
# it needs 97 registers a thread, which caps an H100 SM at 2 programs (25% occupancy), latency-bound
TOPK_BLOCK = 1024
TOPK_WARPS = 4


def blocks(sizes: tuple[int, ...], device, block: int | None = None) -> tuple[torch.Tensor, ...]:
    """(start, end, segment) int32 of each column block: a block lies inside one segment."""
    block = block or SEG_BLOCK
    start, ends, segs, s0 = [], [], [], 0
    for i, d in enumerate(sizes):
        for a in range(s0, s0 + d, block):
            start.append(a)
            ends.append(min(a + block, s0 + d))
            segs.append(i)
        s0 += d
    t = torch.tensor([start, ends, segs], dtype=torch.int32, device=device)
    return t[0], t[1], t[2]


@triton.jit
def _mix(y_ptr, idx_ptr, w_ptr, x_ptr, out_ptr, P, D, gamma, CONSENSUS: tl.constexpr, BLOCK: tl.constexpr):
    # out_i = sum_k w_ik y_(idx_ik)                         (gossip, CONSENSUS = False)
    # out_i = x_i + gamma (sum_k w_ik y_(idx_ik) - y_i)     (CHOCO's consensus step; out may be x)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = cols < P
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for k in range(D):
        j = tl.load(idx_ptr + row * D + k).to(tl.int64)
        w = tl.load(w_ptr + row * D + k)
        acc += w * tl.load(y_ptr + j * P + cols, mask=m, other=0.0)
    if CONSENSUS:
        y = tl.load(y_ptr + row * P + cols, mask=m, other=0.0)
        x = tl.load(x_ptr + row * P + cols, mask=m, other=0.0)
        acc = x + gamma * (acc - y)
    tl.store(out_ptr + row * P + cols, acc, mask=m)


def mix(y: torch.Tensor, idx: torch.Tensor, w: torch.Tensor, x: torch.Tensor | None = None, gamma: float = 1.0,
        out: torch.Tensor | None = None) -> torch.Tensor:
    """W y from the neighbour table (idx, w) (N, D); with x: x + gamma (W y - y), into `out` (may be x)."""
    n, p = y.shape
    out = torch.empty_like(y) if out is None else out
    grid = (n, triton.cdiv(p, BLOCK))
    _mix[grid](y, idx, w, y if x is None else x, out, p, idx.shape[1], gamma, CONSENSUS=x is not None,
               BLOCK=BLOCK)
    return out


@triton.jit
def _block(start_ptr, end_ptr, seg_ptr, NB, BLOCK: tl.constexpr):
    # The (row, column block) a program of a per-segment kernel owns. Consecutive programs take consecutive
    # rows of the same block; `m` masks the columns past the block's end.
    pid = tl.program_id(0)
    n = tl.num_programs(0) // NB
    b = pid // n
    cols = tl.load(start_ptr + b) + tl.arange(0, BLOCK)
    return (pid % n).to(tl.int64), b, tl.load(seg_ptr + b), cols, cols < tl.load(end_ptr + b)


@triton.jit
def _load_r(x_ptr, h_ptr, row, cols, m, P, HAS_HAT: tl.constexpr):
    # r = x - h on the block (x alone without h), 0 past its end
    r = tl.load(x_ptr + row * P + cols, mask=m, other=0.0)
    if HAS_HAT:
        r = r - tl.load(h_ptr + row * P + cols, mask=m, other=0.0)
    return r


@triton.jit
def _segment_sums(x_ptr, h_ptr, out_ptr, start_ptr, end_ptr, seg_ptr, P, L, NB, POWER: tl.constexpr,
                  HAS_HAT: tl.constexpr, BLOCK: tl.constexpr):
    # out[row, seg] += sum over the block of |r|^POWER, r = x - h (or x)
    row, b, seg, cols, m = _block(start_ptr, end_ptr, seg_ptr, NB, BLOCK)
    r = _load_r(x_ptr, h_ptr, row, cols, m, P, HAS_HAT)
    v = r * r if POWER == 2 else tl.abs(r)
    tl.atomic_add(out_ptr + row * L + seg, tl.sum(v, axis=0))


def segment_sums(x: torch.Tensor, h: torch.Tensor | None, table, n_segments: int, power: int) -> torch.Tensor:
    """(N, L) float32: per segment, sum of (x - h)^2 (power 2) or |x - h| (power 1)."""
    n, p = x.shape
    start, end, seg = table
    out = torch.zeros(n, n_segments, dtype=torch.float32, device=x.device)
    nb = start.numel()
    _segment_sums[(n * nb,)](x, x if h is None else h, out, start, end, seg, p, n_segments, nb, POWER=power,
                             HAS_HAT=h is not None, BLOCK=SEG_BLOCK, num_warps=SEG_WARPS)
    return out


@triton.jit
def _residual(x_ptr, h_ptr, out_ptr, scale_ptr, aux_ptr, start_ptr, end_ptr, seg_ptr, P, L, NB, seed_ptr, levels,
              MODE: tl.constexpr, HAS_HAT: tl.constexpr, BLOCK: tl.constexpr):
    # q = C(r) with r = x - h (or x), then out = h + q (CHOCO: out is h, updated in place) or out = q.
    # MODE 0 identity; 1 QSGD: scale = ||r|| tau / s, aux = s / ||r||, Philox uniforms keyed by seed * 2^24 + row;
    # 2 sign: scale = ||r||_1 / d. (Top-k writes its own output: `top_k`.)
    row, b, seg, cols, m = _block(start_ptr, end_ptr, seg_ptr, NB, BLOCK)
    x = tl.load(x_ptr + row * P + cols, mask=m, other=0.0)
    h = tl.load(h_ptr + row * P + cols, mask=m, other=0.0) if HAS_HAT else tl.zeros([BLOCK], dtype=tl.float32)
    r = x - h
    if MODE == 0:
        q = r
    elif MODE == 1:
        inv = tl.load(aux_ptr + row * L + seg)  # s / ||r||, 0 for a zero segment
        scale = tl.load(scale_ptr + row * L + seg)
        scaled = tl.abs(r) * inv
        level = tl.floor(scaled)
        u = tl.rand(tl.load(seed_ptr) * 16777216 + row, cols)  # one stream per (call, agent); agents < 2^24
        level = tl.minimum(level + tl.where(u < scaled - level, 1.0, 0.0), levels * 1.0)
        sgn = tl.where(r > 0, 1.0, tl.where(r < 0, -1.0, 0.0))
        q = (sgn * level) * scale
    else:
        scale = tl.load(scale_ptr + row * L + seg)
        q = tl.where(r < 0, -1.0, 1.0) * scale
    tl.store(out_ptr + row * P + cols, h + q if HAS_HAT else q, mask=m)


def residual(x: torch.Tensor, h: torch.Tensor | None, out: torch.Tensor, mode: int, table, n_segments: int,
             scale: torch.Tensor, aux: torch.Tensor, seed: torch.Tensor | None = None, levels: int = 1) -> torch.Tensor:
    """out = h + C(x - h) (or C(x)); scale and aux as `_residual` reads them for `mode`; seed (1,) int64 on the
    device, read by QSGD alone."""
    n, p = x.shape
    start, end, seg = table
    nb = start.numel()
    seed = start if seed is None else seed  # any int64 pointer where no mode reads it
    _residual[(n * nb,)](x, x if h is None else h, out, scale, aux, start, end, seg, p, n_segments, nb, seed, levels,
                         MODE=mode, HAS_HAT=h is not None, BLOCK=SEG_BLOCK, num_warps=SEG_WARPS)
    return out


@triton.jit
def _uniform(out_ptr, P, seed_ptr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + row * P + cols, tl.rand(tl.load(seed_ptr) * 16777216 + row, cols), mask=cols < P)


def uniform(n: int, p: int, seed: torch.Tensor) -> torch.Tensor:
    """(N, P) the uniforms the QSGD kernel draws for `seed` ((1,) int64): only for checking it against the
    reference."""
    out = torch.empty(n, p, dtype=torch.float32, device=seed.device)
    _uniform[(n, triton.cdiv(p, BLOCK))](out, p, seed, BLOCK=BLOCK)
    return out


@triton.jit
def _r_bits(x_ptr, h_ptr, row, cols, m, P, HAS_HAT: tl.constexpr):
    # the float bits of |r| as int32: ordered as the magnitudes (a NaN above inf); 0 past the block's end
    return _load_r(x_ptr, h_ptr, row, cols, m, P, HAS_HAT).to(tl.int32, bitcast=True) & 0x7FFFFFFF


@triton.jit
def _sample_lo(x_ptr, h_ptr, lo_ptr, count_ptr, start_ptr, size_ptr, rank_ptr, P, L, HAS_HAT: tl.constexpr,
               S: tl.constexpr):
    # one program per (row, segment): lo = the (rank + 1)-th largest of s strided entries of |r| (bits), by
    # the radix select _select uses, on the sample held in registers; and the segment's candidate count = 0
    i = tl.program_id(0).to(tl.int64)
    row, seg = i // L, i % L
    d = tl.load(size_ptr + seg).to(tl.int64)
    s = tl.minimum(d, S)
    j = tl.arange(0, S).to(tl.int64)
    valid = j < s
    bits = _r_bits(x_ptr, h_ptr, row, tl.load(start_ptr + seg) + j * d // s, valid, P, HAS_HAT)
    remaining = tl.load(rank_ptr + seg) + 1
    prefix = remaining * 0
    prefix, remaining = _sample_pass(bits, valid, prefix, remaining, 24, 0)
    prefix, remaining = _sample_pass(bits, valid, prefix, remaining, 16, 0x7F000000)
    prefix, remaining = _sample_pass(bits, valid, prefix, remaining, 8, 0x7FFF0000)
    prefix, remaining = _sample_pass(bits, valid, prefix, remaining, 0, 0x7FFFFF00)
    tl.store(lo_ptr + i, prefix)
    tl.store(count_ptr + i, 0)


@triton.jit
def _sample_pass(bits, valid, prefix, remaining, SHIFT: tl.constexpr, HIGH: tl.constexpr):
    counts = _digit_histogram(bits, valid & ((bits & HIGH) == prefix), SHIFT)
    prefix, remaining, _ = _pick(counts, prefix, remaining, SHIFT)
    return prefix, remaining


@triton.jit
def _digit_histogram(key, match, SHIFT: tl.constexpr):
    # (256,) counts of the 8-bit digit at SHIFT of key where match. The histogram is unmasked (masked, it
    # measured 7x slower on an H100): the other lanes are counted in bin 0, then taken out of it again.
    counts = tl.histogram(tl.where(match, (key >> SHIFT) & 0xFF, 0), 256)
    return counts - tl.where(tl.arange(0, 256) == 0, tl.sum((~match).to(tl.int32), axis=0), 0)


@triton.jit
def _compact(x_ptr, h_ptr, out_ptr, lo_ptr, count_ptr, buf_ptr, idx_ptr, start_ptr, end_ptr, seg_ptr, cap_ptr,
             off_ptr, P, L, NB, CT, HAS_HAT: tl.constexpr, BLOCK: tl.constexpr):
    # Appends every r with nonzero |r| >= lo[row, seg] to the segment's candidate buffer, cap[seg] slots from
    # off[seg] in the row's CT (its float bits to buf, its column to idx); count[row, seg] ends as the number of
    # candidates, also those that did not fit. Without h it also zeroes out's block: _select then writes only
    # the kept entries.
    row, b, seg, cols, m = _block(start_ptr, end_ptr, seg_ptr, NB, BLOCK)
    r = _load_r(x_ptr, h_ptr, row, cols, m, P, HAS_HAT)
    if not HAS_HAT:
        tl.store(out_ptr + row * P + cols, tl.zeros([BLOCK], dtype=tl.float32), mask=m)
    v = r.to(tl.int32, bitcast=True)
    cand = m & ((v & 0x7FFFFFFF) >= tl.maximum(tl.load(lo_ptr + row * L + seg), 1))
    c = cand.to(tl.int32)
    total = tl.sum(c, axis=0)
    if total > 0:
        base = tl.atomic_add(count_ptr + row * L + seg, total)
        pos = base + tl.cumsum(c, axis=0) - 1
        keep = cand & (pos < tl.load(cap_ptr + seg))
        slots = row * CT + tl.load(off_ptr + seg)  # the segment's candidate buffer
        tl.store(buf_ptr + slots + pos, v, mask=keep)
        tl.store(idx_ptr + slots + pos, cols, mask=keep)


@triton.jit
def _digit_counts(x_ptr, h_ptr, buf_ptr, row, base, begin, length, found, prefix, P, HAS_HAT: tl.constexpr,
                  SHIFT: tl.constexpr, HIGH: tl.constexpr, BLOCK: tl.constexpr):
    # (256,) counts of the 8-bit digit at SHIFT among the entries whose bits above it equal `prefix`; the
    # entries are the candidate buffer's first `length` from `base` (found) or the segment's columns
    # [begin, begin+length)
    counts = tl.zeros([256], dtype=tl.int32)
    in_buf = (tl.zeros([BLOCK], dtype=tl.int32) + found) != 0  # a vector: the interpreter masks with no scalar
    for b in range(0, length, BLOCK):
        offs = b + tl.arange(0, BLOCK)
        m = offs < length
        from_buf = tl.load(buf_ptr + base + offs, mask=m & in_buf, other=0) & 0x7FFFFFFF
        from_r = _r_bits(x_ptr, h_ptr, row, begin + offs, m & ~in_buf, P, HAS_HAT)
        bits = tl.where(in_buf, from_buf, from_r)
        counts += _digit_histogram(bits, m & ((bits & HIGH) == prefix), SHIFT)
    return counts


@triton.jit
def _pick(counts, prefix, remaining, SHIFT: tl.constexpr):
    # the largest digit d with at least `remaining` entries at or above it, appended to the prefix
    bins = tl.arange(0, 256)
    above = tl.sum(counts, axis=0) - tl.cumsum(counts, axis=0) + counts  # entries with digit >= d
    digit = tl.max(tl.where(above >= remaining, bins, -1), axis=0)
    remaining -= tl.sum(tl.where(bins > digit, counts, 0), axis=0)
    ties = tl.sum(tl.where(bins == digit, counts, 0), axis=0)
    return prefix | (digit << SHIFT), remaining, ties


@triton.jit
def _tie_counts(buf_ptr, idx_ptr, base, count, tau, prefix, SHIFT: tl.constexpr, HIGH: tl.constexpr,
                BLOCK: tl.constexpr):
    # (256,) counts of the 8-bit digit at SHIFT of the key ~column (31 bits: the larger, the earlier the
    # column) among the buffered entries equal to tau whose key bits above SHIFT equal `prefix`
    counts = tl.zeros([256], dtype=tl.int32)
    for b in range(0, count, BLOCK):
        offs = b + tl.arange(0, BLOCK)
        m = offs < count
        v = tl.load(buf_ptr + base + offs, mask=m, other=0) & 0x7FFFFFFF
        key = ~tl.load(idx_ptr + base + offs, mask=m, other=0) & 0x7FFFFFFF
        counts += _digit_histogram(key, m & (v == tau) & ((key & HIGH) == prefix), SHIFT)
    return counts


@triton.jit
def _select(x_ptr, h_ptr, out_ptr, lo_ptr, count_ptr, buf_ptr, idx_ptr, path_ptr, start_ptr, end_ptr,
            seg_start_ptr, size_ptr, k_ptr, first_ptr, nblocks_ptr, cap_ptr, off_ptr, P, L, CT, HAS_HAT: tl.constexpr,
            BLOCK: tl.constexpr):
    # One program per (row, segment): the exact k-th largest |r| by a radix select on its float bits, 8 bits
    # a pass, over the candidate buffer when it holds the k-th largest, else over the whole segment. When
    # lo = 0 the buffer holds the nonzeros: at least k of them hold the k-th largest; fewer put it at 0.
    # Then it writes the segment's C(r): out = C(r), or h += C(r) in place.
    i = tl.program_id(0).to(tl.int64)
    row, seg = i // L, i % L
    k = tl.load(k_ptr + seg)
    d = tl.load(size_ptr + seg)
    count = tl.load(count_ptr + i)
    base = row * CT + tl.load(off_ptr + seg)  # the segment's candidate buffer
    found = ((count >= k) & (count <= tl.load(cap_ptr + seg))).to(tl.int32)
    zero = (count < k) & (tl.load(lo_ptr + i) == 0)  # fewer than k nonzeros, all of them candidates
    begin = tl.load(seg_start_ptr + seg).to(tl.int64)
    length = tl.where(found != 0, count, tl.where(zero, 0, d))
    prefix, remaining = k * 0, k
    counts = _digit_counts(x_ptr, h_ptr, buf_ptr, row, base, begin, length, found, prefix, P, HAS_HAT, 24, 0,
                           BLOCK)
    prefix, remaining, ties = _pick(counts, prefix, remaining, 24)
    counts = _digit_counts(x_ptr, h_ptr, buf_ptr, row, base, begin, length, found, prefix, P, HAS_HAT, 16,
                           0x7F000000, BLOCK)
    prefix, remaining, ties = _pick(counts, prefix, remaining, 16)
    counts = _digit_counts(x_ptr, h_ptr, buf_ptr, row, base, begin, length, found, prefix, P, HAS_HAT, 8,
                           0x7FFF0000, BLOCK)
    prefix, remaining, ties = _pick(counts, prefix, remaining, 8)
    counts = _digit_counts(x_ptr, h_ptr, buf_ptr, row, base, begin, length, found, prefix, P, HAS_HAT, 0,
                           0x7FFFFF00, BLOCK)
    tau, room, ties = _pick(counts, prefix, remaining, 0)  # ties: entries equal to tau, room of them kept
    tau = tl.where(zero, 0, tau)
    # Sparse write, when the buffer holds every entry to keep (a zero threshold keeps the nonzeros and some
    # zeros, and writing a kept zero changes nothing): only those entries; out was zeroed by _compact. Of the
    # entries equal to tau, those with key ~column >= cut are kept: all of them (cut 0), or when only `room`
    # are, a radix select over the buffered ties' keys finds the room-th earliest column. (Two equal floats
    # at the threshold are common: 256 rows of 270k Gaussians had such a pair in 4 calls out of 60.)
    sparse = (found != 0) | zero
    tl.store(path_ptr + i, sparse.to(tl.int32))
    if sparse:
        cut = k * 0
        if (found != 0) & (ties != room):
            counts = _tie_counts(buf_ptr, idx_ptr, base, count, tau, cut, 24, 0, BLOCK)
            cut, room, _ = _pick(counts, cut, room, 24)
            counts = _tie_counts(buf_ptr, idx_ptr, base, count, tau, cut, 16, 0x7F000000, BLOCK)
            cut, room, _ = _pick(counts, cut, room, 16)
            counts = _tie_counts(buf_ptr, idx_ptr, base, count, tau, cut, 8, 0x7FFF0000, BLOCK)
            cut, room, _ = _pick(counts, cut, room, 8)
            counts = _tie_counts(buf_ptr, idx_ptr, base, count, tau, cut, 0, 0x7FFFFF00, BLOCK)
            cut, room, _ = _pick(counts, cut, room, 0)
        for b in range(0, count, BLOCK):
            offs = b + tl.arange(0, BLOCK)
            v = tl.load(buf_ptr + base + offs, mask=offs < count, other=0)
            col = tl.load(idx_ptr + base + offs, mask=offs < count, other=0)
            bits = v & 0x7FFFFFFF
            keep = (offs < count) & ((bits > tau) | ((bits == tau) & ((~col & 0x7FFFFFFF) >= cut)))
            at = row * P + col
            r = v.to(tl.float32, bitcast=True)
            if HAS_HAT:
                tl.store(h_ptr + at, tl.load(h_ptr + at, mask=keep, other=0.0) + r, mask=keep)
            else:
                tl.store(out_ptr + at, r, mask=keep)
    else:  # dense write of the whole segment; of the entries equal to tau, the first `room` in index order
        before = k * 0  # ties in the blocks already written
        first = tl.load(first_ptr + seg)
        for b in range(first, first + tl.load(nblocks_ptr + seg)):
            cols = tl.load(start_ptr + b) + tl.arange(0, BLOCK)
            m = cols < tl.load(end_ptr + b)
            x = tl.load(x_ptr + row * P + cols, mask=m, other=0.0)
            h = tl.load(h_ptr + row * P + cols, mask=m, other=0.0) if HAS_HAT else tl.zeros([BLOCK], dtype=tl.float32)
            r = x - h
            bits = r.to(tl.int32, bitcast=True) & 0x7FFFFFFF
            tie = (bits == tau) & m
            keep = (bits > tau) | (tie & (before + tl.cumsum(tie.to(tl.int32), axis=0) <= room))
            before += tl.sum(tie.to(tl.int32), axis=0)
            q = tl.where(keep, r, 0.0)
            tl.store(out_ptr + row * P + cols, h + q if HAS_HAT else q, mask=m)


SAMPLE = 2048  # entries a segment's threshold is first estimated from (a power of 2)


@functools.lru_cache(maxsize=64)
def _plan(sizes: tuple[int, ...], ks: tuple[int, ...], device: torch.device, sample: int, block: int):
    """Per segment (each (L,) int32 on the device): its first column, size, k, the sample rank whose value
    brackets the k-th largest from below, its first block and number of blocks, its candidate buffer's size
    and offset in a row's; and a row's candidate buffer size CT (the sum: a buffer of the largest segment's
    size for each would be several times r for a model of one big layer and many small ones) and the
    sample's size S (a power of 2)."""
    ranks, caps = [], []
    for d, k in zip(sizes, ks):
        s = min(d, sample)
        if s == d:  # the whole segment: lo is the exact k-th largest, every candidate fits
            ranks.append(k - 1)
            caps.append(d)
        else:
            # The sampled entries >= the k-th largest are ~Binomial(s, k/d): with rank r six standard
            # deviations above their mean, lo is below the k-th largest (at least k candidates) but for odds
            # of ~1e-9. The buffer likewise holds the d m / s largest, m six deviations above r. A segment
            # that misses costs its row a slow radix select over the segment, and a launch waits for its
            # slowest row: the odds must be small for every row of every call, not on average.
            q = k / d
            r = min(s, math.ceil(q * s + 6 * math.sqrt(q * s * (1 - q)) + 1))
            m = (3 + math.sqrt(9 + r)) ** 2  # m - 6 sqrt(m) = r
            ranks.append(r - 1)
            caps.append(min(d, math.ceil(m / s * d) + 64))
    counts = [-(-d // block) for d in sizes]
    starts, firsts = [0, *itertools.accumulate(sizes)][:-1], [0, *itertools.accumulate(counts)][:-1]
    offsets = [0, *itertools.accumulate(caps)][:-1]
    per_segment = torch.tensor([starts, list(sizes), list(ks), ranks, firsts, counts, caps, offsets],
                               dtype=torch.int32, device=device)
    return (*per_segment, sum(caps), min(sample, triton.next_power_of_2(max(sizes))))


def top_k(x: torch.Tensor, h: torch.Tensor | None, out: torch.Tensor, table, ks: tuple[int, ...],
          sizes: tuple[int, ...]) -> torch.Tensor:
    """out = C(r) (h None) or h += C(r) (out is h) for top-k of each segment of r = x - h (or x), in three
    launches and no host synchronization; `table` is `blocks(sizes, TOPK_BLOCK)`. Returns path (N, L) int32:
    1 where the segment was written from the candidate buffer (the common case), 0 where it took the dense
    write.

    Common case, one read of r: a strided sample gives a value lo just below the k-th largest (_sample_lo);
    one pass gathers every entry >= lo into a buffer of a few percent of r (_compact, which also zeroes out);
    a radix select on that buffer finds the threshold, and the kept entries are written from the buffer
    (_select). CHOCO's x_hat is thus read once and written only where it changes. A segment with fewer than
    k nonzeros (its sample's lo is 0) has threshold 0. Where lo missed (fewer than k candidates, or more
    than fit: odds of ~1e-9 a segment for data in random order), _select runs the radix select over that
    whole segment and writes all of it: exact, but one program reads the segment five times, so a segment
    of millions whose sample misses costs milliseconds.
    """
    n, p = x.shape
    start, end, seg = table
    nb, L = start.numel(), len(sizes)
    hh = x if h is None else h
    seg_start, size, k, rank, first, nblocks, cap, off, CT, S = _plan(sizes, ks, x.device, SAMPLE, TOPK_BLOCK)
    state = torch.empty(3, n, L, dtype=torch.int32, device=x.device)  # lo, candidate count, path
    _sample_lo[(n * L,)](x, hh, state[0], state[1], seg_start, size, rank, p, L, HAS_HAT=h is not None, S=S)
    buf = torch.empty(2, n, CT, dtype=torch.int32, device=x.device)  # the candidates' float bits, columns
    _compact[(n * nb,)](x, hh, out, state[0], state[1], buf[0], buf[1], start, end, seg, cap, off, p, L, nb, CT,
                        HAS_HAT=h is not None, BLOCK=TOPK_BLOCK, num_warps=TOPK_WARPS)
    _select[(n * L,)](x, hh, out, state[0], state[1], buf[0], buf[1], state[2], start, end, seg_start, size, k,
                      first, nblocks, cap, off, p, L, CT, HAS_HAT=h is not None, BLOCK=TOPK_BLOCK,
                      num_warps=TOPK_WARPS)
    return state[2]
