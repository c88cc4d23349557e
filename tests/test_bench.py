"""`gossipsim bench`: the report it writes, from real benchmark scripts (the quickest one here)."""
from __future__ import annotations

import json

import pytest
import torch

from gossipsim.sim import bench
from gossipsim.sim.cli import main


def test_bench_writes_a_report_with_the_device_versions_and_each_scripts_tables(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench, "SCRIPTS", [("Gossip", "gossip.py", "the gossip product"),
                                           ("Broken", "no_such_script.py", "a script that fails")])
    out = tmp_path / "RESULTS.md"
    out.write_text("the previous report")
    assert main(["bench", "--quick", "--device=cpu", f"--out={out}"]) == 1  # a script failed
    report = out.read_text()
    assert report.startswith("# Benchmark results\n\n`gossipsim bench --quick --device=cpu`")
    assert f"torch {torch.__version__}" in report and "- device: " in report
    assert "## Gossip\n\nthe gossip product.\n\n`python benchmarks/gossip.py --device cpu --quick`" in report
    assert "| ring64 | 64 | 60000 |" in report  # the script's own table
    assert "## Broken" in report and "(failed with exit status 2" in report
    assert json.loads((tmp_path / "results-quick" / "gossip.json").read_text())["rows"]
    shown = capsys.readouterr()
    assert "| ring64 |" in shown.out  # shown as it runs
    assert shown.err == f"gossipsim: error: the benchmark script of Broken failed; {out} shows its last output\n"
    assert f"wrote {out}\n" in shown.out  # and no plot: the throughput script did not run
    assert not (tmp_path / "RESULTS.md.tmp").exists()


def test_bench_out_is_checked_before_anything_runs_and_is_taken_from_the_current_directory(tmp_path, monkeypatch,
                                                                                          capsys):
    (tmp_path / "adir").mkdir()
    for bad in ("adir", "report.png"):
        assert main(["bench", "--quick", "--device=cpu", f"--out={tmp_path / bad}"]) == 2
        assert "the report is a Markdown file" in capsys.readouterr().err
    monkeypatch.setattr(bench, "SCRIPTS", [("Gossip", "gossip.py", "the gossip product")])
    monkeypatch.setattr(bench.subprocess, "Popen", _FakeScript)
    monkeypatch.chdir(tmp_path)  # the scripts run in the source root: a relative --out is the user's directory's
    assert bench.run(quick=True, device="cpu", out="mine.md") == (tmp_path / "mine.md", [])
    assert (tmp_path / "results-quick").is_dir() and "| a table |" in (tmp_path / "mine.md").read_text()


class _FakeScript:
    """Popen of a benchmark script that prints a table and writes its JSON where --json says."""

    def __init__(self, argv, cwd, stdout, text):
        from pathlib import Path

        Path(argv[argv.index("--json") + 1]).write_text('{"rows": []}')
        self.stdout = iter(["| a table |\n"])

    def wait(self):
        return 0


def test_a_quick_bench_never_writes_over_the_full_report(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "SCRIPTS", [("Broken", "no_such_script.py", "a script that fails")])
    monkeypatch.setattr(bench, "source_root", lambda: tmp_path)
    (tmp_path / "benchmarks").mkdir()
    full = tmp_path / "benchmarks" / "RESULTS.md"
    full.write_text("the full report")
    assert bench.run(quick=True, device="cpu") == (tmp_path / "benchmarks" / "RESULTS-quick.md", ["Broken"])
    assert full.read_text() == "the full report"
    assert (tmp_path / "benchmarks" / "RESULTS-quick.md").read_text().startswith("# Benchmark results")
    assert (tmp_path / "benchmarks" / "results-quick").is_dir() and not (tmp_path / "benchmarks" / "results").exists()
    assert bench.run(quick=False, device="cpu")[0] == full and full.read_text().startswith("# Benchmark results")
    # a GPU's raw numbers go apart: they wrote over the CPU report's
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(bench, "describe_device", lambda dev: "a GPU")
    assert bench.run(quick=False, device="cuda")[0] == tmp_path / "benchmarks" / "RESULTS-cuda.md"
    assert sorted(p.name for p in (tmp_path / "benchmarks").glob("results*")) == ["results", "results-cuda",
                                                                                  "results-quick"]


