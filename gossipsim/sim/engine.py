"""The only training loop: data, RNG, schedules, metrics, logging, checkpoints. An algorithm owns one round.

    for t in range(rounds):
        idx   = sampler.sample(t)                          # (N, B) indices, on the device
        batch = normalize(train.x[idx]), train.y[idx]      # (N, B, C, H, W), (N, B)
        state, stats = algorithm.step(state, Round(t, grad=oracle(batch), mixing=topology.mixing(t)))
        meter.add(stats, t)                                # on-device sums, no host sync
        every eval_every rounds: evaluate, log, progress   # the one named host sync point
                                 checkpoint, stop on NaN/Inf
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..errors import ConfigError, Diverged
from ..graphs import Topology
from . import checkpoint as ckpt
from . import data as data_mod
from .algorithms import Algorithm, Round, gossip_bits
from .config import plain_items
from .graphed import GraphedRound
from .metrics import Meter, RunDir, average, consensus_distance
from .model import EVAL_SAMPLES_PER_CALL, StackedModel


@dataclass
class Engine:
    """Trains `model.n` agents with `algorithm` over `topology` on `train`, split by `partition`.

    All tensors live on `device`; `dtype` is the dtype of parameters, algorithm state and gossip.
    """

    model: StackedModel
    algorithm: Algorithm
    topology: Any
    train: data_mod.Dataset
    test: data_mod.Dataset
    partition: data_mod.Partition
    batch_size: int = 32
    seed: int = 0
    dtype: torch.dtype = torch.float32
    device: torch.device | str = "cpu"
    augment: bool = False
    same_init: bool = True
    eval_every: int = 50
    eval_agents: bool = True
    progress: bool = True
    out: str | Path | None = None
    config: dict[str, Any] = field(default_factory=dict)
    memory: Any = None  # memory.Estimate of the run's peak, from the preflight in experiment.build
    compile: str = "off"  # "off", "oracle" (the gradients compiled), "round" or "graph" (see _prepare_compile)
    checkpoint_every: int | None = None  # rounds between checkpoints in out/; None: every evaluation; 0: none
    resume: dict[str, Any] | None = None  # a checkpoint's contents (checkpoint.load) to continue from
    tensorboard: bool = False  # also write each evaluation as TensorBoard scalars to out/tensorboard
    on_eval: Callable[[dict[str, Any]], None] | None = None

    def __post_init__(self) -> None:
        self.device = torch.device(self.device)
        if self.compile == "graph" and (self.device.type != "cuda" or not isinstance(self.topology, Topology)):
            kind = "static" if isinstance(self.topology, Topology) else "time-varying"
            raise ConfigError(f"compile=graph replays one captured round: it needs device=cuda and a static "
                              f"topology, got device={self.device.type} and topology "
                              f"{getattr(self.topology, 'name', type(self.topology).__name__)} ({kind})")
        n = self.model.n
        self.train, self.test = self.train.to(self.device), self.test.to(self.device)
        x0, self.buffers = self.model.init(self.seed, same_init=self.same_init, dtype=self.dtype,
                                           device=self.device)  # (N, P), (N, Pbuf)
        self.state = self.algorithm.init(x0)
        self.sampler = data_mod.Sampler(self.partition, self.batch_size, seed=self.seed, device=self.device)
        self.augment_rng = torch.Generator(self.device).manual_seed(self.seed + 1)
        # The compressors' random draws (rand-k, QSGD's rounding, the Triton kernels' seeds) come from torch's
        # global generators. The engine keeps its own states of them, seeded, and swaps them in for its rounds:
        # the same seed then gives the same run whatever ran before it in the process (a sweep, a notebook).
        self._rng = _seeded_rng(self.seed + 2, self.device)
        every = self.eval_every if self.checkpoint_every is None else self.checkpoint_every
        if every < 0 or every % self.eval_every:
            raise ConfigError(f"checkpoint_every must be 0 (none) or a multiple of eval_every={self.eval_every} "
                              f"(checkpoints are taken at evaluations), got {every}")
        self.checkpoint_interval = every
        self.checkpoint_round: int | None = None  # the round of the last checkpoint in out/
        self.meter = Meter(n, self.device)
        self.t = 0
        self._t_dev, self._t_at = torch.zeros((), dtype=torch.int64, device=self.device), 0  # round t, on device
        self.history: list[dict[str, Any]] = []
        self.train_time = 0.0
        # rounds whose time went to compile_time, not train_time (a compiling round), or was not measured (engine.step()
        # called outside run()): samples/s leaves them out
        self.untimed_rounds, self._untimed_counted = 0, 0
        self._timing = False  # within run(), which measures the rounds' wall time
        self.setup_time = 0.0  # choosing the backend (auto), compiling
        self.compile_time = 0.0  # the rounds that compiled (part of setup_time)
        self._compiled_round: Callable | None = None
        self._compiles_at: int | None = None  # the round that compiles, once compilation is set up
        self._compiled_from: int | None = None  # the first round that calls _compiled_round
        self.run_dir = RunDir(self.out, resume=self.resume is not None) if self.out is not None else None
        if self.run_dir is not None:
            self.run_dir.write_json("config.json", self.config)
            (self.run_dir.path / "partition.txt").write_text(self.describe_partition() + "\n")
        self._writer = None
        if self.tensorboard:
            if self.run_dir is None:
                raise ConfigError("tensorboard=true writes into the run directory: give the engine out=")
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError("tensorboard=true needs the tensorboard package: pip install tensorboard") from None
            # resumed: the evaluations logged after the checkpoint are done again, so drop the first copies
            purge = None if self.resume is None else int(self.resume["round"]) + 1
            self._writer = SummaryWriter(str(self.run_dir.path / "tensorboard"), purge_step=purge)
        if self.resume is not None:
            self.load_state_dict(self.resume)
            self.checkpoint_round = self.t if self.run_dir is not None else None  # on disk: a file to name
            self.resume = None  # the engine's state now; no need to hold a second copy

    def describe_partition(self) -> str:
        """The data read (from where) and the per-agent shard sizes and label histograms, as a short report."""
        tr, te = self.train, self.test
        source = f" from {tr.source}" if tr.source else ""
        data = (f"data: {tr.name}{source}: {len(tr)} train and {len(te)} test images of "
                f"{'x'.join(map(str, tr.shape))}, {tr.classes} classes")
        return data + "\n" + self.partition.describe(tr.y.cpu(), tr.classes)

    # ----------------------------------------------------------------------------------------------
    def _inputs(self, idx: torch.Tensor, augment: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        xb = self.train.x[idx]  # idx (N, B) -> (N, B, C, H, W) uint8
        if augment and self.augment:  # before normalizing: the crop pads black, as torchvision's RandomCrop
            xb = data_mod.augment(xb, self.augment_rng)
        return self.train.normalize(xb, self.dtype), self.train.y[idx]

    def step(self) -> dict[str, torch.Tensor]:
        """One round; returns the algorithm's statistics (device tensors)."""
        if self.sampler.t != self.t:  # the sampler moves first: a round stopped after it (an interrupt, an error)
            raise ConfigError(f"round {self.t} stopped part way, its state half updated: return to a saved state "
                              f"(engine.load_state_dict(saved), or sim.experiment.resume(run_dir)) to go on")
        idx = self.sampler.sample(self.t)  # (N, B): host bookkeeping of epochs, kept out of any compiled code
        if self.model.backend == "auto":  # a one-off measurement, kept out of the training time
            start = time.perf_counter()
            # on the round's batch, not augmented: the augmentation's generator must advance once a round
            self.model.choose_backend(self.state.x, self.buffers, *self._inputs(idx, augment=False))
            self.setup_time += time.perf_counter() - start
        if self.compile != "off" and self._compiles_at is None:
            start = time.perf_counter()
            self._prepare_compile()  # torch.compile's first call imports Inductor: 1.4 s on 2 CPU cores
            spent = time.perf_counter() - start
            self.compile_time += spent
            self.setup_time += spent
        mixing = self.topology.mixing(self.t)
        t = self._round_index()
        compiled = self._compiled_round is not None and self.t >= self._compiled_from
        compiling = self.t == self._compiles_at
        start = time.perf_counter()
        with self._own_rng():
            self.state, self.buffers, stats = (self._compiled_round if compiled else self._round)(
                self.state, self.buffers, idx, t, mixing)
        if compiling:
            self.sync()
            self.compile_time += time.perf_counter() - start
            self.setup_time += time.perf_counter() - start
        if compiling or not self._timing:
            self.untimed_rounds += 1
        self.meter.add(stats, t)
        self.t += 1
        return stats

    def _round(self, state, buffers: torch.Tensor, idx: torch.Tensor, t: torch.Tensor, mixing):
        """(state, BatchNorm buffers, stats) after one round from the batch indices idx (N, B): what
        compile="round" compiles, from the gather of the batch to the algorithm's step."""
        xb, yb = self._inputs(idx)
        new_buffers = [buffers]

        def oracle(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            loss, g, new_buffers[0] = self.model.grad(x, buffers, xb, yb)
            return loss, g

        state, stats = self.algorithm.step(state, Round(t=t, grad=oracle, mixing=mixing))
        buffers = new_buffers[0]  # (N, Pbuf)
        if self.model.bn == "gossip":  # the statistics go uncompressed to each active neighbour: 32 bits a float
            buffers = mixing(buffers)
            stats = {**stats, "bits": stats["bits"] + gossip_bits(mixing, buffers.shape[1])}
        return state, buffers, stats

    def _prepare_compile(self) -> None:
        """compile="round" compiles `_round` where the topology gives the same mixing every round: its
        inputs are then the same objects and tensors of the same shapes each round (the round index a
        device tensor), and it never recompiles. A time-varying schedule hands over a new mixing each round
        (its W_t, its neighbour table), which would recompile every round: there, as with compile="oracle",
        only the vmapped gradient is compiled. compile="graph" captures `_round` as a CUDA graph (graphed.py).

        Round t (this one) runs eagerly and fills the caches (mixing casts, kernel tables) that the compiled
        or captured round then reads as constants; round t + 1 compiles or captures. compile="oracle"
        compiles in round t."""
        if self.compile == "graph":  # round t runs eagerly inside GraphedRound, on its capture's side stream
            self._compiled_round = GraphedRound(self._round, self.device, [self.augment_rng] if self.augment else [],
                                                name=f"a round of {self.algorithm.name}")
            self._compiled_from, self._compiles_at = self.t, self.t + 1
        elif self.compile == "round" and isinstance(self.topology, Topology):
            # fallback_random: the compressors' and augmentation's draws come from torch's generators as in
            # eager rounds (Inductor's own would be other numbers), so compiling changes the speed, not the run
            self._compiled_round = torch.compile(self._round, dynamic=False, options={"fallback_random": True})
            self._compiled_from = self._compiles_at = self.t + 1
        else:
            self.model.compile_oracle()
            self._compiles_at = self.t

    def _round_index(self) -> torch.Tensor:
        """Round t as a 0-dim int64 device tensor. It is counted on the device: torch.tensor(t, device=...)
        each round would copy from the host, which on CUDA waits for the stream."""
        if self._t_at != self.t:  # t was set from outside (a resumed run)
            self._t_dev = torch.tensor(self.t, device=self.device)
        t = self._t_dev.clone()  # an algorithm may keep it; the counter moves on
        self._t_dev += 1
        self._t_at = self.t + 1
        return t

    def run(self, rounds: int) -> list[dict[str, Any]]:
        """Run `rounds` more rounds, evaluating every eval_every rounds and after the last one, and checkpointing
        every checkpoint_every rounds and after the last one. NaN or Inf in a loss or in the parameters, found
        at an evaluation, raises Diverged; the checkpoints taken before are kept."""
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
            raise ConfigError(f"run(rounds={rounds!r}): accepted: a whole number of rounds >= 0")
        end = self.t + rounds
        if not self.history:
            self.evaluate()  # round 0: every curve starts from the common initial point
        bar = tqdm(total=rounds, disable=not self.progress, desc=self.algorithm.name, leave=False)
        window_start, setup = time.perf_counter(), self.setup_time
        self._timing = True
        try:
            while self.t < end:
                self.step()
                bar.update(1)
                if self.t % self.eval_every == 0 or self.t == end:
                    self.sync()
                    window_time = time.perf_counter() - window_start - (self.setup_time - setup)
                    self.train_time += window_time
                    self._check_finite()
                    row = self.evaluate(window_time=window_time)
                    bar.set_postfix(acc=f"{100 * row['test_acc']:.1f}%", loss=f"{row['train_loss']:.3f}")
                    if self.run_dir is not None and self.checkpoint_interval and (
                            self.t % self.checkpoint_interval == 0 or self.t == end):
                        self.save_checkpoint()
                    window_start, setup = time.perf_counter(), self.setup_time
        finally:
            self._timing = False
            bar.close()
        if self.run_dir is not None:
            self.run_dir.write_json("summary.json", self.summary())
            self.run_dir.plot(self.history, f"{self.algorithm.name} on {self.topology!r}")
        return self.history

    def _check_finite(self) -> None:
        """Raise Diverged if a loss since the last check, or a parameter now, is NaN or Inf (a host sync: called
        at evaluations only). summary.json records it."""
        first = self.meter.first_bad.cpu()  # (N,)
        if (first >= 0).any():
            at, what = int(first[first >= 0].min()), "the loss"
            agents = (first == at).nonzero().flatten().tolist()
        else:
            finite = torch.isfinite(self.state.x).all(1).cpu()  # (N,)
            if finite.all():
                return
            at, what, agents = self.t, "the parameters", (~finite).nonzero().flatten().tolist()
        kept = f"{self.run_dir.path / ckpt.NAME} (round {self.checkpoint_round})" \
            if self.checkpoint_round is not None else None
        error = Diverged(at, agents, what, kept)
        if self.run_dir is not None:
            self.run_dir.write_json("summary.json", {**self.summary(), "diverged": {
                "round": at, "agents": agents, "what": what, "checkpoint": kept, "message": str(error)}})
        raise error

    # ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, window_time: float = 0.0) -> dict[str, Any]:
        """Evaluate now; the row is appended to history and metrics.jsonl. This is a host sync point.

        window_time: seconds spent training since the last evaluation (for samples/s)."""
        start = time.perf_counter()
        x = self.state.x  # (N, P)
        n = x.shape[0]
        test = self.test

        def inputs(s: int, e: int) -> torch.Tensor:
            return test.normalize(test.x[s:e], self.dtype)

        # as many samples a call as fit in the memory a round uses (the preflight's estimate)
        per_call = self.memory.eval_samples if self.memory is not None else EVAL_SAMPLES_PER_CALL
        avg_loss, avg_acc = self.model.evaluate(average(x), average(self.buffers), inputs, test.y, per_call)
        window_rounds = self.meter.rounds
        timed_rounds = window_rounds - (self.untimed_rounds - self._untimed_counted)
        self._untimed_counted = self.untimed_rounds
        extra = self.meter.window_extra()
        train_loss = self.meter.window_loss()
        row = {
            "round": self.t,
            "epoch": self.t * self.batch_size * n / len(self.train),
            "train_loss": float(train_loss.mean()) if window_rounds else None,  # None at round 0
            "test_loss": float(avg_loss[0]),
            "test_acc": float(avg_acc[0]),
            "consensus": float(consensus_distance(x)),
            "sparsity": int((x == 0).sum()) / x.numel(),  # fraction of exact zeros in the agents' models
            "bits_per_agent": float(self.meter.bits.mean()),
            "bits_max_agent": float(self.meter.bits.max()),
        }
        if self.eval_agents:
            _, acc = self.model.evaluate(x, self.buffers, inputs, test.y, per_call)
            row.update(agent_acc_mean=float(acc.mean()), agent_acc_min=float(acc.min()),
                       agent_acc_max=float(acc.max()))
        # an algorithm's own, over agents and rounds; NaN or Inf (a 0/0 of its own) as null: JSON has neither
        row.update({k: v if math.isfinite(v) else None for k, v in ((k, float(v.mean())) for k, v in extra.items())})
        row.update(train_time=self.train_time,
                   samples_per_s=timed_rounds * n * self.batch_size / window_time if window_time else 0.0,
                   eval_time=time.perf_counter() - start)
        self.history.append(row)
        if self.run_dir is not None:
            self.run_dir.append_metrics(row)
        if self._writer is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "round":
                    self._writer.add_scalar(k, v, self.t)
            self._writer.flush()
        if self.on_eval is not None:
            self.on_eval(row)
        return row

    # ----------------------------------------------------------------------------------------------
    def state_dict(self, copy: bool = True) -> dict[str, Any]:
        """Everything the next round depends on, tensors on the CPU (see checkpoint.py). A host sync. Copies, on a
        CPU too: the rounds that follow update the state in place, and must not change a state_dict kept to
        return to. save_checkpoint, which writes it at once, asks for none (copy=False): on a CPU a copy of
        the state would need as much memory again as the state."""
        def cpu(v):
            return v.detach().to("cpu", copy=copy) if isinstance(v, torch.Tensor) else v

        return {"round": self.t, "algorithm": self.algorithm.name,
                "state": {k: cpu(v) for k, v in self.state._asdict().items()}, "buffers": cpu(self.buffers),
                "sampler": self.sampler.state_dict(), "augment_rng": self.augment_rng.get_state(),
                "rng": self._rng, "meter": self.meter.state_dict(), "history": list(self.history),
                "backend": self.model.backend, "train_time": self.train_time, "setup_time": self.setup_time,
                "compile_time": self.compile_time, "untimed_rounds": self.untimed_rounds, "config": self.config,
                "hyperparameters": plain_items(self.algorithm.hyper)}

    # what load_state_dict reads of a state_dict()
    state_dict_keys = ("round", "algorithm", "state", "buffers", "sampler", "augment_rng", "rng", "meter", "history",
                       "backend", "train_time", "setup_time", "compile_time")

    def load_state_dict(self, d: dict[str, Any]) -> None:
        """Continue from a state_dict (a checkpoint): the next round is d["round"]."""
        if not isinstance(d, dict) or not set(self.state_dict_keys) <= set(d):
            lacks = ", ".join(k for k in self.state_dict_keys if k not in d) if isinstance(d, dict) else "not a dict"
            raise ConfigError(f"not an Engine.state_dict() ({lacks}); pass what state_dict() or a checkpoint gave")
        if d["algorithm"] != self.algorithm.name:
            raise ConfigError(f"the checkpoint is of algorithm {d['algorithm']!r}, this run's is "
                              f"{self.algorithm.name!r}")
        # the factory's hyperparameters, defaults included (older checkpoints: none to compare)
        theirs, mine = d.get("hyperparameters", {}), plain_items(self.algorithm.hyper)
        differ = [k for k in theirs if k in mine and theirs[k] != mine[k]]
        if differ:  # the config is the same, so a factory's default was edited since
            was = ", ".join(f"{k} = {theirs[k]!r} there, {mine[k]!r} here" for k in differ)
            raise ConfigError(f"the checkpoint's {self.algorithm.name} ran with other hyperparameters: {was} (a "
                              f"default edited since?); restore it to continue this run")
        fields = self.state._asdict()
        theirs = {k: v for k, v in d["state"].items() if v is not None or k in fields}  # an empty field dropped
        if set(theirs) != set(fields):  # a checkpoint of another version of the algorithm
            raise ConfigError(f"the checkpoint's {self.algorithm.name} state has fields {', '.join(theirs)}, this "
                              f"version's has {', '.join(fields)}: written by another version; start the run again")
        for k, v in theirs.items():
            mine = fields[k]
            if (mine is None) != (v is None) or (v is not None and v.shape != mine.shape):
                raise ConfigError(f"the checkpoint's {self.algorithm.name} state does not fit this run: field {k} "
                                  f"is {None if v is None else tuple(v.shape)} there, "
                                  f"{None if mine is None else tuple(mine.shape)} here")
        # copies: the rounds update them in place, and d may be loaded again
        self.state = type(self.state)(**{k: None if v is None else v.to(self.device, fields[k].dtype, copy=True)
                                         for k, v in theirs.items()})
        self.buffers = d["buffers"].to(self.device, self.buffers.dtype, copy=True)
        # A run moved to another kind of device (CPU to GPU) cannot continue its data and augmentation draws:
        # those generators' states do not carry over. They start afresh, seeded by (seed, round).
        at = int(d["round"])
        continued = [self.sampler.load_state_dict(d["sampler"], fallback_seed=_moved_seed(self.seed, at)),
                     data_mod.load_stream(self.augment_rng, d["augment_rng"], _moved_seed(self.seed + 1, at))]
        if not all(continued):
            print(f"gossipsim: the checkpoint of round {at} was taken on another kind of device than "
                  f"{self.device.type}: sampling and augmentation go on from fresh random streams, so the rounds "
                  f"from here are not those the run would have had where it started", file=sys.stderr)
        self._rng = {**_seeded_rng(self.seed + 2, self.device), **d["rng"]}  # a CPU run resumed on a GPU: seeded
        self.meter.load_state_dict(d["meter"])
        self.history = list(d["history"])
        if self.model.backend == "auto":  # the backend measured before, not a new measurement
            self.model.backend = d["backend"]
        self.train_time, self.setup_time, self.compile_time = d["train_time"], d["setup_time"], d["compile_time"]
        self.untimed_rounds = self._untimed_counted = d.get("untimed_rounds", 0)  # older checkpoints: none recorded
        self.t = at
        if self.run_dir is not None:
            self.run_dir.keep_metrics(len(self.history))

    def save_checkpoint(self) -> Path:
        """Write the state_dict to out/checkpoint.pt atomically (the previous one stays whole until replaced)."""
        if self.run_dir is None:
            raise ConfigError("save_checkpoint needs a run directory: give the engine out=")
        path = ckpt.save(self.state_dict(copy=False), self.run_dir.path / ckpt.NAME)
        self.checkpoint_round = self.t
        return path

    @contextlib.contextmanager
    def _own_rng(self) -> Iterator[None]:
        """Run with this engine's generator states in torch's global generators, then give the caller's back."""
        theirs = _rng_state(self.device)
        _set_rng_state(self._rng, self.device)
        try:
            yield
        finally:
            self._rng = _rng_state(self.device)
            _set_rng_state(theirs, self.device)

    def summary(self) -> dict[str, Any]:
        last = self.history[-1] if self.history else {}
        return {"algorithm": self.algorithm.name, "topology": repr(self.topology), "agents": self.model.n,
                "parameters": self.model.P, "backend": self.model.backend,
                "backend_timings": getattr(self.model, "timings", None), "setup_time": self.setup_time,
                "compile": self.compile, "compile_time": self.compile_time,
                "rounds": self.t, "hyperparameters": plain_items(self.algorithm.hyper),
                "samples_per_s": (self.t - self.untimed_rounds) * self.model.n * self.batch_size
                / max(self.train_time, 1e-12),
                "final": last}

    def sync(self) -> None:
        """Wait for the device to finish the rounds queued so far (a host sync; for timing)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """torch's global generator states that a round on `device` draws from (no device sync)."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def _moved_seed(seed: int, at: int) -> int:
    """A seed of its own for a stream that a run moved to another kind of device at round `at` starts afresh."""
    return ((seed << 32) + at) % 2**64


def _seeded_rng(seed: int, device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.Generator().manual_seed(seed).get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.Generator(device).manual_seed(seed).get_state()
    return state
