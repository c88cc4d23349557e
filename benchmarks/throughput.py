"""Training throughput: the engine's backends side by side with the naive loop and the one-model limit.

    python benchmarks/throughput.py [--quick] [--models mlp,lenet5,resnet20] [--agents 8,32,128]
                                    [--batch 32] [--json PATH] [--no-malloc-tuning] [--device cuda]

One round of every contestant does the same work: draw an (N, B) index tensor with the Sampler, gather
those images from the device-resident uint8 dataset and normalize them, then train N agents one step.
  vmap / loop / chunked  gossipsim's Engine.step() with that StackedModel backend (chunk = N // 4),
                         algorithm dsgd (lr 0.05) on a ring: oracle + local SGD + one gossip matmul;
  auto                   a fresh StackedModel(backend="auto"); its one-off selection (timing every
                         backend on the first batch) is reported apart, not in the steady state;
  naive                  tests/reference/naive.py: N nn.Modules, N torch.optim.SGD, per-edge gossip sums,
                         i.e. how existing simulators run agents (float32 here, like the engine);
  limit                  ONE nn.Module trained with torch.optim.SGD on the N*B samples as one batch:
                         the same arithmetic with shared weights, which no per-agent scheme can beat.
Throughput is N*B samples per round / median seconds per round, after warm-up rounds, over as many
rounds as fit in a minimum time. The data are random uint8 images of the right shape: models only need
shapes, and nothing is downloaded. Writes every raw number to JSON (default benchmarks/throughput.json).
"""
from __future__ import annotations

import argparse
import datetime
import functools
import itertools
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # baselines are imported from tests/, and the repo may not be installed

from gossipsim import graphs  # noqa: E402
from gossipsim.sim import algorithms, data, models  # noqa: E402
from gossipsim.sim.engine import Engine  # noqa: E402
from gossipsim.sim.model import StackedModel, keep_freed_memory  # noqa: E402
from tests.reference.naive import NaiveSimulator  # noqa: E402

# name -> (zoo model, its keyword arguments, (C, H, W) of the inputs)
MODELS = {
    "mlp": ("mlp", {}, (1, 28, 28)),
    "lenet5": ("lenet5", {}, (1, 28, 28)),
    "resnet20": ("resnet20", {"norm": "bn"}, (3, 32, 32)),
    # GroupNorm under vmap becomes grouped convolutions: the CPU's worst case for the vmap backend.
    "resnet20-gn": ("resnet20", {"norm": "gn"}, (3, 32, 32)),
}
AGENTS = {"mlp": [8, 32, 128], "lenet5": [8, 32], "resnet20": [4, 16], "resnet20-gn": [4, 16]}
AGENTS_QUICK = {"mlp": [8, 32], "lenet5": [8], "resnet20": [4], "resnet20-gn": [4]}
BACKENDS = ("vmap", "loop", "chunked")
LR = 0.05

# -------------------------------------------------------------------------------------------------
# arguments

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--quick", action="store_true", help="fewer agent counts and shorter timing (< 2 min)")
parser.add_argument("--models", default=",".join(MODELS), help=f"comma list of {', '.join(MODELS)}")
parser.add_argument("--agents", default=None, help="comma list of N for every model (default: per model)")
parser.add_argument("--batch", type=int, default=32, help="per-agent batch size B")
parser.add_argument("--device", default="cpu")
parser.add_argument("--json", default=str(ROOT / "benchmarks" / "throughput.json"))
parser.add_argument("--warmup", type=int, default=2, help="untimed rounds before timing (at least 2)")
parser.add_argument("--min-time", type=float, default=None, help="seconds of timed rounds per contestant")
parser.add_argument("--no-malloc-tuning", action="store_true",
                    help="skip keep_freed_memory(), to measure what glibc's default allocator costs")
args = parser.parse_args()

device = torch.device(args.device)
names = [m.strip() for m in args.models.split(",") if m.strip()]
unknown = [m for m in names if m not in MODELS]
if unknown:
    parser.error(f"unknown model(s) {', '.join(unknown)}; accepted: {', '.join(MODELS)}")
warmup = max(2, args.warmup)
min_time = args.min_time if args.min_time is not None else (0.5 if args.quick else 1.5)
min_rounds = 2 if args.quick else 3  # a median of one round would be a single noisy sample
malloc_tuned = None if args.no_malloc_tuning else keep_freed_memory()


