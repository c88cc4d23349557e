"""Topologies built with networkx once, then kept as (N, N) mixing matrices, and their weights."""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import networkx as nx
import torch

from ..errors import ConfigError
from .mixing import Topology

WEIGHTS = ("metropolis", "uniform", "max_degree", "laplacian")


def mixing_weights(g: nx.Graph, weights: str = "metropolis") -> torch.Tensor:
    """A symmetric doubly stochastic W (N, N) float64 for the undirected graph g (nodes 0..N-1)."""
    n = g.number_of_nodes()
    if n < 2:
        raise ConfigError(f"a topology needs at least 2 agents, got {n}")
    try:
        ordered = sorted(g.nodes)
    except TypeError:  # labels of several types: the graph's own order
        ordered = None
    if ordered != list(range(n)):
        g = nx.convert_node_labels_to_integers(g, ordering="default" if ordered is None else "sorted")
    if not nx.is_connected(g):
        parts = nx.number_connected_components(g)
        raise ConfigError(f"graph is disconnected ({parts} components): gossip cannot reach consensus")
    A = torch.tensor(nx.to_numpy_array(g, nodelist=range(n), weight=None), dtype=torch.float64)  # (N, N)
    return weights_from_adjacency(A, weights)


def weights_from_adjacency(A: torch.Tensor, weights: str = "metropolis") -> torch.Tensor:
    """W (N, N) for a symmetric 0/1 adjacency A; no connectivity check (a time-varying round may be split)."""
    A = A.to(torch.float64).clone()
    A.fill_diagonal_(0)
    deg = A.sum(1)  # (N,)
    if weights == "metropolis":
        # Metropolis-Hastings: doubly stochastic on any graph; 1/(deg+1) on regular ones.
        W = A / (1 + torch.maximum(deg[:, None], deg[None, :]))
    elif weights == "uniform":
        if deg.min() != deg.max():
            raise ConfigError(f"weights='uniform' needs a regular graph (degrees here range "
                              f"{int(deg.min())}..{int(deg.max())}); use weights='metropolis'")
        W = A / (deg[:, None] + 1)
    elif weights == "max_degree":
        W = A / (deg.max() + 1)
    elif weights == "laplacian":
        # W = I - alpha L with alpha = 2 / (lambda_2(L) + lambda_max(L)), the best constant step for a fixed
        # graph; what the MATCHA and AL-DSGD code use. On irregular graphs a hub's self weight 1 - alpha*deg
        # can be negative; W still averages (||W - J|| = (l_max - l_2)/(l_max + l_2) < 1).
        L = torch.diag(deg) - A
        ev = torch.linalg.eigvalsh(L)  # ascending, ev[0] = 0
        # the smallest nonzero eigenvalue: lambda_2 on a connected graph; on one split by failed links (a
        # round of BASE+fail) lambda_2 = 0 would give W an eigenvalue -1, a mode flipping sign forever
        positive = ev[ev > 1e-9 * ev[-1]]
        W = -2.0 / (positive[0] + ev[-1]) * L if ev[-1] > 0 else torch.zeros_like(L)
    else:
        raise ConfigError(f"unknown weights {weights!r}; accepted: {', '.join(WEIGHTS)}")
    W.fill_diagonal_(0)
    W += torch.diag(1 - W.sum(1))
    return W


def from_networkx(g: nx.Graph, weights: str = "metropolis", name: str | None = None) -> Topology:
    """Any undirected networkx graph as a static topology (nodes relabelled 0..N-1 in sorted order, or in the
    graph's order where labels do not sort; parallel edges of a multigraph count once)."""
    if g.is_directed():
        raise ConfigError("from_networkx takes an undirected graph (the weights are symmetric); give "
                          "g.to_undirected(), or a directed mixing matrix to from_matrix")
    return _named(nx.Graph(g), weights, name or f"graph{g.number_of_nodes()}")


def ring(n: int, weights: str = "metropolis") -> Topology:
    """Cycle of n agents; each talks to its two neighbours (one for n = 2)."""
    _check_n(n)
    return Topology(mixing_weights(nx.cycle_graph(n), weights), nx.cycle_graph(n), f"ring{n}", grid=(n,))