def test_scaling_plot_from_throughput_json(tmp_path, monkeypatch):
    import matplotlib.figure

    rates = {"vmap": 100.0, "loop": 80.0, "chunked": None, "auto": 199.0, "naive": 50.0, "limit": 300.0}
    rows = [dict(model=m, N=n, samples_per_s={k: v and v * n for k, v in rates.items()})
            for m in ("mlp", "lenet5") for n in (8, 32)]
    rows += [dict(model="resnet18", N=2, samples_per_s=dict(vmap=43.0, loop=55.0, auto=60.0, naive=53.0, limit=52.0))]
    (tmp_path / "t.json").write_text(json.dumps({"rows": rows}))
    drawn = []
    save = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda fig, *a, **k: (drawn.append(fig), save(fig, *a, **k)))
    bench.scaling_plot(tmp_path / "t.json", tmp_path / "s.png")
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    axes = {ax.get_title(): ax for ax in drawn[0].axes}
    assert [line.get_ydata()[-1] for line in axes["mlp"].lines] == [3200, 1600, 9600]  # not auto's 199 * 32
    assert axes["mlp"].get_yscale() == "log"  # 400 to 9,600 samples/s: a log axis has labelled decades
    assert axes["resnet18"].get_yscale() == "linear" and axes["resnet18"].get_ylim()[0] == 0  # 52 to 55


@pytest.mark.skipif(torch.cuda.is_available(), reason="there --device=cuda is a real (long) run")
def test_bench_on_a_missing_device_is_a_one_line_mistake(capsys):
    assert main(["bench", "--device=cuda"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gossipsim: error: --device=cuda but torch sees no CUDA device") and err.count("\n") == 1


def test_a_failed_graph_contestant_costs_its_column_alone(tmp_path):
    # compile=graph is refused on a CPU: the throughput table is still written, the failure named under its own
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(bench.source_root() / "benchmarks" / "throughput.py"), "--quick",
                           "--models", "mlp", "--agents", "4", "--graph", "--min-time", "0.02", "--retries", "0",
                           "--json", str(tmp_path / "t.json")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| mlp | 4 | 32 | 199,210 |" in proc.stdout and "| failed (below) | | |" in proc.stdout
    assert "compile=graph failed for mlp N=4: ConfigError: compile=graph replays one captured round" in proc.stdout


def test_reproduce_records_a_diverged_run_and_goes_on(tmp_path):
    """A diverged run stopped the whole reproduction with a traceback, and read back, its last good evaluation
    passed for a final accuracy (with its bits cut short in the ratio)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "reproduce.py"
    spec = importlib.util.spec_from_file_location("reproduce", path)
    reproduce = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reproduce)
    keys = dict(agents=4, rounds=40, eval_every=10, dataset="synthetic", model="mlp", batch_size=8, seed=0,
                momentum=0.9)
    blown = reproduce.run({**keys, "lr": 50.0}, tmp_path / "blown")  # trained now
    assert blown == reproduce.run({**keys, "lr": 50.0}, tmp_path / "blown")  # read back alike
    fine = reproduce.run({**keys, "lr": 0.05}, tmp_path / "fine")
    at = blown["diverged"]
    assert 0 < at < 40 and "diverged" not in fine
    rows = [dict(label="fine", seeds=[0], acc_mean=100 * fine["test_acc"], acc_std=0.0,
                 bits=fine["bits_per_agent"], sparsity=0.0), dict(label="blown", seeds=[0], diverged={0: at})]
    assert reproduce.table(rows).splitlines()[-1] == f"| blown | diverged (seed 0 at round {at}) | – | – | – | – |"
    assert "| – |" not in reproduce.table(rows).splitlines()[-2]
    assert reproduce.table(rows[::-1]).splitlines()[-1].count("| – |") == 2  # no ratio to a diverged first row


def test_a_benchmark_scripts_bad_flag_is_one_usage_line():
    import argparse
    import importlib.util
    import subprocess
    import sys
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    done = subprocess.run([sys.executable, str(folder / "round.py"), "--agents=16,x"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "round.py: error: argument --agents: '16,x': accepted: positive integers separated by commas" in done.stderr
    spec = importlib.util.spec_from_file_location("timing", folder / "timing.py")
    timing = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(timing)  # the argument types every script shares
    assert timing.counts("64,256") == [64, 256] and timing.positive("32") == 32
    for kind, text, said in ((timing.positive, "0", "'0': accepted: a positive integer"),
                             (timing.counts, "0,1", "accepted: positive integers"),
                             (timing.device, "tpu", "'tpu': accepted: cpu, cuda")):
        with pytest.raises(argparse.ArgumentTypeError, match=said):
            kind(text)
