"""The one timing loop of the bandwidth benchmarks (gossip.py, kernels.py)."""
from __future__ import annotations

import statistics
import time

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
