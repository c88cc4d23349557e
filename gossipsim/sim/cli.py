"""The command line: `gossipsim run [CONFIG.toml] [--key=value ...]`, `gossipsim run --resume=DIR`,
`gossipsim sweep FILE.toml`, `gossipsim plot RUN_DIR...`, `gossipsim graphs`, `gossipsim bench`.

Exit status: 0 success, 2 a bad configuration or argument (one line on stderr, never a traceback),
3 training diverged (NaN or Inf; the last good checkpoint is kept), 130 interrupted.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib
import importlib.util
import math
import os
import signal
import sys
import threading
from pathlib import Path

from ..errors import ConfigError, Diverged


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad argument answered like every other user mistake: one line, exit status 2."""

    def error(self, message: str):
        command = self.prog.removeprefix("gossipsim").strip()
        raise ConfigError(f"{command}: {message}" if command else message)


def _one_line(message: str) -> str:
    """The message with any control character (a newline in a user's value, say) written as an escape."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


def _parse_overrides(args: list[str]) -> tuple[str | None, dict[str, str]]:
    """[CONFIG.toml] then --key=value or --key value pairs."""
    path, values, i = None, {}, 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            key, eq, value = arg[2:].partition("=")
            if not eq:
                if i + 1 >= len(args) or args[i + 1].startswith("--"):
                    raise ConfigError(f"--{key} needs a value: --{key}=VALUE")
                i, value = i + 1, args[i + 1]
            values[key.replace("-", "_")] = value
        elif path is None and arg.endswith(".toml"):
            path = arg
        else:
            raise ConfigError(f"unexpected argument {arg!r}: give a CONFIG.toml and --key=value options")
        i += 1
    return path, values


def _import_user_code(spec: str | None) -> None:
    """--import=FILE.py or MODULE, several separated by commas: a user's code, typically registering algorithms,
    run before the config is read. A missing file or module is one line; an error inside the user's code keeps
    its traceback, which is what its author needs."""
    for item in filter(None, (s.strip() for s in (spec or "").split(","))):
        if item.endswith(".py"):
            path = Path(item).resolve()
            if not path.is_file():
                raise ConfigError(f"--import={item}: no such file; give a Python file or an importable module")
            name = f"_gossipsim_user.{path.stem}_{abs(hash(str(path))):x}"
            if name in sys.modules:  # main() called again in one process: registered already
                continue
            if str(path.parent) not in sys.path:  # its neighbours import as they do under `python FILE.py`
                sys.path.insert(0, str(path.parent))
            module_spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            try:
                module_spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[name]
                raise
        else:
            if not all(part.isidentifier() for part in item.split(".")):
                raise ConfigError(f"--import={item}: not a module name; give a Python file (FILE.py) or a module "
                                  f"like my_algos or package.my_algos")
            sys.path.insert(0, str(Path.cwd()))  # as `python -m` would find it
            try:
                importlib.import_module(item)
            except ModuleNotFoundError as e:
                if e.name is None or not item.startswith(e.name):  # a missing import inside the user's module
                    raise
                raise ConfigError(f"--import={item}: no module {e.name!r}; give a Python file (FILE.py) or an "
                                  f"importable module") from None
            finally:
                sys.path.remove(str(Path.cwd()))


def _keys_help() -> str:
    from .config import Config

    lines = ["keys (config file or --key=value), with defaults:"]
    for f in dataclasses.fields(Config):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        lines.append(f"  --{f.name:<17} {f.metadata['help']} [{default!r}]")
    return "\n".join(lines)


def cmd_run(argv: list[str]) -> int:
    from .config import Config, load_toml
    from .experiment import build, quickstart, results_table, resume

    if any(a in ("-h", "--help") for a in argv):
        print("usage: gossipsim run [CONFIG.toml] [--key=value ...] [--import=FILE.py]\n"
              "       gossipsim run --resume=DIR [--rounds=R] [--eval_every=K ...]\n\n"
              "--import=FILE.py (or MODULE; several separated by commas) runs your code first, so that the\n"
              "algorithms it registers can be named; --hyper.NAME=VALUE sets one of their own hyperparameters.\n\n"
              "With no arguments: the quickstart (every built-in algorithm on a ring of 16 agents,\n"
              "built-in synthetic dataset), a results table and runs/quickstart/.\n\n" + _keys_help())
        return 0
    if not argv:
        try:
            rows, plot = quickstart(progress=sys.stderr.isatty())
        except KeyboardInterrupt:
            raise KeyboardInterrupt("run `gossipsim run` again to redo the quickstart (it replaces its own "
                                    "runs)") from None
        print(results_table(rows))
        print(f"\nrun directories and {plot.name} in {plot.parent}/")
        return 0
    path, overrides = _parse_overrides(argv)
    _import_user_code(overrides.pop("import", None))
    resume_dir = overrides.pop("resume", None)
    if resume_dir is not None:
        if Path(resume_dir).is_file():
            raise ConfigError(f"--resume takes the run's directory, got the file {resume_dir}; "
                              f"give --resume={Path(resume_dir).parent}")
        if path:
            raise ConfigError(f"--resume continues the run in {resume_dir} with its own config; drop {path}")
        engine = resume(resume_dir, **overrides)
        cfg = Config.from_dict(engine.config)
        if engine.t >= cfg.rounds:
            raise ConfigError(f"the run in {resume_dir} has its {cfg.rounds} rounds already; give the total it "
                              f"should reach to extend it: --rounds={2 * cfg.rounds}, say")
        print(f"resuming {resume_dir} at round {engine.t} of {cfg.rounds}", file=sys.stderr)
    else:
        values = load_toml(path) if path else {}
        cfg = Config.from_dict({**values, **overrides})
        engine = build(cfg)
        print(engine.describe_partition(), file=sys.stderr)
    print(f"memory: {engine.memory.describe()} at the peak of a round, besides the data", file=sys.stderr)
    if engine.checkpoint_interval:
        from .checkpoint import nbytes
        from .memory import size

        print(f"checkpoint: {size(nbytes(engine))} to {engine.run_dir.path / 'checkpoint.pt'} every "
              f"{engine.checkpoint_interval} rounds (checkpoint_every=0: none)", file=sys.stderr)
    try:
        history = engine.run(cfg.rounds - engine.t)
    except ConfigError as e:  # found only once rounds run (a user algorithm's statistics, say)
        if engine.run_dir is not None and not (engine.run_dir.path / "checkpoint.pt").exists():
            raise ConfigError(f"{e}; {engine.run_dir.path} holds the files it wrote before: remove it or give "
                              f"another --out to run again") from None
        raise
    except KeyboardInterrupt:
        if (engine.run_dir.path / "checkpoint.pt").exists():
            raise KeyboardInterrupt(f"continue from its last checkpoint (round {engine.checkpoint_round}) with: "
                                    f"gossipsim run --resume={engine.run_dir.path}") from None
        raise KeyboardInterrupt(f"no checkpoint was written yet, so there is nothing to resume: to start again, "
                                f"remove {engine.run_dir.path} or give another --out") from None
    row = {"algorithm": cfg.algorithm, **history[-1], "samples_per_s": engine.summary()["samples_per_s"]}
    print(results_table([row]))
    if cfg.compile != "off":
        print(f"compile ({cfg.compile}): {engine.compile_time:.1f} s, not counted in samples/s", file=sys.stderr)
    if engine.device.type == "cuda":  # what the preflight's estimate is checked against
        import torch

        from .memory import size

        print(f"memory: peak {size(torch.cuda.max_memory_allocated(engine.device))} allocated on the device, "
              f"data included (estimated {size(engine.memory.total)} besides the data)", file=sys.stderr)
    print(f"\nrun directory: {engine.run_dir.path}")
    return 0


def cmd_sweep(argv: list[str]) -> int:
    """`gossipsim sweep FILE.toml [--list]`: every point of the grid, resumably, into results.csv."""
    from . import sweep

    parser = _Parser(prog="gossipsim sweep", description="Run a grid of experiments (sim/sweep.py describes the "
                     "file); run again, it skips finished runs and resumes interrupted ones.")
    parser.add_argument("file", metavar="FILE.toml")
    parser.add_argument("--list", action="store_true", help="list the points and their status; run nothing")
    parser.add_argument("--import", dest="imports", default=None, metavar="FILE.py",
                        help="your code that registers algorithms (or a MODULE; several separated by commas)")
    ns = parser.parse_args(argv)
    _import_user_code(ns.imports)
    if ns.list:
        out, _, points = sweep.load(ns.file)
        for point in points:
            print(f"{sweep.status(point):<12} {point.name}")
        print(f"{len(points)} runs in {out}/")
        return 0
    try:
        csv = sweep.run(ns.file, progress=sys.stderr.isatty())
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"run `gossipsim sweep {ns.file}` again to go on: it skips finished runs and "
                                f"resumes the rest") from None
    print(f"results: {csv} (a row per run per evaluation); plot them with: gossipsim plot {csv.parent}")
    return 0


def cmd_plot(argv: list[str]) -> int:
    """`gossipsim plot RUN_DIR... [--out FILE.png]`: curves of runs, mean and std over seeds."""
    from . import results

    parser = _Parser(prog="gossipsim plot", description="Plot test accuracy against rounds and against bits sent, "
                     "and consensus distance; runs that differ only in seed are drawn as a mean with a band of one "
                     "standard deviation.")
    parser.add_argument("dirs", nargs="+", metavar="RUN_DIR", help="run directories, or a sweep's directory")
    parser.add_argument("--out", default=None, help="the PNG (default: plot.png in the first directory)")
    ns = parser.parse_args(argv)
    runs = results.find_runs(ns.dirs)
    path = results.plot(runs, _image("--out", ns.out or f"{ns.dirs[0]}/plot.png"))
    groups = results.group(runs)
    print(f"{len(runs)} runs in {len(groups)} groups drawn to {path}")
    return 0


def cmd_graphs(argv: list[str]) -> int:
    """Describe topologies: size, degrees, diameter, spectral gap, rho, the worst round's ||W_t - J|| over 64
    rounds, mixing time; optionally draw them."""
    import networkx as nx
    import torch

    from .. import graphs

    parser = _Parser(prog="gossipsim graphs", description="Describe (and draw) topologies.")
    parser.add_argument("specs", nargs="+", metavar="SPEC", help="e.g. ring:16 torus:4x4 dyck erdos_renyi:16,0.3")
    parser.add_argument("--agents", type=int, default=None, help="size for specs that give none (ring, torus...)")
    parser.add_argument("--weights", default="metropolis", help=f"one of {', '.join(graphs.WEIGHTS)}")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random graphs")
    parser.add_argument("--draw", metavar="FILE.png", help="draw the graphs side by side into a PNG")
    ns = parser.parse_args(argv)
    if ns.draw:
        _image("--draw", ns.draw)  # before the table, not after it
    topos = [graphs.parse(spec, ns.agents, weights=ns.weights, seed=ns.seed) for spec in ns.specs]
    print("| topology | n | degree | diameter | spectral gap | rho per round | worst round | "
          "mixing time (rounds to 1e-2) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for spec, topo in zip(ns.specs, topos):
        static = isinstance(topo, graphs.Topology)
        rounds = [topo.mixing(t) for t in range(1 if static else 64)]
        deg = torch.stack([m.degrees.cpu() for m in rounds])  # (rounds, N)
        # rho averages over rounds; a round with ||W_t - J|| > 1 (MATCHA's negative self-weights) expands
        # the disagreement, and one such round can blow up training (README: Reproducing the papers)
        worst = max(float(torch.linalg.matrix_norm(m.dense().cpu() - 1 / topo.n, ord=2)) for m in rounds)
        degree = f"{int(deg.min())}" if deg.min() == deg.max() else f"{int(deg.min())}..{int(deg.max())}"
        W = topo.mixing(0).dense()
        diameter = nx.diameter(nx.from_numpy_array((W != 0).cpu().numpy())) if static else "-"
        gap = f"{float(graphs.spectral_gap(W)):.4f}" if static else "-"
        r = graphs.rho_per_round(topo)
        if r < 1e-12:  # exact averaging, within one period of a periodic schedule: the first round it is reached
            J = torch.full((topo.n, topo.n), 1 / topo.n, dtype=torch.float64)  # as rho's (float32's 1/3 never was)
            steps, product = 0, torch.eye(topo.n, dtype=torch.float64)
            period = topo.period if isinstance(topo, graphs.Periodic) else 1  # where rho found it: no later
            while steps < period and float(torch.linalg.matrix_norm(product - J, ord=2)) >= 1e-12:
                product, steps = topo.mixing(steps).dense().cpu().double() @ product, steps + 1
        else:
            steps = math.ceil(math.log(1e-2) / math.log(r)) if r < 1 else math.inf
        print(f"| {spec} | {topo.n} | {degree} | {diameter} | {gap} | {r:.4f} | {worst:.4f} | {steps} |")
    if ns.draw:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(topos), figsize=(3.2 * len(topos), 3.4), squeeze=False)
        for ax, spec, topo in zip(axes[0], ns.specs, topos):
            A = (topo.mixing(0).dense() != 0).cpu().numpy()
            A[range(topo.n), range(topo.n)] = False
            g = nx.from_numpy_array(A)
            nx.draw(g, nx.spring_layout(g, seed=0), ax=ax, node_size=40, width=0.6)  # numpy only, no scipy
            ax.set_title(spec if isinstance(topo, graphs.Topology) else f"{spec} (round 0)")
        fig.tight_layout()
        fig.savefig(ns.draw, dpi=100)
        print(f"drawn to {ns.draw}")
    return 0


def cmd_bench(argv: list[str]) -> int:
    """`gossipsim bench [--quick] [--device D] [--out PATH]`: every benchmark, written up in RESULTS.md."""
    from . import bench

    parser = _Parser(prog="gossipsim bench", description="Run every benchmark and write "
                                     "benchmarks/RESULTS.md (tables, device, versions, date) and scaling.png.")
    parser.add_argument("--quick", action="store_true", help="fewer sizes and shorter timing (< 2 min on 2 cores)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when present")
    parser.add_argument("--out", default=None, help="the report's path (default benchmarks/RESULTS.md; "
                        "with --quick, benchmarks/RESULTS-quick.md)")
    ns = parser.parse_args(argv)
    out, failed = bench.run(quick=ns.quick, device=ns.device, out=ns.out)
    if failed:  # not a user's mistake: exit status 1
        print(f"gossipsim: error: the benchmark script of {', '.join(failed)} failed; {out} shows its last output",
              file=sys.stderr)
        return 1
    return 0


COMMANDS = {"run": "train (no arguments: the quickstart); run --resume=DIR continues a run",
            "sweep": "run a grid of experiments from a TOML file, resumably, into one CSV",
            "plot": "plot run directories: accuracy against rounds and bits, consensus; mean and std over seeds",
            "graphs": "describe (and draw) topologies", "bench": "run the benchmarks"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    handlers = {"run": cmd_run, "sweep": cmd_sweep, "plot": cmd_plot, "graphs": cmd_graphs, "bench": cmd_bench}
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None  # `kill` stops it as Ctrl-C does
    try:
        return _main(argv, handlers)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str], handlers) -> int:
    try:
        if argv and argv[0] in handlers:  # everything after the command is its own, --help too
            return handlers[argv[0]](argv[1:])
        if argv and not argv[0].startswith("-"):
            match = difflib.get_close_matches(argv[0], list(handlers), n=1)
            hint = f" (did you mean {match[0]!r}?)" if match else ""
            raise ConfigError(f"unknown command {argv[0]!r}{hint}; commands: {', '.join(handlers)}")
        parser = _Parser(prog="gossipsim", description="Simulate decentralized (gossip) training of N agents on "
                         "one device.", formatter_class=argparse.RawDescriptionHelpFormatter,
                         epilog="commands:\n" + "\n".join(f"  {k:<8} {v}" for k, v in COMMANDS.items()) +
                         "\n\nexit status: 0 done, 1 a benchmark script failed, 2 bad configuration or argument, "
                         "3 training diverged, 130 interrupted")
        parser.add_argument("--version", action="store_true", help="print the version and exit")
        ns = parser.parse_args(argv)
        if ns.version:
            from .. import __version__
            print(__version__)
            return 0
        parser.print_help()
        return 2
    except ConfigError as e:
        print(f"gossipsim: error: {_one_line(str(e))}", file=sys.stderr)
        return 2
    except Diverged as e:
        print(f"gossipsim: {_one_line(str(e))}", file=sys.stderr)
        return 3
    except KeyboardInterrupt as e:
        hint = f"; {e}" if str(e) else ""
        print(f"gossipsim: interrupted; files already written are kept{hint}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `gossipsim graphs | head`: the reader has gone, nothing to tell it
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush does not raise again
        return 1
    except OSError as e:  # an unwritable --out, a full disk: what was written before is kept
        where = f": {e.filename}" if e.filename else ""
        print(f"gossipsim: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    except MemoryError as e:  # e.g. the dense (N, N) mixing matrix of a huge topology
        detail = f": {_one_line(str(e))}" if str(e) else ""
        print(f"gossipsim: error: out of host memory{detail}", file=sys.stderr)
        return 2


def _image(flag: str, path: str) -> str:
    """path, if matplotlib can write an image by its suffix; else one ConfigError naming the flag."""
    if Path(path).suffix.lower() not in IMAGE_SUFFIXES:
        raise ConfigError(f"{flag}={path}: an image file is written by its suffix, one of {', '.join(IMAGE_SUFFIXES)}")
    return path


IMAGE_SUFFIXES = (".png", ".pdf", ".svg")


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
