"""gossipsim: decentralized (gossip) deep learning of N agents simulated on one device.

    from gossipsim import graphs, sim
"""
from . import graphs, sim
from .errors import ConfigError

__version__ = "0.1.0"

__all__ = ["ConfigError", "__version__", "graphs", "sim"]
