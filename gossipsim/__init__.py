"""gossipsim: decentralized (gossip) deep learning of N agents simulated on one device.

    from gossipsim import graphs, kernels, sim
"""
from . import graphs, kernels, sim
from .errors import ConfigError

__version__ = "0.1.0"

__all__ = ["ConfigError", "__version__", "graphs", "kernels", "sim"]
