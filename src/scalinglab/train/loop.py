"""The training loop: one run, resumable, recorded in its directory and the results store.

A run directory holds

    config.json       the resolved config (what `--resume` compares)
    last.pt           the latest checkpoint (atomic)
    snap-<step>.pt    kept snapshots (a trunk's branch points)
    train_loss.f32    the loss of every training batch before its update (float32 per step):
                      the prequential code length of the run is their sum
    metrics.jsonl     one line per evaluation point
    DONE / DIVERGED   markers of how the run ended

Runs are identified by a hash of their resolved config, so starting the same run twice finds
the same directory and store row. Ctrl-C (or SIGTERM) finishes the current step, writes a
checkpoint and stops; `resume=True` continues from it and ends bit-identical (on CPU) to a run
that was never stopped.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from scalinglab.config import RunConfig, config_hash, resolve_model
from scalinglab.corpus.prepare import PreparedCorpus
from scalinglab.device import Placement, place, resolved_precision
from scalinglab.errors import UserError
from scalinglab.model import GPT, PARAM_CONVENTION, ModelConfig, count_params, flops_per_token, loss_fn
from scalinglab.store import Store
from scalinglab.train import hparams
from scalinglab.train.checkpoint import load_checkpoint, save_checkpoint, set_rng_state
from scalinglab.train.optim import adamw
from scalinglab.train.rundir import (
    claim_directory,
    exclusive,
    read_marker,
    stop_requests,
    versions,
    write_marker,
)
from scalinglab.train.data import BatchSampler, fixed_windows
from scalinglab.train.schedules import Schedule


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


@dataclass
class RunPlan:
    """A run with every number resolved: what to build, how long, where to evaluate."""

    config: RunConfig
    model: ModelConfig
    batch_size: int
    seq_len: int
    lr: float
    schedule: Schedule
    eval_steps: list[int]
    kind: str = "train"  # train | trunk | branch | cosine | probe:...
    name: str | None = None
    group: str | None = None
    parent_run: str | None = None
    init_from: str | None = None  # checkpoint a branch starts from
    snapshot_steps: list[int] = field(default_factory=list)
    max_unique_tokens: int | None = None  # train on a prefix of the train split only
    corpus_key: str | None = None  # the prepared corpus (content, tokenizer, split) it trains on
    extra: dict = field(default_factory=dict)  # recorded with the run (e.g. a study's milestone)

    @property
    def total_steps(self) -> int:
        return self.schedule.total_steps

    @property
    def batch_tokens(self) -> int:
        return self.batch_size * self.seq_len

    @property
    def extendable(self) -> bool:
        """A trunk (constant LR after warmup) is the same run whatever its length, so a longer
        study continues it instead of starting again."""
        return self.kind == "trunk" and self.schedule.kind == "constant"

    def resolved(self) -> dict:
        """The resolved config: what identifies the run and what `--resume` compares."""
        # Settings that do not change the trained weights stay out of the run's identity.
        # A run is identified by what it trains on, how (the schedule actually used, the
        # precision) and what it records (its evaluations); bookkeeping settings (checkpoint
        # cadence, threads, compilation) and inputs to rules (tpp, the schedule's settings) are not.
        not_identity = ("tokens", "tpp", "lr", "batch_size", "warmup", "checkpoint_every", "device", "dtype",
                        "threads", "compile", "eval_points", "eval_tokens", "schedule", "cooldown_frac",
                        "cooldown_shape", "min_lr_frac")
        train = {k: v for k, v in self.config.to_dict()["train"].items() if k not in not_identity}
        schedule = asdict(self.schedule)
        device_type, dtype = resolved_precision(self.config.train.device, self.config.train.dtype)
        train |= {"batch_size": self.batch_size, "lr": self.lr, "schedule": schedule,
                  "eval_tokens": self.config.train.eval_tokens, "device": device_type, "dtype": dtype}
        if self.extendable:
            del schedule["total_steps"]
        else:
            train |= {"total_steps": self.total_steps, "tokens": self.total_steps * self.batch_tokens,
                      "eval_steps": self.eval_steps}
        return {
            "corpus": self.config.to_dict()["corpus"],
            "model": self.model.to_dict(),
            "train": train,
            "kind": self.kind,
            "parent_run": self.parent_run,
            "init_from_step": self.extra.get("init_from_step"),
            "max_unique_tokens": self.max_unique_tokens,
            "corpus_key": self.corpus_key,
        }

    @property
    def run_id(self) -> str:
        return f"{self.kind.replace(':', '-')}-{config_hash(self.resolved())}"


def plan_run(cfg: RunConfig, corpus: PreparedCorpus, *, kind: str = "train") -> RunPlan:
    """Resolve a user's config into a plan: model shape, budget, batch, LR, schedule, evals."""
    cfg.validate()
    model = resolve_model(cfg.model, corpus.vocab_size)
    n = count_params(model).non_embedding
    t = cfg.train
    tokens = t.tokens if t.tokens is not None else t.tpp * n
    batch_size = t.batch_size or hparams.default_batch_size(n, t.seq_len)
    total_steps = max(1, math.ceil(tokens / (batch_size * t.seq_len)))
    warmup = t.warmup if t.warmup is not None else hparams.default_warmup(total_steps)
    warmup = min(warmup, total_steps)
    decay_start = None
    if t.schedule == "wsd":
        decay_start = total_steps - max(1, round(t.cooldown_frac * total_steps))
        decay_start = max(decay_start, warmup)
    schedule = Schedule(kind=t.schedule, total_steps=total_steps, warmup_steps=warmup, decay_start=decay_start,
                        shape=t.cooldown_shape, min_lr_frac=t.min_lr_frac)
    return RunPlan(config=cfg, model=model, batch_size=batch_size, seq_len=t.seq_len,
                   lr=t.lr or hparams.default_lr(model.d_model), schedule=schedule,
                   eval_steps=log_spaced_steps(total_steps, t.eval_points), kind=kind, name=cfg.name,
                   corpus_key=corpus.key)


