"""compile="graph": the round captured once as a CUDA graph, then replayed (issue 6).

A replay launches all of a round's kernels from one call: no Python, no vmap machinery, no per-launch host
cost. A round can be captured when it reads nothing back from the device and every value that changes from
round to round is a device tensor (the round index, the batch's indices, a schedule's value, the random
draws' seeds and Philox offsets): tests/test_graphed.py checks both on a CPU for every algorithm, against an
emulated capture. MALCOM-PSGD (its code lengths read the number of nonzero symbols) and top-k's torch path
(float64) read back: their capture fails, with a message.

    call 0    the round, eagerly, on a side stream: lazy initializations (cuBLAS workspaces, cuDNN plans,
              Triton compiles, the engine's caches) happen before the capture, as CUDA graphs require
    call 1    capture: the round reads its inputs from fixed tensors (the current state and buffers, copies
              of idx and t) and its last kernels copy the new state and buffers back into them; then replay
    call 2..  copy idx and t in, replay; a state replaced from outside (a checkpoint) is copied in first

The default CUDA generator's offsets advance by the graph's draws at each replay (PyTorch's graph-safe RNG),
so a replayed round draws the numbers an eager round would; a generator of the engine's own (augmentation) is
registered with the graph for the same reason.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.utils import _pytree as pytree

from ..errors import ConfigError


class GraphedRound:
    """round_fn(state, buffers, idx, t, mixing) -> (state, buffers, stats), captured at its second call."""

    def __init__(self, round_fn: Callable, device: torch.device, generators: Sequence[torch.Generator] = (),
                 name: str = "the round"):
        self.round_fn, self.device, self.generators, self.name = round_fn, device, tuple(generators), name
        self.stream = torch.cuda.Stream(device)
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None

    def __call__(self, state, buffers: torch.Tensor, idx: torch.Tensor, t: torch.Tensor, mixing):
        self.calls += 1
        if self.calls == 1:
            return self._on_side_stream(state, buffers, idx, t, mixing)
        if self.calls == 2:
            self._capture(state, buffers, idx, t, mixing)
        return self._replay(state, buffers, idx, t)

    def _on_side_stream(self, *args):
        current = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            out = self.round_fn(*args)
        current.wait_stream(self.stream)
        return out

    def _capture(self, state, buffers, idx, t, mixing) -> None:
        self.inputs, self.spec = pytree.tree_flatten((state, buffers))  # tensors, and None fields of a state
        self.idx, self.t = idx.clone(), t.clone()
        graph = torch.cuda.CUDAGraph()
        for gen in self.generators:
            graph.register_generator_state(gen)
        try:
            with torch.cuda.graph(graph, stream=self.stream):
                new_state, new_buffers, stats = self.round_fn(state, buffers, self.idx, self.t, mixing)
                self._write_back(pytree.tree_flatten((new_state, new_buffers)))
        except RuntimeError as error:
            reason = str(error).strip().splitlines()[0]
            raise ConfigError(f"compile=graph could not capture {self.name} as a CUDA graph ({reason}); a round "
                              f"that reads a value back from the device cannot be captured (MALCOM-PSGD's code "
                              f"lengths, top-k in float64): use compile=round or off") from None
        self.graph, self.stats = graph, stats

    def _write_back(self, flat) -> None:
        """Copy the new state and buffers into the inputs (inside the capture: the graph's last kernels). An output
        that is its input, updated in place, needs no copy; one that shares memory with another input is cloned
        first, so that no copy overwrites what a later one reads."""
        outputs, spec = flat
        if spec != self.spec or any((a is None) != (b is None) for a, b in zip(self.inputs, outputs)):
            raise ConfigError(f"compile=graph: {self.name} returned a state of another structure than it was "
                              f"given ({spec} against {self.spec}): a captured round needs the same one")
        storage = {x.untyped_storage().data_ptr() for x in self.inputs if x is not None}
        pending = []
        for mine, new in zip(self.inputs, outputs):
            if mine is None or new.data_ptr() == mine.data_ptr():
                continue
            pending.append((mine, new.clone() if new.untyped_storage().data_ptr() in storage else new))
        for mine, new in pending:
            mine.copy_(new)

    def _replay(self, state, buffers, idx, t):
        for mine, given in zip(self.inputs, pytree.tree_leaves((state, buffers))):
            if given is not mine:  # state replaced from outside since the capture
                mine.copy_(given)
        self.idx.copy_(idx)
        self.t.copy_(t)
        self.graph.replay()
        state, buffers = pytree.tree_unflatten(self.inputs, self.spec)
        # the next replay overwrites the graph's outputs: the caller keeps copies (a few (N,) statistics)
        return state, buffers, pytree.tree_map(lambda v: v.clone() if torch.is_tensor(v) else v, self.stats)
