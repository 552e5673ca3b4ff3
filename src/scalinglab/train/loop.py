"""Runs on a corpus: a user's config resolved into a plan, and the task the engine trains.

`plan_run` turns a `RunConfig` into a `RunPlan` (model shape, batch, LR, schedule, evaluation
steps); `train_run` trains it through the one engine (`scalinglab.train.engine`, which owns
resume, checkpoints, stop requests, divergence, markers and store rows). What is particular to a
corpus run is `CorpusTask`: batches are windows of the train split drawn as a pure function of
the step (`BatchSampler`), the loss is next-token cross-entropy, and an evaluation measures the
fixed val set and a fixed subset of the windows the run trained on first (the train-val gap).

Runs are identified by a hash of their resolved config, so starting the same run twice finds
the same directory and store row.

A run trains in one process or data-parallel over K ranks (`train_run(..., ranks=...)`, under
torchrun): the batch of step s is the same global batch either way, and rank r takes its rows
r*B/K .. (r+1)*B/K - 1. K is not part of the run's identity, so a K-rank run has the run id, the
directory and the store row of the one-process run of the same config, and can be resumed with
any K (to the last bit with the same K; within float rounding otherwise).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from scalinglab.config import RunConfig, config_hash, resolve_model
from scalinglab.corpus.prepare import PreparedCorpus
from scalinglab.device import Placement, Ranks, resolved_precision
from scalinglab.errors import UserError
from scalinglab.model import GPT, PARAM_CONVENTION, ModelConfig, count_params, flops_per_token, loss_fn
from scalinglab.resources import available_memory, check_memory, largest_that_fits, training_memory
from scalinglab.store import Store
from scalinglab.train import engine, hparams
from scalinglab.train.data import BatchSampler, fixed_windows
from scalinglab.train.engine import Diverged, Interrupted, Reporter, read_loss_log  # noqa: F401 - re-exported
from scalinglab.train.optim import adamw
from scalinglab.train.schedules import Schedule


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
    kind: str = "train"  # train | trunk | branch | control-trunk | control-branch | cosine | probe:...
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
        return self.kind in ("trunk", "control-trunk") and self.schedule.kind == "constant"

    def resolved(self) -> dict:
        """The resolved config: what identifies the run and what `--resume` compares."""
        # A run is identified by what it trains on, how (the schedule actually used, the
        # precision) and what it records (its evaluations); bookkeeping settings (checkpoint
        # cadence, threads, compilation) and inputs to rules (tpp, the schedule's settings) are
        # not. The "train" entry keeps the layout it had before the optimizer settings moved to
        # their own section, so existing run folders keep their identities.
        t, o = self.config.train, self.config.optim
        device_type, dtype = resolved_precision(t.device, t.dtype)
        schedule = asdict(self.schedule)
        train = {"seq_len": t.seq_len, "weight_decay": o.weight_decay, "beta1": o.beta1, "beta2": o.beta2,
                 "grad_clip": o.grad_clip, "seed": t.seed, "batch_size": self.batch_size, "lr": self.lr,
                 "schedule": schedule, "eval_tokens": t.eval_tokens, "device": device_type, "dtype": dtype}
        # settings added after the first runs enter the identity only when they differ from
        # what those runs used
        if o.eps != 1e-8:
            train["eps"] = o.eps
        if o.decay != "matrices":
            train["decay"] = o.decay
        if self.extendable:
            del schedule["total_steps"]
        else:
            train |= {"total_steps": self.total_steps, "tokens": self.total_steps * self.batch_tokens,
                      "eval_steps": self.eval_steps}
        corpus = self.config.to_dict()["corpus"]
        for name, default in (("split", "train"), ("max_bytes", None)):  # data-set settings, added later
            if corpus.get(name) == default:
                del corpus[name]
        return {
            "corpus": corpus,
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
    t, o = cfg.train, cfg.optim
    tokens = t.tokens if t.tokens is not None else t.tpp * n
    batch_size = t.batch_size or hparams.default_batch_size(n, t.seq_len)
    total_steps = max(1, math.ceil(tokens / (batch_size * t.seq_len)))
    warmup = o.warmup if o.warmup is not None else hparams.default_warmup(total_steps)
    schedule = o.schedule_for(total_steps, warmup)
    return RunPlan(config=cfg, model=model, batch_size=batch_size, seq_len=t.seq_len,
                   lr=o.lr or hparams.default_lr(model.d_model), schedule=schedule,
                   eval_steps=log_spaced_steps(total_steps, t.eval_points), kind=kind, name=cfg.name,
                   corpus_key=corpus.key)


def log_spaced_steps(total_steps: int, count: int, first: int | None = None) -> list[int]:
    """About `count` distinct steps, log-spaced, ending at `total_steps`."""
    first = first or max(1, total_steps // 100)
    if count <= 1 or total_steps <= first:
        return [total_steps]
    steps = np.unique(np.round(np.geomspace(first, total_steps, count)).astype(int))
    return [int(s) for s in steps]


# --- the task --------------------------------------------------------------------------------

class CorpusTask(engine.Task):
    """A GPT on windows of a corpus's train split; evaluations on the fixed val set and on the
    first windows the run trained on. Data-parallel, each rank trains on a contiguous slice of
    the step's batch."""

    data_parallel = True

    def __init__(self, plan: RunPlan, corpus: PreparedCorpus) -> None:
        t = plan.config.train
        self.plan = plan
        self.sampler = BatchSampler(corpus.tokens("train"), plan.seq_len, plan.batch_size, t.seed,
                                    plan.max_unique_tokens)
        self.token_bytes = torch.as_tensor(corpus.token_bytes)
        self.val_windows = fixed_windows(corpus.tokens("val"), plan.seq_len, t.eval_tokens)
        # the train subset: windows the run trains on first, so the gap compares seen with unseen text
        self.train_windows = self.sampler.first_windows(self.val_windows.shape[0])
        self.fpt = flops_per_token(plan.model, plan.seq_len)
        self.tokenizer = {"spec": corpus.meta["tokenizer"], "json": corpus.tokenizer_json()}
        self.corpus_hash, self.tokenizer_name = corpus.content_hash, corpus.tokenizer_name

    def setup(self, placement: Placement) -> None:
        super().setup(placement)
        share = check_split(self.plan.batch_size, placement.world)
        self.rows = slice(placement.rank * share, (placement.rank + 1) * share)  # this rank's share

    def build_model(self) -> GPT:
        return GPT(self.plan.model)

    def loss(self, model: torch.nn.Module, step: int) -> torch.Tensor:
        x, y = self.sampler.batch(step)
        if self.placement.world > 1:
            x, y = x[self.rows], y[self.rows]
        device = self.placement.device
        return loss_fn(model(x.to(device, non_blocking=True)), y.to(device, non_blocking=True))

    def evaluate(self, model: torch.nn.Module, ctx: engine.EvalContext) -> dict:
        plan = self.plan
        val_loss, val_bpb = evaluate(model, self.val_windows, self.token_bytes, self.placement)
        train_loss, train_bpb = evaluate(model, self.train_windows, self.token_bytes, self.placement)
        tokens = ctx.step * plan.batch_tokens
        return dict(
            step=ctx.step, tokens=tokens, flops=tokens * self.fpt, train_loss=train_loss, val_loss=val_loss,
            val_bpb=val_bpb, train_bpb=train_bpb, epoch=self.sampler.epochs_at(ctx.step),
            phase=plan.schedule.phase(ctx.step - 1), lr=ctx.lr, wall_time=ctx.wall_time,
            tokens_per_s=(tokens / ctx.wall_time if ctx.wall_time > 0 else None),
            # share of the train subset the run had trained on (1 once past its first few steps)
            extra={"batch_loss": ctx.batch_loss,
                   "train_subset_seen": min(1.0, ctx.step * plan.batch_size / max(1, len(self.train_windows)))},
        )


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
        with engine.autocast(placement):
            logits = model(x)
        nats = torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum"
        )
        total_nats += float(nats)
        total_tokens += y.numel()
        total_bytes += int(token_bytes[y.cpu()].sum())
    model.train(was_training)
    return total_nats / total_tokens, total_nats / math.log(2) / max(total_bytes, 1)


