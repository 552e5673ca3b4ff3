"""Shared machinery of the probes: train a small GPT on a FIXED set of token sequences, score
sequences in bits, keep probe runs and results in the store, and run many small fits in parallel.

The probes (capacity, memorisation, facts vs rules, grokking, repetition) all train on a small
fixed data set many times over, so this trainer differs from `scalinglab.train` on purpose: the
data is a tensor of sequences `(n, L)` rather than a corpus split, batches are whole sequences
(full batch or minibatches drawn per epoch), and an evaluation scores every training sequence.

The API, kept small and stable:

    FitRecipe            how to train (steps, LR, schedule, batch, eval cadence, seed)
    fit_sequences(...)   train one model, resumable; returns a SequenceFit (model + eval history)
    sequence_bits(...)   per-sequence negative log-likelihood in bits (n,) of any model
    ProbeRecord          where and under which name a fit is recorded in the results store
    probe_kind(name)     "probe:<name>", the run kind and the result kind of a probe
    put_probe_result / probe_results   analysis outputs of a probe in the store
    read_history(path)   the evaluation lines of a fit directory's history.jsonl
    run_parallel(...)    map a picklable function over jobs on worker processes, one torch
                         thread each, with a progress bar

Prediction convention: a sequence of L tokens is L-1 predictions, token t+1 from tokens 1..t.
The first token has no context and is never scored. `loss_mask` (shape (L-1,) or (n, L-1))
restricts training loss and scoring to some predicted positions (e.g. only an answer token).

A fit is a directory holding `config.json` (what identifies it), `last.pt` (the latest
checkpoint, atomic), `history.jsonl` (one line per evaluation) and `DONE` once finished (or
`DIVERGED` after a NaN/inf loss). The run-directory mechanics are the main loop's
(`scalinglab.train.rundir`): a folder holding another fit is refused, and a lock keeps two
processes from training one fit at once. Calling `fit_sequences` again on a finished directory
loads the model and returns at once; on an unfinished one it resumes from the checkpoint and
ends bit-identical (on CPU) to an uninterrupted fit; on a diverged one it raises `Diverged`.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from scalinglab.config import config_hash
from scalinglab.errors import UserError
from scalinglab.fsutil import atomic_write_text
from scalinglab.model import GPT, PARAM_CONVENTION, ModelConfig, count_params, flops_per_token
from scalinglab.store import Store, open_store
from scalinglab.train.checkpoint import load_checkpoint, save_checkpoint, set_rng_state
from scalinglab.train.loop import Diverged, Interrupted
from scalinglab.train.optim import adamw
from scalinglab.train.rundir import claim_directory, exclusive, read_marker, stop_requests, versions, write_marker
from scalinglab.train.schedules import Schedule

LN2 = math.log(2.0)


def probe_kind(probe: str) -> str:
    """The run kind and result kind of a probe: "probe:<name>"."""
    return f"probe:{probe}"


# --- the recipe --------------------------------------------------------------------------------

@dataclass(frozen=True)
class FitRecipe:
    """How to train a GPT on a fixed set of sequences.

    steps: optimizer updates (the most; `stop_when` may end a fit earlier).
    lr, warmup: peak learning rate and linear warmup steps.
    schedule: "constant" | "cosine" | "wsd" (see `scalinglab.train.schedules`); cooldown_frac is
      the wsd cooldown share, min_lr_frac the cosine floor.
    batch_size: sequences per update; None or >= n trains full batch. Minibatches visit every
      sequence once per epoch in an order drawn from (seed, epoch).
    weight_decay: AdamW decay on matrices (norm gains and the embedding are never decayed).
    beta1, beta2, eps, grad_clip: AdamW and gradient-norm clipping (0: off).
    eval_every: steps between evaluations of the whole training set (the last step always
      evaluated).
    seed: initialisation and batch order.
    device, dtype, threads: where to train (see `scalinglab.device.place`).
    checkpoint_every: seconds between checkpoints (also written at every evaluation).
    """

    steps: int
    lr: float = 3e-3
    warmup: int = 20
    schedule: str = "constant"
    cooldown_frac: float = 0.2
    min_lr_frac: float = 0.1
    batch_size: int | None = None
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-8
    grad_clip: float = 1.0
    eval_every: int = 100
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    threads: int = 1
    checkpoint_every: float = 60.0

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or self.steps <= 0:
            raise UserError(f"steps must be a positive integer, got {self.steps!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UserError(f"lr must be a positive number, got {self.lr!r}")
        if self.warmup < 0:
            raise UserError(f"warmup must be >= 0 steps, got {self.warmup}")
        if self.schedule not in ("constant", "cosine", "wsd"):
            raise UserError(f"unknown schedule {self.schedule!r}; choose constant, cosine or wsd")
        if self.batch_size is not None and self.batch_size <= 0:
            raise UserError(f"batch_size must be a positive integer, got {self.batch_size}")
        if self.eval_every <= 0:
            raise UserError(f"eval_every must be a positive integer, got {self.eval_every}")

    def schedule_for(self) -> Schedule:
        warmup = min(self.warmup, self.steps)
        decay_start = None
        if self.schedule == "wsd":
            decay_start = max(warmup, self.steps - max(1, round(self.cooldown_frac * self.steps)))
        return Schedule(kind=self.schedule, total_steps=self.steps, warmup_steps=warmup, decay_start=decay_start,
                        min_lr_frac=self.min_lr_frac)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SequenceFit:
    """A finished (or stopped-early) fit. `points` holds one dict per evaluation with `step`,
    `train_loss` (nats per scored token), `train_bits` (total bits over the training set),
    `lr`, `wall_time` and whatever `evaluate` added."""

    model: GPT
    run_id: str
    out_dir: Path
    steps: int
    points: list[dict]
    stopped_early: bool
    seq_bits: np.ndarray  # final per-sequence bits on the training set (n,)
    wall_time: float

    @property
    def final(self) -> dict:
        return self.points[-1] if self.points else {}


@dataclass(frozen=True)
class ProbeRecord:
    """Record a fit in the results store as a run of kind "probe:<probe>", group `probe`.

    name: a readable run name (e.g. "capacity d32 n=400"). meta: JSON-able facts stored with the
    run's config (dataset size, entropy, ...). The run id is derived from the fit's identity."""

    db: Path
    probe: str
    name: str | None = None
    meta: dict = field(default_factory=dict)


# --- data --------------------------------------------------------------------------------------

def data_digest(*tensors: torch.Tensor | None) -> str:
    """A short hash of tensors' contents (part of a fit's identity)."""
    digest = hashlib.sha256()
    for t in tensors:
        if t is None:
            digest.update(b"none")
            continue
        array = t.detach().cpu().contiguous().numpy()
        digest.update(str((array.dtype, array.shape)).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def _check_data(data: torch.Tensor, vocab_size: int, loss_mask: torch.Tensor | None) -> torch.Tensor | None:
    if data.dim() != 2 or data.shape[1] < 2 or data.shape[0] < 1:
        raise UserError(f"sequences must be a (n >= 1, L >= 2) tensor of token ids, got shape {tuple(data.shape)}")
    if data.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise UserError(f"sequences must hold integer token ids, got {data.dtype}")
    if int(data.min()) < 0 or int(data.max()) >= vocab_size:
        raise UserError(f"token ids must lie in [0, {vocab_size}), got [{int(data.min())}, {int(data.max())}]")
    if loss_mask is None:
        return None
    mask = loss_mask.to(torch.float32)
    if mask.dim() == 1:
        mask = mask.expand(data.shape[0], -1)
    if tuple(mask.shape) != (data.shape[0], data.shape[1] - 1):
        raise UserError(f"loss_mask must have shape (L-1,) or (n, L-1) = {(data.shape[0], data.shape[1] - 1)}, "
                        f"got {tuple(loss_mask.shape)}")
    return mask


# --- scoring -----------------------------------------------------------------------------------

@torch.no_grad()
def sequence_bits(model: GPT, data: torch.Tensor, loss_mask: torch.Tensor | None = None, *,
                  batch_size: int = 512, device: torch.device | str | None = None) -> np.ndarray:
    """Negative log-likelihood in bits of each sequence (n,), summed over its scored predictions
    (tokens 2..L, or those `loss_mask` selects). Computed in float32."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    mask = _check_data(data, model.cfg.vocab_size, loss_mask)
    was_training = model.training
    model.eval()
    out = np.empty(data.shape[0], dtype=np.float64)
    for i in range(0, data.shape[0], batch_size):
        rows = data[i : i + batch_size].to(device, torch.int64)
        nats = _token_nats(model, rows)  # (b, L-1)
        if mask is not None:
            nats = nats * mask[i : i + batch_size].to(device)
        out[i : i + rows.shape[0]] = nats.sum(dim=1).double().cpu().numpy() / LN2
    model.train(was_training)
    return out