def circulant(n: int, offsets: Sequence[int], weights: str = "metropolis") -> Topology:
    """Agent i linked to i +- s (mod n) for each offset s; ring(n) is circulant(n, [1]). AdaGossip's code calls
    circulant(n, [1, 4]) its torus ("GridGraph", ALGORITHMS.md 3): not torus(4, n // 4), where agent 3's
    right-hand neighbour is 0 (its row wraps), but a ring with chords to i +- 4."""
    _check_n(n)
    if not offsets or any(not isinstance(s, int) or not 0 < s < n for s in offsets):
        raise ConfigError(f"circulant offsets must be whole numbers in [1, {n - 1}] for {n} agents, "
                          f"got {list(offsets)}")
    g = nx.circulant_graph(n, offsets)
    return Topology(mixing_weights(g, weights), g, f"circulant{n}({','.join(map(str, offsets))})", grid=(n,))


def complete(n: int, weights: str = "metropolis") -> Topology:
    """Everyone talks to everyone: W = J, exact averaging each round."""
    _check_n(n)
    return Topology(mixing_weights(nx.complete_graph(n), weights), nx.complete_graph(n), f"complete{n}")


def torus(r: int, c: int, weights: str = "metropolis") -> Topology:
    """r x c grid with wrap-around (4 neighbours each when r, c >= 3)."""
    _check_side(r, c)
    g = nx.grid_2d_graph(r, c, periodic=True)
    return Topology(mixing_weights(g, weights), g, f"torus{r}x{c}", grid=(r, c))


def grid(r: int, c: int, weights: str = "metropolis") -> Topology:
    """r x c grid without wrap-around (irregular: corners have degree 2)."""
    _check_side(r, c)
    return _named(nx.grid_2d_graph(r, c), weights, f"grid{r}x{c}")


def dyck(weights: str = "metropolis") -> Topology:
    """The Dyck graph: 32 nodes, cubic (3-regular), 48 edges, girth 6 (LCF [5, -5, 13, -13]^8); AdaGossip's graph."""
    return _named(nx.LCF_graph(32, [5, -5, 13, -13], 8), weights, "dyck")


def petersen(weights: str = "metropolis") -> Topology:
    """The Petersen graph: 10 nodes, 3-regular, 15 edges."""
    return _named(nx.petersen_graph(), weights, "petersen")


def star(n: int, weights: str = "metropolis") -> Topology:
    """One hub (agent 0) and n - 1 leaves."""
    _check_n(n)
    return _named(nx.star_graph(n - 1), weights, f"star{n}")


def hypercube(d: int, weights: str = "metropolis") -> Topology:
    """The d-dimensional hypercube: 2^d agents, neighbours differ in one bit of their index."""
    if not isinstance(d, int) or d < 1:
        raise ConfigError(f"hypercube dimension must be an integer >= 1, got {d!r}")
    g = nx.Graph()
    g.add_nodes_from(range(2**d))
    g.add_edges_from((i, i ^ (1 << k)) for i in range(2**d) for k in range(d) if i < i ^ (1 << k))
    return _named(g, weights, f"hypercube{d}")


def exponential(n: int, weights: str = "metropolis") -> Topology:
    """Agent i linked to i +- 2^k (mod n) for every 2^k < n: log-degree, fast mixing (undirected form)."""
    _check_n(n)
    g = nx.Graph()
    g.add_nodes_from(range(n))
    k = 1
    while k < n:
        g.add_edges_from((i, (i + k) % n) for i in range(n) if (i + k) % n != i)
        k *= 2
    return Topology(mixing_weights(g, weights), g, f"exponential{n}", grid=(n,))


