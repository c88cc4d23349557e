"""Compressors: contraction, unbiasedness, exact top-k, and bit counts against closed forms and against a real
encoder that writes the bitstream (tests/reference/bitstream.py)."""
from __future__ import annotations

import math

import pytest
import torch

from gossipsim import ConfigError, kernels
from gossipsim.kernels import bits as B
from gossipsim.kernels.compressors import kept, top_indices
from tests.reference import bitstream as bs

LAYERS = (5, 1, 300, 44)  # P = 350


def layered(comp):
    return comp.with_layers(LAYERS)


@pytest.mark.parametrize("make,delta", [
    (lambda: kernels.top_k(0.1), lambda d: kept(d, 0.1) / d),
    (lambda: kernels.rand_k(0.1), lambda d: kept(d, 0.1) / d),
    (lambda: kernels.qsgd(4, scaled=True), lambda d: 1 / (1 + min(d / 16, d**0.5 / 4))),
    (lambda: kernels.sign(), lambda d: 1 / d),
    (lambda: kernels.top_k_qsgd(0.1, 8, scaled=True), None),
])
def test_contraction(make, delta, fresh_seed):
    comp = make()
    d = 350
    if delta is not None:
        assert comp.delta(d) == pytest.approx(delta(d))
    x = torch.randn(64, d, dtype=torch.float64)
    errs = torch.stack([(comp.roundtrip(x)[0] - x).pow(2).sum(1) for _ in range(20)]).mean(0)  # E||C(x) - x||^2
    bound = (1 - comp.delta(d)) * x.pow(2).sum(1)
    # deterministic compressors meet it row by row; random ones in expectation (20 draws, 5% slack)
    assert (errs <= bound * 1.05 + 1e-12).all(), f"seed {fresh_seed}"


def _qsgd_sigma(x, sizes, s):
    # each entry rounds between two levels ||x_seg|| / s apart: std <= ||x_seg|| / (2 s)
    norms = torch.cat([x[:, a:a + d].norm(dim=1, keepdim=True).expand(-1, d)
                       for a, d in zip([0, *torch.tensor(sizes).cumsum(0).tolist()[:-1]], sizes)], 1)
    return norms / (2 * s)


@pytest.mark.parametrize("make,sigma", [
    (lambda: kernels.rand_k(0.2, scaled=True), lambda x: x.abs() * (350 / 70 - 1) ** 0.5),
    (lambda: kernels.qsgd(2), lambda x: _qsgd_sigma(x, (350,), 2)),
    (lambda: layered(kernels.qsgd(3, per="layer")), lambda x: _qsgd_sigma(x, LAYERS, 3)),
])
def test_unbiased(make, sigma, fresh_seed):
    comp = make()
    x = torch.randn(4, 350, dtype=torch.float64)
    trials = 3000
    mean = sum(comp.roundtrip(x)[0] for _ in range(trials)) / trials
    assert ((mean - x).abs() <= 5 * sigma(x) / trials**0.5 + 1e-12).all(), f"seed {fresh_seed}"


@pytest.mark.parametrize("make", [lambda: kernels.qsgd(16), lambda: kernels.dithered(4)])
def test_unbiased_in_bfloat16(make, fresh_seed):
    """Half precision is quantized in float32: in bf16 arithmetic (an 8-bit mantissa) the stochastic rounding was
    biased by about 2% of a level. What is left is bf16's own rounding of the scale (2^-9 relative)."""
    x = torch.randn(1, 64).to(torch.bfloat16)
    trials = 160000
    q, _ = make().roundtrip(x.expand(trials, 64).contiguous())  # a row a trial, each quantized on its own
    assert q.dtype == torch.bfloat16
    q, x = q.double(), x.double()[0]
    error = (q.mean(0) - x).abs()
    assert (error <= 5 * q.std(0) / trials**0.5 + 2**-8 * x.abs()).all(), f"seed {fresh_seed}"


def test_top_k_is_exact_with_ties_to_the_lowest_index(fresh_seed):
    x = torch.randn(8, 1000, dtype=torch.float64)
    q, _ = kernels.top_k(0.05).roundtrip(x)
    assert ((q != 0).sum(1) == 50).all()
    torch.testing.assert_close(q.abs().sum(1), x.abs().topk(50, dim=1).values.sum(1))
    ties = torch.tensor([[1.0, -2.0, 2.0, 0.5, -2.0, 2.0]])
    q, _ = kernels.top_k(0.5).roundtrip(ties)  # k = 3 of four 2s: the first three
    assert q.tolist() == [[0.0, -2.0, 2.0, 0.0, -2.0, 0.0]]


