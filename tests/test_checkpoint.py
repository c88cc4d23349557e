"""Checkpoints and resume: a resumed run equals an uninterrupted one bit for bit on a CPU; divergence stops a run
with exit status 3 and keeps the last good checkpoint."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from gossipsim import ConfigError, sim
from gossipsim.errors import Diverged
from gossipsim.sim import checkpoint, experiment
from gossipsim.sim.cli import main

TIMING = {"train_time", "samples_per_s", "eval_time"}


def _metrics(run_dir) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


# Each case exercises a different part of the state: a random compressor (the engine's generator states), a
# random schedule, momentum and augmentation; BatchNorm buffers with a cosine schedule; AdaGossip's moments.
CASES = {
    "choco-rand_k": dict(algorithm="choco", compressor="rand_k:0.2", gamma=0.3, momentum=0.5, lr=0.05,
                         topology="ring+fail:0.3", augment=True),
    "dsgd-resnet20-bn": dict(algorithm="dsgd", model="resnet20", norm="bn", bn="gossip", lr_schedule="cosine",
                             momentum=0.9, nesterov=True, batch_size=4),
    "adagossip-qsgd": dict(algorithm="adagossip", compressor="qsgd:8,scaled", gamma=0.01, partition="dirichlet",
                           topology="exponential"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_resumed_run_equals_the_uninterrupted_run_bit_for_bit(case, tmp_path):
    rounds = 8
    base = {**dict(agents=4, rounds=rounds, eval_every=2, batch_size=8, eval_samples=100, progress=False,
                   backend="vmap", seed=3), **CASES[case]}
    straight = sim.build(sim.Config(**base, out=str(tmp_path / "straight")))
    straight.run(rounds)

    first = sim.build(sim.Config(**base, out=str(tmp_path / "resumed")))
    first.run(rounds // 2)  # as if it had stopped here: the last checkpoint is this round's
    del first
    torch.rand(1000)  # whatever else the process draws between must not change the resumed run
    engine = experiment.resume(tmp_path / "resumed")
    assert engine.t == rounds // 2
    engine.run(rounds - engine.t)

    assert _metrics(tmp_path / "resumed") == _metrics(tmp_path / "straight")
    for a, b in zip(engine.state, straight.state):
        assert (a is None and b is None) or torch.equal(a, b)
    assert torch.equal(engine.buffers, straight.buffers)


def test_a_state_dict_kept_in_memory_returns_the_run_to_its_round(tmp_path):
    # a notebook's rollback: the rounds after state_dict() update the state, the meter's sums and the sampler's
    # epochs in place; on a CPU the dict must not share their memory, and a load must not share the dict's
    engine = sim.build(sim.Config(agents=4, rounds=9, eval_every=3, batch_size=8, eval_samples=100, progress=False,
                                  seed=5, out=str(tmp_path / "run"), **CASES["choco-rand_k"]))
    engine.run(3)
    saved = engine.state_dict()
    runs = []
    for _ in range(3):  # the run from the dict, then twice more from the same dict
        engine.run(6)
        runs.append(([v.clone() for v in engine.state if v is not None], [r["test_acc"] for r in engine.history]))
        engine.load_state_dict(saved)
        assert engine.t == 3 and len(saved["history"]) == 2  # the evaluations of rounds 0 and 3
    for state, accuracies in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(state, runs[0][0])) and accuracies == runs[0][1]


def test_a_round_stopped_part_way_says_so_and_a_saved_state_goes_on(tmp_path, monkeypatch):
    # Ctrl-C in a notebook lands inside a round: the state is half updated, and the engine says how to go on
    engine = sim.build(sim.Config(agents=4, rounds=6, eval_every=3, batch_size=8, eval_samples=100, progress=False,
                                  out=str(tmp_path / "run")))
    engine.run(3)
    saved = engine.state_dict()
    grad = engine.model.grad

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine.model, "grad", interrupted)
    with pytest.raises(KeyboardInterrupt):
        engine.run(3)
    monkeypatch.setattr(engine.model, "grad", grad)
    with pytest.raises(ConfigError, match="round 3 stopped part way.*load_state_dict"):
        engine.step()
    engine.load_state_dict(saved)
    assert engine.run(3)[-1]["round"] == 6


def test_cli_resume_continues_and_extends_a_run(tmp_path, capsys):
    args = ["--agents=4", "--batch_size=8", "--eval_every=3", "--eval_samples=100", "--progress=false",
            "--backend=vmap", "--algorithm=choco", "--compressor=rand_k:0.3", "--gamma=0.4", "--lr=0.05"]
    assert main(["run", *args, "--rounds=12", f"--out={tmp_path / 'a'}"]) == 0
    assert main(["run", *args, "--rounds=6", f"--out={tmp_path / 'b'}"]) == 0
    assert main(["run", f"--resume={tmp_path / 'b'}", "--rounds=12"]) == 0
    assert "resuming" in capsys.readouterr().err
    assert _metrics(tmp_path / "b") == _metrics(tmp_path / "a")
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["rounds"] == 12
    assert json.loads((tmp_path / "b" / "config.json").read_text())["rounds"] == 12


def test_evaluations_after_the_last_checkpoint_are_set_aside_and_redone(tmp_path):
    base = dict(agents=3, rounds=20, eval_every=5, checkpoint_every=10, batch_size=4, eval_samples=100,
                progress=False, backend="vmap", algorithm="choco", compressor="rand_k:0.5", gamma=0.5)
    sim.build(sim.Config(**base, out=str(tmp_path / "straight"))).run(20)

    def stop_at_15(row):
        if row["round"] == 15:
            raise KeyboardInterrupt

    engine = sim.build(sim.Config(**base, out=str(tmp_path / "cut")), on_eval=stop_at_15)
    with pytest.raises(KeyboardInterrupt):
        engine.run(20)
    assert [r["round"] for r in _metrics(tmp_path / "cut")] == [0, 5, 10, 15]
    resumed = experiment.resume(tmp_path / "cut")
    assert resumed.t == 10
    assert [r["round"] for r in _metrics(tmp_path / "cut")] == [0, 5, 10]
    moved = (tmp_path / "cut" / "metrics.after-checkpoint.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in moved] == [15]  # kept, not lost
    resumed.run(10)
    assert _metrics(tmp_path / "cut") == _metrics(tmp_path / "straight")


def test_checkpoint_contents_load_with_weights_only(tmp_path):
    engine = sim.build(sim.Config(agents=3, rounds=2, eval_every=2, batch_size=4, eval_samples=50, progress=False,
                                  algorithm="choco", compressor="top_k:0.1", momentum=0.9, out=str(tmp_path / "r")))
    engine.run(2)
    state = torch.load(tmp_path / "r" / checkpoint.NAME, weights_only=True)
    assert state["round"] == 2 and set(state["state"]) == {"x", "x_hat", "pending", "buf"}
    assert torch.equal(state["state"]["x_hat"], engine.state.x_hat)
    assert {"sampler", "augment_rng", "rng", "meter", "history", "buffers", "config"} <= set(state)


def test_a_checkpoint_of_another_version_of_the_algorithm_is_refused_in_one_line(tmp_path):
    engine = sim.build(sim.Config(agents=3, rounds=2, eval_every=2, batch_size=4, eval_samples=50, progress=False,
                                  algorithm="choco", compressor="top_k:0.1", out=str(tmp_path / "r")))
    saved = engine.state_dict()
    state = dict(saved["state"])
    engine.load_state_dict({**saved, "state": {**state, "s": None}})  # an empty field it no longer has: fine
    old = {k: v for k, v in state.items() if k != "pending"}  # as choco's state was before pending
    with pytest.raises(ConfigError, match="state has fields x, x_hat, buf, this version's has x, x_hat, pending, "
                                          "buf: written by another version; start the run again"):
        engine.load_state_dict({**saved, "state": old})
    with pytest.raises(ConfigError, match="field pending is \\(2, 2\\) there, \\(3, 3\\) here"):
        engine.load_state_dict({**saved, "state": {**state, "pending": torch.zeros(2, 2, dtype=torch.float64)}})


def test_a_failed_write_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    engine = sim.build(sim.Config(agents=3, rounds=4, eval_every=2, batch_size=4, eval_samples=50, progress=False,
                                  out=str(tmp_path / "r")))
    engine.run(2)
    before = (tmp_path / "r" / checkpoint.NAME).read_bytes()

    def disk_full(obj, f):
        f.write(b"partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError):
        engine.run(2)
    assert (tmp_path / "r" / checkpoint.NAME).read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "r").glob(".*.tmp")) == []  # the partial file holds no disk
    assert checkpoint.load(tmp_path / "r")["round"] == 2

    def torch_disk_full(obj, f):  # what torch's zip writer raises on a full disk
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 3328 vs 3222")

    monkeypatch.setattr(torch, "save", torch_disk_full)
    with pytest.raises(OSError, match=r"could not write the checkpoint .*MiB free on its disk\): \[enforce fail"):
        checkpoint.save({"round": 9}, tmp_path / "r" / checkpoint.NAME)
    assert (tmp_path / "r" / checkpoint.NAME).read_bytes() == before


def test_a_metrics_line_cut_short_is_taken_back_or_skipped(tmp_path, monkeypatch):
    from gossipsim.sim import metrics, results

    run = metrics.RunDir(tmp_path / "r")
    run.append_metrics({"round": 1, "test_acc": 0.5})

    real_write = metrics.os.write

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    def half_then_full(fd, data):  # the disk fills part-way through the line
        real_write(fd, bytes(data[:5]))
        raise OSError(28, "No space left on device")

    for name, failing in (("fsync", disk_full), ("write", half_then_full)):
        monkeypatch.setattr(metrics.os, name, failing)
        with pytest.raises(OSError):
            run.append_metrics({"round": 2, "test_acc": 0.6})
        monkeypatch.undo()
        assert (tmp_path / "r" / "metrics.jsonl").read_text() == '{"round": 1, "test_acc": 0.5}\n', name
    # a run killed mid-line: the whole evaluations before it still load
    with open(tmp_path / "r" / "metrics.jsonl", "a") as f:
        f.write('{"round": 2, "test_a')
    assert [r["round"] for r in results.load_run(tmp_path / "r").rows] == [1]
    with open(tmp_path / "r" / "metrics.jsonl", "a") as f:
        f.write('\n')  # a complete line that is not JSON is an edited file, not a cut
    with pytest.raises(ConfigError, match="not gossipsim's JSON"):
        results.load_run(tmp_path / "r")
    (tmp_path / "r" / "metrics.jsonl").write_text('{"round": 0, "te')  # nothing whole: no run to show
    with pytest.raises(ConfigError, match="holds no complete evaluation"):
        results.load_run(tmp_path / "r")


@pytest.mark.parametrize("args,needle", [
    (["--lr=0.5"], "lr cannot change when resuming a run (the checkpoint's run has lr=0.1)"),
    (["--rounds=1"], "rounds=1 is before the checkpoint's round 2"),
    (["--rounds=x"], "rounds must be an integer"),
    (["--rounds=4", "--out=elsewhere"], "out=elsewhere cannot change when resuming: the run goes on in"),
])
def test_resume_mistakes_exit_2(args, needle, tmp_path, capsys):
    run = tmp_path / "r"
    assert main(["run", "--agents=3", "--rounds=2", "--eval_every=2", "--batch_size=4", "--eval_samples=50",
                 "--progress=false", f"--out={run}"]) == 0
    capsys.readouterr()
    assert main(["run", f"--resume={run}", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err, err


def test_resume_accepts_an_algorithm_key_at_the_value_its_factory_took_by_default(tmp_path, capsys):
    run = tmp_path / "r"
    assert main(["run", "--algorithm=choco", "--agents=3", "--rounds=2", "--eval_every=2", "--batch_size=4",
                 "--eval_samples=50", "--progress=false", f"--out={run}"]) == 0
    assert main(["run", f"--resume={run}", "--rounds=3", "--gamma=0.5", f"--out={run}/"]) == 0  # choco's default
    capsys.readouterr()
    assert main(["run", f"--resume={run}", "--rounds=4", "--gamma=0.4"]) == 2
    assert "gamma cannot change when resuming a run (the checkpoint's run has gamma=0.5)" in capsys.readouterr().err


def test_resume_without_a_checkpoint_and_a_second_run_into_one_directory(tmp_path, capsys):
    assert main(["run", f"--resume={tmp_path / 'nothing'}"]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
    args = ["--agents=3", "--rounds=2", "--eval_every=2", "--batch_size=4", "--eval_samples=50", "--progress=false",
            f"--out={tmp_path / 'r'}"]
    assert main(["run", *args]) == 0
    before = (tmp_path / "r" / "metrics.jsonl").read_text()
    assert main(["run", *args]) == 2  # would append a second run's rows to the first's
    assert "already holds a run" in capsys.readouterr().err
    assert (tmp_path / "r" / "metrics.jsonl").read_text() == before
    assert main(["run", f"--resume={tmp_path / 'r' / 'checkpoint.pt'}"]) == 2
    assert f"give --resume={tmp_path / 'r'}" in capsys.readouterr().err


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_before_the_first_checkpoint_says_how_to_start_again(signum, tmp_path):
    """Ctrl-C or `kill` while round 0 is evaluated: exit 130, the files kept, and no --resume offered, which
    would find no checkpoint."""
    run = tmp_path / "r"
    cmd = [sys.executable, "-m", "gossipsim", "run", "--agents=3", "--rounds=100000", "--eval_every=50000",
           "--batch_size=4", "--progress=false", f"--out={run}"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    metrics = run / "metrics.jsonl"  # created before round 0's line is appended to it: wait for the line
    while not (metrics.exists() and metrics.read_text().endswith("\n")) and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "no checkpoint was written yet" in err and f"remove {run}" in err and "--resume" not in err, err
    assert (run / "metrics.jsonl").read_text().count("\n") == 1


def test_a_ctrl_c_while_torch_loads_is_one_line(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "gossipsim", "run", f"--out={tmp_path / 'r'}"],
                            stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)  # the interpreter is up, torch is not (it takes seconds)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and err.count("\n") == 1 and "Traceback" not in err, err


def test_a_finished_run_is_extended_not_resumed_again(tmp_path, capsys):
    run = tmp_path / "r"
    args = ["--agents=3", "--rounds=2", "--eval_every=2", "--batch_size=4", "--eval_samples=50", "--progress=false"]
    assert main(["run", *args, f"--out={run}"]) == 0
    capsys.readouterr()
    assert main(["run", f"--resume={run}"]) == 2
    assert "has its 2 rounds already; give the total it should reach to extend it" in capsys.readouterr().err
    written = {f.name: f.read_bytes() for f in run.iterdir() if f.is_file()}
    assert main(["run", f"--resume={run}", "--eval_every=1", "--tensorboard=true"]) == 2  # refused, files kept
    assert "is at round 2 of rounds=2: nothing is left to run with eval_every=1, tensorboard=True" in \
        capsys.readouterr().err
    assert {f.name: f.read_bytes() for f in run.iterdir()} == written  # config.json was rewritten, tensorboard/ made
    assert main(["run", *args, f"--out={run}"]) == 2  # the same out again
    assert f"already holds a run (metrics.jsonl); continue or extend it with --resume={run}" in \
        capsys.readouterr().err
    (run / checkpoint.NAME).unlink()  # as a run stopped before its first checkpoint leaves it
    assert main(["run", *args, f"--out={run}"]) == 2
    assert "it stopped before its first checkpoint, so there is nothing to resume: remove it" in \
        capsys.readouterr().err


def test_divergence_exits_3_naming_round_and_agents_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    run = tmp_path / "r"
    # lr jumps from 0.1 to 1e29 at round 4: rounds 0..3 are fine and checkpointed at round 4; the loss at the
    # parameters after round 5 overflows
    code = main(["run", "--agents=4", "--rounds=20", "--eval_every=2", "--batch_size=8", "--eval_samples=50",
                 "--progress=false", "--lr_schedule=multistep", "--milestones=4", "--lr_factor=1e30", f"--out={run}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3, err
    assert err[-1].startswith("gossipsim: training diverged at round 5: the loss of agents 0, 1, 2, 3 not finite")
    assert "Traceback" not in "\n".join(err)
    saved = checkpoint.load(run)
    assert saved["round"] == 4 and f"{run / checkpoint.NAME} (round 4)" in err[-1]
    assert all(torch.isfinite(v).all() for v in saved["state"].values() if v is not None)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["diverged"]["round"] == 5 and summary["diverged"]["agents"] == [0, 1, 2, 3]
    assert all(r["round"] <= 4 for r in _metrics(run))  # no NaN row was written


def test_non_finite_parameters_name_their_agents(tmp_path):
    engine = sim.build(sim.Config(agents=5, rounds=2, eval_every=2, batch_size=4, eval_samples=50, progress=False,
                                  out=str(tmp_path / "r")))
    engine.run(2)
    engine.state.x[3, 7] = float("inf")
    with pytest.raises(Diverged, match="the parameters of agent 3 not finite") as e:
        engine._check_finite()
    assert e.value.agents == [3] and e.value.round == 2


def test_checkpoint_every_must_be_a_multiple_of_eval_every():
    with pytest.raises(ConfigError, match="checkpoint_every must be 0 .* or a multiple of eval_every=5"):
        sim.Config(eval_every=5, checkpoint_every=7)


def test_tensorboard_scalars_at_each_evaluation_and_a_clear_error_without_it(tmp_path, monkeypatch):
    import sys
    import types

    written = []

    class Writer:
        def __init__(self, logdir, purge_step=None):
            written.append(("dir", logdir, purge_step))

        def add_scalar(self, tag, value, step):
            written.append((tag, value, step))

        def flush(self):
            written.append(("flush",))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Writer))
    cfg = dict(agents=3, rounds=4, eval_every=2, batch_size=4, eval_samples=50, progress=False, tensorboard=True)
    sim.build(sim.Config(**cfg, out=str(tmp_path / "r"))).run(4)
    assert written[0] == ("dir", str(tmp_path / "r" / "tensorboard"), None)
    assert [step for tag, *rest in written if tag == "test_acc" for step in rest[1:]] == [0, 2, 4]
    assert written.count(("flush",)) == 3
    # resumed from the checkpoint of round 4: what was logged after it is done again, so TensorBoard drops it
    written.clear()
    experiment.resume(tmp_path / "r", rounds=6).run(2)
    assert written[0] == ("dir", str(tmp_path / "r" / "tensorboard"), 5)

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # not installed
    with pytest.raises(ConfigError, match="tensorboard=true needs the tensorboard package: pip install tensorboard"):
        sim.build(sim.Config(**cfg, out=str(tmp_path / "s")))


def test_a_checkpoint_of_another_kind_of_device_resumes_from_fresh_streams(tmp_path, capsys):
    # README: device may change on resume. A CUDA generator's state (16 bytes: seed and offset) cannot be loaded
    # into a CPU generator, nor the other way round; the draws go on from streams seeded by (seed, round).
    run = tmp_path / "r"
    args = ["--agents=3", "--eval_every=2", "--batch_size=4", "--eval_samples=50", "--progress=false"]
    assert main(["run", "--rounds=2", f"--out={run}", "--augment=true", "--dataset=synthetic", *args]) == 0
    state = checkpoint.load(run)
    state.pop("format")
    cuda_state = torch.zeros(16, dtype=torch.uint8)  # torch.Generator("cuda").get_state()
    state["sampler"]["generator"], state["augment_rng"] = cuda_state, cuda_state.clone()
    checkpoint.save(state, run / checkpoint.NAME)
    capsys.readouterr()
    assert main(["run", f"--resume={run}", "--rounds=4", "--device=cpu"]) == 0
    assert "taken on another kind of device than cpu: sampling and augmentation go on from fresh random streams" \
        in capsys.readouterr().err
    assert [r["round"] for r in _metrics(run)] == [0, 2, 4]
    assert main(["run", f"--resume={run}", "--rounds=6"]) == 0  # a checkpoint of this device: no notice
    assert "another kind of device" not in capsys.readouterr().err


def test_a_rollback_in_memory_names_no_checkpoint_file(tmp_path):
    engine = sim.build(sim.Config(agents=3, rounds=20, eval_every=2, batch_size=4, eval_samples=50, progress=False,
                                  checkpoint_every=0, lr_schedule="multistep", milestones=[4], lr_factor=1e30,
                                  out=str(tmp_path / "r")))
    engine.run(2)
    engine.load_state_dict(engine.state_dict())  # a notebook going back: no checkpoint.pt was ever written
    with pytest.raises(Diverged, match="no checkpoint had been written"):
        engine.run(10)
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["diverged"]["checkpoint"] is None


def test_a_run_holding_a_key_that_had_no_effect_still_resumes(tmp_path):
    # written before such keys were refused: alpha with an iid partition meant the default alpha
    run = tmp_path / "r"
    sim.build(sim.Config(agents=3, rounds=2, eval_every=2, batch_size=4, eval_samples=50, progress=False,
                         out=str(run))).run(2)
    state = checkpoint.load(run)
    state.pop("format")
    state["config"] = {**state["config"], "alpha": 0.3, "milestones": [5]}
    checkpoint.save(state, run / checkpoint.NAME)
    engine = experiment.resume(run, rounds=4)
    assert engine.run(2)[-1]["round"] == 4
    with pytest.raises(ConfigError, match="alpha=0.3 is for partition=dirichlet"):
        experiment.resume(run, rounds=6, alpha=0.3)  # given now, it is the mistake it always was
