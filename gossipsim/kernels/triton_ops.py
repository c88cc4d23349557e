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


def blocks(sizes: tuple[int, ...], device, block: int | None = None) -> tuple[torch.Tensor, ...]:
    """(start, end, segment, first) int32 of each column block: a block lies inside one segment, and `first`
    is the index of its segment's first block."""
    block = block or SEG_BLOCK
    start, ends, segs, first, s0 = [], [], [], [], 0
    for i, d in enumerate(sizes):
        f = len(start)
        for a in range(s0, s0 + d, block):
            start.append(a)
            ends.append(min(a + block, s0 + d))
            segs.append(i)
            first.append(f)
        s0 += d
    t = torch.tensor([start, ends, segs, first], dtype=torch.int32, device=device)
    return t[0], t[1], t[2], t[3]


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
    start, end, seg, _ = table
    out = torch.zeros(n, n_segments, dtype=torch.float32, device=x.device)
    nb = start.numel()
    _segment_sums[(n * nb,)](x, x if h is None else h, out, start, end, seg, p, n_segments, nb, POWER=power,
                             HAS_HAT=h is not None, BLOCK=SEG_BLOCK, num_warps=SEG_WARPS)
    return out


@triton.jit(do_not_specialize=["seed"])  # a fresh seed a call: one compiled kernel, not one per seed's kind
def _residual(x_ptr, h_ptr, out_ptr, scale_ptr, aux_ptr, start_ptr, end_ptr, seg_ptr, first_ptr, P, L, NB, seed,
              levels,
              MODE: tl.constexpr, HAS_HAT: tl.constexpr, BLOCK: tl.constexpr):
    # q = C(r) with r = x - h (or x), then out = h + q (CHOCO: out is h, updated in place) or out = q.
    # MODE 0 identity; 1 QSGD: scale = ||r|| tau / s, aux = s / ||r||, Philox uniforms keyed by seed * 2^24 + row;
    # 2 sign: scale = ||r||_1 / d; 3 top-k: aux holds the threshold's bits and the ties to keep (-1: all),
    # scale the number of ties in the segment's blocks before this one (see topk_select).
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
        u = tl.rand(seed * 16777216 + row, cols)  # one stream per (call, agent); agents < 2^24
        level = tl.minimum(level + tl.where(u < scaled - level, 1.0, 0.0), levels * 1.0)
        sgn = tl.where(r > 0, 1.0, tl.where(r < 0, -1.0, 0.0))
        q = (sgn * level) * scale
    elif MODE == 2:
        scale = tl.load(scale_ptr + row * L + seg)
        q = tl.where(r < 0, -1.0, 1.0) * scale
    else:
        tau = tl.load(aux_ptr + (row * L + seg) * 2)
        room = tl.load(aux_ptr + (row * L + seg) * 2 + 1)
        bits = r.to(tl.int32, bitcast=True) & 0x7FFFFFFF
        if room < 0:  # every entry equal to tau is kept
            keep = bits >= tau
        else:  # the first `room` of them in index order
            tie = (bits == tau) & m
            before = tl.load(scale_ptr + row * NB + b)  # ties in the segment's earlier blocks
            rank = before + tl.cumsum(tie.to(tl.int32), axis=0) - 1
            keep = (bits > tau) | (tie & (rank < room))
        q = tl.where(keep, r, 0.0)
    tl.store(out_ptr + row * P + cols, h + q if HAS_HAT else q, mask=m)


def residual(x: torch.Tensor, h: torch.Tensor | None, out: torch.Tensor, mode: int, table, n_segments: int,
             scale: torch.Tensor, aux: torch.Tensor, seed: int = 0, levels: int = 1) -> torch.Tensor:
    """out = h + C(x - h) (or C(x)); scale and aux as `_residual` reads them for `mode`."""
    n, p = x.shape
    start, end, seg, first = table
    nb = start.numel()
    _residual[(n * nb,)](x, x if h is None else h, out, scale, aux, start, end, seg, first, p, n_segments, nb, seed,
                         levels, MODE=mode, HAS_HAT=h is not None, BLOCK=SEG_BLOCK, num_warps=SEG_WARPS)
    return out