# --- the run ---------------------------------------------------------------------------------

@dataclass
class RunResult:
    run_id: str
    status: str  # done | interrupted
    out_dir: Path
    steps: int
    points: list[dict]


def check_split(batch_size: int, world: int) -> int:
    """The sequences per rank when `world` ranks share a global batch of `batch_size`; refuses a
    batch they cannot share equally."""
    if batch_size % world:
        lower, upper = batch_size // world * world, -(-batch_size // world) * world
        choices = " or ".join(str(b) for b in (lower, upper) if b > 0)
        raise UserError(f"a global batch of {batch_size} sequences cannot be split equally over {world} ranks; "
                        f"pass --batch-size {choices}, or another multiple of {world}")
    return batch_size // world


def run_spec(plan: RunPlan, task: CorpusTask, store: Store | None, out_dir: Path, *, resume: bool,
             ranks: Ranks | None = None) -> engine.RunSpec:
    """How the engine runs a corpus plan: its identity, optimizer, evaluations and store row."""
    t = plan.config.train
    counts = count_params(plan.model)
    resolved = plan.resolved()
    row = dict(name=plan.name or plan.run_id, kind=plan.kind, parent_run=plan.parent_run, group_name=plan.group,
               config={**resolved, "extra": plan.extra}, n_total=counts.total, n_embedding=counts.embedding,
               n_nonembedding=counts.non_embedding, param_convention=PARAM_CONVENTION, flops_per_token=task.fpt,
               corpus_key=plan.corpus_key, corpus_hash=task.corpus_hash, tokenizer=task.tokenizer_name,
               unique_train_tokens=task.sampler.unique_tokens)
    return engine.RunSpec(
        run_id=plan.run_id, identity=resolved, optim=plan.config.optim, lr=plan.lr, schedule=plan.schedule,
        seed=t.seed, device=t.device, dtype=t.dtype, threads=t.threads, eval_steps=plan.eval_steps,
        snapshot_steps=plan.snapshot_steps, init_from=Path(plan.init_from) if plan.init_from else None,
        first_step=int(plan.extra.get("init_from_step") or 0), extendable=plan.extendable, store=store, row=row,
        resume=resume, checkpoint_every=t.checkpoint_every, compile=t.compile, ranks=ranks,
    )


