"""Kernel speed: each fused op, pure torch against Triton, against the copy bandwidth measured in the same run.

    python benchmarks/kernels.py [--quick] [--agents 64,256,1024] [--params 60000,270000,11000000] [--json PATH]

Ops, on float32 (N, P):
  choco qsgd16 / sign / top1%   x_hat += C(x - x_hat) (kernels.choco_residual; QSGD scaled, as CHOCO uses it):
                                reads x and x_hat, writes x_hat (top-1%: only the 1% that changes)
  qsgd16, top1%                 C(r) of one tensor (Compressor.roundtrip): reads r, writes C(r)
  torch.topk 1%                 torch.topk(|r|, k) alone, the baseline exact top-k is compared with
  consensus ring                x += gamma (W x_hat - x_hat) on a ring (kernels.consensus_step)
"GB/s" counts the bytes an op must move at least once (each input read once, each output written once), so
"of copy" is that rate against x.copy_ of the same size; a two-pass op (a norm, then quantize) moves more than
that and tops out below 100%. On a CPU only the torch column exists (Triton runs there only interpreted).
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

from gossipsim import graphs, kernels  # noqa: E402
from gossipsim.kernels import ops  # noqa: E402
from gossipsim.sim.model import keep_freed_memory  # noqa: E402


def cases(n: int, p: int, device):
    """(name, arrays of N x P it moves at least once, fn(impl)) for each op."""
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(n, p, device=device, generator=g)
    h = torch.randn(n, p, device=device, generator=g) * 0.5
    work = torch.empty_like(h)
    ring = graphs.ring(n).to(device).mixing(0)
    k = max(1, p // 100)

    flips = [x, -x]  # x_hat chases x and -x by turns: r stays dense (against one x, top-k would zero it)

    def choco(comp):  # a step costs the same wherever x_hat is, as long as comp contracts (unscaled QSGD won't)
        def step():
            flips.reverse()
            return kernels.choco_residual(flips[0], work, comp)
        return step

    work.copy_(h)
    return [
        ("choco qsgd16", 3, choco(kernels.qsgd(16, scaled=True))),
        ("choco sign", 3, choco(kernels.sign())),
        ("choco top1%", 2.01, choco(kernels.top_k(0.01))),
        ("qsgd16", 2, lambda: kernels.qsgd(16).roundtrip(x)),
        ("top1%", 2, lambda: kernels.top_k(0.01).roundtrip(x)),
        ("torch.topk 1%", 1, lambda: torch.topk(x.abs(), k, dim=1)),
        ("consensus ring", 3, lambda: kernels.consensus_step(work, h, ring, 0.5)),
    ]


def main() -> None:
    args = arguments(__doc__, Path(__file__).with_name("kernels.json"))
    device = args.device
    if device.type == "cpu":
        keep_freed_memory()
        default_agents, default_params = ([64], [60000]) if args.quick else ([128], [272000])
    else:
        default_agents, default_params = ([256], [270000]) if args.quick else \
            ([64, 256, 1024], [60000, 270000, 11000000])
    agents, params = args.agents or default_agents, args.params or default_params
    impls = ["torch", "triton"] if device.type == "cuda" and ops.triton_available() else ["torch"]
    min_time = args.min_time or (0.3 if args.quick else 1.0)
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
    versions = f"torch {torch.__version__}"
    if ops.triton_available():
        import triton

        versions += f" | triton {triton.__version__}"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"device {name} | {versions} | {datetime.datetime.now().isoformat(timespec='seconds')}\n")
    print("| op | N | P | copy GB/s | " + " | ".join(f"{i} ms | {i} GB/s | {i} of copy" for i in impls) + " |")
    print("|---|---:|---:|---:|" + "---:|---:|---:|" * len(impls))
    rows = []
    for n in agents:
        for p in params:
            if free is not None and 10 * n * p * 4 > 0.8 * free:  # the torch paths' temporaries: ~10 (N, P)
                print(f"| (N={n}, P={p} skipped: needs {10 * n * p * 4 / 2**30:.0f} GiB) |")
                continue
            x = torch.randn(n, p, device=device)
            y = torch.empty_like(x)
            unit = x.numel() * x.element_size()
            copy = 2 * unit / timed(lambda x=x, y=y: y.copy_(x), device, min_time) / 1e9
            del x, y
            for op, arrays, fn in cases(n, p, device):
                row = dict(op=op, N=n, P=p, copy_gbs=copy)
                cells = []
                for impl in impls:
                    if op == "torch.topk 1%" and impl == "triton":
                        cells.append("- | - | -")
                        continue
                    os.environ["GOSSIPSIM_KERNELS"] = impl
                    s = timed(fn, device, min_time)
                    gbs = arrays * unit / s / 1e9
                    row[impl] = dict(seconds=s, gbs=gbs, of_copy=gbs / copy)
                    cells.append(f"{1e3 * s:.2f} | {gbs:.1f} | {100 * gbs / copy:.0f}%")
                os.environ.pop("GOSSIPSIM_KERNELS", None)
                rows.append(row)
                print(f"| {op} | {n} | {p} | {copy:.0f} | " + " | ".join(cells) + " |", flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    Path(args.json).write_text(json.dumps({"device": name, "versions": versions, "rows": rows}, indent=1))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
