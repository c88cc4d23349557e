"""Gossip operator speed: every path of M(x) against the copy bandwidth measured in the same run.

    python benchmarks/gossip.py [--quick] [--agents 64,256,1024] [--params 60000,270000] [--json PATH]

For each N and P, and a ring (circulant), an exponential graph (circulant, log-degree) and a random
3-regular graph (sparse), times M(x) for x (N, P) float32 on each applicable path: circulant (shifted
slices), sparse (CSR) and dense (N x N matmul; skipped where N^2 P would take too long on a CPU).
Effective GB/s counts the bytes gossip must move at least once, reading x and writing W x (2 N P 4 bytes),
so "of copy" is the fraction of the measured copy bandwidth (x.copy_ of the same size) reached. "auto" marks
the path M(x) picks on this device. The last column, nanoseconds per multiply-add (N (deg + 1) P of them),
shows whether the sparse paths cost linear in N deg P: it should stay flat across N, P and degree.
"""
from __future__ import annotations

import datetime
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from timing import arguments, timed  # noqa: E402  (benchmarks/timing.py, beside this script)

from gossipsim import graphs  # noqa: E402
from gossipsim.graphs.mixing import Mixing  # noqa: E402
from gossipsim.kernels import ops  # noqa: E402
from gossipsim.sim.model import keep_freed_memory  # noqa: E402

DENSE_MAX_FLOPS = 4e10  # a dense product above this is skipped on a CPU (minutes each)


def paths(topo) -> dict[str, Mixing]:
    """The same W behind every product that applies to it; `auto` is the one M(x) picks."""
    M = topo.mixing(0)
    out = {path: Mixing(M.dense(), topo.grid, path=path) for path in ("dense", "sparse")}
    if M.shifts is not None:
        out["circulant"] = Mixing(M.dense(), topo.grid, path="circulant")
    return out


def main() -> None:
    args = arguments(__doc__, Path(__file__).with_name("gossip.json"))
    device = args.device
    if device.type == "cpu":
        keep_freed_memory()  # as the engine does: else every fresh output is page-faulted in
    agents = args.agents or ([64, 256] if args.quick else [64, 256, 1024])
    params = args.params or ([60000] if args.quick else [60000, 270000])
    min_time = args.min_time or (0.3 if args.quick else 1.0)
    print(f"device {device} | torch {torch.__version__} | {torch.get_num_threads()} threads | "
          f"{datetime.datetime.now().isoformat(timespec='seconds')}\n")
    print("| graph | N | P | copy GB/s | path | ms | GB/s | of copy | ns per N(deg+1)P |")
    print("|---|---:|---:|---:|---|---:|---:|---:|---:|")
    rows = []
    for n in agents:
        for p in params:
            x = torch.randn(n, p, device=device)  # (N, P)
            y = torch.empty_like(x)
            nbytes = 2 * x.numel() * x.element_size()
            copy = nbytes / timed(lambda x=x, y=y: y.copy_(x), device, min_time) / 1e9
            for topo in (graphs.ring(n), graphs.exponential(n), graphs.random_regular(n, 3, seed=0)):
                M0 = topo.mixing(0)
                nnz = n + M0.edges  # N (deg + 1): the multiply-adds a row of x costs on the sparse paths
                for path, M in paths(topo).items():
                    if path == "dense" and device.type == "cpu" and 2 * n * n * p > DENSE_MAX_FLOPS:
                        continue
                    # on CUDA the sparse path is the Triton neighbour-table kernel; show cuSPARSE CSR beside it
                    variants = [("triton", "sparse (triton)"), ("torch", "sparse (csr)")] if (
                        path == "sparse" and device.type == "cuda" and ops.triton_available()) else [("", path)]
                    for kernels_env, label in variants:
                        os.environ["GOSSIPSIM_KERNELS"] = kernels_env
                        s = timed(lambda M=M, x=x: M(x), device, min_time)
                        os.environ.pop("GOSSIPSIM_KERNELS")
                        gbs = nbytes / s / 1e9
                        per = 1e9 * s / (nnz * p)
                        auto = path == M0.path_on(device) and kernels_env != "torch"
                        rows.append(dict(graph=topo.name, N=n, P=p, copy_gbs=copy, path=label, auto=auto, seconds=s,
                                         gbs=gbs, of_copy=gbs / copy, ns_per_nnz_p=per))
                        print(f"| {topo.name} | {n} | {p} | {copy:.1f} | {label}{' (auto)' if auto else ''} | "
                              f"{1e3 * s:.2f} | {gbs:.1f} | {100 * gbs / copy:.0f}% | {per:.3f} |", flush=True)
    Path(args.json).write_text(json.dumps({"device": str(device), "torch": torch.__version__, "rows": rows},
                                          indent=1))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