def sync() -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(round_fn) -> list[float]:
    """Seconds of each timed round of round_fn, after `warmup` untimed ones."""
    for _ in range(warmup):
        round_fn()
    times: list[float] = []
    sync()
    start = time.perf_counter()
    while len(times) < min_rounds or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        round_fn()
        sync()  # CUDA runs asynchronously: a round is over when its kernels are
        times.append(time.perf_counter() - t0)
    return times


def random_dataset(shape: tuple[int, int, int], size: int) -> data.Dataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (size, *shape), dtype=torch.uint8, generator=g)  # (S, C, H, W)
    y = torch.randint(0, 10, (size,), generator=g)  # (S,)
    c = shape[0]
    return data.Dataset("random", x, y, 10, (0.5,) * c, (0.29,) * c).to(device)


# -------------------------------------------------------------------------------------------------
# one (model, N) row: every contestant on the same data, graph and batch shapes


def bench_row(name: str, n: int, b: int) -> dict:
    zoo_name, kwargs, shape = MODELS[name]
    factory = functools.partial(models.make, zoo_name, in_channels=shape[0], image_size=shape[1],
                                num_classes=10, **kwargs)
    train = random_dataset(shape, max(4096, 4 * n * b))
    test = random_dataset(shape, 64)  # the engine wants one; nothing here evaluates
    part = data.partition(train.y.cpu(), n, "iid", seed=0)
    topo = graphs.ring(n).to(device)
    W = topo.mixing(0).dense()  # (N, N) float64

    def batch(sampler: data.Sampler, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = sampler.sample(t)  # (N, B)
        return train.normalize(train.x[idx]), train.y[idx]  # (N, B, C, H, W) float32, (N, B)

    # Other processes on a 2-core machine make every number here meaningless: record how busy it was.
    row: dict = {"model": name, "N": n, "B": b, "samples_per_round": n * b, "rounds": {}, "s_per_round": {},
                 "samples_per_s": {}, "loadavg_start": os.getloadavg()[0]}

    def record(key: str, times: list[float] | None) -> None:
        row["rounds"][key] = times
        row["s_per_round"][key] = statistics.median(times) if times else None
        row["samples_per_s"][key] = n * b / row["s_per_round"][key] if times else None

    def engine_for(backend: str) -> Engine:
        model = StackedModel(factory, n, backend=backend, chunk_size=max(1, n // 4))
        row["P"], row["Pbuf"] = model.P, model.Pbuf
        return Engine(model, algorithms.make("dsgd", lr=LR), topo, train, test, part, batch_size=b,
                      device=device, progress=False, out=None)

    for backend in BACKENDS:
        try:
            record(backend, measure(engine_for(backend).step))
        except (torch.OutOfMemoryError, MemoryError):
            record(backend, None)

    try:
        engine = engine_for("auto")
        sync()
        t0 = time.perf_counter()
        engine.step()  # the first round resolves "auto" by timing every backend on this batch
        sync()
        row["auto_select_s"] = time.perf_counter() - t0
        row["auto_picked"] = engine.model.backend
        row["auto_timings"] = getattr(engine.model, "timings", None)  # backend -> best oracle seconds
        record("auto", measure(engine.step))
    except (torch.OutOfMemoryError, MemoryError):
        row["auto_picked"] = None
        record("auto", None)

    try:
        x0, buf0 = StackedModel(factory, n).init(0, device=device)  # (N, P), (N, Pbuf): the engine's start
        naive = NaiveSimulator(lambda: factory().to(device), W.cpu(), "dsgd", lr=LR, x0=x0, buf0=buf0,
                               dtype=torch.float32)
        sampler = data.Sampler(part, b, seed=0, device=device)
        t = itertools.count()
        record("naive", measure(lambda: naive.step(*batch(sampler, next(t)))))
    except (torch.OutOfMemoryError, MemoryError):
        record("naive", None)

    try:
        torch.manual_seed(0)
        one = factory().to(device).train()
        opt = torch.optim.SGD(one.parameters(), lr=LR)
        sampler = data.Sampler(part, b, seed=0, device=device)
        t = itertools.count()

        def limit_round() -> None:
            xb, yb = batch(sampler, next(t))  # (N, B, C, H, W), (N, B)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(one(xb.flatten(0, 1)), yb.flatten()).backward()  # one batch of N*B samples
            opt.step()

        record("limit", measure(limit_round))
    except (torch.OutOfMemoryError, MemoryError):
        record("limit", None)

    row["loadavg_end"] = os.getloadavg()[0]
    sps = row["samples_per_s"]
    fast = [sps[k] for k in ("loop", "vmap") if sps[k]]
    best = max((sps[k] for k in (*BACKENDS, "auto") if sps[k]), default=None)
    row["auto_over_max_loop_vmap"] = sps["auto"] / max(fast) if sps["auto"] and fast else None
    row["vmap_over_loop"] = sps["vmap"] / sps["loop"] if sps["vmap"] and sps["loop"] else None
    row["best_over_naive"] = best / sps["naive"] if best and sps["naive"] else None
    row["auto_over_naive"] = sps["auto"] / sps["naive"] if sps["auto"] and sps["naive"] else None
    row["best_over_limit"] = best / sps["limit"] if best and sps["limit"] else None
    return row


# -------------------------------------------------------------------------------------------------
# run every row, then print the table and write the JSON


def fmt(v: float | None, ratio: bool = False) -> str:
    if v is None:
        return "OOM"
    return f"{v:.2f}" if ratio else f"{v:,.0f}"


if device.type == "cuda":
    device_name = torch.cuda.get_device_name(device)
else:
    device_name = f"CPU {platform.processor() or platform.machine()}"
malloc = {None: "off (--no-malloc-tuning)", True: "on", False: "unavailable"}[malloc_tuned]
header = (f"device {device_name} | torch {torch.__version__} | {torch.get_num_threads()} threads | "
          f"{datetime.datetime.now().isoformat(timespec='seconds')} | malloc tuning {malloc} | "
          f"median of >= {min_rounds} rounds over >= {min_time} s after {warmup} warm-up rounds")

wall = time.perf_counter()
rows = []
for name in names:
    agent_counts = [int(a) for a in args.agents.split(",")] if args.agents else (
        AGENTS_QUICK if args.quick else AGENTS)[name]
    for n in agent_counts:
        row = bench_row(name, n, args.batch)
        rows.append(row)
        print(f"  {name} N={n}: auto picked {row['auto_picked']}, load {row['loadavg_start']:.1f} -> "
              f"{row['loadavg_end']:.1f}, s/round {row['s_per_round']}", file=sys.stderr, flush=True)
wall = time.perf_counter() - wall

lines = [header, "",
         "| model | N | B | P | vmap | loop | chunked | auto (picked) | naive | limit (samples/s) "
         "| auto/max(loop,vmap) | best/naive | best/limit |",
         "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
for r in rows:
    s = r["samples_per_s"]
    lines.append(f"| {r['model']} | {r['N']} | {r['B']} | {r['P']:,} | {fmt(s['vmap'])} | {fmt(s['loop'])} | "
                 f"{fmt(s['chunked'])} | {fmt(s['auto'])} ({r['auto_picked']}) | {fmt(s['naive'])} | "
                 f"{fmt(s['limit'])} | {fmt(r['auto_over_max_loop_vmap'], True)} | "
                 f"{fmt(r['best_over_naive'], True)} | {fmt(r['best_over_limit'], True)} |")
# The targets: auto within 5% of the faster backend everywhere; the MLP engine at N >= 32 at
# least 1.5x the naive loop.
misses = [f"{r['model']} N={r['N']}: auto/max(loop,vmap) = {fmt(r['auto_over_max_loop_vmap'], True)} < 0.95"
          for r in rows if r["auto_over_max_loop_vmap"] is not None and r["auto_over_max_loop_vmap"] < 0.95]
misses += [f"{r['model']} N={r['N']}: auto/naive = {fmt(r['auto_over_naive'], True)} < 1.5"
           for r in rows if r["model"] == "mlp" and r["N"] >= 32 and r["auto_over_naive"] is not None
           and r["auto_over_naive"] < 1.5]
lines += ["", "targets: " + ("all met" if not misses else "MISSED " + "; ".join(misses)),
          "1-min load average per row (start -> end): "
          + ", ".join(f"{r['model']}/{r['N']} {r['loadavg_start']:.1f}->{r['loadavg_end']:.1f}"
                      for r in rows),
          f"wall time {wall:.0f} s"]
print("\n".join(lines))

out = {"device": device_name, "device_type": device.type, "torch": torch.__version__,
       "threads": torch.get_num_threads(), "python": platform.python_version(),
       "date": datetime.datetime.now().isoformat(timespec="seconds"), "argv": sys.argv[1:],
       "malloc_tuning": malloc_tuned, "warmup_rounds": warmup, "min_time_s": min_time,
       "min_rounds": min_rounds, "lr": LR, "algorithm": "dsgd", "topology": "ring", "wall_s": wall,
       "rows": rows}
Path(args.json).parent.mkdir(parents=True, exist_ok=True)
Path(args.json).write_text(json.dumps(out, indent=1))
print(f"wrote {args.json}", file=sys.stderr)
