"""The gossip part of a round (everything after the gradient) against its bytes floor, by graph, N and P.

    python benchmarks/round.py [--quick] [--agents 64,256] [--params 272474] [--graphs ring,torus,exponential]
                               [--device cuda] [--json PATH]

For each case, the registered algorithm's own step runs on (N, P) float32 state with a fixed gradient (the
oracle returns a stored g, so only the local step, compression and gossip are timed). Its bytes floor is
what any implementation must move, each input read once and each output written once: read x and g and
write x, and for CHOCO also read x_hat and write what changes of it (1% under top-1%, all of it under QSGD);
at the copy bandwidth measured in the same run. The floor does not grow with the degree: a graph with more
neighbours costs more above it. P defaults to ResNet-20's 272,474 parameters. The JSON's rows (graph, N, P,
step, seconds) are the scaling data of round time against N and P for each graph.
"""
from __future__ import annotations

import datetime
import itertools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from timing import arguments, timed  # noqa: E402  (benchmarks/timing.py, beside this script)

from gossipsim import graphs, kernels  # noqa: E402
from gossipsim.sim import algorithms  # noqa: E402
from gossipsim.sim.model import keep_freed_memory  # noqa: E402

# name, algorithm, its hyperparameters, arrays of (N, P) float32 the floor moves
CASES = [
    ("dsgd", "dsgd", {}, 3),
    ("choco top-1%", "choco", {"compressor": kernels.top_k(0.01), "gamma": 0.5}, 4.01),
    ("choco qsgd16", "choco", {"compressor": kernels.qsgd(16, scaled=True), "gamma": 0.5}, 5),
]


def main() -> None:
    args = arguments(__doc__, Path(__file__).with_name("round.json"), graphs=True)
    device = args.device
    if device.type == "cpu":
        keep_freed_memory()
    default_n = ([16] if args.quick else [16, 64]) if device.type == "cpu" else ([1024] if args.quick else [256, 1024])
    agents, params = args.agents or default_n, args.params or [272474]
    specs = (args.graphs or ("ring" if args.quick else "ring,torus,exponential")).split(",")
    min_time = args.min_time or (0.3 if args.quick else 1.0)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"device {name} | torch {torch.__version__} | {datetime.datetime.now().isoformat(timespec='seconds')}\n")
    print("| graph | degree | step | N | P | copy GB/s | ms | floor ms | x floor |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    rows = []
    for n, p in itertools.product(agents, params):
        x = torch.randn(n, p, device=device)
        y = torch.empty_like(x)
        unit = x.numel() * 4
        copy = 2 * unit / timed(lambda x=x, y=y: y.copy_(x), device, min_time) / 1e9
        del y
        g = torch.randn_like(x) * 1e-3
        for spec in specs:
            mixing = graphs.parse(spec, n).to(device).mixing(0)
            degree = int(mixing.degrees.max())
            rnd = algorithms.Round(torch.zeros((), device=device), lambda x, g=g: (g.new_zeros(len(g)), g), mixing)
            for label, algo, hyper, arrays in CASES:
                a = algorithms.make(algo, lr=0.05, **hyper)
                state = [a.init(x)]

                def step(a=a, state=state, rnd=rnd):
                    state[0] = a.step(state[0], rnd)[0]

                s = timed(step, device, min_time)
                floor = arrays * unit / (copy * 1e9)
                rows.append(dict(graph=spec, degree=degree, step=label, N=n, P=p, copy_gbs=copy, seconds=s,
                                 floor_seconds=floor))
                print(f"| {spec} | {degree} | {label} | {n} | {p} | {copy:.0f} | {1e3 * s:.2f} | {1e3 * floor:.2f} "
                      f"| {s / floor:.2f} |", flush=True)
                del state[:]
        del x, g
        if device.type == "cuda":
            torch.cuda.empty_cache()
    Path(args.json).write_text(json.dumps({"device": name, "rows": rows}, indent=1))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
