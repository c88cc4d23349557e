"""Topologies built with networkx once, then kept as (N, N) mixing matrices, and their weights."""
from __future__ import annotations

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
    if sorted(g.nodes) != list(range(n)):
        g = nx.convert_node_labels_to_integers(g, ordering="sorted")
    if not nx.is_connected(g):
        parts = nx.number_connected_components(g)
        raise ConfigError(f"graph is disconnected ({parts} components): gossip cannot reach consensus")
    A = torch.tensor(nx.to_numpy_array(g, nodelist=range(n), weight=None), dtype=torch.float64)  # (N, N)
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
        # graph; what the MATCHA and AL-DSGD code use.
        L = torch.diag(deg) - A
        ev = torch.linalg.eigvalsh(L)  # ascending, ev[0] = 0
        W = -2.0 / (ev[1] + ev[-1]) * L
    else:
        raise ConfigError(f"unknown weights {weights!r}; accepted: {', '.join(WEIGHTS)}")
    W.fill_diagonal_(0)
    W += torch.diag(1 - W.sum(1))
    return W


def from_networkx(g: nx.Graph, weights: str = "metropolis", name: str | None = None) -> Topology:
    """Any undirected networkx graph as a static topology."""
    return Topology(mixing_weights(g, weights), g, name or f"graph{g.number_of_nodes()}")


def ring(n: int, weights: str = "metropolis") -> Topology:
    """Cycle of n agents; each talks to its two neighbours (one for n = 2)."""
    _check_n(n)
    return Topology(mixing_weights(nx.cycle_graph(n), weights), nx.cycle_graph(n), f"ring{n}")


def complete(n: int, weights: str = "metropolis") -> Topology:
    """Everyone talks to everyone: W = J, exact averaging each round."""
    _check_n(n)
    return Topology(mixing_weights(nx.complete_graph(n), weights), nx.complete_graph(n), f"complete{n}")


def spectral_gap(W: torch.Tensor) -> torch.Tensor:
    """1 - |lambda_2(W)|, the second largest eigenvalue modulus; the speed of gossip averaging."""
    ev = torch.linalg.eigvals(W.to(torch.float64)).abs().sort(descending=True).values
    return 1 - ev[1]


def _check_n(n: int) -> None:
    if not isinstance(n, int) or n < 2:
        raise ConfigError(f"number of agents must be an integer >= 2, got {n!r}")
