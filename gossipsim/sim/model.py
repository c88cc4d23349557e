"""The stacked functional model: N agents' parameters as one flat (N, P) tensor.

The nn.Module is built once on the meta device as a template. A flat row x (P,) is unflattened into that
template's parameters by `torch.split(...).view(...)` inside `torch.func.functional_call`, so the gradient
of one agent's loss with respect to its row is already a (P,) row, and `vmap(grad_and_value(...))` over the
rows returns the (N, P) gradient with no copying or reshaping afterwards.

BatchNorm running statistics (every floating-point buffer) are engine state, an (N, Pbuf) tensor. The
per-agent function clones its buffers (each tensor separately: under vmap an in-place update to a view of
one flat clone would be lost), lets BatchNorm update them in place, and returns them through `has_aux`.
BatchNorm's integer num_batches_tracked is scratch, created inside the function: nothing may be mutated that
the grad transform has captured, and it only matters for momentum=None, which is refused. Any other integer or
bool buffer (a fixed mask, a pixel permutation) is a constant, the same for every agent: its value is taken
from the module `init` builds.

Backends, all numerically the same function of the same rows:
  vmap     one vmapped call over all N agents (default on CUDA);
  loop     one agent at a time over row views of the same flat tensors (sometimes faster on a CPU,
           where vmapped convolutions become slow grouped convolutions);
  chunked  vmap over blocks of `chunk_size` agents, bounding activation memory;
  auto     picks the fastest of the above by timing a few oracle calls on the first real batch.
"""
from __future__ import annotations

import ctypes
import numbers
import random
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from ..errors import ConfigError

BACKENDS = ("auto", "vmap", "loop", "chunked")
BN_MODES = ("local", "gossip")
_AUTO_CHOICES: dict[tuple, tuple[str, dict[str, float]]] = {}  # what backend="auto" measured, per shape


# The most samples (agents x test samples) one evaluation call forwards: larger calls are no faster
EVAL_SAMPLES_PER_CALL = 4000


def _batchnorm_in_float32(module: nn.Module, args: tuple) -> tuple:
    x = args[0]
    return (x.float(), *args[1:]) if x.dtype in (torch.bfloat16, torch.float16) else args


def _rows(t: torch.Tensor, n: int) -> torch.Tensor:
    """(1 or n, W) -> (n, W), contiguous with the default strides. An expanded (n, 0), a model without buffers,
    counts as contiguous and would keep its stride 0, which a compiled round's (n, 0) output has not: the
    guard failed and the round recompiled (backend=chunked)."""
    t = t.expand(n, -1).contiguous()
    return t if t.numel() else t.new_empty(t.shape)


