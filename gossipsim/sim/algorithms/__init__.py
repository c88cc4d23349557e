"""Registered algorithms: `make(name, **hyper)`, `names()`. One file each; importing registers them."""
# importing registers them
from . import adacons, adagossip, al_dsgd, allreduce, choco, dpsgd, dsgd, local_sgd, malcom_psgd, matcha  # noqa: F401
from .base import (
    BITS_PER_VALUE,
    Algorithm,
    Round,
    SGDState,
    check_range,
    delivered_bits,
    gossip_bits,
    hyperparameters,
    make,
    names,
    register,
    waiting,
)
from .battery import check
from .choco_gossip import Consensus, choco_gossip

__all__ = ["BITS_PER_VALUE", "Algorithm", "Consensus", "Round", "SGDState", "check", "check_range", "choco_gossip",
           "delivered_bits", "gossip_bits", "hyperparameters", "make", "names", "register", "waiting"]
