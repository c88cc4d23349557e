"""compile=oracle|round: the same numbers as eager rounds, and no recompilation once compiled (issue 6).

Compiling takes 10 to 20 s a case on 2 CPU cores, so the cases are few and small."""
from __future__ import annotations

import pytest
import torch
from torch.utils import _pytree as pytree

from gossipsim import ConfigError
from gossipsim.sim import experiment
from gossipsim.sim.config import Config


def engine(tmp_path, compile_mode, **keys):
    values = dict(agents=6, rounds=8, eval_every=8, batch_size=8, progress=False, backend="vmap", dtype="float64",
                  lr_schedule="cosine", out=str(tmp_path / compile_mode), compile=compile_mode, eval_samples=100,
                  eval_agents=False)
    return experiment.build(Config(**{**values, **keys}))


@pytest.mark.parametrize("keys", [
    dict(algorithm="dsgd", model="mlp", topology="ring"),
    dict(algorithm="choco", compressor="top_k:0.05", gamma=0.5, model="lenet5", topology="ring"),
    dict(algorithm="dsgd", model="mlp", topology="random_matching"),  # a new W_t a round: the oracle compiled
    # the source code's length has as many terms as nonzero symbols: a shape that changes every round
    dict(algorithm="malcom_psgd", compressor="dithered:16,scaled", compress_per="layer", gamma=0.05, mu=1e-4,
         model="mlp", topology="ring"),
    # a model without buffers: their (N, 0) tensor had stride 0, the compiled round's output has not (a recompile)
    dict(algorithm="dsgd", model="mlp", topology="ring", backend="chunked", chunk_size=4),
], ids=["dsgd-ring", "choco-topk-lenet5", "dsgd-random-schedule", "malcom-elias-golomb", "dsgd-chunked"])
def test_compiled_rounds_equal_eager_and_never_recompile(keys, tmp_path):
    torch._dynamo.reset()
    eager, compiled = engine(tmp_path, "off", **keys), engine(tmp_path, "round", **keys)
    for e in (eager, compiled):  # round 0 eager (it fills the caches the compiled round reads), round 1 compiles
        e.run(2)
    assert compiled.compile_time > 0
    # the round index and the cosine schedule's lr are device tensors: a new value must not recompile
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(6):
            for e in (eager, compiled):
                e.run(1)
            torch.testing.assert_close(compiled.state.x, eager.state.x, rtol=1e-10, atol=1e-12)
    assert compiled.summary()["compile_time"] == compiled.compile_time <= compiled.setup_time
    # the compiling round's time is compile time, so its samples are not in samples/s either
    assert (compiled.untimed_rounds, eager.untimed_rounds) == (1, 0)
    assert compiled.summary()["samples_per_s"] == pytest.approx(7 * 6 * 8 / compiled.train_time)
    assert eager.summary()["samples_per_s"] == pytest.approx(8 * 6 * 8 / eager.train_time)


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


def test_compile_graph_needs_cuda_and_a_static_topology(tmp_path):
    for topology, shown in (("ring", r"ring4 \(static\)"), ("random_matching", r"random_matching4 \(time-varying\)")):
        with pytest.raises(ConfigError, match=f"compile=graph .* got device=cpu and topology {shown}"):
            experiment.build(Config(agents=4, rounds=2, eval_every=2, progress=False, compile="graph",
                                    topology=topology, out=str(tmp_path / topology)))


def test_a_captured_round_writes_its_new_state_back_into_its_inputs(fresh_seed):
    # GraphedRound's last captured kernels: in place outputs are left alone, others copied into the inputs, and
    # an output that is another input's memory (here x and x_hat swapped) is cloned before any copy overwrites it
    from gossipsim.sim.graphed import GraphedRound

    x, x_hat, buf, bn = (torch.randn(3, 5) for _ in range(4))
    before = [v.clone() for v in (x, x_hat, buf, bn)]
    graphed = GraphedRound.__new__(GraphedRound)
    graphed.name = "a round"
    graphed.inputs, graphed.spec = pytree.tree_flatten(((x, x_hat, None, buf), bn))
    new_bn = bn.mul_(2)  # updated in place
    graphed._write_back(pytree.tree_flatten(((x_hat, x, None, buf + 1), new_bn)))
    for got, want in zip((x, x_hat, buf, bn), (before[1], before[0], before[2] + 1, before[3] * 2)):
        assert torch.equal(got, want), f"seed {fresh_seed}"
    for other in (((x, x_hat, buf, buf), bn), ((x, x_hat, buf), bn)):  # a None field filled; a field gone
        with pytest.raises(ConfigError, match="another structure"):
            graphed._write_back(pytree.tree_flatten(other))
