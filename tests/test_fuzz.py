"""Random bad configurations and command lines: never a traceback, never a half-written result file.

Each example is a command line built from good and bad values of the config keys (typos, out-of-range numbers,
impossible combinations, strings where numbers go, unknown keys) or from arbitrary tokens, and a random TOML
file. Whatever it is, the CLI answers 0 (it ran), 2 (one line naming the mistake) or 3 (it diverged, one line),
and every file it left is whole.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gossipsim.sim import checkpoint
from gossipsim.sim.cli import main

VALUES = {
    "algorithm": ["dsgd", "choco", "adagossip", "malcom_psgd", "al_dsgd", "matcha", "adacons", "local", "sgd",
                  "CHOCO", ""],
    "topology": ["ring", "torus", "exponential", "ring+fail:0.3", "ring+matcha:0.5", "erdos_renyi:0.9", "star",
                 "ring:7", "ring+fail:2", "torus:3x", "hypercube", "bogus", "ring+", ":"],
    "compressor": ["top_k:0.1", "sign", "qsgd:4", "rand_k:0.5,scaled", "top_k:2", "rand_k:-1", "qsgd:0", "nope",
                   "top_k:", "dithered:8"],
    "gamma": ["0.5", "1", "-1", "abc", "nan", "1e309"],
    "lr": ["0.1", "0", "-1", "nan", "x", "inf"],
    "agents": ["3", "4", "1", "0", "-2", "2.5", "many", "100000000"],
    "rounds": ["1", "2", "0", "-1", "1.5"],
    "batch_size": ["4", "0", "x", "-3"],
    "momentum": ["0.9", "1", "-0.1"],
    "nesterov": ["true", "maybe"],
    "model": ["mlp", "lenet5", "vgg", ""],
    "dataset": ["synthetic", "cifar10", "mnist", "nope"],
    "eval_every": ["1", "0", "x"],
    "checkpoint_every": ["0", "1", "2", "3", "-1"],
    "partition": ["iid", "dirichlet", "shards", "x"],
    "alpha": ["0.5", "0", "-1"],
    "device": ["cpu", "cuda", "gpu"],
    "dtype": ["float64", "float16"],
    "milestones": ["1", "1,2", "x,y", "[]"],
    "lr_schedule": ["cosine", "multistep", "linear"],
    "compress_per": ["layer", "agent"],
    "weights": ["uniform", "max_degree", "laplacian", "random"],
    "beta": ["0.9", "2"],
    "mu": ["0.001", "-1"],
    "compile": ["off", "on"],
    "autocast": ["bf16", "fp8"],
    "backend": ["loop", "chunked", "gpu"],
}
KEYS = list(VALUES) + ["agnets", "learning_rate", "Rounds", "out_dir"]


@st.composite
def command_lines(draw) -> list[str]:
    """A run's command line: a few keys, each a good or a bad value, or now and then a raw token."""
    args = []
    for key in draw(st.lists(st.sampled_from(KEYS), max_size=5)):
        value = draw(st.sampled_from(VALUES.get(key, ["1"])))
        args.append(f"--{key}={value}" if draw(st.booleans()) else f"--{key}")
        if args[-1] == f"--{key}" and draw(st.booleans()):
            args.append(value)
    if draw(st.integers(0, 4)) == 0:
        args.append(draw(st.sampled_from(["--", "-x", "x.toml", "--=3", "stray", "--resume", "--help=3"])))
    return args


def _check(code: int, err: str, out: Path) -> None:
    assert "Traceback" not in err, err
    assert code in (0, 2, 3), (code, err)
    if code in (2, 3):
        lines = err.strip().splitlines()
        prefix = "gossipsim: error: " if code == 2 else "gossipsim: training diverged"
        assert lines and lines[-1].startswith(prefix), err
        if code == 2:
            assert len(lines) == 1, err  # mistakes are found before anything is printed or written
    for path in out.rglob("*") if out.exists() else []:
        assert not path.name.endswith(".tmp"), path  # a file written half-way is never left behind
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.name.endswith(".jsonl"):
            [json.loads(line) for line in path.read_text().splitlines()]
        elif path.name == checkpoint.NAME:
            checkpoint.load(path)
    if code == 0:
        assert (out / "summary.json").exists()


# What every example adds first, so that a valid draw is a run of a second, not of minutes; drawn keys override.
SMALL = ["--agents=3", "--rounds=2", "--eval_every=1", "--batch_size=4", "--eval_samples=50", "--progress=false",
         "--backend=vmap"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(args=command_lines())
def test_random_command_lines_never_traceback_nor_leave_half_files(args):
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        argv = ["run", *SMALL, *args] if "--resume" not in args else ["run", *args]
        if not any(a.startswith("--out") for a in args):
            argv.append(f"--out={out}")
        code, err = _main(argv)
        _check(code, err, out)


@settings(max_examples=25, deadline=None)
@given(content=st.one_of(st.text(max_size=80), st.binary(max_size=40)),
       command=st.sampled_from(["run", "sweep", "plot", "graphs", "bench", "nope"]))
def test_random_files_and_tokens_for_every_command(content, command):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "file.toml"
        if isinstance(content, bytes):
            path.write_bytes(content)
            text = content.decode(errors="replace")
        else:
            path.write_text(content)
            text = content
        (Path(tmp) / "cut").mkdir()  # a run directory whose metrics end half-written
        (Path(tmp) / "cut" / "metrics.jsonl").write_text(text if text.strip() else '{"round": 0')
        args = {"run": [str(path), *SMALL], "sweep": [str(path), "--list"], "plot": [tmp],
                "graphs": [text or "ring"], "bench": ["--device", text], "nope": [text]}[command]
        code, err = _main([command, *args, f"--out={Path(tmp) / 'run'}"] if command == "run" else [command, *args])
        _check(code, err, Path(tmp) / "run")


def _main(argv: list[str]) -> tuple[int, str]:
    import contextlib
    import io

    err, out = io.StringIO(), io.StringIO()
    rng = torch.get_rng_state()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's --help exits 0 on its own; nothing else may exit
            assert e.code == 0 and "usage:" in out.getvalue(), (argv, e.code)
            code = 0
    torch.set_rng_state(rng)
    return code, err.getvalue()
