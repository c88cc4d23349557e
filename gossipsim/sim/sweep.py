"""`gossipsim sweep FILE.toml`: a grid of runs, resumable, into one tidy CSV.

    out = "runs/compression"           # the sweep's directory: a run directory per point, and results.csv
    rounds = 200                       # any run key: the same for every run
    agents = 16

    [grid]                             # lists: every combination is a run
    algorithm = ["dsgd", "choco"]
    compressor = ["top_k:0.05", "sign"]
    seed = [0, 1, 2]

    [choco]                            # keys for one algorithm's runs only
    gamma = 0.5

An algorithm's own hyperparameters (compressor, gamma, ...) go only to the algorithms that take them: above,
dsgd runs once per seed, choco once per compressor and seed. So do the entries of hyper, a registered
algorithm's own (`hyper.mix = [0.3, 0.5]` in [grid], `hyper.mix = 0.3` in its table), and the keys that belong
to one value of another (config.CONDITIONAL_KEYS: alpha only to the dirichlet partition's runs). Every point is
validated before the first runs.
Run again, the sweep skips finished runs, resumes interrupted ones from their checkpoint, and rewrites
results.csv (a row per run per evaluation) after each run.
"""
from __future__ import annotations

import dataclasses
import difflib
import itertools
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import kernels
from ..errors import ConfigError, Diverged
from . import algorithms, checkpoint, data, results
from .config import ALGORITHM_KEYS, CONDITIONAL_KEYS, Config, applies, read_toml
from .experiment import build, changed_settings, data_options, fit_data, hyperparameters, resume


@dataclass
class Point:
    name: str  # its run directory's name: the grid values that apply to it
    values: dict[str, Any]  # the run's keys (TOML values), out included

    @property
    def path(self) -> Path:
        return Path(self.values["out"])


