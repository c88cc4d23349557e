"""A registered algorithm's own hyperparameters from a config: the hyper table (a file's [hyper], the command
line's --hyper.NAME=VALUE, a sweep's grid over hyper.NAME), typed, checked, resumed and reported."""
from __future__ import annotations

import pandas as pd
import pytest

from gossipsim import ConfigError, sim
from gossipsim.sim import algorithms, results, sweep
from gossipsim.sim.cli import main
from gossipsim.sim.local import as_schedule

SMALL = dict(agents=3, rounds=4, eval_every=2, batch_size=4, eval_samples=50, backend="vmap", progress=False)


@pytest.fixture
def damped():
    """D-PSGD whose step is lr * damping, with hyperparameters of each type (and one named like a run key)."""
    seen = []

    @algorithms.register("damped", replace=True)
    def factory(lr, damping=1.0, steps=1, flag=False, label="x", alpha=None):
        seen.append(dict(damping=damping, steps=steps, flag=flag, label=label, alpha=alpha))
        schedule = as_schedule(lr)
        inner = algorithms.make("dsgd", lr=lambda t: damping * schedule(t))
        return inner.init, inner.step

    yield seen
    del algorithms.base._REGISTRY["damped"]


def test_command_line_strings_are_typed_as_the_factorys_defaults(damped):
    cfg = sim.Config.from_dict({"algorithm": "damped", "hyper.damping": "0.25", "hyper.steps": "3",
                                "hyper.flag": "yes", "hyper.label": "5", "hyper.alpha": "7"})
    # no default to follow (alpha=None): the string reads as the integer it spells
    assert cfg.hyper == dict(damping=0.25, steps=3, flag=True, label="5", alpha=7)
    assert cfg.alpha == sim.Config().alpha  # hyper.alpha is the algorithm's, not the partition's
    assert sim.Config(algorithm="damped", hyper={"damping": 1}).hyper == {"damping": 1.0}
    assert sim.Config.from_dict({"algorithm": "damped", "hyper": {"steps": 2}, "hyper.flag": "false"}).hyper == \
        dict(steps=2, flag=False)


@pytest.mark.parametrize("values,needle", [
    ({"hyper.steps": "2.5"}, "hyper.steps must be an integer, got '2.5'"),
    ({"hyper.damping": "much"}, "hyper.damping must be a number, got 'much'"),
    ({"hyper.dampng": "2"}, "damped has no hyperparameter 'dampng' (did you mean 'damping'?); accepted: lr, damping"),
    ({"hyper.gamma": "0.5"}, "hyper.gamma: gamma is a key of its own; set gamma = ... (--gamma=...)"),
    ({"hyper.lr": "0.5"}, "hyper.lr: lr is a key of its own"),
    ({"hyper": "damping=2"}, "hyper must be a table: NAME = VALUE lines under [hyper] in a file, or --hyper.NAME="),
    ({"hyper": {"damping": {"a": 1}}}, "hyper.damping = {'a': 1}: accepted: a number, string, boolean or list"),
    ({"hyper": {"two words": 1}}, "hyper.two words: a hyperparameter's name is an identifier"),
    ({"algorithm": "dsgd", "hyper.damping": "2"}, "dsgd has no hyperparameter 'damping'"),
])
def test_bad_hyper_entries_are_one_line(damped, values, needle):
    with pytest.raises(ConfigError) as e:
        sim.Config.from_dict({"algorithm": "damped", **values})
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_a_run_hands_the_table_to_the_factory_and_records_it(damped, tmp_path, capsys):
    toml = tmp_path / "run.toml"
    toml.write_text("algorithm = 'damped'\nagents = 3\n[hyper]\ndamping = 0.5\nlabel = 'half'\n")
    from gossipsim.sim.config import load_toml
    assert load_toml(toml)["hyper"] == {"damping": 0.5, "label": "half"}
    out = tmp_path / "r"
    args = [f"{k}={v}" for k, v in SMALL.items() if k != "progress"]
    assert main(["run", str(toml), *[f"--{a}" for a in args], "--hyper.steps=2", f"--out={out}"]) == 0
    assert damped[-1] == dict(damping=0.5, steps=2, flag=False, label="half", alpha=None)
    run = results.load_run(out)
    assert run.config["hyper"] == {"damping": 0.5, "label": "half", "steps": 2}
    # the damping reaches the step: half the step of dsgd's from the same start (one round, no momentum)
    first = {}
    for name, hyper in (("dsgd", {}), ("damped", {"damping": 0.5})):
        engine = sim.build(sim.Config(algorithm=name, hyper=hyper, dtype="float64", **SMALL,
                                      out=str(tmp_path / name)))
        x0 = engine.state.x.clone()
        engine.step()
        first[name] = engine.state.x - x0
    # W is linear and x0 is shared (same_init), so the move is the step alone: exactly half
    torch = pytest.importorskip("torch")
    assert torch.allclose(first["damped"], 0.5 * first["dsgd"], rtol=1e-12, atol=1e-15)
    # resuming: the same value repeated is accepted, another refused
    capsys.readouterr()
    assert main(["run", f"--resume={out}", "--rounds=6", "--hyper.damping=0.5"]) == 0
    assert main(["run", f"--resume={out}", "--rounds=8", "--hyper.damping=0.9"]) == 2
    assert "hyper cannot change when resuming a run" in capsys.readouterr().err


