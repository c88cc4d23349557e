"""Reading run directories back: one tidy table (a row per run per evaluation) and plots with bands over seeds.

A run directory is what a run writes (config.json, metrics.jsonl, summary.json). Runs that differ only in
their seed (and in how they were run: device, backend, ...) form a group; a plot draws each group's mean
with a band of one standard deviation over its seeds.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError

# Keys that say how a run was executed or which seed it drew, not which experiment it is.
NOT_THE_EXPERIMENT = ("seed", "out", "progress", "device", "backend", "chunk_size", "compile", "checkpoint_every",
                      "data_dir", "eval_agents", "eval_every", "tensorboard")


@dataclass
class Run:
    path: Path
    config: dict[str, Any]
    rows: list[dict[str, Any]]  # metrics.jsonl, one dict per evaluation
    summary: dict[str, Any] | None  # summary.json; None while the run is unfinished

    @property
    def diverged(self) -> bool:
        return bool(self.summary and "diverged" in self.summary)

    @property
    def finished(self) -> bool:
        """Ran all the rounds its config asks for (summary.json is also written when a run() call asks for fewer)."""
        return bool(self.summary and not self.diverged
                    and self.summary.get("rounds", -1) >= self.config.get("rounds", float("inf")))


def load_run(path: str | Path) -> Run:
    path = Path(path)
    metrics = path / "metrics.jsonl"
    if not metrics.exists():
        raise ConfigError(f"{str(path)!r} is not a run directory (no metrics.jsonl)")
    config = _json(path / "config.json") if (path / "config.json").exists() else {}
    text = metrics.read_text()
    lines = [line for line in text.splitlines() if line.strip()]
    if lines and not text.endswith("\n") and not _parses(lines[-1]):
        lines.pop()  # a last line cut short (the run was killed while writing it): the evaluations before it stand
    rows = [_json(metrics, line) for line in lines]
    if not rows:
        raise ConfigError(f"{str(metrics)!r} holds no complete evaluation")
    if not all(isinstance(r, dict) and "round" in r and "test_acc" in r for r in rows):
        raise ConfigError(f"{str(metrics)!r} holds lines that are not gossipsim evaluations")
    summary = _json(path / "summary.json") if (path / "summary.json").exists() else None
    for name, value in (("config.json", config), ("summary.json", summary)):
        if value is not None and not isinstance(value, dict):
            raise ConfigError(f"{str(path / name)!r} holds {type(value).__name__}, not a gossipsim {name}'s object")
    return Run(path, config, rows, summary)


def _parses(line: str) -> bool:
    try:
        json.loads(line)
    except json.JSONDecodeError:
        return False
    return True


def _json(path: Path, text: str | None = None) -> Any:
    try:
        return json.loads(path.read_text() if text is None else text)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ConfigError(f"{str(path)!r} is not gossipsim's JSON (edited or cut short?)") from None


def find_runs(paths: list[str | Path]) -> list[Run]:
    """Each path is a run directory, or a directory of them (a sweep's): its subdirectories that hold a run."""
    if isinstance(paths, (str, os.PathLike)):  # one path, not its characters
        paths = [paths]
    runs = []
    for p in map(Path, paths):
        if (p / "metrics.jsonl").exists():
            runs.append(load_run(p))
        elif p.is_dir():
            # a sweep's NAME.interrupted1 is an attempt it set aside and ran again as NAME: not another seed
            found = sorted(d for d in p.iterdir() if (d / "metrics.jsonl").exists()
                           and not re.search(r"\.interrupted\d+$", d.name))
            if not found:
                raise ConfigError(f"{str(p)!r} holds no run directories (folders with a metrics.jsonl)")
            runs += [load_run(d) for d in found]
        else:
            raise ConfigError(f"{str(p)!r} is not a directory; give run directories or a sweep's directory")
    seen: set[Path] = set()  # a run named twice (`plot a a`, or a and its sweep) would count as two seeds
    return [r for r in runs if not (r.path.resolve() in seen or seen.add(r.path.resolve()))]


def tidy(runs: list[Run], keys: list[str]) -> list[dict[str, Any]]:
    """A row per run per evaluation: the run's name, its config values of `keys`, whether it finished or
    diverged (neither: it stopped early or is still running), then the metrics."""
    out = []
    for run in runs:
        fixed = {"run": run.path.name, **{k: _value(run.config, k) for k in keys}, "finished": run.finished,
                 "diverged": run.diverged}
        out += [{**fixed, **row} for row in run.rows]
    return out


def _value(config: dict[str, Any], key: str) -> Any:
    """A config value by its key; hyper.NAME is an entry of the hyper table."""
    if key.startswith("hyper."):
        return config.get("hyper", {}).get(key.removeprefix("hyper."))
    return config.get(key)


def write_csv(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """rows as CSV (columns in first-seen order; None as an empty field), written whole then renamed."""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
    return path


def group(runs: list[Run]) -> dict[str, list[Run]]:
    """Runs grouped by experiment (config without seed and execution keys), labelled by the keys that differ."""
    from .config import Config, unused_as_default  # here: config imports torch

    fields = _config_keys()
    defaults = json.loads(json.dumps(Config().to_dict(), default=str))  # as config.json holds them
    defaults.pop("hyper", None)

    def key(run: Run) -> tuple:
        hyper = run.config.get("hyper") or {}  # an entry each, so that a label names the one that differs
        # a key the run lacks (an earlier version's config.json) or one that does not apply (alpha with an iid
        # partition) is at its default: what it meant, as a sweep reads it (experiment.changed_settings)
        config = unused_as_default({**defaults, **{k: v for k, v in run.config.items() if k != "hyper"}})
        config.update({f"hyper.{k}": v for k, v in hyper.items()})
        # a key left at its factory's default is the same experiment as one set to that value (choco's gamma
        # unset or 0.5): fill in what the factory took
        for k, v in _factory_values(run).items():
            name = k if k in fields else f"hyper.{k}"  # a registered algorithm's own: in its hyper table
            if config.get(name) is None:
                config[name] = v
        if config.get("compressor") is None and not _compresses_by_default(config.get("algorithm")):
            config.pop("compress_per", None)  # it means nothing without a compressor (MALCOM-PSGD has one unset)
        return tuple(sorted((k, json.dumps(v)) for k, v in config.items() if k not in NOT_THE_EXPERIMENT))

    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(key(run), []).append(run)
    configs = [dict(k) for k in groups]

    def label_by(differ: list[str], c: dict[str, str], members: list[Run]) -> str:
        shown = {d: json.loads(c[d]) if d in c else None for d in differ}
        return ", ".join(f"{d}={v}" for d, v in shown.items()) or \
            str(members[0].config.get("algorithm", members[0].path.name))

    # a key labels the groups where it takes several values among the groups that set it (gamma set for choco
    # only, to one value, says nothing that the algorithm does not); unset, it is left unsaid
    keys = list(dict.fromkeys(k for c in configs for k in c))
    differ = [k for k in keys if len({c[k] for c in configs if k in c and c[k] != "null"}) > 1]
    labels = [label_by([d for d in differ if dict(k).get(d, "null") != "null"], dict(k), m) for k, m in groups.items()]
    # groups that the short labels do not tell apart (one sets a key the other leaves unset) name every key that
    # differs, unset ones as None: one group's label never hides another's runs
    anywhere = [k for k in keys if len({c.get(k, "null") for c in configs}) > 1]
    labels = [label_by(anywhere, dict(k), m) if labels.count(label) > 1 else label
              for label, (k, m) in zip(labels, groups.items())]
    # still alike only where one config lacks a key another has as null (an older version's): name a run
    labels = [f"{label} ({m[0].path.name})" if labels.count(label) > 1 else label
              for label, m in zip(labels, groups.values())]
    return dict(zip(labels, groups.values()))


def _config_keys() -> set[str]:
    from .config import Config  # here: config imports the graphs, and with them torch

    return {f.name for f in dataclasses.fields(Config)}


def _compresses_by_default(algorithm: Any) -> bool:
    """Whether the algorithm's factory has a compressor of its own when none is given."""
    from .. import kernels
    from . import algorithms

    try:
        return isinstance(algorithms.hyperparameters(algorithm).get("compressor"), kernels.Compressor)
    except (ConfigError, TypeError):  # an algorithm no longer registered (a run of one's own, not imported)
        return False


def _factory_values(run: Run) -> dict[str, Any]:
    """The plain hyperparameters the run's algorithm factory took, defaults included (summary.json records them;
    an unfinished run's are rebuilt from its config; {} if it no longer builds)."""
    recorded = (run.summary or {}).get("hyperparameters")
    if recorded is not None:
        return recorded
    from .config import plain_items
    from .experiment import _factory_hyper

    built = _factory_hyper(run.config)
    return {} if built is None else {k: v for k, v in plain_items(built[1]).items()}


def mean_std(runs: list[Run], metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(rounds, mean bits per agent, mean, std) of `metric` over runs, at the rounds every run evaluated."""
    if not runs:
        raise ConfigError("mean_std needs at least one run (find_runs(paths) loads them)")
    common = sorted(set.intersection(*({r["round"] for r in run.rows} for run in runs)))
    def table(field: str) -> np.ndarray:
        by_round = [{r["round"]: r.get(field) for r in run.rows} for run in runs]
        try:
            return np.array([[np.nan if b[t] is None else b[t] for t in common] for b in by_round], dtype=float)
        except (TypeError, ValueError):
            raise ConfigError(f"{field} is not a number in every evaluation of {runs[0].path} and the runs "
                              "grouped with it") from None

    values = table(metric)  # (runs, rounds)
    std = values.std(0, ddof=1) if len(runs) > 1 else np.zeros(len(common))
    return np.array(common), table("bits_per_agent").mean(0), values.mean(0), std


def plot(runs: list[Run], path: str | Path) -> Path:
    """Test accuracy of the averaged model against rounds and against bits sent per agent, and consensus
    distance against rounds: one line per group, its mean over seeds, in a band of one standard deviation."""
    if not runs:
        raise ConfigError("plot needs at least one run (find_runs(paths) loads them)")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_round, ax_bits, ax_cons) = plt.subplots(1, 3, figsize=(15, 4))
    apart = sent_any = False  # any group whose agents disagree, any that sent bits: else a log axis shows nothing
    for label, members in group(runs).items():
        distinct = len({m.config.get("seed") for m in members})
        seeds = (f" ({len(members)} seeds)" if distinct == len(members) else f" ({len(members)} runs, {distinct} "
                 f"seeds)") if len(members) > 1 else ""
        rounds, bits, acc, acc_std = mean_std(members, "test_acc")
        ends = {m.path: max((r["round"] for r in m.rows), default=0) for m in members}
        if len(set(ends.values())) > 1:  # the mean is over the rounds every run reached: say who cut it short
            short = min(ends, key=ends.get)
            print(f"gossipsim plot: {label!r} is drawn to round {ends[short]}, where {str(short)!r} stops "
                  f"(its other runs reach round {max(ends.values())})", file=sys.stderr)
        (line,) = ax_round.plot(rounds, 100 * acc, label=label + seeds)
        ax_round.fill_between(rounds, 100 * (acc - acc_std), 100 * (acc + acc_std), color=line.get_color(),
                              alpha=0.2, linewidth=0)
        sent = bits > 0  # a log axis: round 0 (and runs that never communicate) sit at 0 bits
        sent_any = sent_any or bool(sent.any())
        ax_bits.plot(bits[sent], 100 * acc[sent], color=line.get_color())
        ax_bits.fill_between(bits[sent], 100 * (acc - acc_std)[sent], 100 * (acc + acc_std)[sent],
                             color=line.get_color(), alpha=0.2, linewidth=0)
        _, _, cons, cons_std = mean_std(members, "consensus")
        cons[cons == 0] = np.nan  # exact averaging (all-reduce) has distance 0, which a log axis cannot show
        apart = apart or bool(np.nanmax(cons, initial=0) > 0)
        ax_cons.plot(rounds, cons, color=line.get_color())
        ax_cons.fill_between(rounds, np.maximum(cons - cons_std, cons * 1e-3), cons + cons_std,
                             color=line.get_color(), alpha=0.2, linewidth=0)
    ax_round.set(xlabel="round", ylabel="test accuracy of the averaged model (%)")
    ax_bits.set(xlabel="bits sent per agent", ylabel="test accuracy (%)", xscale="log" if sent_any else "linear")
    ax_cons.set(xlabel="round", ylabel="consensus distance", yscale="log" if apart else "linear")
    for ax in (ax_round, ax_bits, ax_cons):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.legend(*ax_round.get_legend_handles_labels(), loc="upper center", bbox_to_anchor=(0.5, 0), fontsize=9,
               ncol=2, frameon=False)  # below the panels: the labels are long
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix or '.png'}")
    try:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    except OSError as e:  # named by the path asked for, not the temporary file beside it
        raise OSError(e.errno, e.strerror, str(path)) from None
    finally:
        plt.close(fig)
    os.replace(tmp, path)
    return path
