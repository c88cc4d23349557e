"""Reproduce the seed algorithms' papers' claims on real Fashion-MNIST: every run of a setup over several seeds.

    python benchmarks/reproduce.py [SETUP ...] [--scale cpu|gpu] [--seeds 0,1,2] [--json PATH] [--rounds R]
                                   [--jobs J] [--out DIR]

A setup is a config in configs/ (`<setup>_cpu.toml` scaled to 2 CPU cores, `<setup>.toml` at full size for
a GPU) and the runs it compares, each the config plus a few keys. For every run and seed this trains with
`gossipsim.sim.build` (run directories under --out, default runs/reproduce/), then prints a Markdown table: the averaged
model's final test accuracy (mean ± std over seeds), total bits sent per agent, and both relative to the
setup's first run. A run already finished (its summary.json exists) is read back, not trained again, so an
interrupted reproduction resumes where it stopped. `--jobs J` trains J runs at once in separate processes:
on a GPU a small model's round is bound by the host launching kernels, so runs side by side share the
device well; on a CPU they share its cores and gain nothing.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import shutil
import statistics
from pathlib import Path

from gossipsim.errors import Diverged
from gossipsim.sim import Config, build
from gossipsim.sim.config import load_toml

ROOT = Path(__file__).resolve().parents[1]

# setup -> [(label, keys over the config)]. The consensus steps gamma were picked on the cpu scale at 300 rounds,
# seed 0, from CHOCO 0.05, 0.1, 0.2 (0.3 for QSGD) and AdaGossip 0.0005 to 0.03 (README: the table of what
# was tried); the papers give none for this problem.
SETUPS = {
    "compression": [
        ("dsgd (uncompressed)", {}),
        ("choco, top-1%", dict(algorithm="choco", compressor="top_k:0.01", compress_per="layer", gamma=0.1)),
        # at full size gamma 0.1 diverges (so does 0.05, later): the step the 100 epochs need
        ("choco, top-1%, gamma 0.02", dict(algorithm="choco", compressor="top_k:0.01", compress_per="layer",
                                           gamma=0.02)),
        ("adagossip, top-1%", dict(algorithm="adagossip", compressor="top_k:0.01", compress_per="layer",
                                   gamma=0.002)),
        ("choco, QSGD 4-bit", dict(algorithm="choco", compressor="qsgd:15,scaled", compress_per="layer",
                                   gamma=0.1)),
        ("adagossip, QSGD 4-bit", dict(algorithm="adagossip", compressor="qsgd:15,scaled", compress_per="layer",
                                       gamma=0.003)),
        ("malcom_psgd, dithered 4-bit, mu 1e-4", dict(algorithm="malcom_psgd", compressor="dithered:15,scaled",
                                                     compress_per="layer", gamma=0.1, mu=1e-4)),
        ("malcom_psgd, dithered 4-bit, mu 1e-3", dict(algorithm="malcom_psgd", compressor="dithered:15,scaled",
                                                     compress_per="layer", gamma=0.1, mu=1e-3)),
    ],
    "leaders": [
        ("dsgd", {}),
        ("al_dsgd on dsgd", dict(algorithm="al_dsgd")),
        ("matcha (C_b = 0.5)", dict(algorithm="matcha", topology="erdos_renyi:0.2+matcha:0.5")),
        ("al_dsgd on matcha", dict(algorithm="al_dsgd", topology="erdos_renyi:0.2+matcha:0.5")),
    ],
    "allreduce": [
        ("allreduce (mean)", {}),
        ("adacons", dict(algorithm="adacons")),
        ("adacons, rescaled", dict(algorithm="adacons", rescale=True)),
    ],
}
DEFAULT_SEEDS = [0, 1, 2]
FILES = {"compression": "compression_ring16", "leaders": "leaders_er16", "allreduce": "allreduce16"}


def run(values: dict, out: Path) -> dict:
    """One run's final evaluation row, trained now or read back from its summary.json. A run that diverged
    gives its last good evaluation with "diverged": the round its loss or parameters became NaN or Inf."""
    summary = out / "summary.json"
    if not summary.exists():
        if out.exists():  # a run interrupted before its end: start it again rather than append to its metrics
            shutil.rmtree(out)
        engine = build(Config.from_dict({**values, "out": str(out), "progress": False}))
        try:
            engine.run(int(values.get("rounds", Config().rounds)))
        except Diverged:
            pass  # recorded in summary.json; the other runs go on
    done = json.loads(summary.read_text())
    return {**done["final"], "diverged": done["diverged"]["round"]} if "diverged" in done else done["final"]


def said(final: dict) -> str:
    if "diverged" in final:
        return f"diverged at round {final['diverged']}"
    return f"{100 * final['test_acc']:.2f}% ({final['samples_per_s']:.0f} samples/s)"


def out_dir(root: Path, name: str, label: str, seed: int) -> Path:
    slug = "".join(c if c.isalnum() else "_" for c in label)
    return root / name / slug / f"seed{seed}"


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def train_all(tasks: list[tuple[dict, Path]], jobs: int) -> None:
    """Trains the tasks not finished yet, `jobs` at a time in fresh processes (CUDA cannot be forked)."""
    todo = [(values, out) for values, out in tasks if not (out / "summary.json").exists()]
    if jobs <= 1 or len(todo) <= 1:
        return  # main() trains them one after another as it reads them
    ctx = multiprocessing.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // jobs)
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_worker_init,
                                                initargs=(threads,)) as pool:
        futures = {pool.submit(run, values, out): out for values, out in todo}
        for done in concurrent.futures.as_completed(futures):
            final = done.result()
            print(f"{futures[done]}: {said(final)}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("setups", nargs="*", metavar="SETUP", help=f"some of {', '.join(SETUPS)} (default: all)")
    ap.add_argument("--scale", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument("--seeds", default=",".join(map(str, DEFAULT_SEEDS)))
    ap.add_argument("--rounds", type=int, default=None, help="override the config's rounds (a quick look)")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "reproduce.json"))
    ap.add_argument("--jobs", type=int, default=1, help="runs trained at once, each in its own process")
    ap.add_argument("--out", default=str(ROOT / "runs" / "reproduce"),
                    help="the folder of the run directories (finished runs there are read, not trained again)")
    args = ap.parse_args()
    for setup in args.setups:
        if setup not in SETUPS:
            ap.error(f"unknown setup {setup!r}; accepted: {', '.join(SETUPS)}")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        ap.error(f"--seeds {args.seeds!r}: accepted: seeds separated by commas, like 0,1,2")
    if args.jobs < 1:
        ap.error(f"--jobs {args.jobs}: accepted: a positive number of processes")
    results = json.loads(Path(args.json).read_text()) if Path(args.json).exists() else {}
    setups = args.setups or list(SETUPS)
    bases = {}
    for setup in setups:
        file = FILES[setup] + ("_cpu" if args.scale == "cpu" else "")
        base = load_toml(ROOT / "configs" / f"{file}.toml")
        name = file  # names the runs' directories and the JSON's entry: a quick look must not pass for the real runs
        if args.rounds:
            base["rounds"] = args.rounds
            name = f"{file}@{args.rounds}rounds"
        bases[setup] = file, name, base
    # a run over other seeds is its own JSON entry: one seed must not write over the mean of three. Run
    # directories are per seed already, so every seed's run is shared between entries.
    entry = "" if seeds == DEFAULT_SEEDS else "@seeds" + "-".join(map(str, seeds))
    tasks = [({**base, **keys, "seed": seed}, out_dir(Path(args.out), name, label, seed))
             for setup, (_, name, base) in bases.items() for label, keys in SETUPS[setup] for seed in seeds]
    train_all(tasks, args.jobs)
    for setup in setups:
        file, name, base = bases[setup]
        rows = []
        for label, keys in SETUPS[setup]:
            finals = []
            for seed in seeds:
                finals.append(run({**base, **keys, "seed": seed}, out_dir(Path(args.out), name, label, seed)))
                print(f"{name} | {label} | seed {seed}: {said(finals[-1])}", flush=True)
            diverged = {seed: f["diverged"] for seed, f in zip(seeds, finals) if "diverged" in f}
            if diverged:  # its last good evaluation is no final accuracy, and its bits stopped there
                rows.append(dict(label=label, keys=keys, seeds=seeds, diverged=diverged))
                continue
            accs = [100 * f["test_acc"] for f in finals]
            rows.append(dict(label=label, keys=keys, seeds=seeds, acc=accs,
                             acc_mean=statistics.mean(accs), acc_std=statistics.stdev(accs) if len(accs) > 1 else 0.0,
                             bits=statistics.mean(f["bits_per_agent"] for f in finals),
                             sparsity=statistics.mean(f.get("sparsity", 0.0) for f in finals)))
        results[name + entry] = {"config": f"configs/{file}.toml", "rows": rows}
        where = f"{base['topology']}, " if "topology" in base else ""
        print(f"\n{name + entry}: {base['agents']} agents, {where}{base['rounds']} rounds, seeds {args.seeds}\n\n"
              + table(rows) + "\n", flush=True)
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


def table(rows: list[dict]) -> str:
    ref = rows[0]
    one = len(ref["seeds"]) == 1  # no spread to show: "± 0.00" would read as a measured one
    lines = [f"| run | test acc ({'seed ' + str(ref['seeds'][0]) if one else 'mean ± std'}) | vs first | "
             "bits per agent | vs first | sparsity |", "|---|---|---|---|---|---|"]
    for r in rows:
        if "diverged" in r:
            at = ", ".join(f"seed {seed} at round {t}" for seed, t in r["diverged"].items())
            lines.append(f"| {r['label']} | diverged ({at}) | – | – | – | – |")
            continue
        spread = "" if one else f" ± {r['acc_std']:.2f}"
        vs_acc, vs_bits = ("–", "–") if "diverged" in ref else \
            (f"{r['acc_mean'] - ref['acc_mean']:+.2f}", f"{r['bits'] / ref['bits']:.3g}x")
        lines.append(f"| {r['label']} | {r['acc_mean']:.2f}{spread}% | {vs_acc} | {r['bits']:.3g} | {vs_bits} "
                     f"| {r['sparsity']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