@triton.jit(do_not_specialize=["seed"])
def _uniform(out_ptr, P, seed, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + row * P + cols, tl.rand(seed * 16777216 + row, cols), mask=cols < P)


def uniform(n: int, p: int, seed: int, device) -> torch.Tensor:
    """(N, P) the uniforms the QSGD kernel draws for `seed`: only for checking it against the reference."""
    out = torch.empty(n, p, dtype=torch.float32, device=device)
    _uniform[(n, triton.cdiv(p, BLOCK))](out, p, seed, BLOCK=BLOCK)
    return out


@triton.jit
def _r_bits(x_ptr, h_ptr, row, cols, m, P, HAS_HAT: tl.constexpr):
    # the float bits of |r| as int32: ordered as the magnitudes (a NaN above inf); 0 past the block's end
    return _load_r(x_ptr, h_ptr, row, cols, m, P, HAS_HAT).to(tl.int32, bitcast=True) & 0x7FFFFFFF


@triton.jit
def _sample_lo(x_ptr, h_ptr, lo_ptr, start_ptr, size_ptr, rank_ptr, P, L, HAS_HAT: tl.constexpr, S: tl.constexpr):
    # one program per (row, segment): lo = the (rank + 1)-th largest of s strided entries of |r| (bits), by
    # the radix select _select uses, on the sample held in registers
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


@triton.jit
def _sample_pass(bits, valid, prefix, remaining, SHIFT: tl.constexpr, HIGH: tl.constexpr):
    match = valid & ((bits & HIGH) == prefix)
    counts = tl.histogram(tl.where(match, (bits >> SHIFT) & 0xFF, 0), 256)
    counts -= tl.where(tl.arange(0, 256) == 0, tl.sum((~match).to(tl.int32), axis=0), 0)
    prefix, remaining, _ = _pick(counts, prefix, remaining, SHIFT)
    return prefix, remaining


@triton.jit
def _compact(x_ptr, h_ptr, lo_ptr, count_ptr, buf_ptr, start_ptr, end_ptr, seg_ptr, P, L, NB, C,
             HAS_HAT: tl.constexpr, BLOCK: tl.constexpr):
    # Appends the bits of every nonzero |r| >= lo[row, seg] to the segment's candidate buffer of C slots;
    # count[row, seg] ends as the number of candidates, also those that did not fit.
    row, b, seg, cols, m = _block(start_ptr, end_ptr, seg_ptr, NB, BLOCK)
    bits = _r_bits(x_ptr, h_ptr, row, cols, m, P, HAS_HAT)
    cand = m & (bits >= tl.maximum(tl.load(lo_ptr + row * L + seg), 1))
    c = cand.to(tl.int32)
    total = tl.sum(c, axis=0)
    if total > 0:
        base = tl.atomic_add(count_ptr + row * L + seg, total)
        pos = base + tl.cumsum(c, axis=0) - 1
        keep = cand & (pos < C)
        tl.store(buf_ptr + (row * L + seg) * C + pos, bits, mask=keep)


