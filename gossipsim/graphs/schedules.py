"""Time-varying topologies: a Mixing for every round t, deterministic from a seed.

Each round's W_t is doubly stochastic. Random schedules draw round t from a generator seeded with
(seed, t), so `mixing(t)` can be asked for any round, in any order, and always gives the same matrix
(a resumed run sees the same graphs). Periodic schedules build each distinct Mixing once.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from .mixing import Mixing, Topology, upload
from .topologies import WEIGHTS, _check_n, weights_from_adjacency

MAX_PERIOD = 1000  # the longest period Periodic.period looks for


class Periodic:
    """Cycles through a fixed list of mixings; `index(t)` picks round t's."""

    def __init__(self, mixings: Sequence[Mixing], index: Callable[[int], int], name: str):
        self.mixings, self.index, self.name = list(mixings), index, name

    @property
    def n(self) -> int:
        return self.mixings[0].n

    def mixing(self, t: int | torch.Tensor = 0) -> Mixing:
        return self.mixings[self.index(int(t))]

    @property
    def period(self) -> int:
        """Rounds after which the schedule repeats from round 0 (rotating's al_dsgd rule over 3 graphs: 6); a
        schedule that does not within MAX_PERIOD rounds (a warm-up, then another graph) is refused."""
        k = len(self.mixings)
        seq = np.array([self.index(t) for t in range(4 * k * MAX_PERIOD + MAX_PERIOD)])
        for period in range(1, MAX_PERIOD + 1):
            if np.array_equal(seq[:4 * k * period], seq[period:period + 4 * k * period]):
                return period
        raise ConfigError(f"{self.name}'s schedule does not repeat within {MAX_PERIOD} rounds from round 0; "
                          f"rho_per_round and `gossipsim graphs` measure periodic schedules only")

    def to(self, device: torch.device | str) -> Periodic:
        return Periodic([m.to(device) for m in self.mixings], self.index, self.name)

    def __repr__(self) -> str:
        return f"Periodic({self.name}, n={self.n})"


def one_peer_exponential(n: int) -> Periodic:
    """Ying et al. 2021 (arXiv 2110.13363): in round t agent i averages with agent i + 2^(t mod log2 n).

    W_t = (I + S^(2^k)) / 2 with S the cyclic shift: one peer per round, doubly stochastic but directed.
    For n a power of two, log2 n consecutive rounds average exactly.
    """
    _check_n(n)
    period = max(1, (n - 1).bit_length())  # ceil(log2 n)
    eye = torch.eye(n, dtype=torch.float64)
    mixings = [Mixing((eye + eye.roll(2**k, dims=1)) / 2) for k in range(period)]
    return Periodic(mixings, lambda t: t % period, f"one_peer_exponential{n}")


def rotating(topologies: Sequence[Topology], schedule: str | Callable[[int], int] = "cyclic") -> Periodic:
    """Switch among static topologies over rounds (AL-DSGD's dynamic graphs).

    schedule: "cyclic" (round t uses topologies[t mod k]); "al_dsgd", for exactly three graphs
    G_0, G_1, G_2, the AL-DSGD code's rule (ALGORITHMS.md section 5): even t uses G_1, else t divisible
    by 3 uses G_2, else G_0; or any callable t -> index.
    """
    topologies = list(topologies)
    if not topologies or len({t.n for t in topologies}) != 1:
        raise ConfigError("rotating needs one or more topologies with the same number of agents")
    k = len(topologies)
    if schedule == "cyclic":
        index = lambda t: t % k  # noqa: E731
    elif schedule == "al_dsgd":
        if k != 3:
            raise ConfigError(f"schedule='al_dsgd' rotates exactly 3 graphs, got {k}")
        index = lambda t: 1 if t % 2 == 0 else (2 if t % 3 == 0 else 0)  # noqa: E731
    elif callable(schedule):
        index = schedule
    else:
        raise ConfigError(f"unknown schedule {schedule!r}; accepted: cyclic, al_dsgd, or a callable t -> index")
    return Periodic([t.mixing(0) for t in topologies], index, "rotating(" + ",".join(t.name for t in topologies) + ")")


def relabelled(base: Topology, seed: int, weights: str | None = None) -> Topology:
    """A copy of `base` with its agents randomly permuted (AL-DSGD rotates relabelled copies of one graph): its
    own W relabelled, so a copy has the base's weights (and stays doubly stochastic if directed); or the
    permuted graph with `weights` computed afresh."""
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(base.n))
    W = base.mixing(0).dense().cpu().to(torch.float64)[perm][:, perm]
    if weights is not None:
        W = weights_from_adjacency((W != 0).to(torch.float64), weights)
    return Topology(W, name=f"{base.name}~{seed}")


