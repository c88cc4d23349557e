"""Triton kernels for CUDA (and for the CPU under TRITON_INTERPRET=1, which is how CI tests them).

Launchers take float32 (N, P) tensors and the segment block table of `blocks(sizes)`: every kernel that
works per segment runs one program per (row, block), blocks never straddling two segments, so a partial
sum goes to its segment with one atomic add. Grids put rows on axis 0 so that programs running together
share column blocks: neighbour rows re-read by gossip then come from L2, not memory.
Each launcher's pure-torch twin is in ops.py; tests/test_kernels.py checks they agree at odd shapes.
"""
from __future__ import annotations

import functools
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


@triton.jit
def _residual(x_ptr, h_ptr, out_ptr, scale_ptr, aux_ptr, start_ptr, end_ptr, seg_ptr, first_ptr, P, L, NB, seed,
              levels,
              MODE: tl.constexpr, HAS_HAT: tl.constexpr, BLOCK: tl.constexpr):
    # q = C(r) with r = x - h (or x), then out = h + q (CHOCO: out is h, updated in place) or out = q.
    # MODE 0 identity; 1 QSGD: scale = ||r|| tau / s, aux = s / ||r||, Philox uniforms keyed by seed * 2^24 + row;
    # 2 sign: scale = ||r||_1 / d; 3 top-k: aux holds the threshold's bits and the ties to keep, scale the
    # number of ties in the segment's blocks before this one (see topk_select).
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


@triton.jit
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
def _radix_histogram(x_ptr, h_ptr, hist_ptr, prefix_ptr, skip_ptr, start_ptr, end_ptr, seg_ptr, P, L, NB, shift,
                     high_mask, HAS_HAT: tl.constexpr, BLOCK: tl.constexpr):
    # hist[row, seg, digit] += count of entries whose |r| bits match the prefix found so far on the bits above
    # `shift`, by their 8-bit digit at `shift`. Segments whose threshold is already known (skip) read nothing.
    row, b, seg, cols, m = _block(start_ptr, end_ptr, seg_ptr, NB, BLOCK)
    if tl.load(skip_ptr + row * L + seg) == 0:
        bits = _load_r(x_ptr, h_ptr, row, cols, m, P, HAS_HAT).to(tl.int32, bitcast=True) & 0x7FFFFFFF
        prefix = tl.load(prefix_ptr + row * L + seg)
        match = m & ((bits & high_mask) == prefix)
        # entries off the prefix (and masked lanes) are counted in bin 0, then taken out of it again
        counts = tl.histogram(tl.where(match, (bits >> shift) & 0xFF, 0), 256)
        bins = tl.arange(0, 256)
        counts -= tl.where(bins == 0, BLOCK - tl.sum(match.to(tl.int32), axis=0), 0)
        # after the first pass few entries still match: add only the bins that count, not all 256
        tl.atomic_add(hist_ptr + (row * L + seg) * 256 + bins, counts, mask=counts > 0)


@triton.jit
def _tie_counts(x_ptr, h_ptr, out_ptr, aux_ptr, skip_ptr, start_ptr, end_ptr, seg_ptr, P, L, NB,
                HAS_HAT: tl.constexpr, BLOCK: tl.constexpr):
    row, b, seg, cols, m = _block(start_ptr, end_ptr, seg_ptr, NB, BLOCK)
    count = 0
    if tl.load(skip_ptr + row * L + seg) == 0:
        bits = _load_r(x_ptr, h_ptr, row, cols, m, P, HAS_HAT).to(tl.int32, bitcast=True) & 0x7FFFFFFF
        tau = tl.load(aux_ptr + (row * L + seg) * 2)
        count = tl.sum(((bits == tau) & m).to(tl.int32), axis=0)
    tl.store(out_ptr + row * NB + b, count)