@triton.jit
def _digit_counts(x_ptr, h_ptr, buf_ptr, row, i, begin, length, found, prefix, P, C, HAS_HAT: tl.constexpr,
                  SHIFT: tl.constexpr, HIGH: tl.constexpr, BLOCK: tl.constexpr):
    # (256,) counts of the 8-bit digit at SHIFT among the entries whose bits above it equal `prefix`; the
    # entries are the candidate buffer's first `length` (found) or the segment's columns [begin, begin+length)
    bins = tl.arange(0, 256)
    counts = tl.zeros([256], dtype=tl.int32)
    in_buf = (tl.zeros([BLOCK], dtype=tl.int32) + found) != 0  # a vector: the interpreter masks with no scalar
    for b in range(0, length, BLOCK):
        offs = b + tl.arange(0, BLOCK)
        m = offs < length
        from_buf = tl.load(buf_ptr + i * C + offs, mask=m & in_buf, other=0)
        from_r = _r_bits(x_ptr, h_ptr, row, begin + offs, m & ~in_buf, P, HAS_HAT)
        bits = tl.where(in_buf, from_buf, from_r)
        match = m & ((bits & HIGH) == prefix)
        # entries off the prefix (and masked lanes) are counted in bin 0, then taken out of it again
        block = tl.histogram(tl.where(match, (bits >> SHIFT) & 0xFF, 0), 256)
        counts += block - tl.where(bins == 0, BLOCK - tl.sum(match.to(tl.int32), axis=0), 0)
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
def _select(x_ptr, h_ptr, lo_ptr, count_ptr, buf_ptr, aux_ptr, before_ptr, start_ptr, end_ptr, seg_start_ptr,
            size_ptr, k_ptr, first_ptr, nblocks_ptr, P, L, NB, C, HAS_HAT: tl.constexpr, BLOCK: tl.constexpr):
    # One program per (row, segment): the exact k-th largest |r| by a radix select on its float bits, 8 bits
    # a pass, over the candidate buffer when it holds the k-th largest, else over the whole segment. When
    # lo = 0 the buffer holds the nonzeros: at least k of them hold the k-th largest; fewer put it at 0.
    i = tl.program_id(0).to(tl.int64)
    row, seg = i // L, i % L
    k = tl.load(k_ptr + seg)
    d = tl.load(size_ptr + seg)
    count = tl.load(count_ptr + i)
    found = ((count >= k) & (count <= C)).to(tl.int32)
    zero = (count < k) & (tl.load(lo_ptr + i) == 0)  # fewer than k nonzeros, all of them candidates
    begin = tl.load(seg_start_ptr + seg).to(tl.int64)
    length = tl.where(found != 0, count, tl.where(zero, 0, d))
    prefix, remaining = k * 0, k
    counts = _digit_counts(x_ptr, h_ptr, buf_ptr, row, i, begin, length, found, prefix, P, C, HAS_HAT, 24, 0,
                           BLOCK)
    prefix, remaining, ties = _pick(counts, prefix, remaining, 24)
    counts = _digit_counts(x_ptr, h_ptr, buf_ptr, row, i, begin, length, found, prefix, P, C, HAS_HAT, 16,
                           0x7F000000, BLOCK)
    prefix, remaining, ties = _pick(counts, prefix, remaining, 16)
    counts = _digit_counts(x_ptr, h_ptr, buf_ptr, row, i, begin, length, found, prefix, P, C, HAS_HAT, 8,
                           0x7FFF0000, BLOCK)
    prefix, remaining, ties = _pick(counts, prefix, remaining, 8)
    counts = _digit_counts(x_ptr, h_ptr, buf_ptr, row, i, begin, length, found, prefix, P, C, HAS_HAT, 0,
                           0x7FFFFF00, BLOCK)
    tau, room, ties = _pick(counts, prefix, remaining, 0)  # ties: entries equal to tau, room of them kept
    tau = tl.where(zero, 0, tau)
    room = tl.where(zero, k - count, room)
    ties = tl.where(zero, d - count, ties)
    tl.store(aux_ptr + i * 2, tau)
    tl.store(aux_ptr + i * 2 + 1, tl.where(ties == room, -1, room))  # -1: every tie kept, order irrelevant
    if ties != room:
        # ties in each of the segment's blocks before it, so that `_residual` keeps the lowest indices
        before = k * 0
        first = tl.load(first_ptr + seg)
        for b in range(first, first + tl.load(nblocks_ptr + seg)):
            cols = tl.load(start_ptr + b) + tl.arange(0, BLOCK)
            m = cols < tl.load(end_ptr + b)
            tl.store(before_ptr + row * NB + b, before)
            before += tl.sum(((_r_bits(x_ptr, h_ptr, row, cols, m, P, HAS_HAT) == tau) & m).to(tl.int32), axis=0)