class RandomSchedule:
    """Round t's Mixing is draw(rng) with rng seeded by (seed, t): random access, reproducible."""

    def __init__(self, n: int, draw: Callable[[np.random.Generator], torch.Tensor], seed: int, name: str,
                 device: torch.device | str = "cpu"):
        self.n, self.draw, self.seed, self.name, self.device = n, draw, seed, name, device

    def mixing(self, t: int | torch.Tensor = 0) -> Mixing:
        W = self.draw(np.random.default_rng([self.seed, int(t)]))  # (N, N) on the host
        return Mixing(upload(W, self.device), host=W)

    def to(self, device: torch.device | str) -> RandomSchedule:
        return RandomSchedule(self.n, self.draw, self.seed, self.name, device)

    def __repr__(self) -> str:
        return f"RandomSchedule({self.name}, n={self.n})"


def random_matching(n: int, seed: int = 0) -> RandomSchedule:
    """Each round a uniformly random maximal matching; matched pairs average (w = 1/2), an odd one out idles."""
    _check_n(n)

    def draw(rng: np.random.Generator) -> torch.Tensor:
        perm = rng.permutation(n)
        W = torch.eye(n, dtype=torch.float64)
        for a, b in zip(perm[0::2], perm[1::2]):
            W[a, a] = W[b, b] = W[a, b] = W[b, a] = 0.5
        return W

    return RandomSchedule(n, draw, seed, f"random_matching{n}")


def link_failures(base: Topology, p: float, seed: int = 0, weights: str = "metropolis") -> RandomSchedule:
    """Each edge of `base` fails independently with probability p per round; the surviving graph gets
    `weights` recomputed, so W_t stays symmetric and doubly stochastic (a round may be disconnected)."""
    if not 0 <= p < 1:
        raise ConfigError(f"link failure probability must be in [0, 1), got {p!r}")
    if weights not in WEIGHTS:
        raise ConfigError(f"unknown weights {weights!r}; accepted: {', '.join(WEIGHTS)}")
    if weights == "uniform" and p > 0:  # found only at the first round that loses a link, else
        raise ConfigError("weights='uniform' needs a regular graph, which failed links make irregular; use "
                          "weights='metropolis' with +fail")
    W = base.mixing(0).dense().cpu()
    A = ((W != 0) | (W.T != 0)).to(torch.float64)  # the links, either way: a directed base's too
    A.fill_diagonal_(0)
    iu = torch.triu_indices(base.n, base.n, 1)
    edges = iu[:, A[iu[0], iu[1]] > 0]  # (2, E) the base graph's undirected edges

    def draw(rng: np.random.Generator) -> torch.Tensor:
        alive = torch.from_numpy(rng.random(edges.shape[1]) >= p)
        At = torch.zeros_like(A)
        At[edges[0, alive], edges[1, alive]] = 1
        return weights_from_adjacency(At + At.T, weights)

    return RandomSchedule(base.n, draw, seed, f"link_failures({base.name}, p={p})")


def rho_per_round(topo, samples: int = 1024) -> float:
    """How much one round of gossip shrinks the disagreement, for any topology or schedule.

    Static: rho = ||W - J||_2. Periodic with period k: ||W_(k-1) ... W_0 - J||_2^(1/k), the exact rate
    over a period (one_peer_exponential averages exactly: 0). Random: sqrt(||E[W_t^T W_t] - J||_2), since
    E||x_(t+1) - xbar||^2 <= ||E[W^T W] - J|| ||x_t - xbar||^2; MATCHA's expectation is exact, others are
    estimated from `samples` rounds.
    """
    from .matcha import Matcha, expected_rho

    n = topo.n
    J = torch.full((n, n), 1 / n, dtype=torch.float64)
    if isinstance(topo, Topology):
        return float(torch.linalg.matrix_norm(topo.mixing(0).dense().cpu() - J, ord=2))
    if isinstance(topo, Matcha):
        return expected_rho(topo.laplacians, topo.probabilities, float(topo.alpha)) ** 0.5
    if isinstance(topo, Periodic):
        period = topo.period
        product = torch.eye(n, dtype=torch.float64)
        for t in range(period):
            product = topo.mixing(t).dense().cpu() @ product
        r = float(torch.linalg.matrix_norm(product - J, ord=2))
        return 0.0 if r < 1e-12 else r ** (1 / period)  # exact averaging: float noise's root is not a rate
    # The norm of a sampled mean of W^T W - J is biased up by the sampling noise (random_matching:16 read
    # 0.723 from 256 rounds, exactly 0.683). Cross-validated instead: the top eigenvector of one half's mean,
    # measured on the other half's, both ways (within 1% of the exact value from 1024 rounds).
    halves = [torch.zeros(n, n, dtype=torch.float64), torch.zeros(n, n, dtype=torch.float64)]
    for t in range(samples):
        W = topo.mixing(t).dense().cpu()
        halves[t % 2] += W.T @ W - J
    a, b = halves
    va, vb = torch.linalg.eigh(a)[1][:, -1], torch.linalg.eigh(b)[1][:, -1]
    return max(0.0, float(va @ b @ va + vb @ a @ vb) / samples) ** 0.5