@triton.jit
def _compact(x_ptr, h_ptr, lo_ptr, count_ptr, buf_ptr, start_ptr, end_ptr, seg_ptr, P, L, NB, C,
             HAS_HAT: tl.constexpr, BLOCK: tl.constexpr):
    # Appends the bits of every |r| >= lo[row, seg] to the segment's candidate buffer of C slots;
    # count[row, seg] ends as the number of candidates, also those that did not fit.
    row, b, seg, cols, m = _block(start_ptr, end_ptr, seg_ptr, NB, BLOCK)
    bits = _load_r(x_ptr, h_ptr, row, cols, m, P, HAS_HAT).to(tl.int32, bitcast=True) & 0x7FFFFFFF
    cand = m & (bits >= tl.load(lo_ptr + row * L + seg))
    c = cand.to(tl.int32)
    total = tl.sum(c, axis=0)
    if total > 0:
        base = tl.atomic_add(count_ptr + row * L + seg, total)
        pos = base + tl.cumsum(c, axis=0) - 1
        keep = cand & (pos < C)
        tl.store(buf_ptr + (row * L + seg) * C + pos, bits, mask=keep)


@triton.jit
def _radix_pick(hist_ptr, prefix_ptr, remaining_ptr, skip_ptr, shift):
    # one program per (row, segment): the largest digit d with at least `remaining` entries at or above it
    i = tl.program_id(0).to(tl.int64)
    if tl.load(skip_ptr + i) == 0:
        bins = tl.arange(0, 256)
        counts = tl.load(hist_ptr + i * 256 + bins)
        above = tl.sum(counts, axis=0) - tl.cumsum(counts, axis=0) + counts  # entries with digit >= d
        rem = tl.load(remaining_ptr + i)
        digit = tl.max(tl.where(above >= rem, bins, -1), axis=0)
        tl.store(remaining_ptr + i, rem - tl.sum(tl.where(bins > digit, counts, 0), axis=0))
        tl.store(prefix_ptr + i, tl.load(prefix_ptr + i) | (digit << shift))


SAMPLE = 2048  # entries a segment's threshold is first estimated from


@functools.lru_cache(maxsize=64)
def _sample_plan(sizes: tuple[int, ...], ks: tuple[int, ...], device: torch.device, sample: int, block: int):
    """Per segment: strided sample columns (L, S) with a validity mask, the sample rank whose value brackets
    the k-th largest from below (lo), the candidate buffer's size C (one for all segments), k (1, L), and the
    block table of the buffer seen as rows of L segments of C."""
    L = len(sizes)
    S = min(max(sizes), sample)
    cols = torch.zeros(L, S, dtype=torch.int64)
    valid = torch.zeros(L, S, dtype=torch.bool)
    ranks, caps, start = [], [], 0
    for i, (d, k) in enumerate(zip(sizes, ks)):
        s = min(d, sample)
        cols[i, :s] = start + torch.arange(s) * d // s
        valid[i, :s] = True
        if s == d:  # the whole segment: lo is the exact k-th largest, every candidate fits
            ranks.append(k)
            caps.append(d)
        else:  # 4 standard deviations of the sample count above the k-th largest, and some slack
            q = k / d
            mean = q * s
            r = min(s, math.ceil(mean + 4 * math.sqrt(mean * (1 - q)) + 4))
            ranks.append(r)
            caps.append(min(d, math.ceil(1.5 * r / s * d) + 64))
        start += d
    C = max(caps)
    return (cols.to(device), valid.to(device), torch.tensor(ranks, device=device).view(1, L, 1) - 1, C,
            torch.tensor(ks, device=device).view(1, L), blocks((C,) * L, device, block))


def _radix(x: torch.Tensor, h: torch.Tensor | None, table, nseg: int, skip: torch.Tensor, remaining: torch.Tensor):
    """Radix select on the float bits of |r|, 8 bits a pass, for each (row, segment) not skipped.

    `remaining` (N, L) int32 enters as k and leaves as the ties to keep; returns the threshold's bits (N, L)
    and the last pass's histogram (N, L, 256)."""
    n, p = x.shape
    start, end, seg, _ = table
    nb = start.numel()
    prefix = torch.zeros(n, nseg, dtype=torch.int32, device=x.device)
    hists = torch.zeros(4, n, nseg, 256, dtype=torch.int32, device=x.device)
    high = 0
    for hist, shift in zip(hists, (24, 16, 8, 0)):
        _radix_histogram[(n * nb,)](x, x if h is None else h, hist, prefix, skip, start, end, seg, p, nseg, nb,
                                    shift, high, HAS_HAT=h is not None, BLOCK=SEG_BLOCK, num_warps=SEG_WARPS)
        _radix_pick[(n * nseg,)](hist, prefix, remaining, skip, shift)
        high = high | (0xFF << shift)
        if high >= 2**31:
            high -= 2**32  # keep the mask an int32
    return prefix, hists[3]