SAMPLE = 2048  # entries a segment's threshold is first estimated from (a power of 2)


@functools.lru_cache(maxsize=64)
def _plan(sizes: tuple[int, ...], ks: tuple[int, ...], device: torch.device, sample: int, block: int):
    """Per segment (each (L,) int32 on the device): its first column, size, k, the sample rank whose value
    brackets the k-th largest from below, its first block and number of blocks; and the candidate buffer's
    size C (one for all segments) and the sample's size S (a power of 2)."""
    ranks, caps = [], []
    for d, k in zip(sizes, ks):
        s = min(d, sample)
        if s == d:  # the whole segment: lo is the exact k-th largest, every candidate fits
            ranks.append(k - 1)
            caps.append(d)
        else:  # 4 standard deviations of the sample count above the k-th largest, and some slack
            q = k / d
            mean = q * s
            r = min(s, math.ceil(mean + 4 * math.sqrt(mean * (1 - q)) + 4))
            ranks.append(r - 1)
            caps.append(min(d, math.ceil(1.5 * r / s * d) + 64))
    counts = [-(-d // block) for d in sizes]
    starts, firsts = [0, *itertools.accumulate(sizes)][:-1], [0, *itertools.accumulate(counts)][:-1]
    per_segment = torch.tensor([starts, list(sizes), list(ks), ranks, firsts, counts], dtype=torch.int32,
                               device=device)
    return (*per_segment, max(caps), min(sample, triton.next_power_of_2(max(sizes))))


def topk_select(x: torch.Tensor, h: torch.Tensor | None, table, ks: tuple[int, ...],
                sizes: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each segment's k-th largest |r| (r = x - h) and the ties to keep, for `residual` mode 3, in three
    launches and no host synchronization: aux (N, L, 2) int32 (the threshold's float bits; the ties equal to
    it to keep, -1 for all of them) and before (N, NB) int32 (ties in the segment's blocks before each block,
    written only where some ties are dropped).

    Common case, one read of r: a strided sample gives a value lo just below the k-th largest (_sample_lo);
    one pass gathers every entry >= lo into a buffer of a few percent of r (_compact), and a radix select on
    that buffer finds the threshold (_select). A segment with fewer than k nonzeros (its sample's lo is 0)
    has threshold 0. Where lo missed (fewer than k candidates, or more than fit), _select runs the radix
    select over that whole segment instead: exact, but one program reads the segment four times, so a
    segment of millions whose sample misses costs milliseconds.
    """
    n, p = x.shape
    start, end, seg, _ = table
    nb, L = start.numel(), len(sizes)
    hh = x if h is None else h
    seg_start, size, k, rank, first, nblocks, C, S = _plan(sizes, ks, x.device, SAMPLE, SEG_BLOCK)
    lo = torch.empty(n, L, dtype=torch.int32, device=x.device)
    _sample_lo[(n * L,)](x, hh, lo, seg_start, size, rank, p, L, HAS_HAT=h is not None, S=S)
    count = torch.zeros(n, L, dtype=torch.int32, device=x.device)
    buf = torch.empty(n, L, C, dtype=torch.int32, device=x.device)
    _compact[(n * nb,)](x, hh, lo, count, buf, start, end, seg, p, L, nb, C, HAS_HAT=h is not None,
                        BLOCK=SEG_BLOCK, num_warps=SEG_WARPS)
    aux = torch.empty(n, L, 2, dtype=torch.int32, device=x.device)
    before = torch.empty(n, nb, dtype=torch.int32, device=x.device)
    _select[(n * L,)](x, hh, lo, count, buf, aux, before, start, end, seg_start, size, k, first, nblocks, p, L,
                      nb, C, HAS_HAT=h is not None, BLOCK=SEG_BLOCK, num_warps=SEG_WARPS)
    return aux, before