def test_a_sweep_grids_over_an_entry_of_hyper(damped, tmp_path, capsys):
    path = tmp_path / "s.toml"
    head = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in SMALL.items() if k != "progress")
    path.write_text(f"out = '{tmp_path / 'sw'}'\n{head}[grid]\nalgorithm = ['dsgd', 'damped']\n"
                    "hyper.damping = [0.5, 1.0]\n[damped]\nhyper.label = 'grid'\n")
    out, keys, points = sweep.load(path)
    # dsgd takes no damping: one run; damped one per value, each with the label of its own table
    assert [p.name for p in points] == ["algorithm=dsgd", "algorithm=damped,hyper.damping=0.5",
                                        "algorithm=damped,hyper.damping=1.0"]
    assert main(["sweep", str(path)]) == 0
    assert {d["damping"] for d in damped} == {0.5, 1.0} and {d["label"] for d in damped} == {"grid"}
    df = pd.read_csv(out / "results.csv")
    assert list(df.columns[:3]) == ["run", "algorithm", "hyper.damping"]
    assert sorted(df["hyper.damping"].dropna().unique()) == [0.5, 1.0] and df["hyper.damping"].isna().sum() == 3
    labels = sorted(results.group(results.find_runs([out])))
    assert labels == ["algorithm=damped, hyper.damping=0.5", "algorithm=damped, hyper.damping=1.0",
                      "algorithm=dsgd"]
    path.write_text(path.read_text().replace("hyper.label = 'grid'", "hyper.lable = 'grid'"))
    assert main(["sweep", str(path)]) == 2
    assert "[damped] sets hyper.lable, which damped does not take" in capsys.readouterr().err


def test_import_runs_a_users_file_so_its_algorithm_can_be_named(tmp_path, capsys, monkeypatch):
    code = tmp_path / "my_algos.py"
    code.write_text(
        "from gossipsim import sim\n\n\n"
        "@sim.algorithms.register('halved_cli')\n"
        "def halved(lr, damping=0.5):\n"
        "    inner = sim.algorithms.make('dsgd', lr=lambda t: damping * sim.local.as_schedule(lr)(t))\n"
        "    return inner.init, inner.step\n")
    small = [f"--{k}={v}" for k, v in SMALL.items() if k != "progress"]
    try:
        assert main(["run", "--algorithm=halved_cli", *small, f"--out={tmp_path / 'no'}"]) == 2
        assert "one of your own: register it in a file and give --import=FILE.py" in capsys.readouterr().err
        out = tmp_path / "r"
        args = ["run", f"--import={code}", "--algorithm=halved_cli", "--hyper.damping=0.25", *small, f"--out={out}"]
        assert main(args) == 0 and results.load_run(out).config["hyper"] == {"damping": 0.25}
        # imported once per process: a second main() does not register it twice
        assert main(["run", f"--resume={out}", f"--import={code}", "--rounds=6"]) == 0
        # the same code again, as a module: its registration clashes with the file's, in one line
        monkeypatch.chdir(tmp_path)  # a module name is found from the working directory, as `python -m` does
        assert main(["run", "--import=my_algos", "--algorithm=halved_cli", f"--out={tmp_path / 'm'}"]) == 2
        assert "algorithm 'halved_cli' registered twice (replace=True to redefine it)" in capsys.readouterr().err
        del algorithms.base._REGISTRY["halved_cli"]  # (a failed import leaves no module behind)
        assert main(["run", "--import=my_algos", "--algorithm=halved_cli", *small, f"--out={tmp_path / 'm'}"]) == 0
        capsys.readouterr()
        for bad, needle in (("nope.py", "--import=nope.py: no such file"),
                            ("no_such_module", "--import=no_such_module: no module 'no_such_module'")):
            assert main(["run", f"--import={bad}", "--algorithm=dsgd"]) == 2
            assert needle in capsys.readouterr().err
        path = tmp_path / "s.toml"
        path.write_text(f"out = '{tmp_path / 'sw'}'\nagents = 3\nrounds = 2\n[grid]\nhyper.damping = [0.5]\n"
                        "algorithm = ['halved_cli']\n")
        assert main(["sweep", str(path), f"--import={code}", "--list"]) == 0
        assert "new          hyper.damping=0.5,algorithm=halved_cli" in capsys.readouterr().out
    finally:
        algorithms.base._REGISTRY.pop("halved_cli", None)


