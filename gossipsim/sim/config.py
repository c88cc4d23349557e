"""Experiment configuration: one flat set of keys, read from TOML and `--key=value`, validated up front.

Every key is checked before anything runs: unknown keys are answered with the closest valid name, and
values with their accepted range. Errors are ConfigError, one line each.
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..graphs import SPECS, WEIGHTS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TOPOLOGIES = tuple(SPECS)
PARTITIONS = ("iid", "dirichlet", "shards")
SCHEDULES = ("constant", "multistep", "cosine")
DTYPES = ("float32", "float64")
COMPILE = ("off", "oracle", "round", "graph")
# bn=gossip mixes BatchNorm statistics over the topology's links; these algorithms use none
NO_LINKS = {"local": "sends nothing", "allreduce": "averages by an all-reduce",
            "adacons": "aggregates by an all-reduce"}
# Keys where the word "none" is a value (norm=none: no normalization layers) or a mistake the key's own check names
# (compressor=none: identity sends uncompressed), not "unset, take the default" as for the other nullable keys.
NONE_IS_A_WORD = ("norm", "compressor")
ALGORITHM_KEYS = ("compressor", "gamma", "beta", "eps", "rescale", "c1", "c2", "p1", "p2", "every", "variant", "mu")
# Keys that mean something only for some values of another key. Set under another value they would go unused
# (milestones = [500, 750] without lr_schedule = "multistep" trains at a constant lr): refused; a sweep gives them
# only to the points they apply to, as it does an algorithm's own keys.
CONDITIONAL_KEYS = {"milestones": ("lr_schedule", ("multistep",)), "lr_factor": ("lr_schedule", ("multistep",)),
                    "alpha": ("partition", ("dirichlet",)), "shards_per_agent": ("partition", ("shards",)),
                    "chunk_size": ("backend", ("chunked", "auto"))}


def applies(key: str, values: dict[str, Any]) -> bool:
    """Whether a key means something in a run of these values (a key outside CONDITIONAL_KEYS always does)."""
    if key not in CONDITIONAL_KEYS:
        return True
    on, accepted = CONDITIONAL_KEYS[key]
    return values.get(on, _default(on)) in accepted


def unused_as_default(values: dict[str, Any]) -> dict[str, Any]:
    """values with each key that does not apply (alpha with an iid partition) at its default: what it meant. A run
    written before such keys were refused may hold one."""
    return {k: v if applies(k, values) else _default(k) for k, v in values.items()}


def _default(name: str) -> Any:
    f = Config.__dataclass_fields__[name]
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def key(default: Any, help: str) -> Any:
    """A config key: its default and the one-line help `gossipsim run --help` prints."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class Config:
    """One experiment. Field names are the config-file and command-line keys."""

    algorithm: str = key("dsgd", "a registered algorithm: dsgd, dpsgd, allreduce, local, choco, choco_parallel, "
                                 "adagossip, matcha, al_dsgd, malcom_psgd, adacons")
    topology: str = key("ring", "ring, torus, grid, dyck, petersen, complete, star, hypercube, exponential, "
                                "circulant:1,4, erdos_renyi:P, random_regular:D, small_world:K,P (size from agents; "
                                "or ring:16, ...); time-varying: one_peer_exponential, random_matching, or "
                                "BASE+fail:P, BASE+matcha:CB, BASE+rotate[:K]")
    weights: str = key("metropolis", "mixing weights: metropolis | uniform | max_degree | laplacian")
    # An algorithm's own hyperparameters: None leaves the algorithm's default (sim.algorithms.hyperparameters(name)).
    compressor: str | None = key(None, "what CHOCO, AdaGossip and MALCOM-PSGD agents send: identity, top_k:F, "
                                       "rand_k:F[,scaled], qsgd:S[,scaled], sign, top_k_qsgd:F,S, dithered:S")
    compress_per: str = key("model", "compress each agent's whole model or each layer alone: model | layer")
    gamma: float | None = key(None, "consensus step size (CHOCO, AdaGossip, MALCOM-PSGD)")
    beta: float | None = key(None, "AdaGossip: decay of the gossip error's second moment; AdaCons: momentum of "
                                   "the sorted coefficients")
    eps: float | None = key(None, "AdaGossip, AdaCons: the epsilon added to a square root or a norm")
    rescale: bool | None = key(None, "AdaCons: scale the aggregate of unit gradients by their mean norm, so that lr "
                                     "means what it means for allreduce (not in the paper)")
    c1: float | None = key(None, "AL-DSGD: averaging weight of the lowest-loss neighbour")
    c2: float | None = key(None, "AL-DSGD: averaging weight of the highest-degree neighbour")
    p1: float | None = key(None, "AL-DSGD: pull towards the lowest-loss neighbour")
    p2: float | None = key(None, "AL-DSGD: pull towards the highest-degree neighbour")
    every: int | None = key(None, "AL-DSGD: rounds between leader steps")
    variant: str | None = key(None, "AL-DSGD: code (pull after averaging) | paper (lr-scaled pull in the step)")
    mu: float | None = key(None, "MALCOM-PSGD: the l1 weight (soft threshold lr*mu)")
    hyper: dict = key({}, "a registered algorithm's hyperparameters that no key here names: a [hyper] table, or "
                          "--hyper.NAME=VALUE (typed as the factory's default)")
    agents: int = key(16, "number of agents N")
    rounds: int = key(300, "communication rounds (one local step each)")
    lr: float = key(0.1, "learning rate")
    momentum: float = key(0.0, "local heavy-ball momentum (torch.optim.SGD semantics)")
    nesterov: bool = key(False, "Nesterov momentum")
    weight_decay: float = key(0.0, "L2 weight decay, added to the gradient")
    lr_schedule: str = key("constant", "constant | multistep | cosine")
    milestones: list[int] = key([], "rounds at which multistep multiplies lr by lr_factor")
    lr_factor: float = key(0.1, "multistep factor")
    warmup: int = key(0, "rounds of linear learning-rate warmup")
    batch_size: int = key(32, "samples per agent per round")
    dataset: str = key("synthetic", "synthetic | mnist | fashion-mnist | cifar10 | cifar100 | imagefolder")
    data_dir: str | None = key(None, "where the dataset files are (fashion-mnist is also found in "
                                     "/usr/share/datasets)")
    image_size: int = key(64, "imagefolder: the side in pixels its images are resized and center-cropped to")
    model: str = key("mlp", "mlp | lenet5 | resnet20 | resnet18 | mobilenet_v2")
    norm: str | None = key(None, "normalization of the ResNets: bn | gn | none")
    partition: str = key("iid", "iid | dirichlet | shards")
    alpha: float = key(0.5, "dirichlet concentration (small: each agent sees few classes)")
    shards_per_agent: int = key(2, "label-sorted shards per agent for partition=shards")
    augment: bool = key(False, "random crop (padding 4, black) and horizontal flip")
    seed: int = key(0, "seed of initialization, partition, sampling and augmentation")
    graph_seed: int | None = key(None, "seed of a random topology and its random schedule (default: seed), to keep "
                                       "one graph across training seeds")
    same_init: bool = key(True, "all agents start from the same x0 (false: independent inits)")
    bn: str = key("local", "BatchNorm running statistics: local (per agent) | gossip (mixed like parameters)")
    backend: str = key("auto", "auto | vmap | loop | chunked")
    chunk_size: int = key(0, "agents per vmapped block for backend=chunked (0: N/4)")
    compile: str = key("off", "torch.compile: off | oracle (the agents' gradients) | round (batch, gradients and "
                              "the algorithm's step; static topologies, else oracle) | graph (the round captured "
                              "once as a CUDA graph and replayed; device cuda, static topologies)")
    dtype: str = key("float32", "float32 | float64")
    autocast: str = key("off", "off | bf16: forward and backward in bfloat16 (parameters, gradients and gossip "
                               "stay float32)")
    device: str = key("cpu", "cpu | cuda | cuda:K")
    eval_every: int = key(50, "rounds between evaluations")
    eval_agents: bool = key(True, "also evaluate every agent (mean/min/max accuracy)")
    eval_samples: int = key(0, "evaluate on the first k test samples (0: the whole test set)")
    checkpoint_every: int | None = key(None, "rounds between checkpoints (out/checkpoint.pt; a multiple of "
                                              "eval_every); default: at every evaluation; 0: none")
    progress: bool = key(True, "show a progress bar")
    tensorboard: bool = key(False, "also write each evaluation's metrics as TensorBoard scalars to out/tensorboard "
                                   "(needs the tensorboard package)")
    out: str | None = key(None, "run directory (default runs/<algorithm>-<topology><N>-<time>)")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # Config(nesterov="false") from Python: converted as from a file
            setattr(self, f.name, _convert(f.name, getattr(self, f.name), f.type))
        self.validate()

    def validate(self) -> None:
        from . import algorithms, models
        from .data import DATASETS

        _choice("algorithm", self.algorithm, algorithms.names(),
                "; one of your own: register it in a file and give --import=FILE.py")
        _choice("topology", self.topology.partition("+")[0].partition(":")[0], TOPOLOGIES)
        _choice("weights", self.weights, WEIGHTS)
        _choice("compress_per", self.compress_per, ("model", "layer"))
        self.hyper = _typed_hyper(self.algorithm, self.hyper)
        self.algorithm_hyper(layers=None)  # bad or misplaced hyperparameters fail here, before any data is loaded
        if self.algorithm == "matcha" and self.topology.partition("+")[2].partition(":")[0].strip() != "matcha":
            raise ConfigError(f"algorithm matcha samples matchings of its topology, got topology={self.topology!r}; "
                              f"give BASE+matcha:CB, e.g. {self.topology.partition('+')[0]}+matcha:0.5")
        _choice("dataset", self.dataset, DATASETS)
        if self.image_size != 64 and self.dataset != "imagefolder":
            raise ConfigError(f"image_size={self.image_size} is for dataset imagefolder; {self.dataset}'s images "
                              f"have a size of their own")
        _choice("model", self.model, models.names())
        _choice("partition", self.partition, PARTITIONS)
        _choice("lr_schedule", self.lr_schedule, SCHEDULES)
        _choice("bn", self.bn, ("local", "gossip"))
        if self.bn == "gossip" and self.algorithm in NO_LINKS:
            raise ConfigError(f"bn=gossip mixes the BatchNorm statistics over the topology's links each round; "
                              f"algorithm {self.algorithm} {NO_LINKS[self.algorithm]}: give bn=local")
        _choice("backend", self.backend, ("auto", "vmap", "loop", "chunked"))
        _choice("compile", self.compile, COMPILE)
        _choice("autocast", self.autocast, ("off", "bf16"))
        _choice("dtype", self.dtype, DTYPES)  # before autocast's check, which names dtype too
        if self.autocast != "off" and self.dtype != "float32":
            raise ConfigError(f"autocast={self.autocast} needs dtype=float32 (autocast lowers float32 "
                              f"computations), got dtype={self.dtype}")
        if self.norm is not None:
            _choice("norm", self.norm, ("bn", "gn", "none"))
            if "norm" not in inspect.signature(models.MODELS[self.model]).parameters:
                takes = [m for m in models.names() if "norm" in inspect.signature(models.MODELS[m]).parameters]
                raise ConfigError(f"norm={self.norm!r}: {self.model} has no normalization layers to choose; models "
                                  f"that take norm: {', '.join(takes)}")
        for key, low in (("agents", 2), ("rounds", 1), ("batch_size", 1), ("eval_every", 1),
                         ("shards_per_agent", 1), ("warmup", 0), ("chunk_size", 0), ("eval_samples", 0),
                         ("image_size", 1), ("checkpoint_every", 0), ("every", 1)):
            value = getattr(self, key)
            if value is not None and value < low:
                raise ConfigError(f"{key} must be an integer >= {low}, got {value}")
            if value is not None and value >= 2**31:  # counts of rounds, samples, agents: past this, torch overflows
                raise ConfigError(f"{key} must be an integer < 2^31, got {value}")
        if self.checkpoint_every is not None and (self.checkpoint_every < 0 or self.checkpoint_every % self.eval_every):
            raise ConfigError(f"checkpoint_every must be 0 (none) or a multiple of eval_every={self.eval_every} "
                              f"(checkpoints are taken at evaluations), got {self.checkpoint_every}")
        for key in ("lr", "alpha", "lr_factor"):
            if not 0 < getattr(self, key) < math.inf:
                raise ConfigError(f"{key} must be a finite number > 0, got {getattr(self, key)}")
        if not 0 <= self.seed < 2**63 or (self.graph_seed is not None and not 0 <= self.graph_seed < 2**63):
            raise ConfigError(f"seed and graph_seed must be integers in [0, 2^63), got {self.seed} and "
                              f"{self.graph_seed}")
        if self.out is not None and not str(self.out).strip():  # `--out=` ran into runs/... as if never given
            raise ConfigError(f"out={self.out!r} names no directory; give a path, or no out for "
                              f"runs/<algorithm>-<topology>-<time>")
        if any(m < 1 for m in self.milestones) or self.milestones != sorted(set(self.milestones)):
            raise ConfigError(f"milestones must be increasing rounds >= 1, got {self.milestones}")
        for key, (on, accepted) in CONDITIONAL_KEYS.items():
            if getattr(self, key) != _default(key) and not applies(key, dataclasses.asdict(self)):
                raise ConfigError(f"{key}={getattr(self, key)!r} is for {on}={' or '.join(accepted)}, and this run "
                                  f"has {on}={getattr(self, on)}: it would go unused; set {on}={accepted[0]} or leave "
                                  f"{key} out")
        if self.compress_per != "model" and "compressor" not in algorithms.hyperparameters(self.algorithm):
            raise ConfigError(f"compress_per={self.compress_per} is for algorithms that compress, "
                              f"and {self.algorithm} sends uncompressed models")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if not 0 <= self.weight_decay < math.inf:
            raise ConfigError(f"weight_decay must be a finite number >= 0, got {self.weight_decay}")
        if self.nesterov and not self.momentum:
            raise ConfigError("nesterov=true needs momentum > 0")
        if self.device != "cpu" and not self.device.startswith("cuda"):
            raise ConfigError(f"device must be cpu or cuda[:k], got {self.device!r}")
        if self.device.startswith("cuda"):
            import torch
            if not torch.cuda.is_available():
                raise ConfigError(f"device={self.device!r} but torch sees no CUDA device; use device=cpu")

    def algorithm_hyper(self, layers: list[int] | None) -> dict[str, Any]:
        """The algorithm's own hyperparameters that were set (compressor built, per layer if `layers` given);
        one that the algorithm does not take is an error rather than silently ignored."""
        from .. import kernels
        from . import algorithms

        accepted = algorithms.hyperparameters(self.algorithm)
        if "lr" not in accepted:  # the engine hands every algorithm its lr (a number or the run's schedule)
            raise ConfigError(f"{self.algorithm}'s factory takes no lr; every algorithm's factory takes lr (a number, "
                              f"or a schedule of the round: sim.local.as_schedule(lr) reads both)")
        for k, kind in _BUILT_IN_TYPES.items():  # a user's factory reusing a built-in key's name with another type
            default = accepted.get(k)
            if default not in (None, inspect.Parameter.empty) and not _of_type(default, kind):
                raise ConfigError(f"{self.algorithm}'s factory has {k}={default!r}, but {k} is a built-in key that "
                                  f"takes {_describe(kind)}; rename that parameter (an algorithm's own go in hyper)")
        hyper = {k: getattr(self, k) for k in ALGORITHM_KEYS if getattr(self, k) is not None}
        for k in hyper:
            if k not in accepted:
                takers = [a for a in algorithms.names() if k in algorithms.hyperparameters(a)]
                raise ConfigError(f"{self.algorithm} has no hyperparameter {k!r}; it is for {', '.join(takers)}")
        hyper.update(self.hyper)  # names no key of its own (_typed_hyper); make() refuses one not accepted
        if "compressor" in hyper:
            hyper["compressor"] = kernels.parse(hyper["compressor"], per=self.compress_per)
        elif self.compress_per == "layer" and isinstance(accepted.get("compressor"), kernels.Compressor):
            hyper["compressor"] = dataclasses.replace(accepted["compressor"], per="layer")  # the factory's default
        if "compressor" in hyper and layers is not None and self.compress_per == "layer":
            hyper["compressor"] = hyper["compressor"].with_layers(layers)
        algorithms.make(self.algorithm, lr=self.lr, **hyper)  # the algorithm checks its own ranges
        return hyper

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Config:
        """Build from raw values (TOML or strings from the command line), converting and checking types;
        `hyper.NAME` keys (the command line's --hyper.NAME=VALUE) go into the hyper table."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in fold_hyper(values).items():
            if key not in fields:
                match = difflib.get_close_matches(key, fields, n=1)
                hint = f" (did you mean {match[0]!r}?)" if match else ""
                algorithm = values.get("algorithm", "dsgd")
                if isinstance(algorithm, str) and key in _registered().get(algorithm, {}):
                    hint = f" ({algorithm}'s own hyperparameter: give it as hyper.{key})"
                if key in ("resume", "import"):  # options of the command, not keys of an experiment
                    hint = f" (--{key} is an option of `gossipsim run`, not a key of a config file)"
                raise ConfigError(f"unknown key {key!r}{hint}; see `gossipsim run --help` for the keys")
            kwargs[key] = _convert(key, value, fields[key].type)
        return cls(**kwargs)


# the built-in algorithm keys' types, but compressor's (a spec here, a Compressor in a factory)
_BUILT_IN_TYPES = {f.name: f.type.replace(" | None", "") for f in dataclasses.fields(Config)
                   if f.name in ALGORITHM_KEYS and f.name != "compressor"}


def _of_type(value: Any, kind: str) -> bool:
    """Whether a factory's default fits a config key of that type (an int for a float key does)."""
    if kind == "bool":
        return isinstance(value, bool)
    if kind in ("int", "float"):
        return isinstance(value, int if kind == "int" else (int, float)) and not isinstance(value, bool)
    return isinstance(value, str)