def test_top_indices_equals_a_stable_sort_with_tied_and_untied_rows(fresh_seed):
    # top_indices takes topk's answer where the (k+1)-th largest is below the k-th and re-selects the tied
    # rows in index order: a batch mixing both (and NaNs, which rank above inf) must equal the plain rule,
    # a stable sort by magnitude bits, descending
    for _ in range(40):
        n, d = torch.randint(1, 9, (2,)).tolist()
        d = 5 * d
        k = int(torch.randint(1, d + 1, ()))
        a = torch.randint(0, 4, (n, d)).float()
        a[torch.rand(n) < 0.5] = torch.rand(d)  # untied rows
        a[torch.rand(n, d) < 0.05] = float("nan")
        keys = a.view(torch.int32).long()
        expected = torch.sort(-keys, dim=1, stable=True).indices[:, :k].sort(1).values
        assert torch.equal(top_indices(a, k), expected), f"seed {fresh_seed}"


def test_per_layer_segments(fresh_seed):
    x = torch.randn(3, 350)
    comp = layered(kernels.top_k(0.1, per="layer"))
    q, bits = comp.roundtrip(x)
    start = 0
    for d in LAYERS:
        assert ((q[:, start:start + d] != 0).sum(1) == kept(d, 0.1)).all()
        start += d
    assert bits.tolist() == [sum(kept(d, 0.1) * (32 + math.ceil(math.log2(d)) if d > 1 else 32) for d in LAYERS)] * 3
    with pytest.raises(ConfigError, match="with_layers"):
        kernels.top_k(0.1, per="layer").roundtrip(x)
    with pytest.raises(ConfigError, match="sum to 350 but rows have 349"):
        comp.roundtrip(x[:, 1:])


def test_bits_closed_forms():
    n, d = 3, 1000
    x = torch.randn(n, d)
    assert kernels.identity().roundtrip(x)[1].tolist() == [32.0 * d] * n
    assert kernels.top_k(0.01).roundtrip(x)[1].tolist() == [10 * (32 + 10)] * n
    assert kernels.rand_k(0.01, scaled=True).roundtrip(x)[1].tolist() == [10 * (32 + 10)] * n
    assert kernels.qsgd(16).roundtrip(x)[1].tolist() == [32 + d * (1 + 5)] * n
    assert kernels.qsgd(15).roundtrip(x)[1].tolist() == [32 + d * (1 + 4)] * n
    assert kernels.sign().roundtrip(x)[1].tolist() == [32 + d] * n
    assert kernels.top_k_qsgd(0.01, 16).roundtrip(x)[1].tolist() == [10 * (1 + 5 + 10) + 32] * n
    # entropy of signs of a row with 3 negatives in 4: 4 H(1/4) + 32
    e = kernels.sign(encoding="entropy").roundtrip(torch.tensor([[-1.0, -2.0, 3.0, -4.0]]))[1]
    h = -(0.25 * math.log2(0.25) + 0.75 * math.log2(0.75))
    assert e.item() == pytest.approx(32 + 4 * h)
    with pytest.raises(ConfigError, match="top_k.* no 'entropy' encoding"):
        kernels.top_k(0.1, encoding="entropy")


def python_message(comp, msg, row):
    """The bitstream a real encoder writes for one agent's message."""
    if isinstance(msg, kernels.Sparse):
        sizes, ks = comp.segments(msg.width), comp.ks(msg.width)
        out, at, start = "", 0, 0
        for d, k in zip(sizes, ks):
            idx = (msg.indices[row, at:at + k] - start).tolist()
            out += bs.encode_sparse(msg.values[row, at:at + k].tolist(), idx, d)
            at, start = at + k, start + d
        return out
    sizes = comp.segments(msg.symbols.shape[1])
    out, start = "", 0
    for li, d in enumerate(sizes):
        sym, scale = msg.symbols[row, start:start + d].tolist(), float(msg.scales[row, li])
        if isinstance(comp, kernels.Sign):
            out += bs.encode_sign_raw(sym, scale)
        elif comp.encoding == "raw":
            out += bs.encode_qsgd_raw(sym, scale, msg.levels)
        else:
            out += bs.encode_elias_golomb(sym, scale, msg.levels)
        start += d
    return out