def erdos_renyi(n: int, p: float, seed: int = 0, weights: str = "metropolis") -> Topology:
    """G(n, p): each edge present independently with probability p, drawn from `seed`; must be connected."""
    _check_n(n)
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 < p <= 1:
        raise ConfigError(f"erdos_renyi edge probability must be a number in (0, 1], got {p!r}")
    g = nx.erdos_renyi_graph(n, p, seed=seed)
    _check_connected(g, f"erdos_renyi({n}, {p}, seed={seed})", "raise p or try another seed")
    return _named(g, weights, f"erdos_renyi{n}")


def random_regular(n: int, d: int, seed: int = 0, weights: str = "metropolis") -> Topology:
    """A uniformly random d-regular graph on n agents, drawn from `seed`; must be connected."""
    _check_n(n)
    if not isinstance(d, int) or not 1 <= d < n or (n * d) % 2:
        raise ConfigError(f"random_regular needs an integer degree 1 <= d < n with n*d even, got n={n}, d={d!r}")
    g = nx.random_regular_graph(d, n, seed=seed)
    _check_connected(g, f"random_regular({n}, {d}, seed={seed})", "raise d or try another seed")
    return _named(g, weights, f"random_regular{n}d{d}")


def small_world(n: int, k: int, p: float, seed: int = 0, weights: str = "metropolis") -> Topology:
    """Watts-Strogatz: a ring where each agent links to its k nearest, each edge rewired with probability p."""
    _check_n(n)
    # networkx joins k // 2 neighbours on each side, so an odd k would silently mean k - 1
    if not isinstance(k, int) or k % 2 or not 2 <= k < n or not 0 <= p <= 1:
        raise ConfigError(f"small_world needs an even integer 2 <= k < n and 0 <= p <= 1, got k={k!r}, p={p!r}")
    g = nx.watts_strogatz_graph(n, k, p, seed=seed)
    _check_connected(g, f"small_world({n}, {k}, {p}, seed={seed})", "lower p or try another seed")
    return _named(g, weights, f"small_world{n}")


def from_adjacency(A, weights: str = "metropolis") -> Topology:
    """An undirected graph from a symmetric 0/1 (or boolean) adjacency matrix (N, N)."""
    A = torch.as_tensor(A)
    if A.dim() != 2 or A.shape[0] != A.shape[1]:
        raise ConfigError(f"adjacency matrix must be square (N, N), got shape {tuple(A.shape)}")
    if not torch.equal(A, A.T):
        raise ConfigError("adjacency matrix must be symmetric (an undirected graph)")
    g = nx.from_numpy_array((A != 0).to(torch.int64).numpy())
    g.remove_edges_from(nx.selfloop_edges(g))
    return _named(g, weights, f"graph{A.shape[0]}")


def from_matrix(W, name: str = "custom", tol: float = 1e-9) -> Topology:
    """A static topology with a user-given mixing matrix W (N, N), validated: square, N >= 2, no negative
    weights, doubly stochastic (the worst row or column sum is named), connected and averaging (no eigenvalue
    of modulus 1 besides the mean's)."""
    given = torch.as_tensor(W)
    W = given.to(torch.float64)
    if W.dim() != 2 or W.shape[0] != W.shape[1]:
        raise ConfigError(f"mixing matrix must be square (N, N), got shape {tuple(W.shape)}")
    n = W.shape[0]
    if n < 2:
        raise ConfigError(f"a topology needs at least 2 agents, got {n}")
    if not torch.isfinite(W).all():
        raise ConfigError("mixing matrix has NaN or infinite entries")
    if (W < -tol).any():
        i, j = (W == W.min()).nonzero()[0].tolist()
        raise ConfigError(f"mixing matrix has a negative weight W[{i}, {j}] = {float(W[i, j]):.3g}; "
                          "weights must be >= 0")
    # a float32 W (torch's default) sums to 1 only up to its own rounding: judged at that precision
    if given.is_floating_point():
        tol = max(tol, 4 * n * torch.finfo(given.dtype).eps)
    for axis, what in ((1, "row"), (0, "column")):
        sums = W.sum(axis)
        k = int((sums - 1).abs().argmax())
        if abs(float(sums[k]) - 1) > tol:
            raise ConfigError(f"mixing matrix is not doubly stochastic: {what} {k} sums to {float(sums[k]):.6g} "
                              f"({float(sums[k]) - 1:+.3g} from 1, tolerance {tol:.3g})")
    if max(float((W.sum(0) - 1).abs().max()), float((W.sum(1) - 1).abs().max())) > 1e-12:
        W = _sinkhorn(W.clamp_min(0))  # within tol (float32's): rescaled to sum to 1 in float64, or the mean drifts
    g = nx.from_numpy_array(((W + W.T) != 0).to(torch.int64).numpy())
    _check_connected(g, "the graph of this mixing matrix", "gossip cannot reach consensus")
    # connected but periodic (a swap, a cyclic shift): an eigenvalue of modulus 1 besides the mean's, so
    # W^t x never averages
    second = float(torch.linalg.eigvals(W).abs().sort(descending=True).values[1])
    if second > 1 - tol:
        raise ConfigError(f"mixing matrix never averages: an eigenvalue besides 1 has modulus {second:.6g} (a "
                          f"permutation-like W); give each agent a positive self weight, e.g. (I + W) / 2")
    return Topology(W, g, name)


