"""Registered algorithms: `make(name, **hyper)`, `names()`. One file each; importing registers them."""
from . import adagossip, allreduce, choco, dpsgd, dsgd, local_sgd  # noqa: F401  (registration)
from .base import BITS_PER_VALUE, Algorithm, Round, SGDState, gossip_bits, hyperparameters, make, names, register

__all__ = ["BITS_PER_VALUE", "Algorithm", "Round", "SGDState", "gossip_bits", "hyperparameters", "make", "names",
           "register"]
