"""The command line: runs, the quickstart, and user mistakes answered in one line with exit status 2."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from gossipsim import ConfigError, sim
from gossipsim.sim import experiment
from gossipsim.sim.cli import main

TINY = ["--agents=3", "--rounds=4", "--eval_every=2", "--batch_size=4", "--progress=false",
        "--eval_samples=200"]


def test_run_with_toml_and_overrides(tmp_path, capsys):
    cfg = tmp_path / "exp.toml"
    cfg.write_text('algorithm = "dpsgd"\nlr = 0.05\nagents = 5\nmilestones = [2]\nlr_schedule = "multistep"\n')
    out = tmp_path / "run"
    assert main(["run", str(cfg), *TINY, f"--out={out}"]) == 0
    assert "| dpsgd |" in capsys.readouterr().out
    saved = json.loads((out / "config.json").read_text())
    assert saved["agents"] == 3 and saved["lr"] == 0.05 and saved["algorithm"] == "dpsgd"


@pytest.mark.parametrize("args,needle", [
    (["--agents=1"], "agents must be an integer >= 2, got 1"),
    (["--agnets=4"], "did you mean 'agents'"),
    (["--rounds=ten"], "rounds must be an integer, got 'ten'"),
    (["--algorithm=dspgd"], "did you mean 'dsgd'"),
    (["--dataset=imagenet"], "accepted: synthetic"),
    (["--model=vgg"], "accepted:"),
    (["--momentum=1.5"], "momentum must be in [0, 1)"),
    (["--nesterov=true"], "nesterov=true needs momentum > 0"),
    (["--lr"], "--lr needs a value"),
    (["missing.toml"], "not found"),
    (["stray"], "unexpected argument 'stray'"),
    (["--dataset=mnist", "--data_dir=/nonexistent"], "mnist"),
    (["--model=lenet5", "--agents=4096", "--batch_size=8192", "--backend=vmap"], "GiB is free"),
    (["--compile=graph", "--device=cpu"], "compile=graph replays one captured round: it needs device=cuda"),
    (["--seed=-1"], "seed and graph_seed must be integers in [0, 2^63)"),
    (["--seed=99999999999999999999"], "seed and graph_seed must be integers in [0, 2^63)"),
    (["--milestones=5,1", "--lr_schedule=multistep"], "milestones must be increasing rounds >= 1"),
    (["--weight_decay=inf"], "weight_decay must be a finite number >= 0"),
    (["--lr_factor=inf"], "lr_factor must be a finite number > 0"),
    (["--compress_per=layer"], "compress_per=layer is for algorithms that compress"),
])
def test_user_mistakes_exit_2_with_one_line(args, needle, capsys, tmp_path):
    assert main(["run", *args, f"--out={tmp_path / 'r'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gossipsim: error: ") and err.count("\n") == 1 and needle in err, err
    assert "Traceback" not in err


def test_bad_toml_and_nested_tables(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("agents = \n")
    assert main(["run", str(bad)]) == 2
    nested = tmp_path / "nested.toml"
    nested.write_text("[model]\nname = 'mlp'\n")
    assert main(["run", str(nested)]) == 2
    assert capsys.readouterr().err.count("\n") == 2


def test_module_entry_point_exit_codes(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "gossipsim", "run", "--help"], capture_output=True, text=True)
    assert ok.returncode == 0 and "batch_size" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "gossipsim", "run", "--rounds=0"], capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "rounds" in bad.stderr


def test_quickstart_at_tiny_size(tmp_path):
    rows, plot = experiment.quickstart(tmp_path / "qs", progress=False, rounds=4, eval_every=2, agents=4,
                                       batch_size=4, eval_samples=200)
    assert [r["algorithm"] for r in rows] == list(experiment.QUICKSTART_ALGORITHMS) and plot.exists()
    table = experiment.results_table(rows)
    assert table.count("\n") == 1 + len(rows)
    assert rows[2]["consensus"] == 0.0  # all-reduce keeps every agent on the same model
    # again with the same settings: its own earlier runs are replaced; with others they are the user's results
    small = dict(progress=False, rounds=4, eval_every=2, agents=4, batch_size=4, eval_samples=200)
    again, _ = experiment.quickstart(tmp_path / "qs", algorithms=("dsgd",), **small)
    assert again[0]["test_acc"] == rows[0]["test_acc"]
    kept = (tmp_path / "qs" / "dsgd" / "metrics.jsonl").read_text()
    with pytest.raises(ConfigError, match=r"qs/dsgd' holds an earlier run with other rounds: move it away"):
        experiment.quickstart(tmp_path / "qs", algorithms=("dsgd",), **{**small, "rounds": 6})
    assert (tmp_path / "qs" / "dsgd" / "metrics.jsonl").read_text() == kept
    # a changed run anywhere is refused before any other is retrained
    config = tmp_path / "qs" / "dpsgd" / "config.json"
    config.write_text(config.read_text().replace('"lr": 0.1', '"lr": 0.2'))
    with pytest.raises(ConfigError, match=r"qs/dpsgd' holds an earlier run with other lr"):
        experiment.quickstart(tmp_path / "qs", algorithms=("dsgd", "dpsgd"), **small)
    assert (tmp_path / "qs" / "dsgd" / "metrics.jsonl").read_text() == kept
    with pytest.raises(ConfigError, match="quickstart algorithm 'nope': accepted: dsgd, "):
        experiment.quickstart(tmp_path / "qs", algorithms=("nope",), **small)


def test_config_conversions_and_errors():
    cfg = sim.Config.from_dict({"agents": "8", "nesterov": "true", "momentum": "0.9", "milestones": "10,20",
                                "lr_schedule": "multistep", "data_dir": "none"})
    assert cfg.agents == 8 and cfg.nesterov is True and cfg.milestones == [10, 20] and cfg.data_dir is None
    for bad in ({"agents": 2.5}, {"nesterov": "maybe"}, {"lr": True}, {"dataset": 3}):
        with pytest.raises(ConfigError):
            sim.Config.from_dict(bad)
    assert sim.Config(algorithm="matcha", topology="ring+matcha").topology == "ring+matcha"  # budget's default
    # "none" is a norm (no normalization layers), not "unset" (which gave the model's BatchNorm)
    assert sim.Config.from_dict({"model": "resnet20", "norm": "none"}).norm == "none"
    for bad, needle in [({"algorithm": "choco", "compressor": "none"}, "unknown compressor 'none'; accepted: identity"),
                        ({"milestones": [1.5, 3]}, r"milestones must be a list of integers .* got \[1.5, 3\]"),
                        ({"batch_size": 10**20}, r"batch_size must be an integer < 2\^31, got 1000"),
                        ({"warmup": "99999999999999999999"}, r"warmup must be an integer < 2\^31"),
                        ({"algorithm": "al_dsgd", "every": 2**40}, r"every must be an integer < 2\^31"),
                        # keys that would go unused: a constant lr with milestones is a decay that never happens
                        ({"milestones": [500, 750]}, r"milestones=\[500, 750\] is for lr_schedule=multistep, and "
                                                     r"this run has lr_schedule=constant: it would go unused"),
                        ({"lr_factor": 0.5, "lr_schedule": "cosine"}, "lr_factor=0.5 is for lr_schedule=multistep"),
                        ({"alpha": 0.1}, "alpha=0.1 is for partition=dirichlet, and this run has partition=iid"),
                        ({"shards_per_agent": 3, "partition": "dirichlet"}, "shards_per_agent=3 is for partition="
                                                                            "shards"),
                        ({"chunk_size": 4, "backend": "vmap"}, "chunk_size=4 is for backend=chunked or auto")]:
        with pytest.raises(ConfigError, match=needle):
            sim.Config.from_dict(bad)
    # built from Python, the same conversions: "false" is False, not a truthy string
    cfg = sim.Config(agents="8", nesterov="false", momentum="0.9", eval_agents="no")
    assert cfg.agents == 8 and cfg.nesterov is False and cfg.momentum == 0.9 and cfg.eval_agents is False
    for bad in (dict(agents=4.5), dict(lr=None), dict(topology=3), dict(device=None), dict(rounds=float("inf"))):
        with pytest.raises(ConfigError):
            sim.Config(**bad)


def test_an_unwritable_out_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    for argv in (["run", "--agents=3", "--rounds=2", f"--out={tmp_path / 'file' / 'r'}"],
                 ["graphs", "ring:8", f"--draw={tmp_path / 'file' / 'g.png'}"],
                 ["graphs", "ring:8", f"--draw={tmp_path / 'g.txt'}"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("gossipsim: error: ") and err.count("\n") == 1 and ("file" in err or ".png" in err), err
    assert main(["run", "--agents=3", "--rounds=2", "--out="]) == 2  # it ran into runs/ as if never given
    assert capsys.readouterr().err == "gossipsim: error: out='' names no directory; give a path, or no out for " \
                                      "runs/<algorithm>-<topology>-<time>\n"


def test_unknown_commands_get_the_closest_one(capsys):
    assert main(["swep", "x.toml"]) == 2
    assert main(["--nope"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == ("gossipsim: error: unknown command 'swep' (did you mean 'sweep'?); commands: run, sweep, plot, "
                      "graphs, bench")
    assert len(err) == 2 and err[1].startswith("gossipsim: error: unrecognized arguments: --nope")


def test_plot_of_exact_averaging_and_a_bad_image_suffix(tmp_path, capsys):
    """allreduce's consensus distance is 0 at every evaluation: nothing for the log axis, still a plot."""
    run = tmp_path / "r"
    assert main(["run", "--algorithm=allreduce", "--agents=3", "--rounds=2", "--eval_every=1", "--batch_size=4",
                 "--eval_samples=50", "--progress=false", f"--out={run}"]) == 0
    assert main(["plot", str(run), f"--out={tmp_path / 'p.png'}"]) == 0 and (tmp_path / "p.png").stat().st_size
    capsys.readouterr()
    assert main(["plot", str(run), f"--out={tmp_path / 'p.txt'}"]) == 2
    assert "one of .png, .pdf, .svg" in capsys.readouterr().err


