"""CUDA graph capture and replay, emulated on a CPU: what lets compile="graph" (gossipsim/sim/graphed.py) run
in CI, end to end through the engine.

A capture records the aten ops its block runs, with their arguments (host values frozen, as in a real
capture). Then it undoes what they did, since a real capture executes nothing: the memory that existed before
it gets its bytes back, and the generators their states. A read back from the device (.item(), bool(), int()
of a tensor, or an op whose output's size depends on the data: nonzero, a boolean mask's index, bincount)
raises, naming the line of gossipsim that did it: on CUDA each is a host sync, and an error in a capture.

A replay runs the recorded ops again on the same tensors and writes each result into the tensor the capture
produced (a graph's fixed memory). Random ops draw again from the generator they name, or the default one:
fresh numbers each replay, in the order an eager round draws them, as PyTorch's graph-safe Philox offsets
give on a GPU.

    emulate(monkeypatch)   torch.cuda.{CUDAGraph, graph, Stream, stream, current_stream, synchronize} replaced
"""
from __future__ import annotations

import contextlib
import traceback

import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
READ_BACK = {aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default,
             aten.bincount.default, aten._unique2.default, aten.unique_dim.default, aten.unique_consecutive.default}


def reads_back(func, args, kwargs) -> bool:
    """Whether an op reads a value or its output's size back from the device: a host sync on CUDA."""
    if func in (aten.repeat_interleave.Tensor, aten.repeat_interleave.self_Tensor):
        return kwargs.get("output_size") is None  # sized by the host when given output_size
    if func in (aten.index.Tensor, aten.index_put.default, aten.index_put_.default):
        return any(i is not None and i.dtype == torch.bool for i in args[1])  # a nonzero inside
    return func in READ_BACK


def _tensors(tree) -> list[torch.Tensor]:
    return [v for v in pytree.tree_leaves(tree) if torch.is_tensor(v)]


def _written(func, args, kwargs) -> list[torch.Tensor]:
    """The tensors an op writes into (self of an in-place op, out= arguments)."""
    out = []
    for i, arg in enumerate(func._schema.arguments):
        if arg.alias_info is not None and arg.alias_info.is_write:
            value = args[i] if i < len(args) else kwargs.get(arg.name)
            out += _tensors(value)
    return out


class CUDAGraph:
    def __init__(self, *_, **__):
        self.ops: list = []
        self.generators: list[torch.Generator] = []

    def register_generator_state(self, generator: torch.Generator) -> None:
        self.generators.append(generator)

    def replay(self) -> None:
        for func, args, kwargs, outs in self.ops:
            for mine, new in zip(outs, _tensors(func(*args, **kwargs))):
                if new.data_ptr() != mine.data_ptr() or new.shape != mine.shape or new.stride() != mine.stride():
                    mine.copy_(new)


class _Capture(TorchDispatchMode):
    def __init__(self, graph: CUDAGraph):
        super().__init__()
        self.graph = graph
        self.fresh: set[int] = set()  # storages allocated during the capture
        self.saved: dict[int, tuple] = {}  # storages that existed before it: their bytes, to restore

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if reads_back(func, args, kwargs):
            raise RuntimeError(f"CUDA error: operation not permitted when stream is capturing ({func} from "
                               f"{_caller()})")
        for t in _written(func, args, kwargs):
            storage = t.untyped_storage()
            if storage.data_ptr() not in self.fresh and storage.data_ptr() not in self.saved:
                self.saved[storage.data_ptr()] = (storage, storage.clone())
        inputs = {t.untyped_storage().data_ptr() for t in _tensors((args, kwargs))}
        # the record keeps views of the tensors as they are now: an in-place op on metadata (unsqueeze_) later in
        # the block must not change the shapes this op sees at replay
        frozen = pytree.tree_map(lambda v: _frozen(v) if torch.is_tensor(v) else v, (args, kwargs))
        out = func(*args, **kwargs)
        outs = _tensors(out)
        self.fresh |= {t.untyped_storage().data_ptr() for t in outs} - inputs
        self.graph.ops.append((func, *frozen, [_frozen(t) for t in outs]))  # keeps all alive: no memory reused
        return out


def _caller() -> str:
    """The line of gossipsim that is running an op."""
    ours = [f for f in traceback.extract_stack() if "/gossipsim/" in f.filename]
    return f"gossipsim/{ours[-1].filename.split('/gossipsim/')[-1]}:{ours[-1].lineno}" if ours else "?"


def _frozen(t: torch.Tensor) -> torch.Tensor:
    """A view of t's memory with t's present shape, strides and offset (t itself if not strided: sparse)."""
    return t.as_strided(t.shape, t.stride(), t.storage_offset()) if t.layout == torch.strided else t


@contextlib.contextmanager
def graph(cuda_graph: CUDAGraph, pool=None, stream=None, **_):
    states = [torch.get_rng_state()] + [g.get_state() for g in cuda_graph.generators]
    capture = _Capture(cuda_graph)
    try:
        with capture:
            yield
    finally:  # a capture executes nothing: every byte and generator back as it was
        for storage, before in capture.saved.values():
            storage.copy_(before)
        torch.set_rng_state(states[0])
        for g, s in zip(cuda_graph.generators, states[1:]):
            g.set_state(s)


class Stream:
    def __init__(self, *_, **__):
        pass

    def wait_stream(self, other) -> None:
        pass


def emulate(monkeypatch) -> None:
    for name, value in (("CUDAGraph", CUDAGraph), ("graph", graph), ("Stream", Stream),
                        ("stream", lambda s: contextlib.nullcontext()), ("current_stream", lambda *_: Stream()),
                        ("synchronize", lambda *_: None)):
        monkeypatch.setattr(torch.cuda, name, value)
