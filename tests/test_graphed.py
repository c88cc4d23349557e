"""compile="graph" through the engine, on a CPU: torch.cuda's graph capture and replay emulated
(tests/reference/cuda_graph.py), so that the engine's side of it (the warm-up round, the capture, the new state
written back into the inputs, the batch and round index copied in, a replaced state copied in, the statistics
kept) runs in CI. What only a GPU shows (streams, Philox offsets, the speed) is in tests/test_gpu.py.

They also check what makes a round capturable, for every algorithm, on every CI run: it reads nothing back
from the device (the emulated capture raises at a read-back, as a real one does, so this is tests/test_gpu.py's
no-sync test, run on a CPU), and nothing in it changes from round to round on the host (the capture freezes
host values, so a seed or counter kept on the host makes the replayed rounds differ from the eager ones)."""
from __future__ import annotations

import copy

import pytest
import torch

from gossipsim import ConfigError
from gossipsim.sim import experiment
from gossipsim.sim.config import Config
from tests.reference import cuda_graph


@pytest.fixture
def emulated(monkeypatch):
    cuda_graph.emulate(monkeypatch)


def engine(tmp_path, mode: str, seed: int, **keys):
    cfg = Config(**{"topology": "ring", "agents": 5, "rounds": 9, "eval_every": 3, "lr": 0.05, "batch_size": 4,
                    "progress": False, "dtype": "float64", "seed": seed, "out": str(tmp_path / mode), **keys})
    e = experiment.build(cfg)
    e.compile = mode  # the engine refuses "graph" on a CPU: set after its checks, the emulation stands in
    return e


CASES = {
    "dsgd": dict(algorithm="dsgd"),
    "dsgd-augment": dict(algorithm="dsgd", augment=True),  # the augmentation's own generator, registered
    "dpsgd-momentum-multistep": dict(algorithm="dpsgd", topology="exponential", momentum=0.9,
                                     lr_schedule="multistep", milestones=[4]),
    "allreduce": dict(algorithm="allreduce"),
    "local": dict(algorithm="local"),
    "choco-qsgd": dict(algorithm="choco", compressor="qsgd:16,scaled", gamma=0.5),
    "choco-sign-per-layer": dict(algorithm="choco", compressor="sign", compress_per="layer", gamma=0.5),
    "choco-rand-k": dict(algorithm="choco", compressor="rand_k:0.1", gamma=0.3),
    "choco-parallel-sign": dict(algorithm="choco_parallel", compressor="sign", gamma=0.5),
    "adagossip-rand-k": dict(algorithm="adagossip", compressor="rand_k:0.2", gamma=0.005),
    "adacons": dict(algorithm="adacons"),
    "lenet5-choco-qsgd": dict(algorithm="choco", compressor="qsgd:4,scaled", gamma=0.5, model="lenet5"),
    "lenet5-bn-gossip": dict(algorithm="dsgd", model="lenet5", bn="gossip"),
}


@pytest.mark.parametrize("keys", list(CASES.values()), ids=list(CASES))
def test_graph_rounds_equal_eager_rounds(keys, emulated, tmp_path, fresh_seed):
    eager, graphed = (engine(tmp_path, mode, fresh_seed % 1000, **keys) for mode in ("off", "graph"))
    eager.run(9)
    graphed.run(9)  # round 0 warms up, round 1 is captured, rounds 1 to 8 replay it; evaluations in between
    assert len(graphed._compiled_round.graph.ops) > 10 and graphed.compile_time > 0
    for name, a in eager.state._asdict().items():
        b = getattr(graphed.state, name)
        assert (a is None and b is None) or torch.equal(a, b), f"{name}, seed {fresh_seed}"
    assert torch.equal(eager.buffers, graphed.buffers)
    for a, b in zip(eager.history, graphed.history, strict=True):
        assert (a["round"], a["train_loss"], a["test_acc"]) == (b["round"], b["train_loss"], b["test_acc"])


def test_a_state_replaced_after_the_capture_is_copied_into_the_graph(emulated, tmp_path, fresh_seed):
    # a checkpoint loaded into a running engine brings new tensors: the graph reads its own, so they are copied in
    keys = dict(algorithm="choco", compressor="qsgd:4,scaled", gamma=0.5, momentum=0.5)
    eager, graphed = (engine(tmp_path, mode, fresh_seed % 1000, **keys) for mode in ("off", "graph"))
    graphed.run_dir = None  # its run directory would refuse another run's checkpoint: not what is tested here
    graphed.run(3)
    eager.run(6)
    graphed.load_state_dict(copy.deepcopy(eager.state_dict()))  # on a CPU its tensors are eager's own
    assert graphed.state.x is not graphed._compiled_round.inputs[0]
    eager.run(3)
    graphed.run(3)
    assert torch.equal(graphed.state.x, eager.state.x) and torch.equal(graphed.state.buf, eager.state.buf)


@pytest.mark.parametrize("keys,where", [
    # MALCOM-PSGD's source-code length follows the number of nonzero symbols (kernels/bits.py elias_golomb):
    # tests/test_gpu.py's no-sync test names the same exception
    (dict(algorithm="malcom_psgd", compressor="dithered:15,scaled", compress_per="layer", gamma=0.1, mu=1e-4),
     "gossipsim/kernels/bits.py"),
    # top-k's torch path asks whether any row ties at its threshold (free on a CPU); on CUDA, float32 takes
    # the Triton top-k, which does not ask
    (dict(algorithm="choco", compressor="top_k:0.1", gamma=0.5), "gossipsim/kernels/compressors.py")],
    ids=["malcom", "top-k-float64"])
def test_a_round_that_reads_back_is_refused_with_one_line(keys, where, emulated, tmp_path):
    e = engine(tmp_path, "graph", 0, **keys)
    e.step()
    with pytest.raises(ConfigError, match=f"compile=graph could not capture a round of .*{where}.*: use compile="):
        e.step()


def test_the_emulated_capture_executes_nothing_and_each_replay_runs_once(emulated):
    # the emulation itself: the stand-in must behave as a capture does, or the tests above prove nothing
    x, gen = torch.zeros(4), torch.Generator().manual_seed(1)
    graph = torch.cuda.CUDAGraph()
    graph.register_generator_state(gen)
    rng, gen_state = torch.get_rng_state(), gen.get_state()
    with torch.cuda.graph(graph):
        x.add_(1)
        y = x + torch.rand(4) + torch.rand(4, generator=gen)
    assert torch.equal(x, torch.zeros(4)) and torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(gen.get_state(), gen_state)
    graph.replay()
    first = y.clone()
    expect = 1 + torch.rand(4, generator=torch.Generator().manual_seed(0).set_state(rng)) + \
        torch.rand(4, generator=torch.Generator().manual_seed(0).set_state(gen_state))
    assert torch.equal(x, torch.ones(4)) and torch.equal(first, expect)
    graph.replay()
    assert torch.equal(x, torch.full((4,), 2.0)) and not torch.equal(y, first)
    with pytest.raises(RuntimeError, match="not permitted when stream is capturing"):
        with torch.cuda.graph(torch.cuda.CUDAGraph()):
            x.sum().item()
