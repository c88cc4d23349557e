"""Topologies (networkx in, tensors out), mixing weights, spectral tools and the gossip operator."""
from .mixing import Mixing, Topology
from .spec import SPECS, parse
from .topologies import (
                         WEIGHTS,
                         complete,
                         dyck,
                         erdos_renyi,
                         exponential,
                         from_adjacency,
                         from_networkx,
                         grid,
                         hypercube,
                         mixing_time,
                         mixing_weights,
                         petersen,
                         random_regular,
                         rho,
                         ring,
                         small_world,
                         spectral_gap,
                         star,
                         torus,
)

__all__ = ["SPECS", "WEIGHTS", "Mixing", "Topology", "complete", "dyck", "erdos_renyi", "exponential",
           "from_adjacency", "from_networkx", "grid", "hypercube", "mixing_time", "mixing_weights", "parse",
           "petersen", "random_regular", "rho", "ring", "small_world", "spectral_gap", "star", "torus"]