def _sinkhorn(W: torch.Tensor, iterations: int = 100) -> torch.Tensor:
    """W (N, N) nearly doubly stochastic, with rows and columns rescaled in turn until both sum to 1 in float64
    (the zero pattern, and so the graph, unchanged)."""
    for _ in range(iterations):
        if max(float((W.sum(0) - 1).abs().max()), float((W.sum(1) - 1).abs().max())) <= 1e-15:
            break
        W = W / W.sum(1, keepdim=True)
        W = W / W.sum(0, keepdim=True)
    return W


def spectral_gap(W: torch.Tensor) -> torch.Tensor:
    """1 - |lambda_2(W)|, the second largest eigenvalue modulus; the speed of gossip averaging.

    Defined where the largest eigenvalue modulus is 1, as for a nonnegative stochastic W: for any other
    matrix the difference measures nothing, so it is refused. A MATCHA round's W_t = I - alpha L_t can have
    negative self-weights and a larger modulus; rho(W) measures any W."""
    ev = torch.linalg.eigvals(W.to(torch.float64)).abs().sort(descending=True).values
    if abs(float(ev[0]) - 1) > 1e-6:
        raise ConfigError(f"spectral_gap needs a W whose largest |eigenvalue| is 1 (a nonnegative stochastic "
                          f"matrix); this one's is {float(ev[0]):.6g}: graphs.rho(W) measures any W")
    return 1 - ev[1]


def rho(W: torch.Tensor) -> torch.Tensor:
    """||W - J||_2 with J = 11^T/N: the factor by which one gossip round at least shrinks the disagreement."""
    W = W.to(torch.float64)
    n = W.shape[0]
    return torch.linalg.matrix_norm(W - torch.full_like(W, 1 / n), ord=2)


def mixing_time(W: torch.Tensor, eps: float = 1e-2) -> int | float:
    """Rounds t after which rho^t <= eps, i.e. gossip alone has cut any disagreement by 1/eps (inf if rho = 1)."""
    r = float(rho(W))
    if r < 1e-15:
        return 1
    return math.ceil(math.log(eps) / math.log(r)) if r < 1 else math.inf


def _named(g: nx.Graph, weights: str, name: str) -> Topology:
    return Topology(mixing_weights(g, weights), g, name)


def _check_connected(g: nx.Graph, what: str, hint: str) -> None:
    if not nx.is_connected(g):
        raise ConfigError(f"{what} is disconnected ({nx.number_connected_components(g)} components); {hint}")


def _check_side(r: int, c: int) -> None:
    if not (isinstance(r, int) and isinstance(c, int)) or r < 1 or c < 1 or r * c < 2:
        raise ConfigError(f"grid sides must be integers >= 1 with at least 2 agents, got {r!r} x {c!r}")


def _check_n(n: int) -> None:
    if not isinstance(n, int) or n < 2:
        raise ConfigError(f"number of agents must be an integer >= 2, got {n!r}")