def _token_nats(model: GPT, rows: torch.Tensor) -> torch.Tensor:
    """Per-prediction NLL in nats (b, L-1) of rows (b, L)."""
    logits = model(rows[:, :-1])  # (b, L-1, V)
    return F.cross_entropy(logits.float().transpose(1, 2), rows[:, 1:], reduction="none")


# --- the fit -----------------------------------------------------------------------------------

def fit_sequences(
    model_cfg: ModelConfig,
    data: torch.Tensor,
    recipe: FitRecipe,
    out_dir: Path | str,
    *,
    loss_mask: torch.Tensor | None = None,
    evaluate: Callable[[GPT, np.ndarray], dict[str, float]] | None = None,
    stop_when: Callable[[list[dict]], bool] | None = None,
    record: ProbeRecord | None = None,
    on_step: Callable[[int, float], None] | None = None,
    identity: dict | None = None,
) -> SequenceFit:
    """Train a fresh GPT of shape `model_cfg` on the sequences `data` (n, L), resumably.

    evaluate(model, train_seq_bits) -> extra numbers for each evaluation point (e.g. held-out
      bits); it receives the per-sequence training bits just computed, so it need not redo them.
    stop_when(points) -> True ends the fit after an evaluation (e.g. converged); must depend
      only on the points so that a resumed fit stops where an uninterrupted one would.
    record: also record the run and its points in the results store.
    on_step(step, loss): progress callback.
    identity: extra JSON-able facts that distinguish this fit from others with the same data.

    Raises `Interrupted` after checkpointing on SIGINT/SIGTERM; `Diverged` after recording a
    NaN/inf loss (a DIVERGED marker, the store row's status "diverged"), and again on every
    later call; `RunBusy` while another process trains the same directory; `UserError` when
    `out_dir` holds a different fit.
    """
    out_dir = Path(out_dir)
    mask = _check_data(data, model_cfg.vocab_size, loss_mask)
    data = data.to(torch.int64)
    config = {
        "model": model_cfg.to_dict(),
        "recipe": recipe.to_dict(),
        "data": {"shape": list(data.shape), "digest": data_digest(data, loss_mask)},
        "identity": identity or {},
    }
    run_id = f"{record.probe if record else 'fit'}-{config_hash(config)}"
    claim_directory(out_dir, config, what="fit", fix="remove it or choose another output folder")
    with exclusive(out_dir), keep_torch_threads():
        return _fit(model_cfg, data, mask, recipe, out_dir, config, run_id, evaluate=evaluate, stop_when=stop_when,
                    record=record, on_step=on_step)


