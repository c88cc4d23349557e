"""autocast=bf16: forward and backward in bfloat16, parameters, gradients, buffers and gossip in float32."""
from __future__ import annotations

import pytest
import torch

from gossipsim import ConfigError, sim
from gossipsim.sim.model import StackedModel
from gossipsim.sim.models import make


@pytest.mark.parametrize("name,kwargs", [("mlp", {"in_features": 784}), ("lenet5", {}),
                                         ("resnet20", {"in_channels": 1, "norm": "bn"})])
def test_bf16_gradients_are_float32_and_near_the_float32_ones(name, kwargs, fresh_seed):
    def model(backend, autocast=None):
        return StackedModel(lambda: make(name, **kwargs), 3, backend=backend, autocast=autocast)

    x, buf = model("vmap").init(fresh_seed % 1000)
    g = torch.Generator().manual_seed(fresh_seed)
    xb, yb = torch.randn(3, 16, 1, 28, 28, generator=g), torch.randint(0, 10, (3, 16), generator=g)
    _, g32, _ = model("vmap").grad(x, buf, xb, yb)
    # BatchNorm under vmap is where bf16 broke on a CPU ("expected scalar type"): it runs in float32
    lv, gv, bv = model("vmap", torch.bfloat16).grad(x, buf, xb, yb)
    ll, gl, bl = model("loop", torch.bfloat16).grad(x, buf, xb, yb)
    assert gv.dtype == gl.dtype == bv.dtype == lv.dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity
    # bfloat16 keeps 8 bits of mantissa: the gradients stay aligned, not equal
    assert float(cos(gv.flatten(), g32.flatten(), dim=0)) > 0.9, f"seed {fresh_seed}"
    assert float(cos(gv.flatten(), gl.flatten(), dim=0)) > 0.95, f"seed {fresh_seed}"
    torch.testing.assert_close(bv, bl, rtol=0.05, atol=1e-3)


def test_a_bf16_run_learns(tmp_path):
    cfg = sim.Config(agents=4, rounds=60, eval_every=60, lr=0.1, batch_size=16, progress=False,
                     out=str(tmp_path / "run"), backend="vmap", eval_samples=300, autocast="bf16")
    history = sim.build(cfg).run(60)
    assert history[-1]["test_acc"] > 0.3 > history[0]["test_acc"]  # chance is 0.1


def test_autocast_needs_float32():
    with pytest.raises(ConfigError, match="autocast=bf16 needs dtype=float32"):
        sim.Config(autocast="bf16", dtype="float64")
    with pytest.raises(ConfigError, match="autocast"):
        sim.Config(autocast="fp8")
