"""A round is one static program: what a CUDA graph replays, and why a round never waits for the device (issue 6).

Two checks, on a CPU, so that every CI run sees what tests/test_gpu.py's no-sync test sees on a GPU only:
- ReadBack watches a round's ops as they run and names each one that reads a value back from the device
  (.item(), bool(), int() of a tensor) or whose output's size depends on the data (nonzero, a boolean mask's
  index, bincount): on CUDA each is a host sync, and an error inside a CUDA graph capture.
- make_fx traces the round once with real tensors. Like a capture, the trace keeps every value the host
  computed as a constant. Replayed on later rounds' inputs, it must give the eager rounds' numbers bit for
  bit: else something changes from round to round on the host (a seed, a counter, a schedule's value).
"""
from __future__ import annotations

import traceback

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from gossipsim.sim import experiment
from gossipsim.sim.config import Config
from tests.reference.cuda_graph import reads_back


class ReadBack(TorchDispatchMode):
    """The ops that read back from the device, each with the line of gossipsim that called it."""

    def __init__(self):
        super().__init__()
        self.found: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if reads_back(func, args, kwargs):
            ours = [f for f in traceback.extract_stack() if "/gossipsim/" in f.filename]
            where = f"gossipsim/{ours[-1].filename.split('/gossipsim/')[-1]}:{ours[-1].lineno}" if ours else "?"
            key = f"{func} from {where}"
            self.found[key] = self.found.get(key, 0) + 1
        return func(*args, **kwargs)


def rounds(keys: dict, seed: int, count: int = 4):
    """(the eager rounds' outputs, what they read back, the traced round) for `count` rounds after round 0 of a
    float64 engine on a ring of 5; each round's outputs are its tensors, state and buffers first."""
    cfg = Config(**{"topology": "ring", "agents": 5, "rounds": 8, "eval_every": 8, "lr": 0.05, "batch_size": 4,
                    "progress": False, "dtype": "float64", "seed": seed, **keys})
    engine = experiment.build(cfg)
    engine.step()  # round 0 fills the caches (tables, constants) that a capture reads, as compile="round" does
    mixing = engine.topology.mixing(engine.t)  # a static topology: the same mixing every round
    idx = [engine.sampler.sample(engine.t + k) for k in range(count)]  # (N, B) each; host bookkeeping
    ts = [engine._round_index() for _ in range(count)]
    leaves, spec = pytree.tree_flatten((engine.state, engine.buffers, idx[0], ts[0]))
    constants = {i: v for i, v in enumerate(leaves) if not torch.is_tensor(v)}  # None fields of a state
    carried = [v for v in leaves if torch.is_tensor(v)][:-2]  # the state's and buffers' tensors

    def round_(*tensors):
        it = iter(tensors)
        state, buffers, i, t = pytree.tree_unflatten([constants[k] if k in constants else next(it)
                                                      for k in range(spec.num_leaves)], spec)
        return [v for v in pytree.tree_leaves(engine._round(state, buffers, i, t, mixing)) if torch.is_tensor(v)]

    start_rng, start_aug = engine._rng, engine.augment_rng.get_state()

    def from_start():
        engine._rng = start_rng
        engine.augment_rng.set_state(start_aug)
        return [a.clone() for a in carried]

    def run(step):
        state, outs = from_start(), []
        for k in range(count):
            with engine._own_rng():
                outs.append(step(*state, idx[k], ts[k]))
            state = [o.clone() for o in outs[-1][:len(carried)]]
        return outs

    with ReadBack() as watch:
        eager = run(round_)
    if watch.found:
        return eager, watch.found, None
    state = from_start()
    with engine._own_rng():
        traced = make_fx(round_)(*state, idx[0], ts[0])
    return eager, {}, lambda: run(traced)


CASES = {
    "dsgd": dict(algorithm="dsgd"),
    "dpsgd-momentum-multistep": dict(algorithm="dpsgd", topology="exponential", momentum=0.9,
                                     lr_schedule="multistep", milestones=[3]),
    "dsgd-augment": dict(algorithm="dsgd", augment=True),
    "allreduce": dict(algorithm="allreduce"),
    "local": dict(algorithm="local"),
    "choco-qsgd": dict(algorithm="choco", compressor="qsgd:16,scaled", gamma=0.5),
    "choco-sign-per-layer": dict(algorithm="choco", compressor="sign", compress_per="layer", gamma=0.5),
    "choco-rand-k": dict(algorithm="choco", compressor="rand_k:0.1", gamma=0.3),
    "choco-parallel-qsgd": dict(algorithm="choco_parallel", compressor="qsgd:16,scaled", gamma=0.5),
    "adagossip-sign": dict(algorithm="adagossip", compressor="sign", gamma=0.005),
    "adacons": dict(algorithm="adacons"),
    "lenet5-choco-qsgd": dict(algorithm="choco", compressor="qsgd:4,scaled", gamma=0.5, model="lenet5"),
}


@pytest.mark.parametrize("keys", list(CASES.values()), ids=list(CASES))
def test_a_round_reads_nothing_back_and_its_trace_replays_later_rounds(keys, fresh_seed):
    eager, found, replay = rounds(keys, fresh_seed % 1000)
    assert not found, "read back from the device:\n" + "\n".join(found)
    for k, (a, b) in enumerate(zip(eager, replay())):
        for i, (u, v) in enumerate(zip(a, b)):
            if not torch.equal(u, v):
                pytest.fail(f"round {k + 1} after round 0, output {i}: the trace froze a value the host changes")


@pytest.mark.parametrize("keys,where", [
    # MALCOM-PSGD's source-code length follows the number of nonzero symbols (kernels/bits.py elias_golomb):
    # tests/test_gpu.py's no-sync test names the same exception
    (dict(algorithm="malcom_psgd", compressor="dithered:15,scaled", compress_per="layer", gamma=0.1, mu=1e-4),
     "gossipsim/kernels/bits.py"),
    # top-k's torch path asks whether any row ties at its threshold (free on a CPU); on CUDA, float32 takes
    # the Triton top-k, which does not ask (tests/test_gpu.py)
    (dict(algorithm="choco", compressor="top_k:0.1", gamma=0.5), "gossipsim/kernels/compressors.py")],
    ids=["malcom", "choco-top-k-torch-path"])
def test_the_rounds_known_to_read_back(keys, where):
    _, found, _ = rounds(keys, 0)
    assert found and all(where in f for f in found), "\n".join(found)


def test_the_checks_see_a_host_value_and_a_read_back():
    # what the tests above must catch, on toy rounds: a host counter frozen by the trace, and reads back
    counter = [0]

    def host_counter(x):
        counter[0] += 1
        return (x + counter[0],)

    traced = make_fx(host_counter)(torch.zeros(3))
    assert not torch.equal(traced(torch.zeros(3))[0], host_counter(torch.zeros(3))[0])
    with ReadBack() as watch:
        x = torch.randn(7)
        x[x > 0].sum(), torch.nonzero(x), x.repeat_interleave(torch.tensor(2)), float(x.sum())
        x.repeat_interleave(torch.tensor(2), output_size=14), x[torch.tensor([1, 2])], x.sum() * 2
    assert len(watch.found) == 4, watch.found