def _fit(model_cfg: ModelConfig, data: torch.Tensor, mask: torch.Tensor | None, recipe: FitRecipe, out_dir: Path,
         config: dict, run_id: str, *, evaluate, stop_when, record, on_step) -> SequenceFit:  # noqa: ANN001
    from scalinglab.device import place

    diverged = read_marker(out_dir, "DIVERGED")
    if diverged is not None:
        raise Diverged(run_id, diverged["step"], float(diverged["loss"]))
    placement = place(recipe.device, recipe.dtype, recipe.threads)
    device = placement.device
    n, L = data.shape
    counts = count_params(model_cfg)
    scored_tokens = float(mask.sum()) if mask is not None else float(n * (L - 1))
    batch = n if recipe.batch_size is None else min(recipe.batch_size, n)
    fpt = flops_per_token(model_cfg, L - 1)
    store = open_store(record.db) if record else None

    torch.manual_seed(recipe.seed)
    model = GPT(model_cfg).to(device)
    optimizer = adamw(model, lr=recipe.lr, weight_decay=recipe.weight_decay, betas=(recipe.beta1, recipe.beta2),
                      eps=recipe.eps, fused=device.type == "cuda")
    history_path, last = out_dir / "history.jsonl", out_dir / "last.pt"
    step, wall, points = 0, 0.0, []
    if last.exists():
        state = load_checkpoint(last)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        step, wall = state["step"], state["extra"]["wall_time"]
        points = [p for p in read_history(history_path) if p["step"] <= step]
    done_marker = read_marker(out_dir, "DONE")  # an empty one (torn by a crash) reads as absent
    done = done_marker is not None

    if store is not None and not done:
        store.upsert_run(
            run_id, name=record.name or run_id, kind=probe_kind(record.probe), status="running",
            group_name=record.probe, config={**config, "meta": record.meta}, n_total=counts.total,
            n_embedding=counts.embedding, n_nonembedding=counts.non_embedding, param_convention=PARAM_CONVENTION,
            flops_per_token=fpt, seed=recipe.seed, device=placement.describe(), dtype="float32",
            versions=versions(), out_dir=str(out_dir.resolve()), unique_train_tokens=int(n * L),
        )

    data_dev = data.to(device)
    mask_dev = mask.to(device) if mask is not None else None
    schedule = recipe.schedule_for()

    def save() -> None:
        save_checkpoint(last, model=model, optimizer=optimizer, step=step, config=config,
                        extra={"wall_time": wall})
        atomic_write_text(history_path, "".join(json.dumps(p, sort_keys=True) + "\n" for p in points))

    def evaluate_now() -> tuple[dict, np.ndarray]:
        bits = sequence_bits(model, data_dev, mask_dev)
        point = {"step": step, "train_loss": float(bits.sum() * LN2 / scored_tokens),
                 "train_bits": float(bits.sum()), "lr": recipe.lr * schedule.multiplier(max(step - 1, 0)),
                 "wall_time": wall}
        if evaluate is not None:
            point.update({k: float(v) for k, v in evaluate(model, bits).items()})
        return point, bits

    stopped_early = bool(done and done_marker.get("stopped_early", False))
    # A fit that stopped early and crashed before its DONE marker was complete stops again here.
    if (not done and stop_when is not None and points and points[-1]["step"] == step < recipe.steps
            and stop_when(points)):
        stopped_early = True
    seq_bits = None
    if not done:
        model.train()
        last_save = time.monotonic()
        with stop_requests() as stop:
            while step < recipe.steps and not stopped_early:
                t0 = time.perf_counter()
                for group in optimizer.param_groups:
                    group["lr"] = recipe.lr * schedule.multiplier(step)
                idx = _batch_indices(step, n, batch, recipe.seed)
                rows = data_dev if idx is None else data_dev[idx.to(device)]
                nats = _token_nats(model, rows)
                if mask_dev is None:
                    loss = nats.mean()
                else:
                    weights = mask_dev if idx is None else mask_dev[idx.to(device)]
                    loss = (nats * weights).sum() / weights.sum().clamp_min(1.0)
                loss_value = float(loss.detach())
                if not math.isfinite(loss_value):  # before touching the weights, as the main loop does
                    write_marker(out_dir, "DIVERGED", {"step": step, "loss": str(loss_value)})
                    if store is not None:
                        store.upsert_run(run_id, status="diverged", diverged_step=step,
                                         message=f"loss {loss_value} at step {step}")
                    raise Diverged(run_id, step, loss_value)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if recipe.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
                optimizer.step()
                step += 1
                wall += time.perf_counter() - t0
                if on_step:
                    on_step(step, loss_value)
                if step % recipe.eval_every == 0 or step == recipe.steps:
                    point, seq_bits = evaluate_now()
                    points.append(point)
                    model.train()
                    if store is not None:
                        _store_point(store, run_id, point, step * batch * (L - 1), fpt)
                    save()
                    last_save = time.monotonic()
                    if stop_when is not None and step < recipe.steps and stop_when(points):
                        stopped_early = True
                elif time.monotonic() - last_save > recipe.checkpoint_every:
                    save()
                    last_save = time.monotonic()
                if stop["stop"] and not stopped_early:
                    save()
                    if store is not None:
                        store.upsert_run(run_id, status="interrupted", message=f"stopped at step {step}")
                    raise Interrupted(run_id, step, out_dir)
        if not points or points[-1]["step"] != step:  # a fit resumed exactly at its end
            point, seq_bits = evaluate_now()
            points.append(point)
        save()
        # the store first: a kill between the two leaves a fit that a rerun finishes in no steps
        if store is not None:
            store.upsert_run(run_id, status="done", message="stopped early" if stopped_early else None)
        write_marker(out_dir, "DONE", {"step": step, "stopped_early": stopped_early})
    model.eval()
    if seq_bits is None:
        seq_bits = sequence_bits(model, data_dev, mask_dev)
    return SequenceFit(model=model, run_id=run_id, out_dir=out_dir, steps=step, points=points,
                       stopped_early=stopped_early, seq_bits=seq_bits, wall_time=wall)


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