def load(path: str | Path) -> tuple[Path, list[str], list[Point]]:
    """(the sweep's directory, the grid's keys, its points), every point's config validated."""
    data = read_toml(path, "sweep file")
    grid = data.pop("grid", None)
    if not isinstance(grid, dict) or not grid:
        raise ConfigError(f"sweep file {str(path)!r} needs a [grid] table of lists, e.g. seed = [0, 1, 2]")
    # hyper.NAME keys, flat, so that a grid, the file and an algorithm's table each set one entry of hyper
    grid = _flat_hyper(grid)
    per_algorithm = {k: _flat_hyper(data.pop(k)) for k in list(data) if isinstance(data[k], dict) and k != "hyper"}
    data = _flat_hyper(data)
    for name, table in per_algorithm.items():
        if name not in algorithms.names():
            match = difflib.get_close_matches(name, algorithms.names(), n=1)
            hint = f" (did you mean [{match[0]}]?)" if match else ""
            raise ConfigError(f"sweep file {str(path)!r}: table [{name}] is not [grid] nor an algorithm{hint}; "
                              f"one of your own: --import=FILE.py that registers it")
        # top-level and grid keys go to the algorithms that take them; a table names one algorithm, so a key
        # it does not take is a mistake, not a key for another algorithm
        foreign = [k for k in table if not _takes(name, k)]
        if foreign:
            taken = ", ".join(algorithms.hyperparameters(name)) or "none"
            raise ConfigError(f"sweep file {str(path)!r}: [{name}] sets {', '.join(foreign)}, which {name} does "
                              f"not take; its keys: {taken}")
        both = [k for k in table if k in grid]
        if both:  # the table would replace the grid's values, and the points collapse into one
            raise ConfigError(f"sweep file {str(path)!r}: [{name}] sets {', '.join(both)}, which [grid] ranges "
                              f"over; give it in one place")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid key {key} must be a non-empty list of values, got {values!r}")
        if len(set(map(repr, values))) < len(values):
            raise ConfigError(f"grid key {key} lists a value twice: {values!r}")
    # a key only some algorithms take goes to those; one that none of the sweep's algorithms takes is a mistake
    named = grid.get("algorithm", [data.get("algorithm", "dsgd")])
    known = [a for a in named if isinstance(a, str) and a in algorithms.names()]  # else Config names it below
    for key in [*grid, *data]:
        if (key in ALGORITHM_KEYS or key.startswith("hyper.")) and known and not any(_takes(a, key) for a in known):
            raise ConfigError(f"sweep file {str(path)!r}: {key} is taken by none of its algorithms "
                              f"({', '.join(known)}); check its name")
    out = data.pop("out", None) or f"runs/sweep-{Path(path).stem}"
    if not isinstance(out, str):
        raise ConfigError(f"sweep file {str(path)!r}: out = {out!r}; accepted: a directory path in quotes")
    out = Path(out)
    keys = list(grid)
    points, seen, same = [], {}, {}
    for combo in itertools.product(*grid.values()):
        values = {**data, **dict(zip(keys, combo))}
        algorithm = values.get("algorithm", "dsgd")
        values.update(per_algorithm.get(algorithm, {}))
        if algorithm in algorithms.names():  # else Config names the bad algorithm below
            values = {k: v for k, v in values.items() if _takes(algorithm, k)}
        values = {k: v for k, v in values.items() if applies(k, values)}  # alpha only where partition is dirichlet
        name = ",".join(f"{k}={_safe(values[k])}" for k in keys if k in values)
        try:
            cfg = Config.from_dict(values)
        except ConfigError as e:
            raise ConfigError(f"sweep point {name}: {e}") from None
        point = json.dumps({k: values[k] for k in keys if k in values}, sort_keys=True, default=str)
        if name in seen:
            if seen[name] == point:  # a grid value this algorithm does not take: one run, not one per value
                continue
            raise ConfigError(f"sweep file {str(path)!r}: two grid points share the run directory name {name!r} "
                              f"(its characters other than letters, digits and '.' become '_'): {seen[name]} and "
                              f"{point}; give values that differ in those characters")
        seen[name] = point
        # values alike once read as the config reads them (lr = [1, 1.0], top_k:0.01 and top_k:1e-2) are one
        # experiment trained twice
        settings = {**cfg.to_dict(), "out": None}
        if cfg.compressor is not None:
            comp = kernels.parse(cfg.compressor, per=cfg.compress_per)  # its fields: dithered:16 is no qsgd:16
            settings["compressor"] = [type(comp).__name__, *dataclasses.astuple(comp)]
        experiment = json.dumps(settings, sort_keys=True, default=str)
        if experiment in same:
            raise ConfigError(f"sweep file {str(path)!r}: grid points {same[experiment]} and {name} are one "
                              f"experiment (their values read alike); list each value once")
        same[experiment] = name
        values["out"] = str(out / name)
        points.append(Point(name, values))
    for key in [*grid, *data]:  # dropped from every point: a mistake, as a key none of the algorithms takes
        if key in CONDITIONAL_KEYS and not any(key in p.values for p in points):
            on, accepted = CONDITIONAL_KEYS[key]
            raise ConfigError(f"sweep file {str(path)!r}: {key} is for {on}={' or '.join(accepted)}, which none of "
                              f"its runs has")
    return out, keys, points