def test_sweep_keys_that_go_nowhere_or_twice_are_refused(damped, tmp_path, capsys):
    head = f"out = '{tmp_path / 'never'}'\nagents = 3\n"
    for text, needle in [
        ("[grid]\nalgorithm = ['dsgd', 'damped']\nhyper.dampng = [0.5, 1.0]\n",
         "hyper.dampng is taken by none of its algorithms (dsgd, damped)"),
        ("hyper.dampng = 0.5\n[grid]\nalgorithm = ['dsgd', 'damped']\n", "hyper.dampng is taken by none"),
        ("[grid]\nalgorithm = ['dsgd']\ngamma = [0.3, 0.6]\n", "gamma is taken by none of its algorithms (dsgd)"),
        ("[grid]\nalgorithm = ['damped']\nhyper.damping = [0.3, 0.6]\n[damped]\nhyper.damping = 0.9\n",
         "[damped] sets hyper.damping, which [grid] ranges over; give it in one place"),
        ("[grid]\nseed = [0]\n[dampd]\nhyper.steps = 2\n", "one of your own: --import=FILE.py that registers it"),
    ]:
        path = tmp_path / "s.toml"
        path.write_text(head + text)
        assert main(["sweep", str(path), "--list"]) == 2
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1, err
    assert not (tmp_path / "never").exists()


def test_a_resumed_run_keeps_its_hyperparameters_defaults_included(damped, tmp_path, capsys):
    out = tmp_path / "r"
    small = [f"--{k}={v}" for k, v in SMALL.items() if k != "progress"]
    assert main(["run", "--algorithm=damped", "--hyper.steps=2", *small, "--rounds=2", f"--out={out}"]) == 0
    capsys.readouterr()
    assert main(["run", f"--resume={out}", "--hyper=1"]) == 2
    assert "hyper must be a table" in capsys.readouterr().err
    # the whole table as a sweep gives it: an entry dropped is a change, not the old table again
    with pytest.raises(ConfigError, match="hyper cannot change when resuming"):
        sim.experiment.resume(out, hyper={})
    # the value the factory took by default, now given, is no change; another value is
    other = tmp_path / "other"
    assert main(["run", "--algorithm=damped", *small, "--rounds=2", f"--out={other}"]) == 0
    assert main(["run", f"--resume={other}", "--rounds=3", "--hyper.damping=1.0"]) == 0
    assert main(["run", f"--resume={other}", "--rounds=4", "--hyper.damping=0.5"]) == 2
    assert "hyper cannot change when resuming" in capsys.readouterr().err
    # the factory's default edited since the checkpoint: the same config, another run
    @algorithms.register("damped", replace=True)
    def edited(lr, damping=0.9, steps=1, flag=False, label="x", alpha=None):
        inner = algorithms.make("dsgd", lr=lr)
        return inner.init, inner.step

    assert main(["run", f"--resume={out}", "--rounds=4"]) == 2
    assert "ran with other hyperparameters: damping = 1.0 there, 0.9 here (a default edited since?)" in \
        capsys.readouterr().err