def _batch_indices(step: int, n: int, batch: int, seed: int) -> torch.Tensor | None:
    """Rows of update `step`: all (None) for full batch, else a slice of a per-epoch permutation.
    A pure function of the step, so resuming needs no sampler state."""
    if batch >= n:
        return None
    per_epoch = n // batch  # the last partial batch of each epoch is dropped
    epoch, k = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return torch.from_numpy(order[k * batch : (k + 1) * batch])


def read_history(path: Path) -> list[dict]:
    """The evaluation lines of a history.jsonl (empty when there is none)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _store_point(store: Store, run_id: str, point: dict, tokens: float, fpt: float) -> None:
    core = {"step", "train_loss", "lr", "wall_time"}
    store.add_point(run_id, step=point["step"], tokens=tokens, flops=tokens * fpt, train_loss=point["train_loss"],
                    val_loss=point.get("val_loss"), lr=point["lr"], wall_time=point["wall_time"],
                    extra={k: v for k, v in point.items() if k not in core})


# --- results -----------------------------------------------------------------------------------

def put_probe_result(store: Store, probe: str, key: str, data: dict, run_id: str | None = None) -> None:
    """Store an analysis output of a probe (kind "probe:<probe>"), replacing one with the same key."""
    store.put_result(probe_kind(probe), key, data, run_id=run_id)


def probe_results(store: Store, probe: str) -> list[dict]:
    return store.results(probe_kind(probe))


# --- many small fits in parallel -----------------------------------------------------------------

def run_parallel(fn: Callable[[Any], Any], jobs: Sequence[Any], *, workers: int | None = None,
                 label: str = "probe", describe: Callable[[Any], str] = str, console=None) -> list[Any]:  # noqa: ANN001
    """`[fn(job) for job in jobs]` on `workers` processes (`scalinglab.parallel.map_jobs`: one
    torch thread each; a worker that dies is replaced and its job retried; default: one per CPU
    core), with a progress bar over the jobs. `fn` and the jobs must be picklable (a
    module-level function).

    With workers <= 1 (or a single job) the jobs run in this process, one torch thread, the
    caller's thread count restored afterwards. The first job that raises stops the dispatch of
    new ones; its `UserError` is raised here as a `UserError`, an interrupted job (Ctrl-C: each
    running fit checkpoints and stops) as `KeyboardInterrupt`. Finished jobs are in their
    directories, so rerunning the same work resumes it.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from scalinglab.device import default_workers
    from scalinglab.parallel import map_jobs

    workers = default_workers() if workers is None else workers
    progress = Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("{task.fields[last]}"), console=console or Console(stderr=True))
    with progress:
        task = progress.add_task(label, total=len(jobs), last="")
        if workers <= 1 or len(jobs) <= 1:
            results = []
            with keep_torch_threads():
                torch.set_num_threads(1)
                for job in jobs:
                    try:
                        results.append(_call((fn, job)))
                    except Interrupted as exc:  # as from the pool: callers handle one kind
                        raise KeyboardInterrupt(str(exc)) from None
                    progress.update(task, advance=1, last=describe(job))
            return results
        return map_jobs(_call, [(fn, job) for job in jobs], workers=workers,
                        on_done=lambda i, _value: progress.update(task, advance=1, last=describe(jobs[i])))


def _call(item: tuple[Callable[[Any], Any], Any]) -> Any:
    # The pool passes a UserError through by its class name, so a subclass (RunBusy) is sent
    # as a plain UserError to keep its one-line message; a diverged fit (already recorded in its
    # directory and the store) becomes one too, with what to do about it.
    fn, job = item
    try:
        return fn(job)
    except Diverged as exc:
        raise UserError(f"{exc}; lower the learning rate (a rerun with the same settings stops here again)") from None
    except UserError as exc:
        if type(exc) is UserError:
            raise
        raise UserError(str(exc)) from None