def log_spaced_steps(total_steps: int, count: int, first: int | None = None) -> list[int]:
    """About `count` distinct steps, log-spaced, ending at `total_steps`."""
    first = first or max(1, total_steps // 100)
    if count <= 1 or total_steps <= first:
        return [total_steps]
    steps = np.unique(np.round(np.geomspace(first, total_steps, count)).astype(int))
    return [int(s) for s in steps]


# --- evaluation ------------------------------------------------------------------------------

@torch.no_grad()
def evaluate(model: torch.nn.Module, windows: torch.Tensor, token_bytes: torch.Tensor, placement: Placement,
             batch_size: int = 32) -> tuple[float, float]:
    """(mean nats/token, bits/byte) of `model` on fixed windows (n, T+1)."""
    was_training = model.training
    model.eval()
    total_nats, total_tokens, total_bytes = 0.0, 0, 0
    for i in range(0, len(windows), batch_size):
        rows = windows[i : i + batch_size].to(placement.device)
        x, y = rows[:, :-1], rows[:, 1:]
        with _autocast(placement):
            logits = model(x)
        nats = torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum"
        )
        total_nats += float(nats)
        total_tokens += y.numel()
        total_bytes += int(token_bytes[y.cpu()].sum())
    model.train(was_training)
    return total_nats / total_tokens, total_nats / math.log(2) / max(total_bytes, 1)


def _autocast(placement: Placement):
    if placement.autocast:
        return torch.autocast(device_type=placement.device.type, dtype=placement.dtype)
    return nullcontext()


# --- signals ---------------------------------------------------------------------------------

# --- the run ---------------------------------------------------------------------------------

class Reporter:
    """Receives progress from the loop. The default does nothing; the CLI shows a progress bar."""

    def start(self, plan: RunPlan, step: int) -> None: ...
    def step(self, step: int, tokens: int, loss: float, tokens_per_s: float) -> None: ...
    def point(self, record: dict) -> None: ...
    def close(self) -> None: ...


@dataclass
class RunResult:
    run_id: str
    status: str  # done | diverged | interrupted
    out_dir: Path
    steps: int
    points: list[dict]


def train_run(plan: RunPlan, corpus: PreparedCorpus, store: Store, out_dir: Path, *, resume: bool = False,
              reporter: Reporter | None = None, stop_at_step: int | None = None,
              on_step: Callable[[int], None] | None = None) -> RunResult:
    """Train one run to the end of its plan (or to `stop_at_step`, for tests and tooling).

    Raises `Diverged` after recording a NaN/inf loss, `Interrupted` after checkpointing on a
    signal, `UserError` when `out_dir` holds a different run or a run without `resume`.
    """
    reporter = reporter or Reporter()
    out_dir = Path(out_dir)
    if plan.corpus_key is not None and plan.corpus_key != corpus.key:
        raise UserError(f"this run was planned on corpus {plan.corpus_key} but is given {corpus.key}; plan it again")
    resolved = plan.resolved()
    run_id = plan.run_id
    claim_directory(out_dir, resolved, resume=resume)
    with exclusive(out_dir):
        done = read_marker(out_dir, "DONE")
        if done is not None:
            if done["step"] >= plan.total_steps or not plan.extendable:
                if (store.get_run(run_id) or {}).get("status") != "done":
                    store.upsert_run(run_id, status="done", message=None)  # e.g. a store rebuilt from runs
                return RunResult(run_id, "done", out_dir, done["step"], store.points(run_id))
            (out_dir / "DONE").unlink()  # a longer trunk was asked for: continue from the last checkpoint
        diverged = read_marker(out_dir, "DIVERGED")
        if diverged is not None:
            raise Diverged(run_id, diverged["step"], float(diverged["loss"]))
        return _train(plan, corpus, store, out_dir, resolved, run_id, reporter, stop_at_step, on_step)


