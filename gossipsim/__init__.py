"""gossipsim: decentralized (gossip) deep learning of N agents simulated on one device.

    from gossipsim import graphs, kernels, sim
"""
import importlib

from .errors import ConfigError

__version__ = "0.1.0"

__all__ = ["ConfigError", "__version__", "graphs", "kernels", "sim"]


def __getattr__(name: str):
    # graphs, kernels and sim import torch (seconds): loaded when first used, so that the `gossipsim` command
    # is running, and answers a Ctrl-C in one line, while torch loads
    if name in ("graphs", "kernels", "sim"):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'gossipsim' has no attribute {name!r}")
