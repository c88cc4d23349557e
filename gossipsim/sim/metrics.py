"""On-device meters for a round's statistics, and the run directory's files."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError

# the names of a metrics row the engine writes; an algorithm's own statistics take other names
METRICS = ("round", "epoch", "train_loss", "test_loss", "test_acc", "consensus", "sparsity", "bits_per_agent",
           "bits_max_agent", "agent_acc_mean", "agent_acc_min", "agent_acc_max", "train_time", "samples_per_s",
           "eval_time")


def reserved(name: str) -> bool:
    """Whether an algorithm's own statistic may not be called `name`: a metric, a results.csv column (a grid
    key: a config key or hyper.NAME)."""
    import dataclasses

    from .config import Config

    return name in {*METRICS, "run", "diverged", *(f.name for f in dataclasses.fields(Config))} or \
        name.startswith("hyper.")


class Meter:
    """Sums per-round statistics on the device; read only at an evaluation point (the named host sync)."""

    def __init__(self, n: int, device: torch.device):
        self.bits = torch.zeros(n, dtype=torch.float64, device=device)  # (N,) cumulative bits sent
        self.loss = torch.zeros(n, dtype=torch.float64, device=device)  # (N,) minibatch loss, this window
        self.rounds = 0  # rounds in the current window
        # (N,) the first round whose loss was NaN or Inf, -1 while finite: kept on the device, read at evaluations
        self.first_bad = torch.full((n,), -1, dtype=torch.int64, device=device)
        # an algorithm's other statistics (a 0-dim or (N,) tensor each): (N,) float64 sums over this window
        self.extra: dict[str, torch.Tensor] = {}
        self.extra_rounds: dict[str, int] = {}  # the rounds of this window that gave each

    def add(self, stats: dict[str, torch.Tensor], t: torch.Tensor) -> None:
        """Add round t's statistics (t a 0-dim device tensor). Their shapes are checked every round: metadata,
        no device sync."""
        n = self.loss.shape[0]
        for name in ("loss", "bits"):
            value = stats.get(name)
            if not torch.is_tensor(value) or value.shape != (n,):
                raise ConfigError(f"the algorithm's statistics need {name} of shape ({n},), one value per agent, "
                                  f"got {'nothing' if value is None else repr(value)[:60]}")
        loss = stats["loss"].detach()
        self.loss += loss
        self.bits += stats["bits"]
        self.first_bad = torch.where(~torch.isfinite(loss) & (self.first_bad < 0), t, self.first_bad)
        for name, value in stats.items():
            if name not in ("loss", "bits"):
                self._add_extra(name, value)
        self.rounds += 1

    def _add_extra(self, name: str, value: Any) -> None:
        n = self.loss.shape[0]
        if name not in self.extra and reserved(name):
            raise ConfigError(f"the algorithm's statistic {name!r} has the name of a metric, a results.csv column "
                              f"or a config key; give it another")
        if not torch.is_tensor(value) or value.shape not in ((), (n,)) or value.is_complex():
            raise ConfigError(f"the algorithm's statistic {name!r} must be a real 0-dim or ({n},) tensor (one "
                              f"value per agent), got {repr(value)[:60]}")
        if name not in self.extra:
            self.extra[name], self.extra_rounds[name] = torch.zeros_like(self.loss), 0
        self.extra[name] += value.detach()
        self.extra_rounds[name] += 1  # a statistic a round leaves out is averaged over the rounds that gave it

    def state_dict(self) -> dict[str, Any]:
        # copies, on a CPU too: add() sums in place
        return {"bits": self.bits.to("cpu", copy=True), "loss": self.loss.to("cpu", copy=True),
                "rounds": self.rounds, "first_bad": self.first_bad.to("cpu", copy=True),
                "extra": {k: v.to("cpu", copy=True) for k, v in self.extra.items()},
                "extra_rounds": dict(self.extra_rounds)}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        device = self.bits.device
        self.bits, self.loss = d["bits"].to(device, copy=True), d["loss"].to(device, copy=True)
        self.first_bad, self.rounds = d["first_bad"].to(device), int(d["rounds"])
        self.extra = {k: v.to(device, copy=True) for k, v in d.get("extra", {}).items()}  # older checkpoints: none
        self.extra_rounds = dict(d.get("extra_rounds", {}))

    def window_extra(self) -> dict[str, torch.Tensor]:
        """Each other statistic's mean per agent since the last evaluation (N,), the window restarted; call
        before window_loss, which ends the window."""
        out = {k: v / self.extra_rounds[k] for k, v in self.extra.items() if self.extra_rounds[k]}
        self.extra = {k: torch.zeros_like(v) for k, v in self.extra.items()}
        self.extra_rounds = dict.fromkeys(self.extra, 0)
        return out

    def window_loss(self) -> torch.Tensor:
        """Mean minibatch loss per agent since the last evaluation, and restart the window. (N,)"""
        out = self.loss / max(self.rounds, 1)
        self.loss = torch.zeros_like(self.loss)
        self.rounds = 0
        return out


def average(x: torch.Tensor, block_entries: int = 2**24) -> torch.Tensor:
    """The mean of the rows of x (N, P), (1, P) in x's dtype, summed in float64 a block of columns at a time: a
    float32 mean of N equal rows is not that row (off by a few ulps in half the entries), and the averaged model
    evaluated after an all-reduce must be the agents' own."""
    n, p = x.shape
    step = max(1, block_entries // n)
    out = torch.empty(1, p, dtype=x.dtype, device=x.device)
    for c in range(0, p, step):
        out[:, c:c + step] = x[:, c:c + step].double().mean(0, keepdim=True)
    return out


def consensus_distance(x: torch.Tensor, block_entries: int = 2**24) -> torch.Tensor:
    """(1/N) sum_i ||x_i - x_bar||^2 for x (N, P), as a 0-dim float64 tensor. In float64, a block of columns
    at a time: a float64 copy of all of x would need twice the memory of x (23 GB for 256 ResNet-18s). One
    block copy, worked on in place, is all it holds: an evaluation must fit in a round's memory."""
    n, p = x.shape
    step = max(1, block_entries // n)  # columns a block: 16M entries, 128 MiB in float64
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for c in range(0, p, step):
        block = x[:, c:c + step].to(torch.float64, copy=True)  # (N, step), a copy even of float64 x: it is written
        total += block.sub_(block.mean(0, keepdim=True)).square_().sum()
    return total / n


class RunDir:
    """config.json, metrics.jsonl (one line per evaluation, appended and flushed), summary.json, curves.png.

    Files are only ever appended to or replaced whole (write then rename), so a run that stops at any
    point keeps everything it had written.
    """

    def __init__(self, path: str | Path, resume: bool = False):
        self.path = Path(path)
        blocked = next((p for p in (self.path, *self.path.parents) if p.exists() and not p.is_dir()), None)
        if blocked is not None:
            raise ConfigError(f"out={str(self.path)!r}: {str(blocked)!r} is a file, not a folder; give a path for "
                              f"the run's directory")
        if not resume and (self.path / "metrics.jsonl").exists():  # appending would mix two runs in one file
            how = (f"continue or extend it with --resume={self.path}" if (self.path / "checkpoint.pt").exists()
                   else "it stopped before its first checkpoint, so there is nothing to resume: remove it")
            raise ConfigError(f"{str(self.path)!r} already holds a run (metrics.jsonl); {how}, or give another out")
        self.path.mkdir(parents=True, exist_ok=True)

    def write_json(self, name: str, data: Any) -> None:
        tmp = self.path / f".{name}.tmp"
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
        os.replace(tmp, self.path / name)

    def append_metrics(self, row: dict[str, Any]) -> None:
        line = memoryview((json.dumps(row) + "\n").encode())
        # unbuffered, so that a failed write can be taken back exactly: a buffered file would write its rest on close
        fd = os.open(self.path / "metrics.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            end = os.lseek(fd, 0, os.SEEK_END)
            try:
                while line:
                    line = line[os.write(fd, line):]
                os.fsync(fd)
            except BaseException:  # a full disk: take back a line cut short, which would spoil the file for plot
                os.ftruncate(fd, end)
                raise
        finally:
            os.close(fd)

    def keep_metrics(self, rows: int) -> int:
        """Keep metrics.jsonl's first `rows` lines (what a checkpoint had seen), moving any later ones (evaluations
        after the checkpoint, which the resumed run repeats) to metrics.after-checkpoint.jsonl; returns how many
        moved."""
        path = self.path / "metrics.jsonl"
        lines = path.read_text().splitlines(keepends=True) if path.exists() else []
        if len(lines) < rows:
            raise ConfigError(f"{str(path)!r} has {len(lines)} evaluations, fewer than the checkpoint's {rows}: "
                              f"it is not this checkpoint's run")
        if len(lines) > rows:
            with open(self.path / "metrics.after-checkpoint.jsonl", "a") as f:
                f.writelines(lines[rows:])
            tmp = self.path / ".metrics.jsonl.tmp"
            tmp.write_text("".join(lines[:rows]))
            os.replace(tmp, path)
        return len(lines) - rows

    def plot(self, history: list[dict[str, Any]], title: str = "") -> Path:
        return plot_curves({title or self.path.name: history}, self.path / "curves.png")


def plot_curves(runs: dict[str, list[dict[str, Any]]], path: str | Path) -> Path:
    """Test accuracy of the averaged model and consensus distance against rounds, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_cons) = plt.subplots(1, 2, figsize=(10, 3.8))
    for label, rows in runs.items():
        rounds = [r["round"] for r in rows]
        ax_acc.plot(rounds, [100 * r["test_acc"] for r in rows], label=label)
        # Exact consensus (all-reduce) has distance 0, which a log axis cannot show: leave it out.
        ax_cons.plot(rounds, [r["consensus"] or float("nan") for r in rows], label=label)
    ax_acc.set(xlabel="round", ylabel="test accuracy of the averaged model (%)")
    ax_cons.set(xlabel="round", ylabel="consensus distance", yscale="log")
    for ax in (ax_acc, ax_cons):
        ax.grid(alpha=0.3)
    ax_acc.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path
