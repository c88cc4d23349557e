"""Checkpoints: the whole simulator state in one file, written atomically and read with weights_only=True.

A checkpoint holds everything the next round depends on, so that a resumed run continues exactly where the
saved one stood (on a CPU, bit for bit):

    round t, the algorithm's state (x and every tensor it keeps: momenta, x_hat, error memories, ...),
    BatchNorm buffers, the sampler (its epoch permutations and generator), the augmentation's generator,
    the engine's own torch generator states (the compressors' random draws), the meters (bits sent, the
    loss window, the first round of a non-finite loss), the evaluation history, the measured backend and
    the timers; and the run's config.

Schedules (random W_t, MATCHA's matchings) need no state: round t's draw is seeded by (seed, t).
The file is written beside its final name and renamed over it, so a crash mid-write leaves the previous
checkpoint whole. Only tensors, numbers, strings, lists and dicts go in, which is what torch.load's
weights_only=True unpickler accepts: loading a checkpoint never runs code from the file.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError

FORMAT = 1
NAME = "checkpoint.pt"


def save(state: dict[str, Any], path: str | Path) -> Path:
    """Write `state` (Engine.state_dict()) to path: to a temporary file first, then renamed over path."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:  # a full disk or an interrupt: the partial file would hold the space the next try needs
        tmp.unlink(missing_ok=True)
        if isinstance(e, RuntimeError):  # torch's writer reports a failed write (a full disk) as "enforce fail"
            free = shutil.disk_usage(path.parent).free
            raise OSError(f"could not write the checkpoint {str(path)!r} ({free / 2**20:.1f} MiB free on its disk): "
                          f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
        raise
    return path


def load(path: str | Path) -> dict[str, Any]:
    """A checkpoint's contents, tensors on the CPU; a missing or foreign file is one clear ConfigError."""
    path = Path(path)
    if path.is_dir():
        path = path / NAME
    if not path.exists():
        raise ConfigError(f"no checkpoint at {str(path)!r}: a run directory holds {NAME} once it has passed a "
                          f"checkpoint (every checkpoint_every rounds; checkpoint_every=0 writes none)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which, not how the unpickler failed
        raise ConfigError(f"{str(path)!r} is not a readable gossipsim checkpoint ({type(e).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ConfigError(f"{str(path)!r} is not a gossipsim checkpoint of format {FORMAT}")
    return state


def nbytes(engine) -> int:
    """The size of the tensors a checkpoint of `engine` holds (its algorithm state and buffers dominate)."""
    tensors = [v for v in engine.state if isinstance(v, torch.Tensor)] + [engine.buffers]
    return sum(t.numel() * t.element_size() for t in tensors)
