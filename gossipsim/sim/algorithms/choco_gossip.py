"""CHOCO-Gossip: average consensus with compressed messages, the building block of CHOCO-SGD.

Paper: Koloskova, Stich, Jaggi, "Decentralized Stochastic Optimization and Gossip Algorithms with
Compressed Communication", arXiv 1902.00340, Algorithm 1 (ALGORITHMS.md 2.2):

    Q       = C(X - X_hat)            # each agent sends C(.) to its neighbours
    X_hat  += Q
    X      += gamma (W - I) X_hat

X_hat starts at 0. The mean of X is preserved every round (W doubly stochastic), and for a contractive C and
a small enough gamma every row converges to it linearly.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from ... import kernels
from ..metrics import consensus_distance
from .base import delivered_bits, waiting


class Consensus(NamedTuple):
    x: torch.Tensor  # (N, P) after the last round
    error: torch.Tensor  # (rounds + 1,) float64: (1/N) sum_i ||x_i - x_bar||^2 before each round and at the end
    bits: torch.Tensor  # (N,) float64: bits each agent sent in all


def choco_gossip(x0: torch.Tensor, topology, compressor: kernels.Compressor | None = None, gamma: float = 0.5,
                 rounds: int = 100) -> Consensus:
    """Run CHOCO-Gossip from x0 (N, P) for `rounds` rounds of `topology` (anything with mixing(t))."""
    comp = kernels.identity() if compressor is None else compressor
    x, x_hat = x0.clone(), torch.zeros_like(x0)
    bits = torch.zeros(x0.shape[0], dtype=torch.float64, device=x0.device)
    pending = waiting(x0)
    error = [consensus_distance(x)]
    for t in range(rounds):
        mixing = topology.mixing(t)
        bits += delivered_bits(pending, kernels.choco_residual(x, x_hat, comp), mixing, x.shape[1])
        kernels.consensus_step(x, x_hat, mixing, gamma)
        error.append(consensus_distance(x))  # stays on the device: no host sync a round
    return Consensus(x, torch.stack(error), bits)
