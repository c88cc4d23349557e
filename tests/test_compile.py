"""compile=oracle|round: the same numbers as eager rounds, and no recompilation once compiled (issue 6).

Compiling takes 10 to 20 s a case on 2 CPU cores, so the cases are few and small."""
from __future__ import annotations

import pytest
import torch

from gossipsim import ConfigError
from gossipsim.sim import experiment
from gossipsim.sim.config import Config


def engine(tmp_path, compile_mode, **keys):
    values = dict(agents=6, rounds=8, eval_every=8, batch_size=8, progress=False, backend="vmap", dtype="float64",
                  lr_schedule="cosine", out=str(tmp_path / compile_mode), compile=compile_mode, **keys)
    return experiment.build(Config(**values))


@pytest.mark.parametrize("keys", [
    dict(algorithm="dsgd", model="mlp", topology="ring"),
    dict(algorithm="choco", compressor="top_k:0.05", gamma=0.5, model="lenet5", topology="ring"),
    dict(algorithm="dsgd", model="mlp", topology="random_matching"),  # a new W_t a round: the oracle compiled
    # the source code's length has as many terms as nonzero symbols: a shape that changes every round
    dict(algorithm="malcom_psgd", compressor="dithered:16,scaled", compress_per="layer", gamma=0.05, mu=1e-4,
         model="mlp", topology="ring"),
], ids=["dsgd-ring", "choco-topk-lenet5", "dsgd-random-schedule", "malcom-elias-golomb"])
def test_compiled_rounds_equal_eager_and_never_recompile(keys, tmp_path):
    torch._dynamo.reset()
    eager, compiled = engine(tmp_path, "off", **keys), engine(tmp_path, "round", **keys)
    for _ in range(2):  # round 0 eager (it fills the caches the compiled round reads), round 1 compiles
        eager.step()
        compiled.step()
    assert compiled.compile_time > 0
    # the round index and the cosine schedule's lr are device tensors: a new value must not recompile
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(6):
            eager.step()
            compiled.step()
            torch.testing.assert_close(compiled.state.x, eager.state.x, rtol=1e-10, atol=1e-12)
    assert compiled.summary()["compile_time"] == compiled.compile_time <= compiled.setup_time


def test_compile_key_is_checked():
    with pytest.raises(ConfigError, match="compile"):
        Config(compile="yes")


def test_a_rare_branch_compiles_no_graph_mid_run():
    # top-k's tie branch runs in the odd round only (equal magnitudes at the threshold): in a compiled round
    # it must not compile a graph there (it did, 1 s in round 30 of a CHOCO run); a mid-run compile is not a
    # recompilation, so error_on_recompile does not see it: the graph count does
    from torch._dynamo.utils import counters

    from gossipsim import kernels

    torch._dynamo.reset()
    counters.clear()
    comp = kernels.top_k(0.1)
    f = torch.compile(lambda r: comp.roundtrip(r)[0] * 2, dynamic=False)
    untied, tied = torch.randn(4, 100), torch.randint(-3, 4, (4, 100)).float()
    f(untied)
    graphs = counters["stats"]["unique_graphs"]
    torch.testing.assert_close(f(tied), comp.roundtrip(tied)[0] * 2, rtol=0, atol=0)
    assert counters["stats"]["unique_graphs"] == graphs
