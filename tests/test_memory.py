"""The memory preflight: what it counts, and the refusal of a run that cannot fit."""
from __future__ import annotations

import pytest
import torch
from torch import nn

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
        assert est.parts["state"] == copies * n * p * width
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