def topk_select(x: torch.Tensor, h: torch.Tensor | None, table, ks: tuple[int, ...],
                sizes: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each segment's k-th largest |r| (r = x - h) and the ties to keep, for `residual` mode 3, with no host
    synchronization: aux (N, L, 2) int32 (the threshold's float bits, ties equal to it to keep) and
    (N, NB) int32 (ties in the segment's blocks before each block).

    Common case, one read of r: a strided sample gives a value lo just below the k-th largest; one pass
    gathers every entry >= lo into a buffer of a few percent of r, and a radix select on that buffer finds
    the threshold. Where lo missed (fewer than k candidates, more than fit, or lo = 0), the same launches
    run the radix select over the whole of r for those segments alone; the others skip it. Where ties at
    the threshold must be split, one more read counts them by block.
    """
    n, p = x.shape
    start, end, seg, first = table
    nb, L = start.numel(), len(sizes)
    dev = x.device
    hh = x if h is None else h
    cols, valid, rank, C, kk, buf_table = _sample_plan(sizes, ks, dev, SAMPLE, SEG_BLOCK)

    # 1. lo from the sample (N, L, S): bits of |r|, -1 where a short segment has no sample
    sample = x[:, cols] if h is None else x[:, cols] - h[:, cols]
    sbits = torch.where(valid, sample.abs().view(torch.int32), -1)
    lo = sbits.sort(dim=2, descending=True).values.gather(2, rank.expand(n, L, 1)).squeeze(2).contiguous()

    # 2. every entry >= lo into the buffer (N, L, C), unused slots +0.0; the exact threshold among them
    count = torch.zeros(n, L, dtype=torch.int32, device=dev)
    buf = torch.zeros(n, L, C, dtype=torch.int32, device=dev)
    _compact[(n * nb,)](x, hh, lo, count, buf, start, end, seg, p, L, nb, C, HAS_HAT=h is not None,
                        BLOCK=SEG_BLOCK, num_warps=SEG_WARPS)
    room = kk.expand(n, L).to(torch.int32).contiguous()
    tau, last = _radix(buf.view(n, L * C).view(torch.float32), None, buf_table, L, torch.zeros_like(room), room)
    ties = last.gather(2, (tau & 0xFF).long().unsqueeze(2)).squeeze(2)  # candidates equal to tau
    found = (count >= kk) & (count <= C) & (lo > 0)  # the buffer held the k-th largest: tau is exact

    # 3. the radix select over r, for the segments step 2 could not settle (the others skip every pass)
    remaining = kk.expand(n, L).to(torch.int32).contiguous()
    prefix, _ = _radix(x, h, table, L, found.to(torch.int32), remaining)
    aux = torch.where(found.unsqueeze(2), torch.stack([tau, room], 2), torch.stack([prefix, remaining], 2))
    aux = aux.contiguous()

    # 4. where only some of the entries equal to the threshold are kept (ties are common at large d: two of
    # 10M float32 values share their bits), count them by block, so that the lowest indices win
    simple = found & (ties == room)  # every tie kept: their order does not matter
    per_block = torch.empty(n, nb, dtype=torch.int32, device=dev)
    _tie_counts[(n * nb,)](x, hh, per_block, aux, simple.to(torch.int32), start, end, seg, p, L, nb,
                           HAS_HAT=h is not None, BLOCK=SEG_BLOCK, num_warps=SEG_WARPS)
    inclusive = per_block.cumsum(1)
    f = first.long()
    before = inclusive - per_block - torch.where(f > 0, inclusive.gather(1, (f - 1).clamp(min=0).expand(n, nb)), 0)
    before = torch.where(simple.gather(1, seg.long().expand(n, nb)), 0, before)
    return aux.contiguous(), before.to(torch.int32).contiguous()
