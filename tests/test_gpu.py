"""What only a CUDA device can show: every gossip path and the vectorized oracle on the GPU, against float64
references. Skipped without a GPU (conftest)."""
from __future__ import annotations

import pytest
import torch

from gossipsim import graphs
from gossipsim.graphs import Mixing
from gossipsim.sim import experiment
from gossipsim.sim.config import Config
from gossipsim.sim.model import StackedModel
from gossipsim.sim.models import make

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("make_topo", [lambda: graphs.ring(300), lambda: graphs.torus(16, 20),
                                       lambda: graphs.exponential(256), lambda: graphs.random_regular(130, 3, seed=0),
                                       lambda: graphs.complete(200), lambda: graphs.ring(7)],
                         ids=["ring", "torus", "exponential", "random_regular", "complete", "ring7"])
def test_every_gossip_path_on_cuda_equals_float64_product(make_topo, fresh_seed):
    topo = make_topo().to("cuda")
    M = topo.mixing(0)
    assert M.W.is_cuda
    for path in ("dense", "sparse") + (("circulant",) if M.shifts is not None else ()):
        forced = Mixing(M.dense(), topo.grid, path=path)
        for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 2e-6)):
            x = torch.randn(M.n, 1001, dtype=dtype, device="cuda")  # odd P
            y = forced(x)
            ref = (M.dense().cpu() @ x.double().cpu()).to(dtype)
            assert y.is_cuda and y.dtype == dtype
            # TF32 (10-bit mantissa) would miss a 2e-6 relative tolerance by about 1000x
            torch.testing.assert_close(y.cpu(), ref, rtol=tol, atol=tol,
                                       msg=lambda m, path=path: f"{path} seed {fresh_seed}: {m}")


@pytest.mark.parametrize("model,kwargs", [("mlp", {"in_features": 784}), ("lenet5", {}),
                                          ("resnet20", {"in_channels": 1})])