@pytest.mark.parametrize("make", [
    lambda: kernels.top_k(0.03), lambda: layered(kernels.top_k(0.1, per="layer")), lambda: kernels.rand_k(0.05),
    lambda: kernels.qsgd(16), lambda: layered(kernels.qsgd(7, per="layer")), lambda: kernels.sign(),
    lambda: kernels.dithered(1), lambda: kernels.dithered(4), lambda: kernels.dithered(255),
    lambda: layered(kernels.dithered(3, per="layer")),
])
@pytest.mark.parametrize("sparse", [False, True])
def test_bits_equal_a_real_encoder(make, sparse, fresh_seed):
    comp = make()
    x = torch.randn(4, 350)
    if sparse:  # a residual of few large entries: most symbols 0, long runs
        x = x * (torch.rand(4, 350) < 0.03)
        x[1] = 0  # an all-zero message
    msg = comp.compress(x)
    bits = comp.bits(msg)
    for row in range(4):
        stream = python_message(comp, msg, row)
        assert len(stream) == int(bits[row]), f"seed {fresh_seed}, row {row}"
    if isinstance(msg, kernels.Quantized) and comp.encoding == "elias-golomb" and comp.per == "model":
        symbols, norm = bs.decode_elias_golomb(python_message(comp, msg, 0), 350, msg.levels)
        assert symbols == msg.symbols[0].tolist()  # and the stream decodes back


def test_golomb_parameter_matches_reference():
    # (1, 23357182): log(1 - p) and log1p(-p) put log(2 - p) / -log(1 - p) on either side of a whole number
    for c, d in [(1, 1), (1, 2), (3, 350), (17, 1000), (999, 1000), (5, 20000), (1, 23357182)]:
        assert int(B.golomb_parameter(torch.tensor(c), torch.tensor(d))) == bs.golomb_parameter(c, d)
    assert bs.golomb_parameter(1, 23357182) == 16189965  # ceil(16189964.0026...)


def test_index_and_level_widths_are_exact_at_any_size():
    for d in (2, 3, 4, 5, 2**20, 2**20 + 1, 2**49, 2**49 + 1, 2**60 + 1):
        assert B.index_bits(d) == bs.index_bits(d) == math.ceil(math.log2(d)) + (d == 2**49 + 1 or d == 2**60 + 1)
    for s in (1, 2, 3, 15, 16, 32767):
        assert B.level_bits(s) == bs.level_bits(s)


def test_bad_compressor_arguments():
    for bad, needle in [(lambda: kernels.top_k(0), r"\(0, 1\]"), (lambda: kernels.rand_k(1.5), r"\(0, 1\]"),
                        (lambda: kernels.qsgd(0), "levels"), (lambda: kernels.top_k(0.1, per="row"), "per must"),
                        (lambda: kernels.top_k(0.1).with_layers([3, 0]), "positive"),
                        (lambda: kernels.top_k(0.1).with_layers(5), "sequence of positive integers, got 5"),
                        (lambda: kernels.top_k(0.1).with_layers([2.7, 3]), r"got \[2.7, 3\]"),
                        (lambda: kernels.qsgd(True), "levels must be an integer")]:
        with pytest.raises(ConfigError, match=needle) as e:
            bad()
        assert "\n" not in str(e.value)


def test_specs():
    assert repr(kernels.parse("top_k:0.01")) == "top_k(0.01)"
    assert repr(kernels.parse("qsgd:16,scaled")) == "qsgd(16, scaled)"
    assert repr(kernels.parse("rand_k:0.05,scaled", per="layer").with_layers((3, 4))) == "rand_k(0.05, scaled)"
    assert kernels.parse("dithered:4").encoding == "elias-golomb" and kernels.parse("sign").per == "model"
    for bad, needle in [("topk:0.1", "unknown compressor 'topk'"), ("qsgd:x", "numbers like qsgd:16"),
                        ("qsgd:4.5", "whole number"), ("top_k:0.1,0.2", "too many numbers; .* like top_k:0.01"),
                        ("qsgd:0", "levels"), ("sign:3", "too many numbers; .* like sign"),
                        ("identity:1", "too many numbers"), ("top_k:0.1,scaled", "top_k has no scaled form"),
                        ("qsgd:inf", "whole number, got inf"), ("dithered:nan", "whole number, got nan"),
                        ("top_k_qsgd:0.01,1e400", "whole number, got inf"), ("top_k:", "numbers like top_k:0.01"),
                        ("qsgd:16,,scaled", "numbers like"), ("qsgd:16,scaled,scaled", "numbers like")]:
        with pytest.raises(ConfigError, match=needle):
            kernels.parse(bad)
    assert repr(kernels.parse(" top_k : 0.1")) == "top_k(0.1)"
    assert repr(kernels.parse("top_k")) == "top_k(0.01)" and repr(kernels.parse("qsgd:scaled")) == "qsgd(16, scaled)"


