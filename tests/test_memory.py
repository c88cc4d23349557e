"""The memory preflight: what it counts, and the refusal of a run that cannot fit."""
from __future__ import annotations

import ctypes
import dataclasses
import gc

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from gossipsim import ConfigError, kernels
from gossipsim.sim import algorithms, memory
from gossipsim.sim.model import StackedModel


def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 7), nn.ReLU(), nn.Linear(7, 3))


def test_activation_bytes_counts_every_leaf_output():
    with torch.device("meta"):
        m = mlp()
    b = 5  # Flatten (5, 12), Linear (5, 7), ReLU (5, 7), Linear (5, 3), float32
    assert memory.activation_bytes(m, (b, 3, 4)) == 4 * b * (12 + 7 + 7 + 3)


@pytest.mark.parametrize("name,hyper,copies", [
    ("dsgd", dict(momentum=0.0), 1),  # x alone
    ("dsgd", dict(momentum=0.9), 2),  # x and the momentum buffer
    ("choco", dict(momentum=0.9, compressor=kernels.top_k(0.1), gamma=0.5), 3),  # and x_hat
])
def test_estimate_counts_the_algorithms_copies_of_x(name, hyper, copies):
    n = 6
    model = StackedModel(mlp, n, backend="vmap")
    p = model.P
    for dtype in (torch.float32, torch.float64):
        width = torch.empty((), dtype=dtype).element_size()
        est = memory.estimate(model, algorithms.make(name, lr=0.1, **hyper), 5, (3, 4), dtype)
        pending = n * n * 8 if name == "choco" else 0  # float64 bits waiting on each link
        assert est.parts["state"] == copies * n * p * width + pending
        assert est.parts["gradients"] == n * p * width
        assert est.parts["activations"] == 2 * n * (5 * (12 + 7 + 7 + 3)) * width
        assert est.total == sum(est.parts.values())


def test_the_backend_sets_how_many_agents_hold_activations():
    one = memory.activation_bytes(StackedModel(mlp, 8).template, (5, 3, 4))
    for backend, chunk, at_once in (("vmap", None, 8), ("loop", None, 1), ("chunked", 3, 3)):
        model = StackedModel(mlp, 8, backend=backend, chunk_size=chunk)
        est = memory.estimate(model, algorithms.make("dsgd", lr=0.1), 5, (3, 4), torch.float32)
        assert est.parts["activations"] == 2 * at_once * one


def test_check_refuses_in_one_line_naming_both_figures():
    est = memory.Estimate({"state": 3 * memory.GIB, "activations": memory.GIB // 2})
    memory.check(est, torch.device("cpu"), free=4 * memory.GIB)
    with pytest.raises(ConfigError, match=r"needs about 3.50 GiB .*state 3.00 GiB.* but 1.00 GiB is free") as e:
        memory.check(est, torch.device("cpu"), free=memory.GIB)
    assert "\n" not in str(e.value)
    assert memory.available(torch.device("cpu")) is None or memory.available(torch.device("cpu")) > 0


def test_plan_chunks_the_agents_of_auto_to_fit_and_refuses_what_cannot():
    cpu = torch.device("cpu")

    def make(backend):
        return StackedModel(mlp, 16, backend=backend), algorithms.make("dsgd", lr=0.1, momentum=0.9)

    model, algo = make("auto")
    full = memory.estimate(model, algo, 64, (3, 4), torch.float32)
    per_agent = full.parts["activations"] // 16
    rest = full.total - full.parts["activations"]
    assert memory.plan(model, algo, 64, (3, 4), torch.float32, cpu, free=full.total) == full  # fits: unchanged
    assert model.backend == "auto"
    free = rest + 5 * per_agent + per_agent // 2  # room for 5 agents' activations
    est = memory.plan(model, algo, 64, (3, 4), torch.float32, cpu, free=free)
    assert (model.backend, model.chunk_size) == ("chunked", 5)
    assert est.total <= free and est.parts["activations"] == 5 * per_agent and "5 agents at a time" in est.note
    assert est.note in est.describe()
    for backend, room in (("vmap", free), ("auto", rest + per_agent - 1)):  # a backend chosen; not one agent
        model, algo = make(backend)
        with pytest.raises(ConfigError, match="is free"):
            memory.plan(model, algo, 64, (3, 4), torch.float32, cpu, free=room)


def test_a_run_that_fits_only_in_chunks_trains_in_chunks(monkeypatch, tmp_path):
    from gossipsim.sim import Config, build

    cfg = Config(agents=8, rounds=2, eval_every=2, batch_size=16, progress=False, out=str(tmp_path / "r"))
    monkeypatch.setattr(memory, "available", lambda device: 10**12)
    roomy = build(cfg)
    per_agent = roomy.memory.parts["activations"] // 8
    monkeypatch.setattr(memory, "available", lambda device: roomy.memory.total - 5 * per_agent)
    engine = build(dataclasses.replace(cfg, out=str(tmp_path / "s")))
    assert (engine.model.backend, engine.model.chunk_size) == ("chunked", 3)
    rows = engine.run(2)
    assert torch.isfinite(torch.tensor(rows[-1]["train_loss"]))


def test_an_evaluation_forwards_no_more_samples_a_call_than_fit_in_a_rounds_memory(fresh_seed):
    def cnn():
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))

    largest = 4 * 8 * 8 * 4  # bytes of the conv's (and ReLU's) output for one float32 sample
    for n, backend, batch, dtype in ((4, "loop", 2, torch.float32), (64, "vmap", 16, torch.float64),
                                     (1024, "vmap", 64, torch.float32)):
        model = StackedModel(cnn, n, backend=backend)
        est = memory.estimate(model, algorithms.make("dsgd", lr=0.1), batch, (1, 8, 8), dtype)
        width = torch.empty((), dtype=dtype).element_size()
        budget = max(est.total - est.parts["state"], 64 * 2**20)  # what a round holds besides the state
        per_sample = 24 * largest * width // 4
        assert est.eval_samples == min(memory.EVAL_SAMPLES_PER_CALL, budget // per_sample), (n, backend)
    # the number of samples a call changes how the test set is cut, not what is measured
    model = StackedModel(cnn, 5, backend="vmap")
    x, buf = model.init(fresh_seed, same_init=False, dtype=torch.float64)
    xs = torch.randn(1234, 1, 8, 8, dtype=torch.float64)
    ys = torch.randint(0, 3, (1234,))
    whole = model.evaluate(x, buf, lambda s, e: xs[s:e], ys)
    for per_call in (1, 7, 600, 2500):
        loss, acc = model.evaluate(x, buf, lambda s, e: xs[s:e], ys, per_call)
        torch.testing.assert_close(loss, whole[0], rtol=1e-12, atol=0, msg=f"seed {fresh_seed}, {per_call}")
        assert torch.equal(acc, whole[1]), (fresh_seed, per_call)
    # test_loss is the model's own loss (train_loss is), not always cross-entropy
    smooth = StackedModel(cnn, 5, backend="vmap",
                          loss_fn=lambda out, y: nn.functional.cross_entropy(out, y, label_smoothing=0.2))
    loss, _ = smooth.evaluate(x, buf, lambda s, e: xs[s:e], ys, 600)
    for i in range(5):
        params = smooth.unflatten(x[i])
        out = torch.func.functional_call(smooth.template, params, (xs,))
        torch.testing.assert_close(loss[i], nn.functional.cross_entropy(out, ys, label_smoothing=0.2),
                                   rtol=1e-12, atol=0)


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]


