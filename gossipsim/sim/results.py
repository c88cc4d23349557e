"""Reading run directories back: one tidy table (a row per run per evaluation) and plots with bands over seeds.

A run directory is what a run writes (config.json, metrics.jsonl, summary.json). Runs that differ only in
their seed (and in how they were run: device, backend, ...) form a group; a plot draws each group's mean
with a band of one standard deviation over its seeds.
"""
from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError

# Keys that say how a run was executed or which seed it drew, not which experiment it is.
NOT_THE_EXPERIMENT = ("seed", "out", "progress", "device", "backend", "chunk_size", "compile", "checkpoint_every",
                      "data_dir", "eval_agents", "eval_every")


@dataclass
class Run:
    path: Path
    config: dict[str, Any]
    rows: list[dict[str, Any]]  # metrics.jsonl, one dict per evaluation
    summary: dict[str, Any] | None  # summary.json; None while the run is unfinished

    @property
    def diverged(self) -> bool:
        return bool(self.summary and "diverged" in self.summary)


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
    if not all(isinstance(r, dict) and "round" in r and "test_acc" in r for r in rows):
        raise ConfigError(f"{str(metrics)!r} holds lines that are not gossipsim evaluations")
    summary = _json(path / "summary.json") if (path / "summary.json").exists() else None
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
    """A row per run per evaluation: the run's name, its config values of `keys`, then the metrics."""
    out = []
    for run in runs:
        fixed = {"run": run.path.name, **{k: _value(run.config, k) for k in keys}, "diverged": run.diverged}
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
    def key(run: Run) -> tuple:
        hyper = run.config.get("hyper") or {}  # an entry each, so that a label names the one that differs
        config = {k: v for k, v in run.config.items() if k != "hyper"}
        config.update({f"hyper.{k}": v for k, v in hyper.items()})
        if config.get("compressor") is None:  # compress_per means nothing without a compressor
            config.pop("compress_per", None)
        return tuple(sorted((k, json.dumps(v)) for k, v in config.items() if k not in NOT_THE_EXPERIMENT))

    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(key(run), []).append(run)
    configs = [dict(k) for k in groups]
    # a key labels the groups where it takes several values among the groups that set it (gamma set for choco
    # only, to one value, says nothing that the algorithm does not)
    differ = [k for k in dict.fromkeys(k for c in configs for k in c)
              if len({c[k] for c in configs if k in c and c[k] != "null"}) > 1]
    labels = {}
    for k, members in groups.items():
        c = dict(k)
        shown = {d: json.loads(c[d]) for d in differ if d in c and json.loads(c[d]) is not None}  # unset: unsaid
        label = ", ".join(f"{d}={v}" for d, v in shown.items()) or \
            str(members[0].config.get("algorithm", members[0].path.name))
        labels[label] = members
    return labels


def mean_std(runs: list[Run], metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(rounds, mean bits per agent, mean, std) of `metric` over runs, at the rounds every run evaluated."""
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_round, ax_bits, ax_cons) = plt.subplots(1, 3, figsize=(15, 4))
    apart = sent_any = False  # any group whose agents disagree, any that sent bits: else a log axis shows nothing
    for label, members in group(runs).items():
        seeds = f" ({len(members)} seeds)" if len(members) > 1 else ""
        rounds, bits, acc, acc_std = mean_std(members, "test_acc")
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
