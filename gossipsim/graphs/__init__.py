"""Topologies (networkx in, tensors out), mixing weights, spectral tools and the gossip operator."""
from .matcha import Matcha, matcha
from .mixing import Mixing, Topology
from .schedules import (
                        Periodic,
                        RandomSchedule,
                        link_failures,
                        one_peer_exponential,
                        random_matching,
                        relabelled,
                        rho_per_round,
                        rotating,
)
from .spec import SPECS, parse
from .topologies import (
                        WEIGHTS,
                        circulant,
                        complete,
                        dyck,
                        erdos_renyi,
                        exponential,
                        from_adjacency,
                        from_matrix,
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

__all__ = ["SPECS", "WEIGHTS", "Matcha", "Mixing", "Periodic", "RandomSchedule", "Topology", "circulant", "complete",
           "dyck", "erdos_renyi", "exponential", "from_adjacency", "from_matrix", "from_networkx", "grid", "hypercube",
           "link_failures", "matcha", "mixing_time", "mixing_weights", "one_peer_exponential", "parse", "petersen",
           "random_matching", "random_regular", "relabelled", "rho", "rho_per_round", "ring", "rotating", "small_world",
           "spectral_gap", "star", "torus"]
