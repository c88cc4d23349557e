"""Sweeps (a grid, resumable, one tidy CSV) and plots of run directories with bands over seeds."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from gossipsim import sim
from gossipsim.sim import results, sweep
from gossipsim.sim.cli import main

SWEEP = """
rounds = 4
agents = 4
batch_size = 8
eval_every = 2
eval_samples = 100
backend = "vmap"
out = "{out}"

[grid]
algorithm = ["dsgd", "choco"]
compressor = ["top_k:0.1", "sign"]
seed = [0, 1]

[choco]
gamma = 0.4
"""


@pytest.fixture
def sweep_file(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text(SWEEP.format(out=tmp_path / "sweep"))
    return path


def test_a_sweep_runs_the_grid_into_one_tidy_csv_then_resumes(sweep_file, tmp_path, capsys):
    assert main(["sweep", str(sweep_file)]) == 0
    csv = tmp_path / "sweep" / "results.csv"
    df = pd.read_csv(csv)
    # dsgd takes no compressor: one dsgd run per seed, and one choco run per compressor and seed
    assert df["run"].nunique() == 6 and len(df) == 6 * 3
    assert set(df["algorithm"]) == {"dsgd", "choco"} and df.loc[df.algorithm == "dsgd", "compressor"].isna().all()
    assert set(df["round"]) == {0, 2, 4} and df["test_acc"].between(0, 1).all() and not df["diverged"].any()
    assert df["finished"].all()
    table = df[df["round"] == 4].groupby(["algorithm", "compressor"], dropna=False)["test_acc"].agg(["mean", "std"])
    assert len(table) == 3 and table["std"].notna().all()  # the README's summary: 2 seeds per group
    runs = sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert "algorithm=choco,compressor=top_k_0.1,seed=1" in runs and "algorithm=dsgd,seed=0" in runs
    assert json.loads((tmp_path / "sweep" / "algorithm=choco,compressor=sign,seed=0" / "config.json")
                      .read_text())["gamma"] == 0.4

    # a run stopped half-way resumes from its checkpoint; finished ones are skipped
    cut = tmp_path / "sweep" / "algorithm=choco,compressor=sign,seed=1"
    expected = (cut / "metrics.jsonl").read_text().splitlines()
    point = next(p for p in sweep.load(sweep_file)[2] if p.path == cut)
    shutil.rmtree(cut)
    sim.build(sim.Config.from_dict({**point.values, "rounds": 2, "progress": False})).run(2)
    done = {p.name: (p / "metrics.jsonl").stat().st_mtime_ns for p in (tmp_path / "sweep").iterdir() if p.is_dir()}
    capsys.readouterr()
    assert main(["sweep", str(sweep_file), "--list"]) == 0
    listing = capsys.readouterr().out
    assert "resumable    algorithm=choco,compressor=sign,seed=1" in listing and listing.count("done") == 5
    assert main(["sweep", str(sweep_file)]) == 0
    assert capsys.readouterr().err.count("done, skipped") == 5
    for name, mtime in done.items():
        if name != cut.name:
            assert (tmp_path / "sweep" / name / "metrics.jsonl").stat().st_mtime_ns == mtime
    strip = {"train_time", "samples_per_s", "eval_time"}

    def rows(lines):
        return [{k: v for k, v in json.loads(line).items() if k not in strip} for line in lines]

    assert rows((cut / "metrics.jsonl").read_text().splitlines()) == rows(expected)
    assert len(pd.read_csv(csv)) == 18 and pd.read_csv(csv)["finished"].all()

    assert main(["plot", str(tmp_path / "sweep"), "--out", str(tmp_path / "p.png")]) == 0
    assert "6 runs in 3 groups" in capsys.readouterr().out and (tmp_path / "p.png").stat().st_size > 10_000


def test_groups_over_seeds_and_their_bands(tmp_path, sweep_file):
    main(["sweep", str(sweep_file)])
    runs = results.find_runs([tmp_path / "sweep"])
    groups = results.group(runs)
    assert sorted(groups) == ["algorithm=choco, compressor=sign", "algorithm=choco, compressor=top_k:0.1",
                              "algorithm=dsgd"]
    members = groups["algorithm=dsgd"]
    rounds, bits, mean, std = results.mean_std(members, "test_acc")
    accs = [[r["test_acc"] for r in run.rows] for run in members]
    assert list(rounds) == [0, 2, 4] and mean[-1] == pytest.approx((accs[0][-1] + accs[1][-1]) / 2)
    assert std[-1] == pytest.approx(abs(accs[0][-1] - accs[1][-1]) / 2 ** 0.5)


@pytest.mark.parametrize("text,needle", [
    ("rounds = 2\n", "needs a [grid] table"),
    ("[grid]\nseed = 0\n", "grid key seed must be a non-empty list"),
    ("[grid]\nseed = [0, 0]\n", "lists a value twice"),
    ("[grid]\nlr = [1, 1.0]\n", "grid points lr=1 and lr=1.0 are one experiment (their values read alike)"),
    ("algorithm = 'choco'\n[grid]\ncompressor = ['top_k:0.01', 'top_k:1e-2']\n", "grid points compressor=top_k_0.01 "
                                                                                 "and compressor=top_k_1e-2 are one"),
    # found by build() once the points before had run
    ("[grid]\neval_samples = [100, 5000]\n", "sweep point eval_samples=5000: eval_samples=5000: the synthetic test "
                                              "set has 2000 samples"),
    ("[grid]\nnorm = ['bn', 'gn']\n", "sweep point norm=bn: norm='bn': mlp has no normalization layers"),
    ("[grid]\nalgorithm = ['dsgd', 'chocco']\n", "sweep point algorithm=chocco: unknown algorithm 'chocco' "
                                                 "(did you mean 'choco'?)"),
    ("[grid]\nseed = [0]\n[choc]\ngamma = 1\n", "table [choc] is not [grid] nor an algorithm (did you mean [choco]?)"),
    ("[grid]\nagnets = [4]\n", "did you mean 'agents'"),
    ("[grid\n", "not valid TOML"),
    ("[grid]\nseed = [0]\n[dsgd]\ngamma = 0.5\n", "[dsgd] sets gamma, which dsgd does not take; its keys: lr, "),
    ("out = 5\n[grid]\nseed = [0]\n", "out = 5; accepted: a directory path in quotes"),
    ("[grid]\ndata_dir = ['/tmp/a/b', '/tmp/a_b']\n", "two grid points share the run directory name "
                                                      "'data_dir=tmp_a_b'"),
    ("[grid]\ntopology = ['circulant:1,2', 'circulant:1;2']\n", "'topology=circulant_1_2' (its characters"),
    ("milestones = [5]\n[grid]\nlr_schedule = ['constant', 'cosine']\n", "milestones is for lr_schedule=multistep, "
                                                                        "which none of its runs has"),
])
def test_bad_sweep_files_exit_2_before_anything_runs(text, needle, tmp_path, capsys):
    path = tmp_path / "bad.toml"
    own_out = text.startswith(("[grid\n", "out ="))
    path.write_text(text if own_out else f"out = '{tmp_path / 'never'}'\n" + text)
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err, err
    assert not (tmp_path / "never").exists()


def test_plot_mistakes(tmp_path, capsys):
    assert main(["plot", str(tmp_path / "missing")]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["plot", str(tmp_path / "empty")]) == 2
    assert main(["plot"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and all(line.startswith("gossipsim: error: ") for line in err)
    with pytest.raises(Exception, match="not a run directory"):
        sweep.results.load_run(tmp_path / "empty")
    (tmp_path / "empty" / "metrics.jsonl").write_text('{"round": 0, "test_acc": 0.1}\n')
    (tmp_path / "empty" / "config.json").write_text("[1, 2]")  # JSON, not a config: a traceback in plot
    assert main(["plot", str(tmp_path / "empty")]) == 2
    assert capsys.readouterr().err.endswith("config.json' holds list, not a gossipsim config.json's object\n")
    (tmp_path / "empty" / "metrics.jsonl").unlink()
    (tmp_path / "empty" / "config.json").unlink()
    # a run named twice, or by itself and through its sweep's directory, is one run
    for name in ("a", "b"):
        (tmp_path / "sw" / name).mkdir(parents=True)
        (tmp_path / "sw" / name / "metrics.jsonl").write_text('{"round": 1, "test_acc": 0.5}\n')
    found = sweep.results.find_runs([tmp_path / "sw" / "a", tmp_path / "sw", f"{tmp_path}/sw/./a"])
    assert [r.path.name for r in found] == ["a", "b"]


def test_the_shipped_sweep_files_are_valid():
    files = sorted((Path(__file__).resolve().parents[1] / "configs" / "sweeps").glob("*.toml"))
    assert files
    for path in files:
        out, keys, points = sweep.load(path)
        assert keys and len(points) > 1 and all(p.path.parent == out for p in points)


def test_a_half_finished_run_is_not_resumed_under_a_changed_sweep_file(tmp_path, capsys):
    path = tmp_path / "grid.toml"
    text = (f"out = '{tmp_path / 'sweep'}'\nrounds = 4\nagents = 3\nbatch_size = 4\neval_every = 2\n"
            "eval_samples = 50\nbackend = 'vmap'\n[grid]\nseed = [0]\n")
    path.write_text(text)
    point = sweep.load(path)[2][0]
    sim.build(sim.Config.from_dict({**point.values, "rounds": 2, "progress": False})).run(2)
    path.write_text(text.replace("rounds = 4", "rounds = 4\nlr = 0.05"))
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err
    assert "lr cannot change when resuming a run (the checkpoint's run has lr=0.1)" in err
    assert "restore the sweep file" in err
    path.write_text(text)
    assert main(["sweep", str(path)]) == 0


def test_a_finished_run_does_not_count_for_a_changed_sweep_file(tmp_path, capsys):
    path = tmp_path / "grid.toml"
    text = (f"out = '{tmp_path / 'sweep'}'\nrounds = 2\nagents = 3\nbatch_size = 4\neval_every = 2\n"
            "eval_samples = 50\nbackend = 'vmap'\n[grid]\nseed = [0]\n[dsgd]\nlr = 0.2\n")
    path.write_text(text)
    assert main(["sweep", str(path)]) == 0
    run = tmp_path / "sweep" / "seed=0"
    kept = (run / "metrics.jsonl").read_text()
    path.write_text(text.replace("lr = 0.2", "lr = 0.3"))
    capsys.readouterr()
    assert main(["sweep", str(path), "--list"]) == 0
    assert "changed      seed=0" in capsys.readouterr().out
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "seed=0: finished with lr = 0.2 (now 0.3); restore the sweep file" in err
    assert (run / "metrics.jsonl").read_text() == kept
    # a key a resumed run may change (eval_every) still counts as the same run
    path.write_text(text.replace("eval_every = 2", "eval_every = 1"))
    assert main(["sweep", str(path), "--list"]) == 0 and "done         seed=0" in capsys.readouterr().out
    # so does a file that now states the value the algorithm took by default (dsgd's momentum 0)
    path.write_text(text.replace("lr = 0.2", "lr = 0.2\nmomentum = 0.0"))
    assert main(["sweep", str(path), "--list"]) == 0 and "done         seed=0" in capsys.readouterr().out
    (run / "summary.json").write_text("{cut sho")
    assert main(["sweep", str(path), "--list"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "summary.json' is not gossipsim's JSON" in err


def test_plot_a_run_that_sends_nothing_and_skip_a_set_aside_attempt(tmp_path, capsys):
    import shutil

    sweep_dir = tmp_path / "sw"
    for name, algorithm in (("a", "local"), ("b", "dsgd")):
        sim.build(sim.Config(algorithm=algorithm, agents=3, rounds=2, eval_every=1, batch_size=4, eval_samples=50,
                             progress=False, out=str(sweep_dir / name))).run(2)
    # local sends no bits: the bits panel has no point for a log axis (a matplotlib traceback before)
    assert main(["plot", str(sweep_dir / "a"), f"--out={tmp_path / 'a.png'}"]) == 0
    shutil.copytree(sweep_dir / "b", sweep_dir / "b.interrupted1")  # what a sweep sets aside and runs again
    assert [r.path.name for r in sweep.results.find_runs([sweep_dir])] == ["a", "b"]
    assert len(sweep.results.find_runs([sweep_dir / "b.interrupted1"])) == 1  # named, it is read
    capsys.readouterr()
    assert main(["plot", str(sweep_dir), f"--out={tmp_path / 'no' / 'such' / 'x.png'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(tmp_path / "no" / "such" / "x.png") in err and ".tmp" not in err, err


def test_groups_fill_in_factory_defaults_and_never_hide_a_group(tmp_path, capsys):
    from gossipsim.sim.results import Run, group, plot

    def run(name, seed, rounds=(0, 2, 4), summary=None, **config):
        rows = [{"round": t, "test_acc": 0.5 + 0.01 * t + 0.001 * seed, "consensus": 0.1, "bits_per_agent": 8.0 * t}
                for t in rounds]
        return Run(tmp_path / name, {"algorithm": "choco", "seed": seed, **config}, rows, summary)

    # gamma unset (finished: summary.json records the 0.5 its factory took; unfinished: rebuilt) and gamma = 0.5
    recorded = {"hyperparameters": {"gamma": 0.5, "momentum": 0.0, "nesterov": False, "weight_decay": 0.0}}
    same = [run("a", 0, summary=recorded, gamma=None), run("b", 1, gamma=None),
            run("c", 2, gamma=0.5)]
    assert {k: [r.path.name for r in v] for k, v in group(same).items()} == {"choco": ["a", "b", "c"]}
    # a group that sets a key and one that leaves it unset, with no other value of that key to label by
    apart = [run("d", 0, tensorboard=True), run("e", 0, hyper={"extra": 1}, algorithm="dsgd"),
             run("f", 0, algorithm="dsgd")]
    labels = group(apart)
    assert sorted(r.path.name for v in labels.values() for r in v) == ["d", "e", "f"], labels
    assert len(labels) == 3
    # a config.json without a key added since (autocast) is that key's default: the sweep counts such a run
    # unchanged, and plot split it off
    older = [run("j", 0, autocast="off", compressor=None), run("k", 1, compressor=None)]
    assert [len(v) for v in group(older).values()] == [2]
    # MALCOM-PSGD compresses with a compressor of its own when none is given: compress_per tells two experiments
    malcom = [run(n, 0, algorithm="malcom_psgd", compressor=None, compress_per=per)
              for n, per in (("l", "model"), ("m", "layer"))]
    assert sorted(group(malcom)) == ["compress_per=layer", "compress_per=model"]
    # a run that stops early cuts its group's curve, and plot says so; copies of one seed are not seeds
    plot([run("g", 0), run("h", 1, rounds=(0, 2)), run("i", 1)], tmp_path / "p.png")
    err = capsys.readouterr().err
    assert "'choco' is drawn to round 2, where" in err and "h' stops (its other runs reach round 4)" in err


def test_the_csv_says_which_runs_stopped_early(tmp_path):
    engine = sim.build(sim.Config(agents=3, rounds=4, eval_every=2, batch_size=4, eval_samples=50, progress=False,
                                  out=str(tmp_path / "short")))
    engine.run(2)  # summary.json is written, but the config asks for 4 rounds
    rows = results.tidy([results.load_run(tmp_path / "short")], ["algorithm"])
    assert [(r["round"], r["finished"], r["diverged"]) for r in rows] == [(0, False, False), (2, False, False)]
    engine.run(2)
    rows = results.tidy([results.load_run(tmp_path / "short")], ["algorithm"])
    assert [r["finished"] for r in rows] == [True] * 3


def test_a_key_goes_only_to_the_points_it_applies_to(tmp_path):
    # alpha means something for dirichlet partitions only: the iid runs take none, and run once per seed
    path = tmp_path / "grid.toml"
    path.write_text(f"out = '{tmp_path / 's'}'\nmilestones = [3]\n[grid]\npartition = ['iid', 'dirichlet']\n"
                    f"alpha = [0.1, 1.0]\nlr_schedule = ['constant', 'multistep']\n")
    _, _, points = sweep.load(path)
    names = sorted(p.name for p in points)
    assert names == ["partition=dirichlet,alpha=0.1,lr_schedule=constant",
                     "partition=dirichlet,alpha=0.1,lr_schedule=multistep",
                     "partition=dirichlet,alpha=1.0,lr_schedule=constant",
                     "partition=dirichlet,alpha=1.0,lr_schedule=multistep",
                     "partition=iid,lr_schedule=constant", "partition=iid,lr_schedule=multistep"]
    for p in points:
        cfg = sim.Config.from_dict(p.values)
        assert ("milestones" in p.values) == (cfg.lr_schedule == "multistep") and ("alpha" in p.values) == (
            cfg.partition == "dirichlet")


def test_a_finished_run_holding_a_key_that_had_no_effect_is_done(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text(f"out = '{tmp_path / 's'}'\nrounds = 2\nagents = 3\nbatch_size = 4\neval_every = 2\n"
                    f"eval_samples = 50\n[grid]\nseed = [0]\n")
    _, _, points = sweep.load(path)
    sim.build(sim.Config.from_dict({**points[0].values, "progress": False})).run(2)
    config = points[0].path / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "alpha": 0.3}))  # iid: alpha meant nothing
    assert sweep.status(points[0]) == "done"


def test_compressors_alike_in_name_but_not_in_encoding_are_two_points(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text(f"out = '{tmp_path / 's'}'\nalgorithm = 'choco'\n[grid]\ncompressor = ['qsgd:16', 'dithered:16']\n")
    assert len(sweep.load(path)[2]) == 2  # dithered's Elias-Golomb bits are another experiment
