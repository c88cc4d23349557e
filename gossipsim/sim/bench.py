"""`gossipsim bench`: every benchmark in one command, written up in benchmarks/RESULTS.md with a scaling plot.

The benchmarks are the flat scripts of the source tree's benchmarks/ (each prints Markdown tables and
writes its raw numbers to JSON). This runs them one after another, each in a fresh process, shows their
output as it comes, and puts their tables under one header that says on what, with what and when they
ran. The JSON files go to benchmarks/results/; RESULTS.md is replaced only once every script has run, so
an interrupted bench leaves the previous one whole. `--quick` writes RESULTS-quick.md and results-quick/
instead, so a quick look never replaces the full report.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

from ..errors import ConfigError

# (section title, script, what it measures)
SCRIPTS = [
    ("Training throughput", "throughput.py",
     "samples/s of one training round (D-PSGD on a ring): the engine's backends, the naive per-agent loop "
     "(N nn.Modules and optimizers, per-edge gossip) and the one-model limit (one model on the N*B samples)"),
    ("Gossip", "gossip.py",
     "the gossip product W x on each path, against the copy bandwidth measured in the same run"),
    ("Compression kernels", "kernels.py",
     "the fused CHOCO step, QSGD, top-k and the consensus step, torch against Triton, against the copy "
     "bandwidth measured in the same run"),
    ("A round's gossip against its bytes floor", "round.py",
     "the algorithm's step after the gradient (local step, compression, gossip) for each graph, N and P, "
     "against the bytes any implementation must move at the copy bandwidth measured in the same run; its "
     "JSON is the scaling data of round time against N and P by graph"),
]

# the engine's CUDA-only mode, its own column (and counted as the engine's best: the same numbers)
CUDA_ONLY = {"throughput.py": ["--graph"]}


def source_root() -> Path:
    """The source tree holding benchmarks/ (an editable install or a clone)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "benchmarks" / "throughput.py").exists():
        raise ConfigError(f"gossipsim bench runs the scripts of the source tree's benchmarks/, which is not "
                          f"beside this installation ({root}); install from a clone with pip install -e .")
    return root


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def versions() -> str:
    text = f"torch {torch.__version__}"
    try:
        import triton

        text += f", Triton {triton.__version__}"
    except ImportError:
        text += ", no Triton"
    return f"{text}, Python {platform.python_version()}"


def scaling_plot(throughput_json: Path, png: Path) -> None:
    """samples/s against N for each model: the fastest engine backend, the naive loop and the one-model
    limit, from throughput.py's JSON."""
    rows = json.loads(throughput_json.read_text())["rows"]
    models = sorted({r["model"] for r in rows})
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, len(models), figsize=(3.6 * len(models), 3.2), squeeze=False)
    for ax, model in zip(axes[0], models):
        mine = sorted((r for r in rows if r["model"] == model), key=lambda r: r["N"])
        ns = [r["N"] for r in mine]

        def rate(r, keys):
            values = [r["samples_per_s"].get(k) for k in keys]
            return max((v for v in values if v), default=float("nan"))

        # as throughput.py's "best": not auto, a second timing of one of the others' code
        engine = ("vmap", "loop", "chunked", "graph")
        lines = {label: ([rate(r, keys) for r in mine], style)
                 for label, keys, style in (("engine (fastest backend)", engine, "o-"),
                                            ("naive per-agent loop", ("naive",), "s--"),
                                            ("one-model limit", ("limit",), "^:"))}
        for label, (ys, style) in lines.items():
            ax.plot(ns, ys, style, label=label)
        ax.set_xscale("log", base=2)
        shown = [y for ys, _ in lines.values() for y in ys if y == y]
        if shown and max(shown) >= 10 * min(shown):
            ax.set_yscale("log")
            ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        else:  # within a decade a log axis has no labelled tick, and stretches a few percent over the panel
            ax.set_ylim(bottom=0)
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.set_title(model)
        ax.set_xlabel("agents N")
        ax.set_ylabel("samples/s")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def run(quick: bool = False, device: str | None = None, out: str | Path | None = None) -> tuple[Path, list[str]]:
    """Runs every benchmark script and writes RESULTS.md (default benchmarks/RESULTS.md, and
    benchmarks/RESULTS-cuda.md on a GPU; RESULTS-quick.md and RESULTS-cuda-quick.md with `quick`); returns
    its path and the titles of the sections whose script failed (the report says how)."""
    root = source_root()
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device=cuda but torch sees no CUDA device; accepted here: cpu")
    # one report per kind of device; a quick look never writes over the full report kept in the repository
    default = ("RESULTS" if dev.type == "cpu" else f"RESULTS-{dev.type}") + ("-quick" if quick else "") + ".md"
    if out is not None:  # checked before the scripts run for minutes; absolute, since they run in the source root
        if Path(out).suffix.lower() != ".md" or Path(out).is_dir():
            raise ConfigError(f"--out={out}: the report is a Markdown file, e.g. --out=report.md (its plot and raw "
                              f"numbers go beside it)")
        out = Path(out).resolve()
    else:
        out = root / "benchmarks" / default
    # raw numbers per kind of device and per size: a GPU run or a quick look leaves the full CPU report's
    results = out.parent / (("results" if dev.type == "cpu" else f"results-{dev.type}") + ("-quick" if quick else ""))
    results.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now()
    sections, failed, done = [], [], set()
    for title, script, what in SCRIPTS:
        args = ["--device", dev.type] + (["--quick"] if quick else [])
        args += CUDA_ONLY.get(script, []) if dev.type == "cuda" else []
        shown = f"python benchmarks/{script} {' '.join(args)}"
        print(f"\n## {title}: {shown}\n", flush=True)
        json_out = ["--json", str(results / f"{Path(script).stem}.json")]
        # stdout (the tables) goes to the report and the terminal, stderr (progress) to the terminal alone
        proc = subprocess.Popen([sys.executable, str(root / "benchmarks" / script), *args, *json_out], cwd=root,
                                stdout=subprocess.PIPE, text=True)
        lines = []
        for line in proc.stdout:
            print(line, end="", flush=True)
            lines.append(line)
        status = proc.wait()
        body = "".join(lines).strip()
        if status != 0:
            body = f"(failed with exit status {status}; its last output:)\n\n```\n{body[-3000:]}\n```"
            failed.append(title)
        else:
            done.add(script)
        sections.append(f"## {title}\n\n{what}.\n\n`{shown}`\n\n{body}\n")
    plot = out.with_name(out.stem.replace("RESULTS", "scaling") + ".png")  # RESULTS-cuda.md: scaling-cuda.png
    throughput = results / "throughput.json"
    plotted = "throughput.py" in done and throughput.exists()  # this run's numbers, not an earlier run's
    if plotted:
        scaling_plot(throughput, plot)
        sections.insert(1, f"![samples/s against N]({plot.name})\n")
    command = "gossipsim bench" + (" --quick" if quick else "") + f" --device={dev.type}"
    header = (f"# Benchmark results\n\n`{command}`, {started:%Y-%m-%d %H:%M}, "
              f"{(datetime.datetime.now() - started).total_seconds():.0f} s.\n\n"
              f"- device: {describe_device(dev)}\n- versions: {versions()}\n\n"
              "Ratios within a table were measured side by side in one run; absolute figures move between runs "
              "and machines.\n")
    tmp = out.with_suffix(".md.tmp")
    tmp.write_text(header + "\n" + "\n".join(sections))
    tmp.replace(out)
    print(f"\nwrote {out}" + (f" and {plot.name}" if plotted else ""), flush=True)
    return out, failed
