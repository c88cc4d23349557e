"""Topologies (networkx in, tensors out), mixing weights and the gossip operator."""
from .mixing import Mixing, Topology
from .topologies import WEIGHTS, complete, from_networkx, mixing_weights, ring, spectral_gap

__all__ = ["WEIGHTS", "Mixing", "Topology", "complete", "from_networkx", "mixing_weights", "ring",
           "spectral_gap"]
