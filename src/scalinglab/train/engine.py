"""The training engine: how every run in scalinglab lives and dies, in one loop.

`train(task, spec, out_dir)` trains a `Task` (what a kind of run computes: its model, the loss of
update `step`, what an evaluation measures) under a `RunSpec` (what the engine needs to know:
identity, optimizer, schedule, evaluation and snapshot steps, device, store row). The study's
trunks and branches, `scalinglab train`, and every probe (capacity, memorisation, facts vs rules,
repetition, grokking) run through it; they differ only in their Task.

A run is a directory:

    config.json       the identity (what names the run and what a resume compares)
    last.pt           the latest checkpoint: optimizer, step, RNG states, the task's state ...
    last.step<S>.safetensors   ... and its model weights (`scalinglab.train.checkpoint`)
    snap-<step>.pt    kept snapshots (a trunk's branch points), each with its weights file
    train_loss.f32    the loss of every training batch before its update (float32 per step):
                      the prequential code length of the run is their sum
    metrics.jsonl     one line per evaluation
    DONE / DIVERGED   how the run ended
    tb/, wandb/       live curves, when the run logs to TensorBoard / W&B (`scalinglab.train.sinks`)

and, when the spec names a store, a run row, a point per evaluation and its status there.

The rules, in one place:
- Resume: a directory holding the same identity continues from `last.pt` (or from `init_from`, a
  branch's snapshot of its trunk) and ends bit-identical on CPU to a run never stopped: batches
  are a pure function of the step, and the checkpoint holds every other state.
- Checkpoints: after an evaluation (unless one was written in the last `EVAL_CHECKPOINT_GAP`
  seconds), every `checkpoint_every` seconds between steps, at snapshot steps, on a stop request
  and at the end. Metrics lines and store points are written with each checkpoint, so they never
  run ahead of it: work lost to a kill is redone and recorded identically.
- Live curves: each point goes to the run's sinks (`spec.log`, else `$SCALINGLAB_LOG`) as it is
  written to the store, so a sink never shows a point that a resume redoes.
- Stop requests (Ctrl-C, SIGTERM): the current step finishes, a checkpoint is written, and
  `Interrupted` says how to continue.
- Divergence: a NaN/inf loss is caught before it touches the weights; the run gets a DIVERGED
  marker and store status, `Diverged` is raised, and every later call refuses it the same way.
- The end: the task's stop rule (checked after each evaluation, on the evaluations alone) or the
  last step; the store row becomes "done", then the DONE marker is written. An extendable run (a
  constant-LR trunk; a grokking run whose budget is not part of its identity) given more steps
  later continues from where it ended, unless its stop rule already fired.
- Data-parallel (`spec.ranks`, K processes started by torchrun, for a task that declares
  `data_parallel`): every rank builds the same model (or loads the same checkpoint) and computes
  the loss of its share of the step's batch; one all-reduce after backward averages the
  gradients, the loss and the stop requests, so every rank takes the same update, sees the same
  NaN and stops after the same step. Rank 0 alone claims the directory, evaluates and writes
  (checkpoints, metrics, the loss log, markers, the store); the others write nothing.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from scalinglab.config import OptimConfig
from scalinglab.device import Placement, Ranks, place
from scalinglab.errors import UserError
from scalinglab.fsutil import atomic_write_text, disk_errors
from scalinglab.resources import check_disk
from scalinglab.store import Store
from scalinglab.train.checkpoint import load_checkpoint, save_checkpoint, set_rng_state
from scalinglab.train.optim import adamw
from scalinglab.train.rundir import claim_directory, exclusive, read_marker, stop_requests, versions, write_marker
from scalinglab.train.schedules import Schedule
from scalinglab.train.sinks import Sinks, requested, scalars

EVAL_CHECKPOINT_GAP = 1.0  # seconds: evaluations closer together than this share a checkpoint


class Diverged(Exception):
    """The loss became NaN or inf; the run is recorded as diverged."""

    def __init__(self, run_id: str, step: int, loss: float) -> None:
        super().__init__(f"run {run_id} diverged at step {step} (loss {loss})")
        self.run_id, self.step, self.loss = run_id, step, loss


class Interrupted(Exception):
    """Stopped by a signal after writing a checkpoint; resume to continue."""

    def __init__(self, run_id: str, step: int, out_dir: Path) -> None:
        super().__init__(f"run {run_id} stopped at step {step}; resume with --resume (out: {out_dir})")
        self.run_id, self.step, self.out_dir = run_id, step, out_dir


# --- what a caller gives ------------------------------------------------------------------------

@dataclass
class EvalContext:
    """What the engine knows at an evaluation: the step, the LR of the last update (0 before the
    first), training seconds so far, and the mean training-batch loss since the last evaluation."""

    step: int
    lr: float
    wall_time: float
    batch_loss: float | None


class Task:
    """What a kind of run computes. Subclasses override `build_model`, `loss` and `evaluate`;
    the other hooks are optional."""

    tokenizer: dict | None = None  # stored in checkpoints, so a trained model is self-contained
    placement: Placement | None = None
    # the loss of update `step` is that of this rank's share of the step's batch when
    # `placement.world` > 1 (equal shares, so the mean over ranks is the whole batch's loss)
    data_parallel: bool = False

    def setup(self, placement: Placement) -> None:
        """Called first, with where the run trains (e.g. to move fixed data there once)."""
        self.placement = placement

    def build_model(self) -> torch.nn.Module:
        """A fresh model; the engine has seeded torch just before."""
        raise NotImplementedError

    def loss(self, model: torch.nn.Module, step: int) -> torch.Tensor:
        """The training loss (a scalar) of update `step`, from batches that are a pure function of
        the step (so a resumed run sees the same data)."""
        raise NotImplementedError

    def evaluate(self, model: torch.nn.Module, ctx: EvalContext) -> dict:
        """One metrics line (JSON-able, holding "step"). The model is in eval mode."""
        raise NotImplementedError

    def store_point(self, point: dict) -> dict | None:
        """The store point (`Store.add_point` fields) of a metrics line; None records none."""
        return point

    def should_stop(self, points: list[dict]) -> bool:
        """Stop after this evaluation? Must depend only on the evaluations, so that a resumed run
        stops where an uninterrupted one would."""
        return False

    def after_backward(self, model: torch.nn.Module) -> None:
        """Change the gradients before clipping and the update (e.g. Grokfast's filter)."""

    def state_dict(self) -> dict:
        """Task state beyond the model and optimizer that a resume needs (tensors, numbers),
        kept under these keys in the checkpoint's "extra"."""
        return {}

    def load_state_dict(self, extra: dict) -> None:
        """Restore what `state_dict` gave, from a checkpoint's "extra"."""


class Reporter:
    """Receives progress. The default does nothing; the CLI shows progress bars."""

    def start(self, total_steps: int, step: int) -> None: ...
    def step(self, step: int, loss: float, seconds: float) -> None: ...
    def point(self, point: dict) -> None: ...
    def close(self) -> None: ...


@dataclass
class RunSpec:
    """How the engine runs a task.

    run_id, identity: the run's name and the JSON-able facts that define it (config.json).
    optim, lr, schedule: the optimizer settings, the resolved peak LR and the schedule (which
      holds the number of updates).
    device, dtype, threads: where to train (`scalinglab.device.place`); seed: set before the
      model is built.
    eval_steps: the steps to evaluate at (0 evaluates the untrained model); the last step is
      always evaluated.
    snapshot_steps: steps at which to keep a full checkpoint `snap-<step>.pt`.
    init_from, first_step: a checkpoint a fresh run starts from (a branch from its trunk's
      snapshot) and its step, where the run's loss log starts.
    extendable: the run's length is not part of its identity, so a longer one continues it.
    store, row: where to record the run, and its run-row fields (name, kind, config, counts...).
    resume: continuing an unfinished directory needs it (the CLI's --resume); probes always do.
    checkpoint_every: seconds between checkpoints (see the module doc). compile: torch.compile
      the model on CUDA.
    ranks: this process's rank of a data-parallel run (`scalinglab.device.join_ranks`); None
      trains in this process alone.
    what, fix: how errors name the run and what to do about a directory that is not this run's.
    log: live-curve sinks ("tensorboard", "wandb"); None takes `$SCALINGLAB_LOG` (`--log`).
    """

    run_id: str
    identity: dict
    optim: OptimConfig
    lr: float
    schedule: Schedule
    seed: int
    device: str = "cpu"
    dtype: str = "float32"
    threads: int = 1
    eval_steps: Sequence[int] = ()
    snapshot_steps: Sequence[int] = ()
    init_from: Path | None = None
    first_step: int = 0
    extendable: bool = False
    store: Store | None = None
    row: dict = field(default_factory=dict)
    resume: bool = True
    checkpoint_every: float = 300.0
    compile: bool = False
    ranks: Ranks | None = None
    what: str = "run"
    fix: str = "pass another --out"
    log: Sequence[str] | None = None

    @property
    def total_steps(self) -> int:
        return self.schedule.total_steps


@dataclass
class Outcome:
    """How far a run went. status: "done" | "interrupted" (stopped by `stop_at_step`, resumable).
    stopped_early: the task's stop rule ended it. `load_model()` gives the model of the last
    checkpoint (the trained model once done)."""

    run_id: str
    status: str
    out_dir: Path
    steps: int
    points: list[dict]
    stopped_early: bool
    wall_time: float
    model: torch.nn.Module | None = None
    _task: Task | None = None

    def load_model(self) -> torch.nn.Module:
        if self.model is None:
            state = load_checkpoint(self.out_dir / "last.pt")
            self.model = self._task.build_model()
            self.model.load_state_dict(state["model"])
            self.wall_time = self.wall_time or state["extra"].get("wall_time", 0.0)
        self.model.eval()
        return self.model


# --- the loop ------------------------------------------------------------------------------------

def train(task: Task, spec: RunSpec, out_dir: Path | str, *, reporter: Reporter | None = None,
          stop_at_step: int | None = None, on_step: Callable[[int, float], None] | None = None) -> Outcome:
    """Train (or resume, or load when finished) one run in `out_dir`.

    stop_at_step ends this call early with status "interrupted" (for tests and tooling);
    on_step(step, loss) is called after every update. Raises `Diverged`, `Interrupted`,
    `RunBusy` (another process trains this directory) and `UserError` (a directory holding
    another run, or an unfinished one without `resume`).
    """
    out_dir = Path(out_dir)
    ranks = spec.ranks
    if ranks is not None and not task.data_parallel:
        raise UserError(f"this {spec.what} cannot train data-parallel; run it in one process")
    with ExitStack() as held:
        def claim() -> None:
            claim_directory(out_dir, spec.identity, resume=spec.resume, what=spec.what, fix=spec.fix)
            held.enter_context(exclusive(out_dir))

        if ranks is None:
            claim()
        else:
            ranks.lead_then_follow(claim)  # rank 0 claims and locks; the others learn whether it could
        held.enter_context(keep_torch_threads())
        diverged = read_marker(out_dir, "DIVERGED")
        if diverged is not None:
            raise Diverged(spec.run_id, diverged["step"], float(diverged["loss"]))
        done = read_marker(out_dir, "DONE")
        if done is not None:
            points = read_metrics(out_dir, upto=done["step"])
            stopped = bool(done.get("stopped_early"))
            if not (spec.extendable and done["step"] < spec.total_steps and not task.should_stop(points)):
                if spec.store is not None and (spec.store.get_run(spec.run_id) or {}).get("status") != "done":
                    spec.store.upsert_run(spec.run_id, status="done")  # e.g. a store rebuilt from the runs
                return Outcome(spec.run_id, "done", out_dir, done["step"], points, stopped,
                               done.get("wall_time", 0.0), _task=task)
            if ranks is None or ranks.lead:
                (out_dir / "DONE").unlink()  # more steps were asked for: continue from the last checkpoint
        placement = place(spec.device, spec.dtype, spec.threads, ranks)
        task.setup(placement)
        return _Loop(task, spec, placement, out_dir, reporter or Reporter()).run(stop_at_step, on_step)


class _Loop:
    """One call's training: build or resume, step, evaluate, checkpoint, end."""

    def __init__(self, task: Task, spec: RunSpec, placement: Placement, out_dir: Path, reporter: Reporter) -> None:
        self.task, self.spec, self.placement, self.out_dir = task, spec, placement, out_dir
        self.ranks = spec.ranks
        self.lead = self.ranks is None or self.ranks.lead  # the process that evaluates and writes
        self.reporter = reporter if self.lead else Reporter()
        self.store = spec.store if self.lead else None
        self.device = placement.device
        self.last = out_dir / "last.pt"

        torch.manual_seed(spec.seed)
        self.model = task.build_model().to(self.device)
        # room for a checkpoint beside the last one (atomic writes) and the snapshots to come
        params = sum(p.numel() for p in self.model.parameters())
        check_disk((2 + len(spec.snapshot_steps)) * (12.0 * params + 2**16), out_dir, f"run {spec.run_id}")
        self.optimizer = adamw(self.model, lr=spec.lr, weight_decay=spec.optim.weight_decay,
                               betas=(spec.optim.beta1, spec.optim.beta2), eps=spec.optim.eps,
                               decay=spec.optim.decay)
        self.step, self.wall, self.window = 0, 0.0, (0.0, 0)
        start = self.last if self.last.exists() else spec.init_from
        if start is not None:
            state = load_checkpoint(start)
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            set_rng_state(state["rng"])
            self.step = state["step"]
            if start == self.last:
                self.wall = state["extra"].get("wall_time", 0.0)
                self.window = tuple(state["extra"].get("window", (0.0, 0)))
                task.load_state_dict(state["extra"])
        self.points = read_metrics(out_dir, upto=self.step)
        if self.lead:
            atomic_write_text(out_dir / "metrics.jsonl", "".join(json.dumps(p) + "\n" for p in self.points))
        self.unwritten: list[dict] = []  # evaluations not yet in metrics.jsonl and the store
        self.loss_log = _LossLog(out_dir / "train_loss.f32", keep=self.step - spec.first_step) if self.lead else _NoLog()
        self.stop_agreed = False  # data-parallel: any rank's stop request, as the last update's all-reduce carried it
        compiled = spec.compile and self.device.type == "cuda"
        self.run_model = torch.compile(self.model) if compiled else self.model
        self.stopped_early = False
        self.sinks: Sinks | None = None  # opened by run()
        if self.store is not None:
            self.store.upsert_run(spec.run_id, status="running", device=placement.describe(),
                                  dtype=str(placement.dtype).removeprefix("torch."), versions=versions(),
                                  out_dir=str(out_dir.resolve()), seed=spec.seed, **spec.row)

    # -- the steps --

    def run(self, stop_at_step: int | None, on_step: Callable[[int, float], None] | None) -> Outcome:
        spec = self.spec
        evals = sorted({s for s in spec.eval_steps if s > self.step} | {spec.total_steps})
        if 0 in spec.eval_steps and self.step == 0 and not self.points:
            self._evaluate(0.0)  # the untrained model: the start of every curve
        # a run whose stop rule fired just before a crash took its DONE marker stops again here
        if self.points and self.points[-1]["step"] == self.step < spec.total_steps and self.task.should_stop(self.points):
            self.stopped_early = True
        snapshots = set(spec.snapshot_steps)
        end = spec.total_steps if stop_at_step is None else min(spec.total_steps, stop_at_step)
        last_save = time.monotonic()
        self.model.train()
        try:
            log = requested() if spec.log is None else tuple(spec.log)
            if log and self.lead:
                self.sinks = Sinks(log, self.out_dir, run_id=spec.run_id, name=spec.row.get("name"),
                                   group=spec.row.get("group_name"), config=spec.identity)
            self.reporter.start(spec.total_steps, self.step)
            with stop_requests() as stop:
                while self.step < end and not self.stopped_early:
                    lr = spec.lr * spec.schedule.multiplier(self.step)
                    loss = self._update(lr, stop)
                    if on_step:
                        on_step(self.step, loss)
                    evaluated = bool(evals) and self.step >= evals[0]
                    if evaluated:
                        while evals and evals[0] <= self.step:
                            evals.pop(0)
                        self._evaluate(lr)
                        self.stopped_early = self.step < spec.total_steps and self.task.should_stop(self.points)
                        if self.ranks is not None:  # rank 0 alone evaluated: its rule decides
                            self.stopped_early = self.ranks.from_lead(self.stopped_early)
                    if self.step in snapshots:
                        self._save(self.out_dir / f"snap-{self.step}.pt", "snapshot")
                    gap = EVAL_CHECKPOINT_GAP if evaluated else spec.checkpoint_every
                    asked = stop["stop"] if self.ranks is None else self.stop_agreed
                    if time.monotonic() - last_save >= gap or asked:
                        self._save(self.last)
                        last_save = time.monotonic()
                    if asked and not self.stopped_early:
                        self._set_status("interrupted", f"stopped at step {self.step}")
                        if self.ranks is not None:  # the others wait for rank 0's checkpoint, then all exit
                            self.ranks.sync()
                        raise Interrupted(spec.run_id, self.step, self.out_dir)
            if self.step < spec.total_steps and not self.stopped_early:  # stop_at_step
                self._save(self.last)
                self._set_status("interrupted", f"stopped at step {self.step}")
                return self._outcome("interrupted")
            if not self.points or self.points[-1]["step"] != self.step:  # resumed exactly at its end
                self._evaluate(spec.schedule.multiplier(self.step - 1) * spec.lr if self.step else 0.0)
            sha = self._save(self.last, "checkpoint")
        finally:
            self.reporter.close()
            self.loss_log.close()
            if self.sinks is not None:
                self.sinks.close()
        # the store first: a kill between the two leaves a run that a rerun finishes in no steps
        self._set_status("done", "stopped early" if self.stopped_early else None)
        if self.lead:
            write_marker(self.out_dir, "DONE", {"step": self.step, "sha256": sha,
                                                "stopped_early": self.stopped_early, "wall_time": self.wall})
        return self._outcome("done")

    def _update(self, lr: float, stop: dict) -> float:
        """One update; returns the batch loss before it. A NaN/inf loss is recorded and raised
        before the weights change, so the last checkpoint and the weights stay as they were."""
        t0 = time.perf_counter()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with autocast(self.placement):
            loss = self.task.loss(self.run_model, self.step)
        if self.ranks is None:
            value = float(loss.detach())
            if not math.isfinite(value):
                self._diverge(value)
            apply_update(self.model, self.optimizer, loss, self.spec.optim.grad_clip, self.task.after_backward)
        else:
            value = self._update_together(loss, stop)
        self.step += 1
        seconds = time.perf_counter() - t0
        self.wall += seconds
        self.loss_log.append(value)
        self.window = (self.window[0] + value, self.window[1] + 1)
        self.reporter.step(self.step, value, seconds)
        return value

    def _update_together(self, loss: torch.Tensor, stop: dict) -> float:
        """The data-parallel update: backward through this rank's share of the batch, then one
        all-reduce of the gradients, the loss and this rank's stop request; every rank then holds
        the whole batch's mean gradient and loss (a NaN on any rank is seen by all, before the
        weights change) and agrees whether to stop after this step."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        value, self.stop_agreed = self.ranks.average(self.model, loss, stop["stop"])
        if not math.isfinite(value):
            self._diverge(value)
        finish_update(self.model, self.optimizer, self.spec.optim.grad_clip, self.task.after_backward)
        return value

    def _evaluate(self, lr: float) -> None:
        if not self.lead:  # rank 0 evaluates for all
            return
        total, count = self.window
        ctx = EvalContext(step=self.step, lr=lr, wall_time=self.wall, batch_loss=total / count if count else None)
        self.model.eval()
        with torch.no_grad():
            point = self.task.evaluate(self.model, ctx)
        self.model.train()
        self.window = (0.0, 0)
        self.points.append(point)
        self.unwritten.append(point)
        self.reporter.point(point)

    # -- what is kept --

    def _save(self, path: Path, artifact: str | None = None) -> str:
        if not self.lead:  # rank 0 writes for all
            return ""
        self.loss_log.flush()  # the loss log must never be shorter than a checkpoint's step
        sha = save_checkpoint(path, model=self.model, optimizer=self.optimizer, step=self.step,
                              config=self.spec.identity, tokenizer=self.task.tokenizer,
                              extra={"wall_time": self.wall, "window": self.window, **self.task.state_dict()})
        self._write_points()
        if artifact and self.store is not None:
            self.store.add_artifact(self.spec.run_id, artifact, path, sha, self.step)
        return sha

    def _write_points(self) -> None:
        if not self.unwritten:
            return
        with disk_errors(self.out_dir / "metrics.jsonl"), open(self.out_dir / "metrics.jsonl", "a") as fh:
            fh.write("".join(json.dumps(p) + "\n" for p in self.unwritten))
        for point in self.unwritten:
            row = self.task.store_point(point) if self.store is not None or self.sinks is not None else None
            if self.store is not None and row is not None:
                self.store.add_point(self.spec.run_id, **row)
            if self.sinks is not None:
                self.sinks.write(int(point["step"]), scalars(row if row is not None else point))
        if self.sinks is not None:
            self.sinks.flush()
        self.unwritten.clear()

    def _set_status(self, status: str, message: str | None) -> None:
        if self.store is not None:
            self.store.upsert_run(self.spec.run_id, status=status, message=message)

    def _diverge(self, loss: float) -> None:
        if not self.lead:
            raise Diverged(self.spec.run_id, self.step, loss)
        self.loss_log.flush()
        self._write_points()
        write_marker(self.out_dir, "DIVERGED", {"step": self.step, "loss": str(loss)})
        if self.store is not None:
            self.store.upsert_run(self.spec.run_id, status="diverged", diverged_step=self.step,
                                  message=f"loss {loss} at step {self.step}")
        raise Diverged(self.spec.run_id, self.step, loss)

    def _outcome(self, status: str) -> Outcome:
        self.model.eval()
        return Outcome(self.spec.run_id, status, self.out_dir, self.step, self.points, self.stopped_early,
                       self.wall, model=self.model, _task=self.task)


# --- helpers -------------------------------------------------------------------------------------

def apply_update(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor, grad_clip: float,
                 after_backward: Callable[[torch.nn.Module], None] | None = None) -> None:
    """Backward, the task's gradient hook, clipping (0: off) and the optimizer step: the update
    of every run (and of the throughput probes that time it)."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    finish_update(model, optimizer, grad_clip, after_backward)


def finish_update(model: torch.nn.Module, optimizer: torch.optim.Optimizer, grad_clip: float,
                  after_backward: Callable[[torch.nn.Module], None] | None = None) -> None:
    """The update once the gradients are in: the task's gradient hook, clipping, the step."""
    if after_backward is not None:
        after_backward(model)
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()


def autocast(placement: Placement):
    """bf16 autocast where the placement asks for it (CUDA); nothing on CPU."""
    if placement.autocast:
        return torch.autocast(device_type=placement.device.type, dtype=placement.dtype)
    return nullcontext()


@contextmanager
def keep_torch_threads() -> Iterator[None]:
    """Restore torch's thread count on leaving: training pins it (one thread per worker), which
    must not outlive the call in a caller's process (a notebook, a test)."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def read_metrics(out_dir: Path | str, upto: int | None = None) -> list[dict]:
    """The evaluation lines of a run directory (up to step `upto`). A line torn by a kill is
    skipped; a directory from before the one engine is read from its history.jsonl."""
    out_dir = Path(out_dir)
    path = out_dir / "metrics.jsonl"
    if not path.exists():
        path = out_dir / "history.jsonl"  # a resumed run rewrites it as metrics.jsonl
    if not path.exists():
        return []
    points = []
    for line in path.read_text().splitlines():
        try:
            point = json.loads(line)
        except json.JSONDecodeError:
            continue
        point.setdefault("step", point.get("epoch", 0))  # grokking lines once named the step "epoch" only
        if upto is None or point["step"] <= upto:
            points.append(point)
    return points


def every(interval: int, total_steps: int) -> list[int]:
    """Evaluation steps every `interval` updates (the last step is always evaluated)."""
    return list(range(interval, total_steps + 1, interval))


class _LossLog:
    """Append-only float32 log of per-step training losses, cut back to a checkpoint on resume.
    Steps it never saw (a run folder from before every run kept one) read as NaN."""

    def __init__(self, path: Path, keep: int) -> None:
        self.path = path
        self._fh = open(path, "r+b" if path.exists() else "w+b")
        known = min(keep, self._fh.seek(0, 2) // 4)
        self._fh.truncate(known * 4)
        self._fh.seek(known * 4)
        self._fh.write(np.full(keep - known, np.nan, dtype=np.float32).tobytes())
        self._buffer: list[float] = []
        self._flushed = time.monotonic()

    def append(self, value: float) -> None:
        self._buffer.append(value)
        # flush about once a second too: a study's parent reads progress from the file size
        if len(self._buffer) >= 4096 or (len(self._buffer) % 16 == 0 and time.monotonic() - self._flushed > 1.0):
            self.flush()

    def flush(self) -> None:
        with disk_errors(self.path):
            if self._buffer:
                self._fh.write(np.asarray(self._buffer, dtype=np.float32).tobytes())
                self._buffer.clear()
            self._fh.flush()
        self._flushed = time.monotonic()

    def close(self) -> None:
        self.flush()
        self._fh.close()


class _NoLog:
    """The loss log of a rank that writes nothing (data-parallel ranks other than 0)."""

    def append(self, value: float) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


def read_loss_log(out_dir: Path | str) -> np.ndarray:
    """Per-step training losses (nats/token, before each update) of a run."""
    path = Path(out_dir) / "train_loss.f32"
    return np.fromfile(path, dtype=np.float32) if path.exists() else np.zeros(0, dtype=np.float32)


