"""On-device meters for a round's statistics, and the run directory's files."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch


class Meter:
    """Sums per-round statistics on the device; read only at an evaluation point (the named host sync)."""

    def __init__(self, n: int, device: torch.device):
        self.bits = torch.zeros(n, dtype=torch.float64, device=device)  # (N,) cumulative bits sent
        self.loss = torch.zeros(n, dtype=torch.float64, device=device)  # (N,) minibatch loss, this window
        self.rounds = 0  # rounds in the current window

    def add(self, stats: dict[str, torch.Tensor]) -> None:
        self.loss += stats["loss"].detach()
        self.bits += stats.get("bits", 0)
        self.rounds += 1

    def window_loss(self) -> torch.Tensor:
        """Mean minibatch loss per agent since the last evaluation, and restart the window. (N,)"""
        out = self.loss / max(self.rounds, 1)
        self.loss = torch.zeros_like(self.loss)
        self.rounds = 0
        return out


def consensus_distance(x: torch.Tensor, block_entries: int = 2**24) -> torch.Tensor:
    """(1/N) sum_i ||x_i - x_bar||^2 for x (N, P), as a 0-dim float64 tensor. In float64, a block of columns
    at a time: a float64 copy of all of x would need twice the memory of x (23 GB for 256 ResNet-18s)."""
    n, p = x.shape
    step = max(1, block_entries // n)  # columns a block: 16M entries, 128 MiB in float64
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for c in range(0, p, step):
        block = x[:, c:c + step].double()
        total += (block - block.mean(0, keepdim=True)).pow(2).sum()
    return total / n


class RunDir:
    """config.json, metrics.jsonl (one line per evaluation, appended and flushed), summary.json, curves.png.

    Files are only ever appended to or replaced whole (write then rename), so a run that stops at any
    point keeps everything it had written.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    def write_json(self, name: str, data: Any) -> None:
        tmp = self.path / f".{name}.tmp"
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
        os.replace(tmp, self.path / name)

    def append_metrics(self, row: dict[str, Any]) -> None:
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())

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