def _train(plan: RunPlan, corpus: PreparedCorpus, store: Store, out_dir: Path, resolved: dict, run_id: str,
           reporter: Reporter, stop_at_step: int | None, on_step: Callable[[int], None] | None) -> RunResult:
    t = plan.config.train
    placement = place(t.device, t.dtype, t.threads)
    counts = count_params(plan.model)
    fpt = flops_per_token(plan.model, plan.seq_len)
    sampler = BatchSampler(corpus.tokens("train"), plan.seq_len, plan.batch_size, t.seed, plan.max_unique_tokens)
    store.upsert_run(
        run_id, name=plan.name or run_id, kind=plan.kind, status="running", parent_run=plan.parent_run,
        group_name=plan.group, config={**resolved, "extra": plan.extra}, n_total=counts.total,
        n_embedding=counts.embedding, n_nonembedding=counts.non_embedding, param_convention=PARAM_CONVENTION,
        flops_per_token=fpt, corpus_key=corpus.key, corpus_hash=corpus.content_hash, tokenizer=corpus.tokenizer_name,
        unique_train_tokens=sampler.unique_tokens, seed=t.seed, device=placement.describe(),
        dtype=str(placement.dtype).removeprefix("torch."), versions=versions(), out_dir=str(out_dir.resolve()),
    )

    torch.manual_seed(t.seed)
    model = GPT(plan.model).to(placement.device)
    optimizer = make_optimizer(model, plan, placement)
    step, wall, window = 0, 0.0, (0.0, 0)
    last = out_dir / "last.pt"
    start = last if last.exists() else (Path(plan.init_from) if plan.init_from else None)
    if start is not None:
        state = load_checkpoint(start)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        step, wall = state["step"], state["extra"].get("wall_time", 0.0)
        if start == last:
            window = tuple(state["extra"].get("window", (0.0, 0)))
    first_step = int(plan.extra.get("init_from_step") or 0)  # a branch logs from its trunk step on
    loss_log = _LossLog(out_dir / "train_loss.f32", keep=step - first_step)
    token_bytes = torch.as_tensor(corpus.token_bytes)
    val_windows = fixed_windows(corpus.tokens("val"), plan.seq_len, t.eval_tokens)
    # the train subset: windows the run trains on first, so the gap compares seen with unseen text
    train_windows = sampler.first_windows(val_windows.shape[0])
    run_model = torch.compile(model) if (t.compile and placement.device.type == "cuda") else model
    pending_evals = [s for s in plan.eval_steps if s > step]
    snapshot_steps = set(plan.snapshot_steps)
    end = plan.total_steps if stop_at_step is None else min(plan.total_steps, stop_at_step)
    last_ckpt_time = time.monotonic()
    window_loss, window_steps = window  # mean training-batch loss since the last evaluation

    tokenizer_info = {"spec": corpus.meta["tokenizer"], "json": corpus.tokenizer_json()}

    def save(path: Path, artifact_kind: str | None = None) -> str:
        loss_log.flush()  # the loss log must never be shorter than a checkpoint's step
        sha = save_checkpoint(path, model=model, optimizer=optimizer, step=step, config=resolved,
                              extra={"wall_time": wall, "window": (window_loss, window_steps)},
                              tokenizer=tokenizer_info)
        if artifact_kind:
            store.add_artifact(run_id, artifact_kind, path, sha, step)
        return sha

    reporter.start(plan, step)
    try:
        with stop_requests() as stop:
            while step < end:
                t0 = time.perf_counter()
                lr = plan.lr * plan.schedule.multiplier(step)
                loss_value = train_step(run_model, optimizer, *sampler.batch(step), lr, t.grad_clip, placement)
                if not math.isfinite(loss_value):
                    _record_divergence(store, out_dir, run_id, step, loss_value, loss_log)
                    raise Diverged(run_id, step, loss_value)
                step += 1
                dt = time.perf_counter() - t0
                wall += dt
                loss_log.append(loss_value)
                window_loss, window_steps = window_loss + loss_value, window_steps + 1
                reporter.step(step, step * plan.batch_tokens, loss_value, plan.batch_tokens / max(dt, 1e-9))
                if on_step:
                    on_step(step)

                if step in snapshot_steps:
                    save(out_dir / f"snap-{step}.pt", "snapshot")
                if pending_evals and step >= pending_evals[0]:
                    pending_evals.pop(0)
                    record = _evaluate_point(model, plan, placement, sampler, val_windows, train_windows, token_bytes,
                                             step, wall, fpt, window_loss / window_steps, lr)
                    window_loss, window_steps = 0.0, 0
                    store.add_point(run_id, **record)
                    with open(out_dir / "metrics.jsonl", "a") as fh:
                        fh.write(json.dumps({k: v for k, v in record.items()}) + "\n")
                    reporter.point(record)
                    save(last)
                    last_ckpt_time = time.monotonic()
                elif time.monotonic() - last_ckpt_time > t.checkpoint_every:
                    save(last)
                    last_ckpt_time = time.monotonic()
                if stop["stop"]:
                    save(last)
                    store.upsert_run(run_id, status="interrupted", message=f"stopped at step {step}")
                    raise Interrupted(run_id, step, out_dir)

        if step < plan.total_steps:  # stop_at_step: leave a resumable checkpoint behind
            save(last)
            store.upsert_run(run_id, status="interrupted", message=f"stopped at step {step}")
            return RunResult(run_id, "interrupted", out_dir, step, store.points(run_id))
        sha = save(last, "checkpoint")
    finally:
        reporter.close()
        loss_log.close()

    # the store first: a kill between the two leaves a run that a resume finishes in no steps
    store.upsert_run(run_id, status="done", message=None)
    write_marker(out_dir, "DONE", {"step": step, "sha256": sha})
    return RunResult(run_id, "done", out_dir, step, store.points(run_id))


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, lr: float,
               grad_clip: float, placement: Placement) -> float:
    """One update on batch (x, y); returns the batch loss before the update (nats/token).

    A NaN/inf loss returns before touching the weights, so a diverged run's last checkpoint
    and weights stay as they were.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
    x, y = x.to(placement.device, non_blocking=True), y.to(placement.device, non_blocking=True)
    with _autocast(placement):
        loss = loss_fn(model(x), y)
    loss_value = float(loss.detach())
    if not math.isfinite(loss_value):
        return loss_value
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return loss_value


def _evaluate_point(model, plan: RunPlan, placement, sampler, val_windows, train_windows, token_bytes, step: int,
                    wall: float, fpt: float, batch_loss: float, lr: float) -> dict:
    val_loss, val_bpb = evaluate(model, val_windows, token_bytes, placement)
    train_loss, train_bpb = evaluate(model, train_windows, token_bytes, placement)
    tokens = step * plan.batch_tokens
    return dict(
        step=step, tokens=tokens, flops=tokens * fpt, train_loss=train_loss, val_loss=val_loss,
        val_bpb=val_bpb, train_bpb=train_bpb, epoch=sampler.epochs_at(step), phase=plan.schedule.phase(step - 1),
        lr=lr, wall_time=wall, tokens_per_s=(tokens / wall if wall > 0 else None),
        # share of the train subset the run had trained on (1 once past its first few steps)
        extra={"batch_loss": batch_loss,
               "train_subset_seen": min(1.0, step * plan.batch_size / max(1, len(train_windows)))},
    )


def _record_divergence(store: Store, out_dir: Path, run_id: str, step: int, loss: float, loss_log: "_LossLog") -> None:
    loss_log.flush()
    write_marker(out_dir, "DIVERGED", {"step": step, "loss": str(loss)})
    store.upsert_run(run_id, status="diverged", diverged_step=step, message=f"loss {loss} at step {step}")


def make_optimizer(model: torch.nn.Module, plan: RunPlan, placement: Placement) -> torch.optim.Optimizer:
    t = plan.config.train
    return adamw(model, lr=plan.lr, weight_decay=t.weight_decay, betas=(t.beta1, t.beta2),
                 fused=placement.device.type == "cuda")


class _LossLog:
    """Append-only float32 log of per-step training losses, cut back to a checkpoint on resume."""

    def __init__(self, path: Path, keep: int) -> None:
        self.path = path
        mode = "r+b" if path.exists() else "w+b"
        self._fh = open(path, mode)
        self._fh.truncate(keep * 4)
        self._fh.seek(keep * 4)
        self._buffer: list[float] = []
        self._flushed = time.monotonic()

    def append(self, value: float) -> None:
        self._buffer.append(value)
        # flush about once a second too: a study's parent reads progress from the file size
        if len(self._buffer) >= 4096 or (len(self._buffer) % 16 == 0 and time.monotonic() - self._flushed > 1.0):
            self.flush()

    def flush(self) -> None:
        if self._buffer:
            self._fh.write(np.asarray(self._buffer, dtype=np.float32).tobytes())
            self._buffer.clear()
        self._fh.flush()
        self._flushed = time.monotonic()

    def close(self) -> None:
        self.flush()
        self._fh.close()


def read_loss_log(out_dir: Path) -> np.ndarray:
    """Per-step training losses (nats/token, before each update) of a run."""
    path = Path(out_dir) / "train_loss.f32"
    return np.fromfile(path, dtype=np.float32) if path.exists() else np.zeros(0, dtype=np.float32)