def test_vmap_oracle_on_cuda_equals_loop(model, kwargs, fresh_seed):
    n = 3
    vm = StackedModel(lambda: make(model, **kwargs), n, backend="vmap")
    lp = StackedModel(lambda: make(model, **kwargs), n, backend="loop")
    x, buf = vm.init(fresh_seed % 1000, same_init=False, dtype=torch.float64, device="cuda")
    xb = torch.randn(n, 4, 1, 28, 28, dtype=torch.float64, device="cuda")
    yb = torch.randint(0, 10, (n, 4), device="cuda")
    lv, gv, bv = vm.grad(x, buf, xb, yb)
    ll, gl, bl = lp.grad(x, buf, xb, yb)
    torch.testing.assert_close(lv, ll, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gv, gl, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(bv, bl, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("topology,algorithm,keys", [
    ("ring", "dsgd", {}), ("ring+matcha:0.5", "dsgd", {}), ("random_matching", "dsgd", {}),
    ("ring", "choco", dict(compressor="top_k:0.05", gamma=0.5)), ("ring", "choco", dict(compressor="sign", gamma=0.5)),
    ("torus", "choco", dict(compressor="qsgd:16,scaled", gamma=0.05)),
    ("ring", "choco_parallel", dict(compressor="top_k:0.05", gamma=0.5)),
    ("ring", "adagossip", dict(compressor="top_k:0.05", gamma=0.005)),
    ("torus+matcha:0.5", "matcha", {}), ("ring+rotate", "al_dsgd", {}), ("torus+matcha:0.5", "al_dsgd", {}),
    ("ring", "malcom_psgd", dict(compressor="dithered:15,scaled", compress_per="layer", gamma=0.1, mu=1e-4)),
    ("ring", "adacons", {})])
def test_a_run_on_cuda_learns(topology, algorithm, keys, tmp_path):
    cfg = Config(device="cuda", topology=topology, agents=8, rounds=60, eval_every=60, lr=0.1,
                 algorithm=algorithm, out=str(tmp_path / "run"), progress=False, **keys)
    engine = experiment.build(cfg)
    rows = engine.run(cfg.rounds)
    assert engine.state.x.is_cuda
    assert rows[-1]["test_acc"] > rows[0]["test_acc"] + 0.2
    # compressed gossip agrees more slowly (on 2 CPU cores top_k:0.05 is at 7 after 100 rounds); it must not blow up
    assert rows[-1]["consensus"] < (100 if "compressor" in keys else 1)


def test_triton_kernels_at_a_real_size(fresh_seed, monkeypatch):
    from gossipsim import kernels

    n, p = 64, 270_001
    x = torch.randn(n, p, device="cuda")
    h = torch.randn(n, p, device="cuda")
    for comp in (kernels.top_k(0.01), kernels.top_k(0.01, per="layer").with_layers((1, 70_000, 200_000))):
        monkeypatch.setenv("GOSSIPSIM_KERNELS", "torch")
        ref = h.clone()
        ref_bits = kernels.choco_residual(x, ref, comp)
        monkeypatch.setenv("GOSSIPSIM_KERNELS", "triton")
        out = h.clone()
        bits = kernels.choco_residual(x, out, comp)
        assert torch.equal(out, ref) and torch.equal(bits, ref_bits), f"seed {fresh_seed}"
    # QSGD in law: same norms, so the same set of two levels around each entry
    comp = kernels.qsgd(16)
    monkeypatch.setenv("GOSSIPSIM_KERNELS", "triton")
    q, _ = comp.roundtrip(x)
    step = (x.norm(dim=1, keepdim=True) / 16)
    assert ((q - x).abs() <= step * (1 + 1e-5)).all()
    assert torch.allclose(torch.remainder(q / step + 1e-3, 1.0), torch.zeros_like(q), atol=2e-3)


@pytest.mark.parametrize("topology,algorithm,keys", [
    ("ring", "dsgd", {}), ("exponential", "dpsgd", {}),
    ("ring", "choco", dict(compressor="top_k:0.01", gamma=0.5)),
    ("ring", "choco", dict(compressor="qsgd:16,scaled", gamma=0.5)),
    ("ring", "adagossip", dict(compressor="top_k:0.05", gamma=0.005)), ("ring", "adacons", {}),
    ("ring", "malcom_psgd", dict(compressor="dithered:15,scaled", compress_per="layer", gamma=0.1, mu=1e-4)),
    ("ring+rotate", "al_dsgd", {}), ("torus+matcha:0.5", "matcha", {}), ("random_matching", "dsgd", {}),
    ("ring", "choco", dict(compressor="qsgd:16,scaled", gamma=0.5, compile="graph"))])
def test_rounds_never_wait_for_the_device(topology, algorithm, keys, tmp_path):
    # Issue 6: inside a round nothing copies to the host or waits for the stream; metrics stay on the device
    # until an evaluation. Every synchronizing call is collected, so one run names them all.
    import warnings

    cfg = Config(device="cuda", topology=topology, agents=40, rounds=8, eval_every=8, lr=0.05, batch_size=8,
                 algorithm=algorithm, out=str(tmp_path / "run"), progress=False, **keys)
    engine = experiment.build(cfg)
    for _ in range(2):  # first rounds may set up (caches of tables and constants on the device)
        engine.step()
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(6):
                engine.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [f"{w.filename}:{w.lineno}" for w in caught if "called a synchronizing CUDA operation" in str(w.message)]
    if algorithm == "malcom_psgd":  # the one known exception: its source code's length reads the number of
        # nonzero symbols back from the device (kernels/bits.py elias_golomb: nonzero, bincount)
        syncs = [s for s in syncs if "/kernels/bits.py:" not in s]
    assert not syncs, "\n".join(syncs)


GRAPHED = {
    "dsgd": dict(algorithm="dsgd"),
    "dsgd-augment": dict(algorithm="dsgd", augment=True),  # the augmentation's own generator, registered
    "dpsgd-momentum-multistep": dict(algorithm="dpsgd", topology="exponential", momentum=0.9,
                                     lr_schedule="multistep", milestones=[3]),
    "choco-top-k": dict(algorithm="choco", compressor="top_k:0.01", gamma=0.5),
    "choco-qsgd": dict(algorithm="choco", compressor="qsgd:16,scaled", gamma=0.5),  # a seed drawn a replay
    "choco-parallel-sign": dict(algorithm="choco_parallel", compressor="sign", gamma=0.5),
    "adagossip-top-k": dict(algorithm="adagossip", compressor="top_k:0.05", gamma=0.005),
    "adacons": dict(algorithm="adacons"),
    "resnet20-bn-gossip": dict(algorithm="dsgd", model="resnet20", bn="gossip"),
}


@pytest.mark.parametrize("keys", list(GRAPHED.values()), ids=list(GRAPHED))
def test_graph_rounds_equal_eager_rounds(keys, tmp_path):
    # compile=graph replays the round's kernels: the numbers of eager rounds, random draws included (a replay
    # moves the generators' Philox offsets as the eager round does), through evaluations in between
    def run(mode):
        cfg = Config(**{"device": "cuda", "topology": "ring", "agents": 8, "rounds": 9, "eval_every": 3,
                        "batch_size": 8, "lr": 0.05, "progress": False, "compile": mode,
                        "out": str(tmp_path / mode), **keys})
        engine = experiment.build(cfg)
        engine.run(cfg.rounds)
        return engine

    eager, graphed = run("off"), run("graph")
    assert graphed._compiled_round.graph is not None and graphed.compile_time > 0
    torch.testing.assert_close(graphed.state.x, eager.state.x, rtol=1e-5, atol=1e-6)
    # not bit for bit: QSGD's and sign's segment norms add their blocks' partial sums atomically, in any order
    for a, b in zip(graphed.history, eager.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert abs(a["test_acc"] - b["test_acc"]) <= 0.02


def test_graph_capture_of_a_round_that_reads_back_exits_2_with_one_line(tmp_path):
    # MALCOM-PSGD's code lengths read the number of nonzero symbols back from the device: no capture. In a child
    # process, so that the failed capture cannot disturb the other tests' CUDA context
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "gossipsim", "run", "--device=cuda", "--algorithm=malcom_psgd",
                           "--compressor=dithered:15,scaled", "--compress_per=layer", "--gamma=0.1", "--mu=1e-4",
                           "--agents=4", "--rounds=3", "--eval_every=3", "--compile=graph", "--progress=false",
                           f"--out={tmp_path / 'run'}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "compile=graph could not capture" in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