def test_factories_with_kwargs_lists_strings_and_without_lr(tmp_path, capsys):
    @algorithms.register("kwargs_algo", replace=True)
    def kwargs_algo(lr, sizes=(1, 2), name="x", **opts):
        kwargs_algo.got = dict(sizes=sizes, name=name, **opts)
        inner = algorithms.make("dsgd", lr=lr)
        return inner.init, inner.step

    @algorithms.register("no_lr", replace=True)
    def no_lr(step_size=0.1):
        inner = algorithms.make("dsgd", lr=step_size)
        return inner.init, inner.step

    try:
        cfg = sim.Config.from_dict({"algorithm": "kwargs_algo", "hyper.sizes": "3,4", "hyper.anything": "2.5"})
        assert cfg.hyper == dict(sizes=[3, 4], anything=2.5)
        algorithms.make("kwargs_algo", lr=0.1, **cfg.hyper)
        assert kwargs_algo.got == dict(sizes=[3, 4], name="x", anything=2.5)
        for values, needle in [({"hyper.name": 5}, "hyper.name must be a string, got 5"),
                               ({"hyper": {"when": object()}}, "accepted: a number, string, boolean or list of them"),
                               ({"sizes": "3"}, "unknown key 'sizes' (kwargs_algo's own hyperparameter: give it as "
                                                "hyper.sizes)")]:
            with pytest.raises(ConfigError) as e:
                sim.Config.from_dict({"algorithm": "kwargs_algo", **values})
            assert needle in str(e.value), str(e.value)
        with pytest.raises(ConfigError, match="no_lr's factory takes no lr; every algorithm's factory takes lr"):
            sim.Config(algorithm="no_lr")

        @algorithms.register("clash", replace=True)
        def clash(lr, rescale=1.0):  # rescale: AdaCons' built-in key, a bool
            inner = algorithms.make("dsgd", lr=lr)
            return inner.init, inner.step

        with pytest.raises(ConfigError, match="clash's factory has rescale=1.0, but rescale is a built-in key that "
                                              "takes true or false; rename that parameter"):
            sim.Config(algorithm="clash")
    finally:
        for name in ("kwargs_algo", "no_lr", "clash"):
            algorithms.base._REGISTRY.pop(name, None)


def test_an_imported_file_finds_its_neighbours_and_bad_module_names_are_one_line(tmp_path, capsys):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "helper_consts.py").write_text("DAMPING = 0.5\n")
    (tmp_path / "pkg" / "uses_helper.py").write_text(
        "from helper_consts import DAMPING\nfrom gossipsim import sim\n\n\n"
        "@sim.algorithms.register('uses_helper', replace=True)\n"
        "def uses_helper(lr, damping=DAMPING):\n"
        "    inner = sim.algorithms.make('dsgd', lr=lr)\n"
        "    return inner.init, inner.step\n")
    try:
        small = [f"--{k}={v}" for k, v in SMALL.items() if k != "progress"]
        out = tmp_path / "r"
        assert main(["run", f"--import={tmp_path / 'pkg' / 'uses_helper.py'}", "--algorithm=uses_helper", *small,
                     f"--out={out}"]) == 0
        capsys.readouterr()
        for bad in ("../pkg/uses_helper", ".mod"):
            assert main(["run", f"--import={bad}", "--algorithm=dsgd"]) == 2
            assert f"--import={bad}: not a module name" in capsys.readouterr().err
    finally:
        algorithms.base._REGISTRY.pop("uses_helper", None)


def test_a_sweep_sees_a_factory_default_edited_since_a_run_finished(damped, tmp_path, capsys):
    path = tmp_path / "s.toml"
    head = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in SMALL.items() if k != "progress")
    path.write_text(f"out = '{tmp_path / 'sw'}'\n{head}algorithm = 'damped'\n[grid]\nseed = [0]\n")
    assert main(["sweep", str(path)]) == 0
    summary = results.load_run(tmp_path / "sw" / "seed=0").summary
    # defaults included; the lr schedule and a None are not plain values
    assert summary["hyperparameters"] == dict(damping=1.0, steps=1, flag=False, label="x")
    capsys.readouterr()
    assert main(["sweep", str(path), "--list"]) == 0 and "done         seed=0" in capsys.readouterr().out

    @algorithms.register("damped", replace=True)
    def edited(lr, damping=0.9, steps=1, flag=False, label="x", alpha=None):
        inner = algorithms.make("dsgd", lr=lr)
        return inner.init, inner.step

    assert main(["sweep", str(path), "--list"]) == 0 and "changed      seed=0" in capsys.readouterr().out
    assert main(["sweep", str(path)]) == 2
    assert "finished with damping = 1.0 (now 0.9) (a default edited since?)" in capsys.readouterr().err