# the keys the engine hands to an algorithm itself: hyper may not name them a second time (another key, the
# partition's alpha say, means something else there, so hyper.alpha is an algorithm's own)
PASSED_KEYS = ("lr", "momentum", "nesterov", "weight_decay") + ALGORITHM_KEYS


def read_toml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """A TOML file's contents; a missing, unreadable or malformed file is one ConfigError naming `what` it is."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{what} {str(path)!r} not found") from None
    except OSError as e:  # a directory, no permission
        raise ConfigError(f"{what} {str(path)!r} cannot be read: {e.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{what} {str(path)!r} is not valid TOML: {e}") from None


def load_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file's top-level keys (nested tables are refused, but [hyper]: the config is flat)."""
    data = read_toml(path)
    for key, value in data.items():
        if isinstance(value, dict) and key != "hyper":
            raise ConfigError(f"config file {str(path)!r}: table [{key}] not supported; keys are flat")
    return data


def _choice(key: str, value: Any, accepted, more: str = "") -> None:
    if value not in accepted:
        match = difflib.get_close_matches(str(value), list(accepted), n=1)
        hint = f" (did you mean {match[0]!r}?)" if match else ""
        raise ConfigError(f"unknown {key} {value!r}{hint}; accepted: {', '.join(accepted)}{more}")


