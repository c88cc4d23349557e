"""The simulator: stacked model, data, local optimizer, algorithms, the engine and the CLI."""
from . import algorithms, data, local, models
from .algorithms import Algorithm, Round
from .config import Config
from .engine import Engine
from .experiment import build, quickstart
from .model import StackedModel

__all__ = ["Algorithm", "Config", "Engine", "Round", "StackedModel", "algorithms", "build", "data", "local",
           "models", "quickstart"]
