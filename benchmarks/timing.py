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


def arguments(doc: str, json_path: Path, graphs: bool = False) -> argparse.Namespace:
    """--quick, --agents, --params, --device, --min-time and --json (and --graphs), from the command line."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--agents", default=None)
    ap.add_argument("--params", default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--min-time", type=float, default=None, help="seconds of repeats per measurement")
    ap.add_argument("--json", default=str(json_path))
    if graphs:
        ap.add_argument("--graphs", default=None, help="comma list of topology specs (ring, torus, exponential...)")
    return ap.parse_args()