def train_run(plan: RunPlan, corpus: PreparedCorpus, store: Store | None, out_dir: Path, *, resume: bool = False,
              reporter: Reporter | None = None, stop_at_step: int | None = None,
              on_step: Callable[[int, float], None] | None = None, ranks: Ranks | None = None) -> RunResult:
    """Train one run to the end of its plan (or to `stop_at_step`, for tests and tooling).

    ranks: this process's rank of a data-parallel run (`scalinglab.device.join_ranks`); rank 0
    records in `store` (the others pass None: they write nothing) and returns the points.

    Raises `Diverged` after recording a NaN/inf loss, `Interrupted` after checkpointing on a
    signal, `UserError` when `out_dir` holds a different run or a run without `resume`.
    """
    out_dir = Path(out_dir)
    if plan.corpus_key is not None and plan.corpus_key != corpus.key:
        raise UserError(f"this run was planned on corpus {plan.corpus_key} but is given {corpus.key}; plan it again")
    world = ranks.world if ranks is not None else 1
    check_split(plan.batch_size, world)
    check_run_memory(plan, ranks=world)
    task = CorpusTask(plan, corpus)
    spec = run_spec(plan, task, store, out_dir, resume=resume, ranks=ranks)
    outcome = engine.train(task, spec, out_dir, reporter=reporter, stop_at_step=stop_at_step, on_step=on_step)
    # the engine's points are the store's (a worker's journal store cannot read them back)
    return RunResult(outcome.run_id, outcome.status, out_dir, outcome.steps, outcome.points)


def check_run_memory(plan: RunPlan, *, ranks: int = 1) -> None:
    """Refuse in one line, before any model is built, a run whose training cannot fit in memory.
    ranks: data-parallel ranks sharing the batch (on CPU they share the machine's memory; on
    CUDA each has its own GPU)."""
    device_type, dtype = resolved_precision(plan.config.train.device, plan.config.train.dtype)
    n = count_params(plan.model).non_embedding
    batch = plan.batch_size // ranks
    estimate = training_memory(plan.model, batch, plan.seq_len, bf16=dtype == "bfloat16")
    available = available_memory("cuda" if device_type == "cuda" else "cpu")
    processes = 1 if device_type == "cuda" else ranks  # on CPU the ranks share the machine's memory
    if estimate.total * processes <= available:
        return  # the hint below searches model shapes (seconds): worth its time only when refusing
    fix = "try " + largest_that_fits(plan.model.vocab_size, plan.seq_len, available / processes,
                                     batch_size=plan.config.train.batch_size, bf16=dtype == "bfloat16")
    label = f"a run of N = {n:,} at batch {plan.batch_size}x{plan.seq_len}" + (f" over {ranks} ranks" if ranks > 1 else "")
    check_memory({label: estimate}, processes=processes, device=device_type, available=available, fix=fix)


def make_optimizer(model: torch.nn.Module, plan: RunPlan) -> torch.optim.Optimizer:
    """The optimizer a plan's run uses (for the throughput probes that time its step)."""
    o = plan.config.optim
    return adamw(model, lr=plan.lr, weight_decay=o.weight_decay, betas=(o.beta1, o.beta2), eps=o.eps, decay=o.decay)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, lr: float,
               grad_clip: float, placement: Placement) -> float:
    """One update on batch (x, y), as the engine makes it; returns the loss before the update.
    For the throughput probes, which time the step without a run around it."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    x, y = x.to(placement.device, non_blocking=True), y.to(placement.device, non_blocking=True)
    with engine.autocast(placement):
        loss = loss_fn(model(x), y)
    engine.apply_update(model, optimizer, loss, grad_clip)
    return float(loss.detach())