class StackedModel:
    """N copies of one architecture whose parameters are the rows of a flat (N, P) tensor.

    factory: a zero-argument callable returning the nn.Module (any module works: built on the meta
    device for the template, and on the CPU under a fixed seed for the initial parameters).
    """

    def __init__(self, factory: Callable[[], nn.Module], n: int, *, backend: str = "auto",
                 chunk_size: int | None = None, bn: str = "local",
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
                 autocast: torch.dtype | None = None):
        if isinstance(factory, nn.Module) or not callable(factory):
            raise ConfigError(f"StackedModel takes a factory, a callable that returns a new nn.Module, got "
                              f"{type(factory).__name__}; e.g. lambda: sim.models.make('lenet5')")
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise ConfigError(f"StackedModel needs a whole number n >= 1 of agents, got {n!r}")
        n = int(n)
        if backend not in BACKENDS:
            raise ConfigError(f"unknown backend {backend!r}; accepted: {', '.join(BACKENDS)}")
        if bn not in BN_MODES:
            raise ConfigError(f"unknown bn mode {bn!r}; accepted: {', '.join(BN_MODES)}")
        if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral)
                                       or chunk_size < 1):
            raise ConfigError(f"chunk_size must be a whole number >= 1 of agents, or None, got {chunk_size!r}")
        if autocast not in (None, torch.bfloat16, torch.float16):
            raise ConfigError(f"autocast must be None, torch.bfloat16 or torch.float16, got {autocast!r}")
        self.factory, self.n, self.bn, self.loss_fn, self.autocast = factory, n, bn, loss_fn, autocast
        self.backend = backend
        self.chunk_size = int(chunk_size) if chunk_size else max(1, n // 4)
        with torch.device("meta"):
            self.template = factory()
        if not isinstance(self.template, nn.Module):
            raise ConfigError(f"the model factory returned {type(self.template).__name__}, not an nn.Module")
        for m in self.template.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.momentum is None:
                raise ConfigError("BatchNorm with momentum=None (cumulative averages) is not supported; "
                                  "give it a momentum such as 0.1")
        if autocast is not None:
            # BatchNorm in float32 under autocast: its batch statistics want the precision, and on a CPU the
            # vmapped batch norm of a bfloat16 input with float32 weights fails ("expected scalar type")
            for m in self.template.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.register_forward_pre_hook(_batchnorm_in_float32)
        params = list(self.template.named_parameters())
        buffers = [(k, b) for k, b in self.template.named_buffers() if b.is_floating_point()]
        self.param_names = [k for k, _ in params]
        self.param_shapes = [p.shape for _, p in params]
        self.param_sizes = [p.numel() for _, p in params]
        self.buffer_names = [k for k, _ in buffers]
        self.buffer_shapes = [b.shape for _, b in buffers]
        self.buffer_sizes = [b.numel() for _, b in buffers]
        whole = [k for k, b in self.template.named_buffers() if not b.is_floating_point()]
        self.scratch_names = [k for k in whole if k.rsplit(".", 1)[-1] == "num_batches_tracked"]
        self.constant_names = [k for k in whole if k not in self.scratch_names]
        self.constants: dict[str, torch.Tensor] | None = None if self.constant_names else {}  # set by init
        self.P, self.Pbuf = sum(self.param_sizes), sum(self.buffer_sizes)
        self._vgrad = vmap(grad_and_value(self._loss_one, has_aux=True), randomness="different")
        self._vforward = vmap(self._forward_one, in_dims=(0, 0, None), randomness="different")

    # ----------------------------------------------------------------------------------------------
    def init(self, seed: int = 0, *, same_init: bool = True, dtype: torch.dtype = torch.float32,
             device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Initial parameters x0 (N, P) and buffers (N, Pbuf); every agent starts from the same seeded x0
        unless same_init=False, in which case agent i gets the i-th of N consecutive draws."""
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ConfigError(f"init's dtype must be a floating torch.dtype such as torch.float64, got {dtype!r}")
        rows, bufs = [], []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for _ in range(1 if same_init else self.n):
                module = self.factory()
                p = dict(module.named_parameters())
                b = dict(module.named_buffers())
                rows.append(_flat([p[k] for k in self.param_names], dtype))
                bufs.append(_flat([b[k] for k in self.buffer_names], dtype))
                if len(rows) == 1:  # the constants of the first agent's module are everyone's
                    self.constants = {k: b[k].detach().to(device, copy=True) for k in self.constant_names}
        x0, b0 = torch.stack(rows), torch.stack(bufs)  # (1 or N, P), (1 or N, Pbuf)
        return _rows(x0, self.n).to(device), _rows(b0, self.n).to(device)

    def unflatten(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """One agent's row (P,) as the template's named parameters (views, no copy)."""
        return {k: t.view(s) for k, t, s in zip(self.param_names, torch.split(x, self.param_sizes),
                                                   self.param_shapes)}

    def layer_sizes(self) -> list[int]:
        """Sizes of the parameter tensors in row order: the layer boundaries per-layer compressors use."""
        return list(self.param_sizes)

    # ----------------------------------------------------------------------------------------------
    def _state(self, x: torch.Tensor, buf: torch.Tensor):
        params = self.unflatten(x)
        bufs = [t.view(s).clone() for t, s in zip(torch.split(buf, self.buffer_sizes), self.buffer_shapes)]
        state = dict(zip(self.buffer_names, bufs))
        state.update({k: torch.zeros((), dtype=torch.long, device=x.device) for k in self.scratch_names})
        if self.constants is None:
            raise ConfigError(f"the model's integer buffers {', '.join(self.constant_names)} take their values "
                              f"from StackedModel.init(): call it first")
        state.update(self.constants)
        return params, state, bufs

    def _loss_one(self, x, buf, xb, yb):
        # x (P,), buf (Pbuf,), xb (B, C, H, W), yb (B,)
        params, state, bufs = self._state(x, buf)
        out = functional_call(self.template, (params, state), (xb,))
        loss = self.loss_fn(out, yb)
        new_buf = torch.cat([b.reshape(-1) for b in bufs]) if bufs else buf.clone()  # (Pbuf,)
        return loss, new_buf

    def _grad_one(self, x, buf, xb, yb):
        # Plain autograd, not torch.func.grad: under the grad transform backward runs with gradient
        # tracking on, and some kernels (GroupNorm's, convolutions') take slower paths. Same numbers.
        x = x.detach().requires_grad_()
        with torch.enable_grad():
            loss, new_buf = self._loss_one(x, buf, xb, yb)
            (g,) = torch.autograd.grad(loss, x)
        return loss.detach(), g, new_buf

    def compile_oracle(self) -> None:
        """torch.compile the vmapped gradient (backends vmap and chunked). Its shapes never change, so it
        compiles once (chunked: once more for a shorter last chunk). The loop backend keeps plain autograd,
        which dynamo does not trace."""
        self._vgrad = torch.compile(self._vgrad, dynamic=False)

    def _forward_one(self, x, buf, xb):
        params, state, _ = self._state(x, buf)
        return functional_call(self.template, (params, state), (xb,))

    # ----------------------------------------------------------------------------------------------
    def grad(self, x: torch.Tensor, buf: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor,
             backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-agent minibatch loss (N,), gradient (N, P) and updated BatchNorm buffers (N, Pbuf).

        x (N, P), buf (N, Pbuf), xb (N, B, ...) normalized inputs, yb (N, B) labels.
        """
        backend = backend or self.backend
        self._check_batch(x, xb, yb, backend)
        if backend == "auto":
            backend = self.choose_backend(x, buf, xb, yb)
        if self.autocast is not None:  # forward and backward in low precision; x, g and buffers stay as they are
            with torch.autocast(x.device.type, dtype=self.autocast):
                return self._grad(x, buf, xb, yb, backend)
        return self._grad(x, buf, xb, yb, backend)

    def _check_batch(self, x: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor, backend: str) -> None:
        """One line for a batch that does not fit (shapes and dtypes only: no host sync). A loop over agents
        would otherwise drop the extra agents' batches silently, and torch's errors never name xb or yb."""
        if backend not in BACKENDS:
            raise ConfigError(f"unknown backend {backend!r}; accepted: {', '.join(BACKENDS)}")
        if x.dim() != 2 or x.shape[1] != self.P:
            raise ConfigError(f"x must be (N, P) with P = {self.P}, got {tuple(x.shape)}")
        if xb.dim() < 3 or xb.shape[0] != x.shape[0] or tuple(yb.shape[:2]) != tuple(xb.shape[:2]):
            raise ConfigError(f"a batch per agent: xb (N, B, ...) and yb (N, B, ...) with N = {x.shape[0]}, got xb "
                              f"{tuple(xb.shape)} and yb {tuple(yb.shape)}")
        if xb.dtype != x.dtype and not (self.autocast is not None and xb.is_floating_point()):
            raise ConfigError(f"xb is {xb.dtype} but the parameters are {x.dtype}: normalize the inputs to "
                              f"{x.dtype} (data.Dataset.normalize does)")
        if self.loss_fn is F.cross_entropy and (yb.is_floating_point() or yb.dim() != 2):
            raise ConfigError(f"yb holds class labels, (N, B) integers, got {yb.dtype} {tuple(yb.shape)} (another "
                              f"kind of target needs a loss_fn of its own)")

    def _grad(self, x, buf, xb, yb, backend: str):
        self.template.train()
        if backend == "vmap":
            g, (loss, new_buf) = self._vgrad(x, buf, xb, yb)
            return loss, g, new_buf
        step = 1 if backend == "loop" else self.chunk_size
        loss, g, new_buf = x.new_empty(x.shape[0]), torch.empty_like(x), torch.empty_like(buf)
        for s in range(0, x.shape[0], step):
            e = s + step
            if backend == "loop":
                loss[s], g[s], new_buf[s] = self._grad_one(x[s], buf[s], xb[s], yb[s])
            else:
                g[s:e], (loss[s:e], new_buf[s:e]) = self._vgrad(x[s:e], buf[s:e], xb[s:e], yb[s:e])
        return loss, g, new_buf

    def choose_backend(self, x, buf, xb, yb, repeats: int = 5) -> str:
        """Resolve backend='auto' by timing the backends on this batch; the choice is kept in self.backend.

        Candidates are timed interleaved, in a fresh order each repeat, and compared by their median, so
        a slow spell of the machine hits them all alike; one clearly slower after two repeats is dropped.
        """
        if self.backend != "auto":
            return self.backend
        # The same architecture on the same shapes behaves the same: measure once per process.
        key = (tuple(self.param_shapes), tuple(self.buffer_shapes), tuple(xb.shape), xb.dtype, x.device,
               self.chunk_size)
        if key in _AUTO_CHOICES:
            self.backend, self.timings = _AUTO_CHOICES[key]
            return self.backend
        candidates = ["vmap", "loop"] + (["chunked"] if 1 < self.chunk_size < self.n else [])
        times: dict[str, list[float]] = {}
        for name in candidates:
            try:
                self.grad(x, buf, xb, yb, backend=name)  # warm up: lazy init, allocator growth
                times[name] = []
            except torch.OutOfMemoryError:
                continue
        order, dropped = random.Random(0), {}
        for r in range(repeats):
            names = list(times)
            order.shuffle(names)
            for name in names:
                times[name].append(_time(lambda name=name: self.grad(x, buf, xb, yb, backend=name), x.device))
            if r == 1:  # two samples each: stop timing what is clearly slower
                best = min(statistics.median(v) for v in times.values())
                dropped = {k: statistics.median(v) for k, v in times.items() if statistics.median(v) > 1.3 * best}
                times = {k: v for k, v in times.items() if k not in dropped}
        timings = {k: statistics.median(v) for k, v in times.items()}
        self.backend = min(timings, key=timings.get)
        timings.update(dropped)
        self.timings = timings
        _AUTO_CHOICES[key] = (self.backend, timings)
        return self.backend

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, buf: torch.Tensor, inputs: Callable[[int, int], torch.Tensor],
                 labels: torch.Tensor, samples_per_call: int = EVAL_SAMPLES_PER_CALL
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean test loss (N,) and accuracy (N,) of every row of x on a whole labelled set.

        inputs(s, e) returns the normalized samples s..e (e - s, C, H, W); labels (S,). Each call forwards at
        most samples_per_call samples (agents x test samples), so that activations stay bounded: test batches
        of up to 500, and as many agents at a time as fit (loop backend: one).
        """
        self.template.eval()
        n, total = x.shape[0], labels.shape[0]
        backend = self.backend if self.backend != "auto" else ("vmap" if x.is_cuda else "loop")
        batch_size = max(1, min(500, samples_per_call))
        chunk = 1 if backend == "loop" else max(1, samples_per_call // batch_size)
        loss_sum = torch.zeros(n, dtype=torch.float64, device=x.device)
        correct = torch.zeros(n, dtype=torch.float64, device=x.device)
        for s in range(0, total, batch_size):
            xb, yb = inputs(s, min(s + batch_size, total)), labels[s:s + batch_size]
            for a in range(0, n, chunk):
                if chunk == 1:
                    out = self._forward_one(x[a], buf[a], xb)[None]  # (1, b, K)
                else:
                    out = self._vforward(x[a:a + chunk], buf[a:a + chunk], xb)  # (chunk, b, K)
                # the training loss (a mean over the batch, whatever loss_fn is) weighted by the batch's size
                loss_sum[a:a + chunk] += torch.stack([self.loss_fn(o, yb) for o in out]).double() * len(yb)
                correct[a:a + chunk] += (out.argmax(-1) == yb).sum(1)
        self.template.train()
        return loss_sum / total, correct / total


def _flat(tensors: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    if not tensors:
        return torch.zeros(0, dtype=dtype)
    return torch.cat([t.detach().reshape(-1) for t in tensors]).to(dtype)


def _time(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse instead of returning it to the OS after every step.

    By default glibc serves large allocations (every (N, P) tensor of a big run: 100 MB for 128 MLPs)
    with mmap and unmaps them on free, so every round page-faults them in afresh; that took a third of
    an MLP round at N = 128. Serving everything from the heap and never trimming it keeps those pages;
    the price is that the process holds on to its peak memory. Returns whether it took effect.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(libc.mallopt(m_mmap_max, 0) and libc.mallopt(m_trim_threshold, 2**31 - 1))
