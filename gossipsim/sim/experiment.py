"""From a Config to a ready Engine (the only place strings become objects), and the quickstart."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from .. import graphs, kernels
from ..errors import ConfigError
from . import algorithms, checkpoint, data, local, memory, models
from .config import ALGORITHM_KEYS, Config, fold_hyper, plain_items, unused_as_default
from .engine import Engine
from .model import StackedModel, keep_freed_memory


def build(cfg: Config, **engine_kwargs: Any) -> Engine:
    """Load data, partition it, build model, topology and algorithm, and return the Engine."""
    device = torch.device(cfg.device)
    # GOSSIPSIM_KERNELS is read at the first compressed round: a bad value must fail before the run directory
    kernels.backend(torch.empty(0, dtype=getattr(torch, cfg.dtype), device=device))
    if device.type == "cpu":
        keep_freed_memory()
    train, test = data.load(cfg.dataset, cfg.data_dir, device=device, **data_options(cfg))
    test, part = fit_data(cfg, train, test)
    graph_seed = cfg.seed if cfg.graph_seed is None else cfg.graph_seed
    topo = graphs.parse(cfg.topology, cfg.agents, weights=cfg.weights, seed=graph_seed).to(device)
    c, h, _ = train.shape
    model_args = dict(in_channels=c, image_size=h, num_classes=train.classes)
    if cfg.norm is not None:
        model_args["norm"] = cfg.norm
    accepted = inspect.signature(models.MODELS[cfg.model]).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):  # a **kwargs factory gets all of them
        model_args = {k: v for k, v in model_args.items() if k in accepted}
    factory = functools.partial(models.make, cfg.model, **model_args)
    model = StackedModel(factory, cfg.agents, backend=cfg.backend, chunk_size=cfg.chunk_size or None, bn=cfg.bn,
                         autocast=None if cfg.autocast == "off" else torch.bfloat16)
    algo = algorithms.make(cfg.algorithm, **_hyper(cfg, model.param_sizes))
    # the datasets are on the device already: what is free is what the run can take
    est = memory.plan(model, algo, cfg.batch_size, train.shape, getattr(torch, cfg.dtype), device)
    safe = re.sub(r"[^A-Za-z0-9.]+", "_", topo.name).strip("_")  # matcha(ring8, budget=0.5) -> matcha_ring8_budget_0.5
    if len(safe) > 64:  # ring+rotate:30 names its 30 graphs: past a file name's 255 bytes
        safe = f"{safe[:55]}_{hashlib.sha1(safe.encode()).hexdigest()[:8]}"
    out = cfg.out or _unused(f"runs/{cfg.algorithm}-{safe}-{time.strftime('%Y%m%d-%H%M%S')}")
    kwargs = dict(batch_size=cfg.batch_size, seed=cfg.seed, dtype=getattr(torch, cfg.dtype), device=device,
                  augment=cfg.augment, same_init=cfg.same_init, eval_every=cfg.eval_every,
                  eval_agents=cfg.eval_agents, progress=cfg.progress, out=out, config=cfg.to_dict(), memory=est,
                  compile=cfg.compile, checkpoint_every=cfg.checkpoint_every,
                  tensorboard=cfg.tensorboard)
    kwargs.update(engine_kwargs)
    return Engine(model, algo, topo, train, test, part, **kwargs)


def _unused(path: str) -> str:
    """path, or path-2, path-3, ...: the first that does not exist (two runs started in one second, in two
    terminals or a notebook's loop, would share a default directory, and the second would be refused)."""
    k, out = 2, path
    while Path(out).exists():
        out, k = f"{path}-{k}", k + 1
    return out


# What may change when a run is resumed: how long it runs and how it reports, never what it computes.
RESUMABLE = ("rounds", "eval_every", "checkpoint_every", "progress", "device", "compile", "tensorboard")


def changed_settings(config: dict[str, Any], cfg: Config, ignore: tuple[str, ...] = RESUMABLE) -> list[str]:
    """The keys, outside `ignore`, whose value in a run's config.json differs from cfg's; a key the run lacks
    (written by a version before that key) counts as its default. An algorithm key set to the value its factory
    took by default (gamma=0.5 for a run without gamma) is no change: the factory gets the same hyperparameters."""
    def as_json(c: Config) -> dict[str, Any]:
        return json.loads(json.dumps(c.to_dict(), default=str))  # as config.json holds it

    now, earlier = as_json(cfg), unused_as_default({**as_json(Config()), **config})
    keys = [k for k in now if k not in ignore and earlier[k] != now[k]]
    own = [k for k in keys if k in ALGORITHM_KEYS or k == "hyper"]
    if own and _factory_hyper(earlier) == _factory_hyper(cfg):
        keys = [k for k in keys if k not in own]
    return keys


def _factory_hyper(cfg: Config | dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The algorithm and what its factory gets, defaults included, but for lr (a schedule made of other keys);
    None for a config that no longer builds (an earlier version's)."""
    try:
        cfg = cfg if isinstance(cfg, Config) else Config.from_dict(cfg)
        hyper = algorithms.make(cfg.algorithm, **_hyper(cfg, None)).hyper
    except ConfigError:
        return None
    return cfg.algorithm, {k: v for k, v in hyper.items() if k != "lr"}


def data_options(cfg: Config) -> dict[str, Any]:
    """The options data.load takes for cfg's dataset."""
    return dict(image_size=cfg.image_size) if cfg.dataset == "imagefolder" else {}


def fit_data(cfg: Config, train: data.Dataset, test: data.Dataset) -> tuple[data.Dataset, data.Partition]:
    """cfg's test set (its first eval_samples) and its partition of train: what a run checks against its data
    (a sweep, for every point before the first runs)."""
    if cfg.eval_samples > len(test.y):  # capping it would leave config.json naming samples never evaluated
        raise ConfigError(f"eval_samples={cfg.eval_samples}: the {cfg.dataset} test set has {len(test.y)} samples; "
                          f"accepted: 1 to {len(test.y)}, or 0 for all of them")
    if cfg.eval_samples:
        test = dataclasses.replace(test, x=test.x[:cfg.eval_samples], y=test.y[:cfg.eval_samples])
    part = data.partition(train.y.cpu(), cfg.agents, cfg.partition, alpha=cfg.alpha,
                          shards_per_agent=cfg.shards_per_agent, seed=cfg.seed)
    return test, part


def resume(run_dir: str | Path, **overrides: Any) -> Engine:
    """The Engine of the run in run_dir, at its last checkpoint; overrides may change the keys in RESUMABLE
    (rounds: the total the run goes to) and repeat any other key's value. engine.run(cfg.rounds - engine.t)
    finishes it."""
    state = checkpoint.load(run_dir)
    old = unused_as_default(state["config"])
    if any(k.startswith("hyper.") for k in overrides) and "hyper" not in overrides:
        # --hyper.NAME=VALUE repeats one entry of the run's table; a whole table (a sweep's) stands as given
        overrides = {**overrides, "hyper": old.get("hyper", {})}
    overrides = fold_hyper(overrides)
    if overrides.get("out") is not None and Path(overrides["out"]).resolve() != Path(run_dir).resolve():
        raise ConfigError(f"out={overrides['out']} cannot change when resuming: the run goes on in {str(run_dir)!r}; "
                          f"to branch it, copy that directory and resume the copy")
    cfg = Config.from_dict({**old, **overrides, "out": str(run_dir)})
    for k in changed_settings(old, cfg, ignore=(*RESUMABLE, "out")):  # only an override can differ
        raise ConfigError(f"{k} cannot change when resuming a run (the checkpoint's run has {k}={old.get(k)!r}); "
                          f"a resumed run may change only {', '.join(RESUMABLE)}")
    if cfg.rounds < state["round"]:
        raise ConfigError(f"rounds={cfg.rounds} is before the checkpoint's round {state['round']}; give the total "
                          f"number of rounds the run should reach")
    changed = changed_settings(old, cfg, ignore=("out",))
    if cfg.rounds == state["round"] and changed:  # refused before build rewrites the run's config.json
        raise ConfigError(f"the run in {run_dir} is at round {cfg.rounds} of rounds={cfg.rounds}: nothing is left "
                          f"to run with {', '.join(f'{k}={getattr(cfg, k)!r}' for k in changed)}; give the total it "
                          f"should reach to extend it: rounds={2 * cfg.rounds}, say")
    return build(cfg, resume=state)


def hyperparameters(cfg: Config) -> dict[str, Any]:
    """The plain hyperparameters cfg's algorithm factory gets now, defaults included, as summary.json records
    them for a run (JSON: a tuple default reads back as a list): to tell a factory's default edited since."""
    return json.loads(json.dumps(plain_items(algorithms.make(cfg.algorithm, **_hyper(cfg, None)).hyper)))


def _hyper(cfg: Config, layers: list[int] | None) -> dict[str, Any]:
    schedule = {"constant": lambda: local.constant(cfg.lr),
                "multistep": lambda: local.multistep(cfg.lr, cfg.milestones, cfg.lr_factor),
                "cosine": lambda: local.cosine(cfg.lr, cfg.rounds)}[cfg.lr_schedule]()
    hyper = dict(lr=local.warmup(schedule, cfg.warmup), momentum=cfg.momentum, nesterov=cfg.nesterov,
                 weight_decay=cfg.weight_decay)
    accepted = algorithms.hyperparameters(cfg.algorithm)
    for k, default in (("momentum", 0.0), ("nesterov", False), ("weight_decay", 0.0)):
        if k not in accepted and getattr(cfg, k) != default:  # a registered algorithm of a user's may lack it
            raise ConfigError(f"{cfg.algorithm} takes no {k} (its factory has no {k!r} argument), got {k}="
                              f"{getattr(cfg, k)}; leave it at {default}")
    return {**{k: v for k, v in hyper.items() if k in accepted}, **cfg.algorithm_hyper(layers=layers)}


# The quickstart: the same non-iid problem under every kind of communication, on 16 agents of a ring. Each
# algorithm's overrides are what it needs to train here (gamma tuned per compressor on this problem).
QUICKSTART = dict(topology="ring", agents=16, rounds=150, lr=0.1, batch_size=32, dataset="synthetic",
                  model="mlp", partition="dirichlet", alpha=0.3, eval_every=25, seed=0)
QUICKSTART_ALGORITHMS: dict[str, dict[str, Any]] = {
    "dsgd": {}, "dpsgd": {}, "allreduce": {}, "local": {},
    "choco": dict(compressor="sign", compress_per="layer", gamma=0.5),
    "adagossip": dict(compressor="top_k:0.05", gamma=0.005),
    "matcha": dict(topology="ring+matcha:0.5"),
    "al_dsgd": {},
    "malcom_psgd": dict(compressor="dithered:16,scaled", compress_per="layer", gamma=0.05, mu=1e-5),
    "adacons": {},
}


def quickstart(out: str | Path = "runs/quickstart", progress: bool = True, algorithms: tuple[str, ...] | None = None,
               **overrides: Any) -> tuple[list[dict[str, Any]], Path]:
    """Run the quickstart comparison (all of QUICKSTART_ALGORITHMS, or the ones named); one summary row per
    algorithm, and the comparison plot."""
    from .metrics import plot_curves

    out = Path(out)
    names = tuple(QUICKSTART_ALGORITHMS) if algorithms is None else tuple(algorithms)
    for name in names:
        if name not in QUICKSTART_ALGORITHMS:
            raise ConfigError(f"quickstart algorithm {name!r}: accepted: {', '.join(QUICKSTART_ALGORITHMS)}")
    def config(name: str) -> Config:
        return Config.from_dict({**QUICKSTART, **QUICKSTART_ALGORITHMS[name], **overrides, "algorithm": name,
                                 "out": str(out / name), "progress": progress})

    for name in names:  # every earlier run checked before any is trained: a refusal comes first, not a minute in
        _own_run(out / name, config(name))
    rows, curves = [], {}
    for name in names:
        cfg = config(name)
        if _own_run(out / name, cfg):
            shutil.rmtree(out / name)
        engine = build(cfg)
        history = engine.run(cfg.rounds)
        # same model, agents and batch every time: measure the backend once (1.4 s), not once an algorithm
        overrides.setdefault("backend", engine.model.backend)
        curves[name] = history
        rows.append({"algorithm": name, **history[-1], "samples_per_s": engine.summary()["samples_per_s"],
                     "backend": engine.model.backend})
    return rows, plot_curves(curves, out / "comparison.png")


def _own_run(path: Path, cfg: Config) -> bool:
    """Whether `path` holds the quickstart's earlier run with these settings, to be replaced (retraining gives the
    same numbers); a run with other settings is results the user has, so that is refused instead."""
    if not (path / "metrics.jsonl").exists():
        return False
    try:
        earlier = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        earlier = None
    # the quickstart picks the backend by measuring (auto), so it may differ between two runs of the same settings
    changed = changed_settings(earlier or {}, cfg, ignore=("backend", "progress"))
    if earlier is None or changed:
        what = "no readable config.json" if earlier is None else f"other {', '.join(changed)}"
        raise ConfigError(f"{str(path)!r} holds an earlier run with {what}: move it away (the quickstart "
                          f"writes runs/quickstart/; from Python, quickstart(out=...) takes another folder)")
    return True


def results_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of final metrics, one row per run."""
    head = ("| algorithm | test acc (averaged model) | agent acc mean [min, max] | consensus distance "
            "| bits sent per agent | samples/s |")
    lines = [head, "|" + "---|" * 6]
    for r in rows:
        agents = (f"{100 * r['agent_acc_mean']:.1f}% [{100 * r['agent_acc_min']:.1f}, {100 * r['agent_acc_max']:.1f}]"
                  if "agent_acc_mean" in r else "-")
        lines.append(f"| {r['algorithm']} | {100 * r['test_acc']:.1f}% | {agents} | {r['consensus']:.3g} | "
                     f"{r['bits_per_agent']:.3g} | {r['samples_per_s']:.0f} |")
    return "\n".join(lines)