def _registered() -> dict[str, dict[str, Any]]:
    """Every registered algorithm's hyperparameters, by name."""
    from . import algorithms

    return {name: algorithms.hyperparameters(name) for name in algorithms.names()}


def fold_hyper(values: dict[str, Any]) -> dict[str, Any]:
    """values with each `hyper.NAME` key moved into values["hyper"] (a copy; a given table is not changed)."""
    dotted = {k: v for k, v in values.items() if isinstance(k, str) and k.startswith("hyper.")}
    if not dotted:
        return values
    table = values.get("hyper", {})
    if not isinstance(table, dict):
        raise ConfigError(f"hyper must be a table of NAME = VALUE, got {table!r}")
    rest = {k: v for k, v in values.items() if k not in dotted}
    return {**rest, "hyper": {**table, **{k.removeprefix("hyper."): v for k, v in dotted.items()}}}


def _typed_hyper(algorithm: str, table: dict[str, Any]) -> dict[str, Any]:
    """The hyper table checked (names that are no key of their own, flat values) and its command-line strings
    converted: to the type of the factory's default, or, without one, to an integer, number or boolean
    where the string reads as one."""
    from . import algorithms

    defaults = algorithms.hyperparameters(algorithm)  # validate() has checked the name
    typed = {}
    for name, value in table.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ConfigError(f"hyper.{name}: a hyperparameter's name is an identifier, like alpha or num_steps")
        if name in PASSED_KEYS:
            raise ConfigError(f"hyper.{name}: {name} is a key of its own; set {name} = ... (--{name}=...)")
        if not plain(value):  # config.json must give it back as it was, for a resumed run
            raise ConfigError(f"hyper.{name} = {value!r}: accepted: a number, string, boolean or list of them")
        default = defaults.get(name)
        if isinstance(default, (bool, int, float, str)):  # as a built-in key of that type: "0.5", 1 for 1.0
            value = _convert(f"hyper.{name}", value, type(default).__name__)
        elif isinstance(default, (list, tuple)) and isinstance(value, str):  # --hyper.sizes=3,4
            value = [_guess(v.strip()) for v in value.strip("[]").split(",") if v.strip()]
        elif isinstance(value, str) and (default is None or default is inspect.Parameter.empty):
            value = _guess(value)
        typed[name] = value
    return typed


