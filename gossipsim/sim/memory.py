"""How much memory a run needs, estimated before it allocates any: the preflight `experiment.build` runs.

Nothing here allocates on the device: the algorithm's state is built on the meta device, and the model's
activations are measured by a forward pass of its meta template with hooks on every leaf module.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError
from .algorithms.base import Algorithm, init_on_meta
from .model import EVAL_SAMPLES_PER_CALL, StackedModel

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Estimate:
    """Bytes a run holds at its peak, by what holds them; `note` says what the preflight changed;
    `eval_samples` is how many samples an evaluation call may forward within that peak."""

    parts: dict[str, int]
    note: str = ""
    eval_samples: int = EVAL_SAMPLES_PER_CALL

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def describe(self) -> str:
        """One line: 'about 3.21 GiB (state 1.00 GiB, gradients 512.0 MiB, ...)'."""
        text = f"about {size(self.total)} ({', '.join(f'{k} {size(v)}' for k, v in self.parts.items())})"
        return f"{text}; {self.note}" if self.note else text


def size(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB / 10 else f"{n / 2**20:.1f} MiB"


def _tensors(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for v in obj for t in _tensors(v)]
    return []


def leaf_output_bytes(template: nn.Module, input_shape: Sequence[int]) -> list[int]:
    """Bytes of each leaf module's float32 output, in call order, for one forward pass of `template` (a meta
    module) on an input of `input_shape`."""
    sizes = []

    def count(module, inputs, output):
        sizes.append(sum(t.numel() * 4 for t in _tensors(output)))

    leaves = [m for m in template.modules() if not list(m.children())]
    handles = [m.register_forward_hook(count) for m in leaves]
    try:
        template(torch.empty(*input_shape, device="meta"))
    finally:
        for h in handles:
            h.remove()
    return sizes


def activation_bytes(template: nn.Module, input_shape: Sequence[int]) -> int:
    """Bytes of every leaf module's float32 output for one forward pass: what autograd keeps for the backward
    pass, to a first approximation."""
    return sum(leaf_output_bytes(template, input_shape))


def estimate(model: StackedModel, algorithm: Algorithm, batch_size: int, sample_shape: Sequence[int],
             dtype: torch.dtype) -> Estimate:
    """What a round allocates at its peak besides the datasets: the algorithm's state (x and its copies)
    and the BatchNorm buffers, the gradient, the step's temporaries (two (N, P) arrays: every built-in step
    holds at most two at once besides the gradient, measured on the CPU's heap by tests/test_memory.py), and
    the activations of the agents trained at once (forward outputs kept for the backward pass, and as many
    again for their gradients)."""
    n, p = model.n, model.P
    width = torch.empty((), dtype=dtype).element_size()
    state = init_on_meta(algorithm, n, p, dtype)
    at_once = {"loop": 1, "chunked": min(n, model.chunk_size)}.get(model.backend, n)  # vmap, and auto's worst
    leaves = leaf_output_bytes(model.template, (batch_size, *sample_shape))  # float32 bytes, for the batch
    per_agent = sum(leaves) * width // 4
    parts = {
        "state": sum(t.numel() * t.element_size() for t in _tensors(state)) + n * model.Pbuf * width,
        "gradients": n * p * width,
        "step temporaries": 2 * n * p * width,
        "activations": 2 * at_once * per_agent,
    }
    # An evaluation runs between rounds, in the memory the round's gradients, temporaries and activations
    # held. A forward without autograd holds per sample up to about 20 times its largest layer output at its
    # peak (3 to 19 times measured on a CPU: the layer's input and output, a convolution's workspace, vmapped
    # normalization's temporaries); 64 MiB's worth is allowed whatever the round's size, so that small models
    # still evaluate in large calls.
    per_sample = 24 * max(leaves, default=batch_size) // batch_size * width // 4
    budget = max(parts["gradients"] + parts["step temporaries"] + parts["activations"], 64 * 2**20)
    return Estimate(parts, eval_samples=int(max(1, min(EVAL_SAMPLES_PER_CALL, budget // max(per_sample, 1)))))


def available(device: torch.device) -> int | None:
    """Bytes free on `device` now: the CUDA allocator's view of the GPU, MemAvailable on a Linux host;
    None where it cannot be read."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(
            device)
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def check(est: Estimate, device: torch.device, free: int | None = None) -> None:
    """Refuse, in one line naming both figures, a run whose estimate exceeds what `device` has free."""
    free = available(device) if free is None else free
    if free is not None and est.total > free:
        raise ConfigError(f"this run needs {est.describe()} on {device}, but {size(free)} is free; fewer agents, "
                          f"a smaller batch_size, backend=chunked (with a chunk_size) or backend=loop need less")


def plan(model: StackedModel, algorithm: Algorithm, batch_size: int, sample_shape: Sequence[int],
         dtype: torch.dtype, device: torch.device, free: int | None = None) -> Estimate:
    """The preflight: the run's estimate, after training the agents in chunks where that makes it fit.

    With backend `auto`, when all N agents' activations at once would not fit in what `device` has free,
    the model is set to `chunked` with the largest chunk that fits (auto's timing would run out of memory
    trying vmap). A run that still cannot fit, or fits only by chunking a backend the user chose, is
    refused by `check`."""
    free = available(device) if free is None else free
    est = estimate(model, algorithm, batch_size, sample_shape, dtype)
    if free is None or est.total <= free or model.backend != "auto":
        check(est, device, free)
        return est
    per_agent = est.parts["activations"] // model.n
    rest = est.total - est.parts["activations"]
    chunk = min(model.n - 1, (free - rest) // per_agent) if per_agent else 0
    if chunk < 1:
        check(est, device, free)  # refuses: not even one agent at a time fits
    model.backend, model.chunk_size = "chunked", int(chunk)
    est = dataclasses.replace(estimate(model, algorithm, batch_size, sample_shape, dtype),
                              note=f"all {model.n} agents at once would need {size(est.total)}: "
                                   f"backend chunked, {chunk} agents at a time")
    check(est, device, free)
    return est
