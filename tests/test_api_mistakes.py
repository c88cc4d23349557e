"""Mistakes with the Python API: one ConfigError line naming the value, never a deep traceback or a silently
wrong result (the command line's are in test_cli.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from gossipsim import ConfigError, graphs, kernels, sim
from gossipsim.sim import results


def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.ReLU(), nn.Linear(5, 3))


def one_line(call, needle):
    with pytest.raises(ConfigError, match=needle) as e:
        call()
    assert "\n" not in str(e.value)


def test_the_stacked_model_and_its_batches():
    one_line(lambda: sim.StackedModel(mlp(), 4), r"takes a factory, a callable that returns a new nn.Module, got "
                                                 r"Sequential")
    one_line(lambda: sim.StackedModel(lambda: None, 4), "the model factory returned NoneType, not an nn.Module")
    for n in (0, -1, 2.0, "2"):
        one_line(lambda n=n: sim.StackedModel(mlp, n), f"whole number n >= 1 of agents, got {n!r}")
    model = sim.StackedModel(mlp, 2)
    one_line(lambda: model.init(dtype="float64"), "init's dtype must be a floating torch.dtype")
    x, buf = model.init()
    xb, yb = torch.randn(2, 5, 12), torch.randint(0, 3, (2, 5))
    for backend in ("vmap", "loop", "chunked"):
        # a batch for three agents: the loop dropped the third silently
        one_line(lambda b=backend: model.grad(x, buf, torch.randn(3, 5, 12), torch.randint(0, 3, (3, 5)), b),
                 r"xb \(N, B, ...\) and yb \(N, B, ...\) with N = 2, got xb \(3, 5, 12\)")
        one_line(lambda b=backend: model.grad(x, buf, xb.double(), yb, b), "xb is torch.float64 but the "
                                                                          "parameters are torch.float32")
        one_line(lambda b=backend: model.grad(x, buf, xb, yb.float(), b), r"yb holds class labels, \(N, B\) "
                                                                          r"integers, got torch.float32")
    one_line(lambda: model.grad(x, buf, xb, yb, "vmpa"), "unknown backend 'vmpa'")
    one_line(lambda: model.grad(x[0], buf, xb, yb), r"x must be \(N, P\) with P = 83, got \(83,\)")
    # a loss of one's own takes targets of its own: regression targets (N, B, 3) in float
    regress = sim.StackedModel(mlp, 2, loss_fn=nn.functional.mse_loss)
    x, buf = regress.init()
    loss, g, _ = regress.grad(x, buf, xb, torch.randn(2, 5, 3), "loop")
    assert loss.shape == (2,) and g.shape == x.shape
    assert sim.StackedModel(mlp, np.int64(3)).n == 3
    for size in (0, 2.5, "2", True):  # 2.5 was taken, and the first chunked grad raised a TypeError
        one_line(lambda s=size: sim.StackedModel(mlp, 4, chunk_size=s), f"chunk_size must be a whole number >= 1 "
                                                                          f"of agents, or None, got {size!r}")
    assert sim.StackedModel(mlp, 4, chunk_size=np.int64(2)).chunk_size == 2
    one_line(lambda: sim.models.make("mlp", hidden=200), "hidden must be a sequence of layer widths, e.g. "
                                                         r"\(200, 200\), got 200")


def test_an_oracle_that_breaks_the_contract():
    x0 = torch.randn(4, 6, dtype=torch.float64)
    algo = sim.algorithms.make("dsgd", lr=0.1)
    mixing = graphs.ring(4).mixing(0)
    g = torch.randn(4, 6, dtype=torch.float64)
    for oracle, needle in (
            (lambda x: (torch.zeros(4, dtype=x.dtype), g[:, :1]), r"must return loss \(4,\) and g \(4, 6\), got "
                                                                  r"\(4,\) and \(4, 1\)"),  # broadcast, silently
            (lambda x: (torch.zeros((), dtype=x.dtype), g), r"got \(\) and \(4, 6\)"),
            (lambda x: (torch.zeros(4, dtype=x.dtype), g, None), "got 3 values .*take \\[:2\\]")):
        one_line(lambda o=oracle: algo.step(algo.init(x0), sim.Round(torch.tensor(0), o, mixing)), needle)


def test_hyperparameters_of_the_wrong_type():
    one_line(lambda: sim.algorithms.make("dsgd", lr=0.1, momentum="0.9"), "momentum must be a number, got '0.9'")
    one_line(lambda: sim.algorithms.make("choco", lr=0.1, gamma="0.5"), "choco gamma must be a number, got '0.5'")
    one_line(lambda: sim.algorithms.make("dsgd", lr=0.1, momentum=0.9, nesterov="False"),
             "nesterov must be True or False, got 'False'")  # a non-empty string switched Nesterov on


def test_compressors():
    # NumPy scalars, as np.linspace and np.arange give them
    assert kernels.top_k(np.float32(0.25)).fraction == 0.25 and kernels.qsgd(np.int64(4)).levels == 4
    assert type(kernels.rand_k(np.float64(0.5)).fraction) is float
    one_line(lambda: kernels.sign().roundtrip(torch.tensor([[1, 2, 4, -3]])), "sign compresses floating-point "
                                                                              "rows, got torch.int64")
    r = torch.randn(3, 10)
    for comp in (kernels.identity(per="layer"), kernels.top_k(0.5, per="layer")):  # identity took any sizes
        one_line(lambda c=comp: c.roundtrip(r), r"\(per='layer'\) needs the layer sizes")
        one_line(lambda c=comp: c.with_layers((3, 4)).roundtrip(r), "layer sizes sum to 7 but rows have 10")
    one_line(lambda: kernels.identity().decompress(r), "identity: decompress and bits take what compress "
                                                       "returns \\(a Dense\\), got Tensor")
    one_line(lambda: kernels.top_k(0.5).bits(r), r"top_k\(0.5\): decompress and bits take .*\(a Sparse\)")
    one_line(lambda: kernels.qsgd(4).decompress(r), r"\(a Quantized\), got Tensor")


def test_gossip_graphs_and_results():
    M = graphs.ring(4).mixing(0)
    one_line(lambda: M(torch.randn(4, 4, 3)), r"a tensor \(N, P\) or \(N,\) with N = 4, a row an agent; got "
                                              r"\(4, 4, 3\)")  # mixed along dim 1, silently
    one_line(lambda: M(torch.randn(5, 3)), r"got \(5, 3\)")
    one_line(lambda: M(np.ones((4, 2))), "got ndarray")
    one_line(lambda: graphs.erdos_renyi(8, "0.5"), "edge probability must be a number in \\(0, 1\\], got '0.5'")
    one_line(lambda: results.mean_std([], "test_acc"), "mean_std needs at least one run")
    one_line(lambda: results.plot([], "p.png"), "plot needs at least one run")  # it drew an empty figure


def test_one_path_is_one_path(tmp_path):
    one_line(lambda: results.find_runs(str(tmp_path)), f"{str(tmp_path)!r} holds no run directories")
