"""What the bandwidth benchmarks (gossip.py, kernels.py) share: their arguments and their timing loop."""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch


def timed(fn, device: torch.device, min_time: float) -> float:
    """Median seconds of fn() over at least 3 calls and `min_time` seconds, after one warm-up call;
    on CUDA each call is bracketed by synchronizations, so it measures the device's work."""
    fn()
    times, start = [], time.perf_counter()
    while len(times) < 3 or time.perf_counter() - start < min_time:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def counts(text: str) -> list[int]:
    """An argparse type: a comma list of positive integers, "64,256" -> [64, 256]."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: accepted: positive integers separated by commas, like 64,256")
    return values


def positive(text: str) -> int:
    """An argparse type: a positive integer."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: accepted: a positive integer")
    return int(text)


def device(text: str) -> torch.device:
    """An argparse type: cpu, or cuda where torch sees a CUDA device."""
    if text.partition(":")[0] not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"{text!r}: accepted: cpu, cuda")
    if text.startswith("cuda") and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: torch sees no CUDA device; accepted here: cpu")
    return torch.device(text)


def arguments(doc: str, json_path: Path, graphs: bool = False) -> argparse.Namespace:
    """--quick, --agents, --params, --device, --min-time and --json (and --graphs), from the command line."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--agents", type=counts, default=None, help="comma list of N")
    ap.add_argument("--params", type=counts, default=None, help="comma list of P")
    ap.add_argument("--device", type=device, default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--min-time", type=float, default=None, help="seconds of repeats per measurement")
    ap.add_argument("--json", default=str(json_path))
    if graphs:
        ap.add_argument("--graphs", default=None, help="comma list of topology specs (ring, torus, exponential...)")
    return ap.parse_args()
