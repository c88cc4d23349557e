"""Fused kernels against their pure-torch references, at odd shapes. Without a GPU the Triton kernels run on
the CPU under TRITON_INTERPRET=1 (conftest); with one, on CUDA tensors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gossipsim import ConfigError, graphs, kernels, sim
from gossipsim.kernels import ops
from gossipsim.kernels.compressors import expand, kept

triton = pytest.importorskip("triton")
T = pytest.importorskip("gossipsim.kernels.triton_ops")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def version(v: str) -> tuple[int, int]:
    return tuple(int(part) for part in v.split(".")[:2])


if DEVICE == "cpu" and version(triton.__version__) < (3, 7) and version(np.__version__) >= (2, 4):
    # triton-lang/triton#9171: 3.6's interpreter turns a kernel's scalar loop bound into an int the way NumPy 2.4
    # refuses, so 66 of these tests would fail inside Triton with a TypeError that names nothing of ours
    pytest.skip(f"Triton {triton.__version__}'s interpreter needs NumPy < 2.4 (have {np.__version__}): "
                f"pip install 'numpy<2.4'", allow_module_level=True)

# (N, P, layer sizes): one agent; P not a multiple of the 1024 block; layers of 1 and of 1030 entries
SHAPES = [(1, 1, None), (3, 1000, None), (2, 2500, (7, 1030, 1, 462, 1000)), (5, 300, (100, 200))]


@pytest.fixture
def use_triton(monkeypatch):
    monkeypatch.setenv("GOSSIPSIM_KERNELS", "triton")
    monkeypatch.setattr(T, "SEG_BLOCK", 256)  # small blocks: segments of many blocks, the last one short
    monkeypatch.setattr(T, "TOPK_BLOCK", 256)
    monkeypatch.setattr(T, "BLOCK", 256)


def comp_for(make, layers):
    comp = make("layer" if layers else "model")
    return comp.with_layers(layers) if layers else comp


def data(n, p, seed, ties=False):
    g = torch.Generator().manual_seed(seed)
    if ties:  # few distinct magnitudes of x and of x - h: threshold ties everywhere
        x, h = torch.randint(-3, 4, (2, n, p), generator=g).float()
    else:
        x, h = torch.randn(2, n, p, generator=g)
    return x.to(DEVICE), h.to(DEVICE)


@pytest.mark.parametrize("n,p,layers", SHAPES)
@pytest.mark.parametrize("graph", ["ring", "random_regular", "star"])
def test_gossip_and_consensus_step(n, p, layers, graph, fresh_seed, use_triton):
    m = 10
    topo = {"ring": graphs.ring(m), "random_regular": graphs.random_regular(m, 3, seed=fresh_seed % 100),
            "star": graphs.star(m)}[graph]
    M = topo.mixing(0)
    y = torch.randn(m, p, device=DEVICE)
    idx, w = M.table(torch.float32, DEVICE)
    ref = (M.dense() @ y.double().cpu()).float()
    torch.testing.assert_close(ops.gossip(idx, w, y).cpu(), ref, rtol=1e-5, atol=1e-6)
    x = torch.randn(m, p, device=DEVICE)
    expect = x.cpu() + 0.3 * (ref - y.cpu())
    kernels.consensus_step(x, y, M, 0.3)
    torch.testing.assert_close(x.cpu(), expect, rtol=1e-5, atol=1e-6, msg=lambda s: f"seed {fresh_seed}: {s}")


@pytest.mark.parametrize("n,p,layers", SHAPES)
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("fraction", [1e-4, 0.01, 0.3, 1.0])
def test_top_k_threshold_select_equals_reference(n, p, layers, ties, fraction, fresh_seed, use_triton):
    comp = comp_for(lambda per: kernels.top_k(fraction, per=per), layers)
    x, h = data(n, p, fresh_seed, ties)
    expect = h.cpu() + comp.decompress(comp.compress(x.cpu() - h.cpu()))
    bits = kernels.choco_residual(x, h, comp)
    assert torch.equal(h.cpu(), expect), f"seed {fresh_seed}"
    assert torch.equal(bits.cpu(), comp.bits(comp.compress(x.cpu())))
    q, _ = comp.roundtrip(x)
    assert torch.equal(q.cpu(), comp.decompress(comp.compress(x.cpu())))
    ks = torch.tensor(comp.ks(p))
    assert ((q != 0).sum(1).cpu() <= ks.sum()).all()


def test_top_k_ranks_nan_above_inf_on_both_paths(fresh_seed, use_triton):
    # a diverged run's residual: the reference must neither crash nor disagree with the radix select
    x, h = data(3, 700, fresh_seed)
    x[0, 5], x[1, 650], x[2, 3] = float("nan"), float("inf"), float("-inf")
    comp = kernels.top_k(0.003)  # k = 2
    q, _ = comp.roundtrip(x)
    ref = comp.decompress(comp.compress(x.cpu()))
    assert torch.equal(q.cpu().isnan(), ref.isnan()) and ref[0, 5].isnan() and ref[1, 650] == float("inf")
    assert torch.equal(q.cpu().nan_to_num(), ref.nan_to_num()), f"seed {fresh_seed}"


@pytest.mark.parametrize("n,p,layers", SHAPES)
@pytest.mark.parametrize("levels,scaled", [(1, False), (16, True), (255, False)])
def test_qsgd_kernel_equals_reference_given_the_same_uniforms(n, p, layers, levels, scaled, fresh_seed, use_triton):
    comp = comp_for(lambda per: kernels.qsgd(levels, scaled=scaled, per=per), layers)
    x, h = data(n, p, fresh_seed)
    sizes = comp.segments(p)
    table = T.blocks(sizes, DEVICE)
    r = (x - h).cpu()
    norms = comp.norms(r)
    torch.testing.assert_close(T.segment_sums(x, h, table, len(sizes), 2).sqrt().cpu(), norms, rtol=1e-5, atol=0)
    # the quantize pass, given the reference norms and the kernel's own uniforms, is exact
    seed = torch.tensor([fresh_seed * 61], device=DEVICE)  # up to 2^38: the key seed * 2^24 + row uses its high half
    u = T.uniform(n, p, seed)
    taus = torch.tensor([comp.tau(d) for d in sizes])
    out = torch.empty_like(x)
    T.residual(x, h, out, 1, table, len(sizes), (norms * taus / levels).to(DEVICE),
               (levels / norms).nan_to_num(posinf=0.0).to(DEVICE), seed=seed, levels=levels)
    expect = h.cpu() + comp.decompress(comp.quantize(r, u.cpu()))
    # exact under the interpreter; a GPU may fuse h + symbol * scale into one FMA (an ulp apart), while a wrong
    # rounding decision would be a whole level (scale) off
    tol = 1e-6 if DEVICE == "cuda" else 0.0
    torch.testing.assert_close(out.cpu(), expect, rtol=tol, atol=tol, msg=lambda m: f"seed {fresh_seed}: {m}")
    # and the whole fused step agrees in law: unbiased around x when unscaled
    bits = kernels.choco_residual(x, h, comp)
    assert torch.equal(bits.cpu(), comp.bits(comp.compress(r)))


def test_qsgd_kernel_is_unbiased_and_never_stores_noise(fresh_seed, use_triton):
    comp, trials = kernels.qsgd(4), 100
    x = torch.randn(2, 700, device=DEVICE)
    mean = sum(comp.roundtrip(x)[0] for _ in range(trials)) / trials
    # each entry rounds to one of two levels norm/s apart: std <= norm / (2 s); 5 sigma of the mean
    sigma = (x.norm(dim=1, keepdim=True) / (2 * 4) / trials**0.5).cpu()
    assert ((mean.cpu() - x.cpu()).abs() <= 5 * sigma).all(), f"seed {fresh_seed}"


def test_qsgd_kernel_draws_its_seed_from_the_given_generator(fresh_seed, use_triton):
    # the seed is drawn on the device, from the generator given (or the device's default), as the reference's
    # uniforms are: a fresh one each call, the same calls again after re-seeding
    comp, x = kernels.qsgd(4), torch.randn(3, 501, device=DEVICE)
    gen = torch.Generator(DEVICE).manual_seed(fresh_seed)
    first, second = comp.roundtrip(x, gen)[0], comp.roundtrip(x, gen)[0]
    assert not torch.equal(first, second), f"seed {fresh_seed}"
    gen.manual_seed(fresh_seed)
    assert torch.equal(comp.roundtrip(x, gen)[0], first), f"seed {fresh_seed}"


@pytest.mark.parametrize("n,p,layers", SHAPES)
def test_sign_and_identity_kernels(n, p, layers, fresh_seed, use_triton):
    x, h = data(n, p, fresh_seed)
    for make in (lambda per: kernels.sign(per=per), lambda per: kernels.identity(per=per)):
        comp = comp_for(make, layers)
        hh = h.clone()
        expect = h.cpu() + comp.decompress(comp.compress(x.cpu() - h.cpu()))
        kernels.choco_residual(x, hh, comp)
        torch.testing.assert_close(hh.cpu(), expect, rtol=1e-5, atol=1e-5, msg=lambda s: f"seed {fresh_seed}: {s}")


def test_dispatch(monkeypatch, tmp_path):
    x = torch.zeros(2, 3)
    monkeypatch.setenv("GOSSIPSIM_KERNELS", "torch")
    assert kernels.backend(x) == "torch"
    monkeypatch.setenv("GOSSIPSIM_KERNELS", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ConfigError, match="TRITON_INTERPRET=1"):
        kernels.backend(x)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert kernels.backend(x) == "triton" and kernels.backend(x.double()) == "torch"  # kernels are float32
    monkeypatch.setenv("GOSSIPSIM_KERNELS", "cuda")
    with pytest.raises(ConfigError, match="'cuda' is not one of torch, triton"):
        kernels.backend(x)
    out = tmp_path / "run"  # a run is refused before it writes anything (it was at its first compressed round)
    cfg = sim.Config.from_dict(dict(algorithm="choco", agents=2, rounds=1, progress=False, out=str(out)))
    with pytest.raises(ConfigError, match="'cuda' is not one of torch, triton"):
        sim.build(cfg)
    assert not out.exists()
    monkeypatch.delenv("GOSSIPSIM_KERNELS")
    assert kernels.backend(x) == ("triton" if x.is_cuda else "torch")
    assert expand(torch.ones(2, 1), (3,)).shape == (2, 3)


def test_top_k_candidate_buffers_are_sized_per_segment():
    # one big layer and many small ones (ResNet-like): each segment gets its own slots, so a row's buffer never
    # exceeds the row (one buffer of the largest segment's size for each was 10x the row here at 10% kept)
    sizes = (2_359_296,) + (512,) * 60 + (147_456,) * 4
    for fraction in (0.01, 0.1, 1.0):
        ks = tuple(kept(d, fraction) for d in sizes)
        plan = T._plan(sizes, ks, torch.device("cpu"), T.SAMPLE, T.TOPK_BLOCK)
        cap, off, total = plan[6].tolist(), plan[7].tolist(), plan[8]
        assert off == [sum(cap[:i]) for i in range(len(sizes))] and total == sum(cap) <= sum(sizes)
        assert all(k <= c <= d for c, k, d in zip(cap, ks, sizes))


@pytest.mark.parametrize("layout", ["random", "ties", "tie_pair", "sample_low", "sample_high", "sparse_few",
                                    "sparse_many"])
@pytest.mark.parametrize("n,p,layers", SHAPES[1:])
def test_top_k_sampled_threshold_and_its_fallback(layout, n, p, layers, fresh_seed, use_triton, monkeypatch):
    # A sample of 64 a segment: lo brackets the k-th largest (random), or misses it, low (every entry becomes
    # a candidate: more than fit, where the buffer is smaller than the segment) or high (fewer than k
    # candidates); ties at the threshold are partly dropped: everywhere, or one pair a segment (tie_pair), which
    # the buffer's own tie select handles. The slow paths must give the same exact answer.
    monkeypatch.setattr(T, "SAMPLE", 64)
    fraction = {"sample_high": 0.3, "sample_low": 0.01}.get(layout, 0.05)  # 0.3: k above the 64 sampled
    comp = comp_for(lambda per: kernels.top_k(fraction, per=per), layers)
    x, h = data(n, p, fresh_seed, ties=layout == "ties")
    sizes, ks = comp.segments(p), tuple(comp.ks(p))
    if layout.startswith("sample"):
        start = 0
        for d in sizes:
            s = min(d, 64)
            cols = start + torch.arange(s) * d // s
            x[:, cols] = h[:, cols] + (1e-6 if layout == "sample_low" else 1e6)
            start += d
    if layout.startswith("sparse"):
        g = torch.Generator().manual_seed(fresh_seed)
        zero = torch.rand(n, p, generator=g) > (0.01 if layout == "sparse_few" else 0.1)
        x[zero.to(DEVICE)] = h[zero.to(DEVICE)]
    if layout == "tie_pair":  # the entry after each segment's k-th largest becomes equal to it: one is kept
        start, rows = 0, torch.arange(n, device=DEVICE)
        for d, k in zip(sizes, ks):
            if k < d:
                order = (x - h)[:, start:start + d].abs().argsort(dim=1, descending=True, stable=True) + start
                j, i = order[:, k - 1], order[:, k]
                x[rows, i], h[rows, i] = x[rows, j], h[rows, j]
            start += d
    r = x - h
    table = ops._cached_table(sizes, x.device, T.TOPK_BLOCK)
    written = T.top_k(x, h.clone(), h.clone(), table, ks, sizes) == 1  # (N, L): from the candidate buffer
    d, k = torch.tensor(sizes, device=DEVICE), torch.tensor(ks, device=DEVICE)
    cap = T._plan(sizes, ks, DEVICE, 64, 256)[6]  # (L,) each segment's candidate buffer size
    must_miss = {"sample_low": d > cap, "sample_high": (d > 64) & (k > 64)}.get(layout)
    if must_miss is not None:
        assert not written[:, must_miss].any(), f"{layout} {written}"
    elif layout == "tie_pair":
        assert written.all(), f"{layout} {written}"
    elif layout != "ties":  # many ties overflow the buffer (dense) or not (sparse)
        assert written.any(), f"{layout} {written}"
    expect = h.cpu() + comp.decompress(comp.compress(r.cpu()))
    kernels.choco_residual(x, h, comp)
    assert torch.equal(h.cpu(), expect), f"{layout} seed {fresh_seed}"
    # without x_hat: out is zeroed, then written from the buffer (sparse) or by the dense pass (fallback)
    assert torch.equal(comp.roundtrip(r)[0].cpu(), comp.decompress(comp.compress(r.cpu()))), f"{layout}"