def plain_items(values: dict[str, Any]) -> dict[str, Any]:
    """The entries of `values` that are plain values (an algorithm's hyperparameters without its lr schedule and
    compressor, which follow from the config): what a checkpoint and summary.json record."""
    return {k: v for k, v in values.items() if plain(v)}


def plain(value: Any) -> bool:
    """A value JSON writes and reads back unchanged: a bool, int, float, str, or a list of them."""
    if isinstance(value, (list, tuple)):
        return all(plain(v) for v in value)
    return isinstance(value, (bool, int, float, str))


def _guess(text: str) -> Any:
    """A command-line string as the int, float or bool it spells, else the string."""
    for kind in ("int", "float", "bool"):
        try:
            return _convert("", text, kind)
        except ConfigError:
            pass
    return text


def _convert(key: str, value: Any, kind: str) -> Any:
    """Convert a TOML value or command-line string to the field's type, or raise one clear line."""
    base = kind.replace(" | None", "")
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and "None" in kind
                         and key not in NONE_IS_A_WORD):
        if "None" in kind:
            return None
        raise ConfigError(f"{key} needs a value")
    try:
        if base == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
                return value.lower() in ("true", "1", "yes")
            raise ValueError
        if base == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if base == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if base == "list[int]":
            if isinstance(value, str):
                value = [v for v in value.strip("[]").split(",") if v.strip()]
            if any(isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()) for v in value):
                raise ValueError  # a file's [1.5, 3]: int() would make it 1
            return [int(v) for v in value]
        if base == "str":
            if not isinstance(value, str):
                raise ValueError
            return value
        if base == "dict":
            if not isinstance(value, dict):
                raise ValueError
            return dict(value)
    except (TypeError, ValueError, OverflowError):
        pass
    raise ConfigError(f"{key} must be {_describe(base)}, got {value!r}")


def _describe(base: str) -> str:
    return {"bool": "true or false", "int": "an integer", "float": "a number", "str": "a string",
            "list[int]": "a list of integers such as 100,200",
            "dict": "a table: NAME = VALUE lines under [hyper] in a file, or --hyper.NAME=VALUE"}.get(base, base)
