"""The gossip operator of one round, and the static topology that always returns the same one."""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from functools import cached_property

import networkx as nx
import torch

from ..errors import ConfigError


class Mixing:
    """One round's mixing matrix W (N, N) and the gossip operator M(x) = W @ x.

    W is kept in float64 on the host-chosen device; M(x) casts it once per dtype so that gossip runs in
    the dtype of x. Float32 matmuls never use TF32 here: an averaging error of 1e-3 would put a floor
    under the consensus distance. Sparse graphs of many agents (a ring of 128: 3 nonzeros a row) use a
    CSR product, which reads each neighbour row once instead of multiplying N^2 mostly-zero weights.
    `path` forces one product ("dense", "sparse" or "circulant"); by default `path_on(device)` picks.
    """

    SPARSE_MIN_N = 32  # below this the dense product is as fast and simpler
    SPARSE_MAX_DENSITY = 0.25
    # On a CPU the CSR product runs over column blocks of x of about this many bytes (N * c * itemsize),
    # written straight into the output: the block's neighbour rows are re-read from cache, not memory.
    # Measured on 2 cores (benchmarks/gossip.py): 1.5x to 4x faster than one CSR product over all of x
    # at N >= 256, and faster than the shifted slices of a ring or torus, whose passes each go to memory.
    CPU_BLOCK_BYTES = 4 << 20
    PATHS = ("dense", "sparse", "circulant")

    def __init__(self, W: torch.Tensor, grid: tuple[int, ...] | None = None, path: str | None = None,
                 host: torch.Tensor | None = None, graph: nx.Graph | None = None,
                 matchings: Sequence[Sequence[tuple[int, int]]] | None = None):
        if W.dim() != 2 or W.shape[0] != W.shape[1]:
            raise ConfigError(f"mixing matrix must be square (N, N), got shape {tuple(W.shape)}")
        if path is not None and path not in self.PATHS:
            raise ConfigError(f"gossip path {path!r} is not one of {', '.join(self.PATHS)}")
        self.W = W.to(torch.float64)  # (N, N)
        self._host = None if host is None else host.to(torch.float64)  # the same W on the host, when at hand
        self.grid = grid
        self._cast: dict[tuple[torch.dtype, torch.device, bool], torch.Tensor] = {}
        # Circulant graphs (ring: grid (N,); torus: grid (R, C)) can gossip by shifted slices, one pass over x a
        # shift, with no temporaries.
        self.shifts = _shifts(self.host, grid) if grid is not None else None  # host work, done once
        if path == "circulant" and self.shifts is None:
            raise ConfigError("gossip path 'circulant' needs a circulant graph (ring, torus, exponential)")
        self.forced = path
        self.graph, self.matchings = graph, matchings  # what `order` reads

    def to(self, device: torch.device | str) -> Mixing:
        """The same round's Mixing on `device`. It keeps its host copy: reading its structure later would wait
        for the device, mid-round."""
        return Mixing(self.W.to(device), self.grid, self.forced, self.host, self.graph, self.matchings)

    @property
    def n(self) -> int:
        return self.W.shape[0]

    def dense(self) -> torch.Tensor:
        """W as an (N, N) float64 tensor."""
        return self.W

    @cached_property
    def host(self) -> torch.Tensor:
        """W as an (N, N) float64 CPU tensor. The structure (sparsity, neighbour table, shifts) is read from
        it: a schedule that draws W_t on the host passes it along, and its rounds never wait for the device."""
        return self._host if self._host is not None else self.W.cpu()

    @cached_property
    def sparse(self) -> bool:
        """Whether W is sparse enough for the CSR product to beat the dense one."""
        n = self.n
        return n >= self.SPARSE_MIN_N and int((self.host != 0).sum()) <= self.SPARSE_MAX_DENSITY * n * n

    def path_on(self, device: torch.device | str) -> str:
        """The product M(x) uses for x on `device`: the one dispatch point.

        Sparse graphs take the sparse path on every device: on a CPU, CSR over column blocks; on CUDA the
        Triton neighbour-table kernel (CSR without Triton). The circulant path is never picked: measured
        slower on 2 CPU cores and on an H100 alike (benchmarks/gossip.py), since each shift is a pass over x.
        """
        if self.forced is not None:
            return self.forced
        return "sparse" if self.sparse else "dense"

    @property
    def path(self) -> str:
        """The product M(x) uses on W's device."""
        return self.path_on(self.W.device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """W @ x for x (N, P) or (N,), in the dtype of x."""
        if not isinstance(x, torch.Tensor) or x.dim() not in (1, 2) or x.shape[0] != self.n:
            what = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ConfigError(f"gossip mixes a tensor (N, P) or (N,) with N = {self.n}, a row an agent; got {what}")
        if not x.is_floating_point():  # W cast to an integer dtype is all zeros
            raise ConfigError(f"gossip mixes floating-point rows, got {x.dtype}; convert x with x.double()")
        if x.dim() == 1:
            return self(x.unsqueeze(1)).squeeze(1)
        path = self.path_on(x.device)
        if path == "circulant":
            return self._circulant(x)
        if path == "sparse" and not x.is_cuda and x.dtype not in (torch.float32, torch.float64):
            path = "dense"  # the CPU CSR product has no half-precision kernels
        W = self._weights(x, sparse=path == "sparse")
        if path == "sparse":
            return self._csr(W, x)
        if x.is_cuda and x.dtype == torch.float32:
            allow = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = False
            try:
                return W @ x
            finally:
                torch.backends.cuda.matmul.allow_tf32 = allow
        return W @ x

    def _weights(self, x: torch.Tensor, sparse: bool) -> torch.Tensor:
        """W in the dtype and on the device of x, CSR or dense, cast once."""
        key = (x.dtype, x.device, sparse)
        W = self._cast.get(key)
        if W is None:
            W = self.W.to(dtype=x.dtype, device=x.device)
            if sparse:
                with warnings.catch_warnings():  # "sparse CSR support is in beta": the product is tested
                    warnings.simplefilter("ignore", UserWarning)
                    W = W.to_sparse_csr()
            self._cast[key] = W
        return W

    def table(self, dtype: torch.dtype, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """The neighbour table of the Triton kernels: idx (N, D) int32 and w (N, D), self included,
        rows padded with weight 0 (D = the largest degree + 1)."""
        key = ("table", dtype, torch.device(device))
        if key not in self._cast:
            A = self.host != 0
            A.fill_diagonal_(True)
            D = int(A.sum(1).max())
            order = torch.argsort(A.to(torch.int8), dim=1, descending=True, stable=True)[:, :D]  # (N, D)
            pad = ~A.gather(1, order)
            w = self.host.gather(1, order).masked_fill(pad, 0.0)
            idx = torch.where(pad, torch.arange(self.n).unsqueeze(1), order)  # padding re-reads row i, weight 0
            self._cast[key] = (upload(idx.to(torch.int32), device), upload(w.to(dtype), device))
        return self._cast[key]

    def _csr(self, W: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda:
            from ..kernels import ops

            if ops.backend(x) == "triton":  # reads each neighbour row once, from L2 (benchmarks/gossip.py)
                return ops.gossip(*self.table(x.dtype, x.device), x)
            return W @ x
        n, p = x.shape
        out = torch.empty(n, p, dtype=x.dtype, device=x.device)
        c = max(256, self.CPU_BLOCK_BYTES // (n * x.element_size()))  # columns a block
        for a in range(0, p, c):
            block = out[:, a:a + c]  # (N, c) view, written in place (beta=0 ignores its old contents)
            torch.addmm(block, W, x[:, a:a + c], beta=0, out=block)
        return out

    def _circulant(self, x: torch.Tensor) -> torch.Tensor:
        # out_i = w_0 x_i + sum_(dim, s) w_s x_(i + s along dim): one output, no (N, P) temporaries.
        grid, w0, shifts = self.shifts
        x = x.contiguous()
        out = torch.mul(x, w0)
        xv, ov = x.view(*grid, -1), out.view(*grid, -1)
        for dim, s, w in shifts:
            n = grid[dim]
            ov.narrow(dim, 0, n - s).add_(xv.narrow(dim, s, n - s), alpha=w)
            ov.narrow(dim, n - s, s).add_(xv.narrow(dim, 0, s), alpha=w)
        return out

    @cached_property
    def neighbors(self) -> list[list[int]]:
        """Active neighbours of each agent (j != i with W_ij != 0), in increasing order."""
        A = self.host != 0
        A.fill_diagonal_(False)
        return [torch.nonzero(row).flatten().tolist() for row in A]

    @cached_property
    def order(self) -> torch.Tensor:
        """(N, N) int64 on W's device: where agent j stands in agent i's list of itself and its active neighbours,
        the list the official AL-DSGD code breaks ties in (ALGORITHMS.md 5): i itself first (0), then its
        neighbours in the order of the matchings that link them (1 + the matching's index). The matchings are
        the schedule's (MATCHA's, or given); else those graphs.matcha.decompose finds in the graph, as MATCHA on
        this graph would have them. A neighbour in no matching comes after those that are, by index."""
        from .matcha import decompose_graph  # matcha builds on this module

        n = self.n
        A = self.host != 0
        A.fill_diagonal_(False)
        order = torch.full((n, n), 2 * n * n, dtype=torch.int64)  # never a neighbour: after every one
        if A.sum(1).max() > 1:  # with at most one neighbour an agent has no tie to order
            matchings = self.matchings
            if matchings is None:
                matchings = decompose_graph(self.graph if self.graph is not None else nx.from_numpy_array(A.numpy()))
            order[A] = (len(matchings) + 1 + torch.arange(n)).expand(n, n)[A]
            for m, edges in enumerate(matchings):
                for a, b in edges:
                    if A[a, b]:
                        order[a, b] = order[b, a] = m + 1
        else:
            order[A] = 1
        order.fill_diagonal_(0)
        return upload(order, self.W.device)

    @cached_property
    def links(self) -> torch.Tensor:
        """(N, N) bool on W's device: links[i, j] when agent i mixes agent j's model this round (i != j)."""
        A = self.W != 0
        return A.fill_diagonal_(False)

    @cached_property
    def degrees(self) -> torch.Tensor:
        """Active out-degree of each agent: how many agents mix its model this round, (N,) int64 on W's device."""
        return self.links.sum(0)

    @cached_property
    def edges(self) -> int:
        """Number of active directed links (an undirected edge counts twice: one message each way)."""
        return int(self.degrees.sum())


def upload(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A host tensor on `device`. To CUDA it goes through pinned memory without blocking: a copy from pageable
    memory waits for the stream (a host synchronization inside the round)."""
    device = torch.device(device)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def _shifts(W: torch.Tensor, grid: tuple[int, ...]):
    """(grid, w_0, [(dim, s, w_s)]) if W is circulant on the grid (agent index = row-major grid position),
    else None. Row i receives w_s from the agent s steps further along `dim`."""
    n = W.shape[0]
    if n != int(torch.tensor(grid).prod()):
        return None
    idx = torch.arange(n).view(grid)
    W0 = W[0]  # row of agent 0: the weights every agent gives its shifted neighbours
    shifts, rebuilt = [], torch.diag(W.diagonal())
    for dim, size in enumerate(grid):
        for s in range(1, size):
            j = int(idx.roll(-s, dims=dim).flatten()[0])  # the agent s steps from agent 0 along dim
            w = float(W0[j])
            if w:
                shifts.append((dim, s, w))
                rebuilt[torch.arange(n), idx.roll(-s, dims=dim).flatten()] += w
    w_diag = float(W[0, 0])
    if not torch.allclose(W.diagonal(), torch.full((n,), w_diag, dtype=W.dtype), rtol=0, atol=1e-15):
        return None
    if not torch.allclose(rebuilt, W, rtol=0, atol=1e-15):  # e.g. diagonal neighbours, or unequal weights
        return None
    return grid, w_diag, shifts


class Topology:
    """A static topology: the same Mixing every round. `graph` is the networkx graph it came from."""

    def __init__(self, W: torch.Tensor, graph: nx.Graph | None = None, name: str = "custom",
                 grid: tuple[int, ...] | None = None):
        self._mixing = Mixing(W, grid, graph=graph)
        self.graph, self.name, self.grid = graph, name, grid

    @property
    def n(self) -> int:
        return self._mixing.n

    def mixing(self, t: int | torch.Tensor = 0) -> Mixing:
        """The Mixing of round t (static topologies ignore t)."""
        return self._mixing

    def to(self, device: torch.device | str) -> Topology:
        return Topology(self._mixing.W.to(device), self.graph, self.name, self.grid)

    def __repr__(self) -> str:
        return f"Topology({self.name}, n={self.n})"