@pytest.mark.parametrize("make", [kernels.identity, kernels.top_k, kernels.rand_k, kernels.qsgd, kernels.sign,
                                  kernels.top_k_qsgd, kernels.dithered])
def test_a_tensor_that_is_not_n_by_p_is_one_line(make):
    comp = make()
    for shape in ((5,), (2, 3, 4), (3, 0)):
        for call in (comp.compress, comp.roundtrip, lambda r: kernels.choco_residual(r, torch.zeros_like(r), comp)):
            with pytest.raises(ConfigError, match=rf"\(N, P\) tensor.*got shape \({shape[0]},"):
                call(torch.randn(shape))


def test_half_precision_scales_are_summed_in_float32(fresh_seed):
    # a float16 sum over more than 65504 entries overflows: QSGD's per-layer norm was inf (all-NaN output) and
    # sign's scale ||x||_1 / d was 0 (d itself is inf in float16)
    x = torch.randn(2, 70000)
    q = kernels.qsgd(4, per="layer").with_layers((69000, 1000))
    torch.testing.assert_close(q.norms(x.half()).float(), q.norms(x), rtol=2e-3, atol=0)
    assert q.roundtrip(x.half())[0].isfinite().all()
    for per, sizes in (("model", (70000,)), ("layer", (69000, 1000))):
        sign = kernels.sign(per=per).with_layers(sizes)
        torch.testing.assert_close(sign.compress(x.half()).scales.float(), sign.compress(x).scales, rtol=2e-3, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_qsgd_row_blocks_give_the_symbols_of_one_block(dtype, monkeypatch, fresh_seed):
    # on a CPU the quantizer runs on row blocks that fit in cache: blocks of 3 rows of 7 (the last one short),
    # per layer, must give what one block of all rows gives
    from gossipsim.kernels import compressors

    r = torch.randn(7, sum(LAYERS), dtype=dtype)
    r[2] = 0.0  # a zero row: its norm is 0
    u = torch.rand_like(r)
    comp = layered(kernels.qsgd(4, per="layer"))
    whole = comp.quantize(r, u)
    monkeypatch.setattr(compressors, "CPU_BLOCK_BYTES", 3 * sum(LAYERS) * r.element_size())
    assert [(b.start, b.stop) for b in compressors.row_blocks(r)] == [(0, 3), (3, 6), (6, 9)]
    blocked = comp.quantize(r, u)
    assert torch.equal(blocked.symbols, whole.symbols) and torch.equal(blocked.scales, whole.scales)
    # compress draws its uniforms a row block at a time, never holding an (N, P) of them: the same draws
    compressed = comp.compress(r, torch.Generator().manual_seed(fresh_seed))
    once = comp.quantize(r, torch.rand(r.shape, generator=torch.Generator().manual_seed(fresh_seed), dtype=dtype))
    assert torch.equal(compressed.symbols, once.symbols) and torch.equal(compressed.scales, once.scales)


def test_rand_k_draws_its_keys_a_row_block_at_a_time_as_one_draw_would(monkeypatch, fresh_seed):
    from gossipsim.kernels import compressors

    monkeypatch.setattr(compressors, "CPU_BLOCK_BYTES", 3 * 300 * 4)  # blocks of 3 rows of the 300-entry layer
    comp = layered(kernels.rand_k(0.1, per="layer"))
    r = torch.randn(7, sum(LAYERS))
    got = comp.compress(r, torch.Generator().manual_seed(fresh_seed)).indices
    g, parts, start = torch.Generator().manual_seed(fresh_seed), [], 0
    for d, k in zip(LAYERS, comp.ks(sum(LAYERS))):  # one (N, d) of float64 keys a layer, in layer order
        keys = torch.rand(7, d, generator=g, dtype=torch.float64)
        parts.append(keys.topk(k, dim=1, sorted=False).indices.sort(1).values + start)
        start += d
    assert torch.equal(got, torch.cat(parts, 1))


@pytest.mark.parametrize("make", [lambda: kernels.qsgd(4), lambda: kernels.rand_k(0.2), lambda: kernels.top_k(0.2)])
def test_no_agents_is_an_empty_message(make):
    dense, bits = make().roundtrip(torch.randn(0, 50))
    assert dense.shape == (0, 50) and bits.shape == (0,)