def test_python_api_mistakes_are_config_errors_naming_the_value(tmp_path):
    from gossipsim import graphs, kernels

    for call, needle in [(lambda: kernels.top_k("a"), "top_k fraction kept must be a number in (0, 1], got 'a'"),
                         (lambda: kernels.rand_k(True), "rand_k fraction kept must be a number"),
                         (lambda: kernels.parse(None), "compressor spec None: accepted: a string, one of identity, "),
                         (lambda: graphs.parse(3), "topology spec 3: accepted: a string like ring"),
                         (lambda: graphs.small_world(10, 3, 0.1), "even integer 2 <= k < n"),
                         (lambda: graphs.parse("small_world:10,3,0.1"), "got k=3")]:
        with pytest.raises(ConfigError) as e:
            call()
        assert needle in str(e.value), str(e.value)
    engine = sim.build(sim.Config(agents=3, rounds=2, batch_size=4, eval_samples=50, progress=False, out=str(tmp_path)))
    for rounds in ("2", -1, 2.5, True):
        with pytest.raises(ConfigError, match=f"run\\(rounds={re.escape(repr(rounds))}\\): accepted: a whole number"):
            engine.run(rounds)
    assert engine.history == []  # refused before the round-0 evaluation
    for bad, lacks in (({}, "round, algorithm, state"), ([1], "not a dict")):
        with pytest.raises(ConfigError, match=f"not an Engine.state_dict\\(\\) \\({lacks}"):
            engine.load_state_dict(bad)
    state = engine.state_dict()
    engine.load_state_dict(state)  # the real one still loads
    with pytest.raises(ConfigError, match="eval_samples=2001: the synthetic test set has 2000 samples; accepted: 1 to "
                                          "2000, or 0 for all of them"):
        sim.build(sim.Config(agents=3, eval_samples=2001, progress=False, out=str(tmp_path / "big")))
    assert not (tmp_path / "big").exists()
    with pytest.raises(ConfigError, match="norm='bn': mlp has no normalization layers to choose; models that take "
                                          "norm: resnet18, resnet20"):
        sim.build(sim.Config(agents=3, model="mlp", norm="bn", progress=False))


def test_a_default_run_directory_name_stays_short(tmp_path, monkeypatch):
    # ring+rotate:30 names its 30 graphs: the default directory's name passed 255 bytes
    monkeypatch.chdir(tmp_path)
    engine = sim.build(sim.Config(topology="ring+rotate:30", agents=4, rounds=1, batch_size=4, eval_samples=20,
                                  progress=False))
    name = engine.run_dir.path.name
    assert len(name) < 100 and name.startswith("dsgd-rotating_ring4_ring4_1_"), name


def test_an_out_under_a_file_names_the_file(tmp_path, capsys):
    (tmp_path / "afile").write_text("kept")
    for out in ("afile", "afile/run"):
        assert main(["run", "--agents=2", "--rounds=1", "--progress=false", f"--out={tmp_path / out}"]) == 2
        err = capsys.readouterr().err
        assert err == (f"gossipsim: error: out='{tmp_path / out}': '{tmp_path / 'afile'}' is a file, not a folder; "
                       f"give a path for the run's directory\n"), err
    assert (tmp_path / "afile").read_text() == "kept"