def _flat_hyper(table: dict[str, Any]) -> dict[str, Any]:
    """A table with its hyper table, if any, written as hyper.NAME keys."""
    flat = {}
    for key, value in table.items():  # in the file's order: it orders the grid's keys in the runs' names
        if key == "hyper" and isinstance(value, dict):  # else Config names the bad value
            flat.update({f"hyper.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def _takes(algorithm: str, key: str) -> bool:
    """Whether a key goes to this algorithm's runs: every run key does, an algorithm's own only where taken."""
    own = key.removeprefix("hyper.")
    if key == own:
        return key not in ALGORITHM_KEYS or key in algorithms.hyperparameters(algorithm)
    return own in algorithms.hyperparameters(algorithm) or algorithms.base.takes_any(algorithm)


def _safe(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(value)).strip("_") or "_"


def status(point: Point) -> str:
    """done (finished or diverged), changed (finished, with settings the sweep file no longer asks for),
    resumable (a checkpoint), interrupted (files, no checkpoint) or new."""
    p = point.path
    # summary.json is written when a run ends (or diverges): one that reached this point's rounds is finished
    if (p / "metrics.jsonl").exists() and (p / "summary.json").exists():
        run = results.load_run(p)  # a file cut short or edited is one line naming it
        want = Config.from_dict(point.values)
        if "diverged" in run.summary or run.summary.get("rounds", -1) >= want.rounds:
            return "changed" if _changes(run, want) else "done"
    if (p / checkpoint.NAME).exists():
        return "resumable"
    return "interrupted" if (p / "metrics.jsonl").exists() else "new"


def _changes(run: results.Run, want: Config) -> str:
    """What a finished run ran with that the sweep file no longer asks for ("" if nothing): a config key, but
    for the keys a resumed run may change (rounds: more resume it, fewer are already there), or a hyperparameter
    of the factory's (a default edited since; older runs do not record them)."""
    keys = changed_settings(run.config, want)
    if keys:
        return ", ".join(f"{k} = {run.config.get(k)!r} (now {getattr(want, k)!r})" for k in keys)
    recorded, now = run.summary.get("hyperparameters") or {}, hyperparameters(want)
    edited = [k for k, v in recorded.items() if now.get(k) != v]
    return ", ".join(f"{k} = {recorded[k]!r} (now {now.get(k)!r})" for k in edited) + \
        (" (a default edited since?)" if edited else "")


def _check_data(points: list[Point], states: list[str]) -> None:
    """What a run checks against its data (its files there and readable, eval_samples within the test set, a
    partition that can be dealt), for every point to run, before the first runs: each dataset is read once."""
    loaded: dict[str, tuple[data.Dataset, data.Dataset]] = {}
    for point, state in zip(points, states):
        if state == "done":
            continue
        cfg = Config.from_dict(point.values)
        where = json.dumps([cfg.dataset, cfg.data_dir, data_options(cfg)])
        try:
            if where not in loaded:
                loaded[where] = data.load(cfg.dataset, cfg.data_dir, **data_options(cfg))
            fit_data(cfg, *loaded[where])
        except ConfigError as e:
            raise ConfigError(f"sweep point {point.name}: {e}") from None


def run(path: str | Path, progress: bool = True) -> Path:
    """Run the sweep in `path`; returns results.csv's path."""
    out, keys, points = load(path)
    states = [status(point) for point in points]
    for point, state in zip(points, states):
        if state == "changed":  # before any point runs, like every other mistake in the file
            was = _changes(results.load_run(point.path), Config.from_dict(point.values))
            raise ConfigError(f"{point.path}: finished with {was}; restore the sweep file, or move that run "
                              f"directory away to run it again")
    _check_data(points, states)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "results.csv"
    diverged = 0
    for i, (point, state) in enumerate(zip(points, states), 1):
        head = f"[{i}/{len(points)}] {point.name}"
        if state == "done":
            print(f"{head}: done, skipped", file=sys.stderr)
            continue
        start = time.perf_counter()
        try:
            engine = _engine(point, state, progress)
            engine.run(Config.from_dict(engine.config).rounds - engine.t)
            final = engine.history[-1]
            print(f"{head}: test acc {100 * final['test_acc']:.1f}% ({time.perf_counter() - start:.0f} s)",
                  file=sys.stderr)
        except Diverged as e:
            diverged += 1
            print(f"{head}: {e}", file=sys.stderr)
        write_csv(out, keys, points)
    write_csv(out, keys, points)
    if diverged:
        print(f"{diverged} of {len(points)} runs diverged (diverged=True in the CSV)", file=sys.stderr)
    return csv_path


def _engine(point: Point, state: str, progress: bool):
    if state == "resumable":  # every key of the point: resume refuses one that the sweep file has changed since
        want = Config.from_dict({**point.values, "progress": progress}).to_dict()
        want.pop("out")
        try:
            return resume(point.path, **want)
        except ConfigError as e:
            raise ConfigError(f"{point.path}: {e}; restore the sweep file, or move that run directory away to "
                              f"start it again") from None
    if state == "interrupted":  # stopped before its first checkpoint: keep its files, start it again
        k = 1
        while point.path.with_name(f"{point.path.name}.interrupted{k}").exists():
            k += 1
        point.path.rename(point.path.with_name(f"{point.path.name}.interrupted{k}"))
    return build(Config.from_dict({**point.values, "progress": progress}))


def write_csv(out: Path, keys: list[str], points: list[Point]) -> Path:
    """results.csv: a row per run per evaluation, for every point that has run (in part or whole)."""
    runs = [results.load_run(p.path) for p in points if (p.path / "metrics.jsonl").exists()]
    return results.write_csv(results.tidy(runs, keys), out / "results.csv")