def _heap_in_use():
    """Bytes glibc's malloc has handed out and not taken back (small blocks and mmapped large ones)."""
    info = _LIBC.mallinfo2()
    return info.uordblks + info.hblkhd


try:
    _LIBC = ctypes.CDLL("libc.so.6")
    _LIBC.mallinfo2.restype = _Mallinfo2
except (OSError, AttributeError):
    _LIBC = None


class _Peak(TorchDispatchMode):
    """The most heap in use after any op run under it."""

    def __init__(self):
        super().__init__()
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.peak = max(self.peak, _heap_in_use())
        return out


@pytest.mark.skipif(_LIBC is None, reason="reads glibc's malloc statistics")
@pytest.mark.parametrize("keys", [
    dict(algorithm="dsgd", momentum=0.9, nesterov=True, weight_decay=5e-4),
    dict(algorithm="al_dsgd", variant="paper", momentum=0.9, weight_decay=5e-4),
    dict(algorithm="al_dsgd", variant="paper", momentum=0.9, nesterov=True, weight_decay=5e-4),
    dict(algorithm="adacons", momentum=0.9, nesterov=True, weight_decay=5e-4),
    dict(algorithm="choco", compressor="rand_k:0.1"),
    dict(algorithm="choco", compressor="qsgd:16", momentum=0.9, weight_decay=5e-4),
    dict(algorithm="choco", compressor="top_k:0.1"),
    dict(algorithm="adagossip", compressor="top_k:0.1", momentum=0.9, weight_decay=5e-4),
    dict(algorithm="malcom_psgd"),
], ids=lambda k: "-".join(str(v) for v in k.values()))
def test_a_round_holds_no_more_than_the_estimate_beside_the_state(keys):
    """Measured on the CPU's heap: the rounds of these took up to twice the estimated gradient and temporaries
    (fresh momentum, weight-decay and Nesterov arrays, the gradient held through the gossip product and AL-DSGD's
    pulls, an (N, P) of QSGD's uniforms, rand-k's float64 keys), so a run that passed the preflight could still
    not fit."""
    from gossipsim.sim import Config, build

    engine = build(Config(dataset="synthetic", model="mlp", agents=16, batch_size=8, rounds=5, eval_every=1000,
                          progress=False, backend="vmap", **keys), out=None)
    for _ in range(3):
        engine.step()
    gc.collect()
    before = _heap_in_use()
    with (peak := _Peak()):
        engine.step()
    parts = engine.memory.parts
    assert peak.peak - before <= parts["gradients"] + parts["step temporaries"] + parts["activations"], (
        (peak.peak - before) / parts["gradients"])


@pytest.mark.skipif(_LIBC is None, reason="reads glibc's malloc statistics")
def test_an_evaluation_holds_no_more_than_a_round_may_beside_the_state():
    """The consensus distance held three float64 copies of its block: an MLP's evaluation took twice the estimate."""
    from gossipsim.sim import Config, build

    engine = build(Config(dataset="synthetic", model="mlp", agents=16, batch_size=8, rounds=5, eval_every=1000,
                          eval_samples=1000, progress=False, backend="vmap"), out=None)
    engine.step()
    gc.collect()
    before = _heap_in_use()
    with (peak := _Peak()):
        engine.evaluate()
    assert peak.peak - before <= engine.memory.total - engine.memory.parts["state"]
