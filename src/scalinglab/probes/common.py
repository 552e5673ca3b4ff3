"""Shared machinery of the probes: train a small GPT on a FIXED set of token sequences, score
sequences in bits, keep probe runs and results in the store, and run many small fits in parallel.

The probes (capacity, memorisation, facts vs rules, repetition) train on a small fixed data set
many times over: the data is a tensor of sequences `(n, L)` rather than a corpus split, batches
are whole sequences (full batch or minibatches drawn per epoch), and an evaluation scores every
training sequence. That is all that differs: `SequenceTask` says it, and the one training engine
(`scalinglab.train.engine`) runs it with the same resume, checkpoints, stop requests, divergence
handling, markers and store rows as every other run.

The API, kept small and stable:

    FitRecipe            how to train (steps, the shared optimizer config, batch, eval cadence, seed)
    fit_sequences(...)   train one model, resumable; returns a SequenceFit (model + eval history)
    sequence_bits(...)   per-sequence negative log-likelihood in bits (n,) of any model
    ProbeRecord          where and under which name a fit is recorded in the results store
    probe_kind(name)     "probe:<name>", the run kind and the result kind of a probe
    put_probe_result / probe_results   analysis outputs of a probe in the store
    run_parallel(...)    map a picklable function over jobs on worker processes, one torch
                         thread each, with a progress bar

Prediction convention: a sequence of L tokens is L-1 predictions, token t+1 from tokens 1..t.
The first token has no context and is never scored. `loss_mask` (shape (L-1,) or (n, L-1))
restricts training loss and scoring to some predicted positions (e.g. only an answer token).

A fit is a run directory of the engine (`config.json`, `last.pt`, `metrics.jsonl`, DONE or
DIVERGED). Calling `fit_sequences` again on a finished directory loads the model and returns at
once; on an unfinished one it resumes from the checkpoint and ends bit-identical (on CPU) to an
uninterrupted fit; on a diverged one it raises `Diverged`.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from scalinglab.backends import BackendSpec, open_backend
from scalinglab.config import OptimConfig, config_hash
from scalinglab.errors import UserError
from scalinglab.model import GPT, PARAM_CONVENTION, ModelConfig, count_params, flops_per_token
from scalinglab.resources import check_memory, training_memory
from scalinglab.store import Store, open_store
from scalinglab.train import engine
from scalinglab.train.engine import Diverged, Interrupted, keep_torch_threads

LN2 = math.log(2.0)

# The probes' optimizer: a small model on a small fixed data set, no weight decay, β2 = 0.98.
PROBE_OPTIM = OptimConfig(lr=3e-3, warmup=20, schedule="constant", weight_decay=0.0, beta2=0.98)


def probe_optim(**changes: Any) -> OptimConfig:
    """The probes' optimizer config with some settings changed (e.g. `lr=1e-2`)."""
    return replace(PROBE_OPTIM, **changes)


def flat_optim(data: dict, default: OptimConfig, keep: tuple[str, ...], prefix: str = "optim.") -> dict:
    """A config's dict (`asdict`) with its `optim` section laid out as the flat fields its results
    and folders were first keyed by (`keep`); other optimizer settings enter (named `prefix` +
    field) only where they differ from `default`, so existing keys stay the same."""
    data = dict(data)
    optim = data.pop("optim")
    data.update({k: optim[k] for k in keep})
    data.update({prefix + k: v for k, v in optim.items() if k not in keep and v != getattr(default, k)})
    return data


def probe_model(n_layer: int, d_model: int, vocab_size: int) -> ModelConfig:
    """A small probe GPT: heads of 16 dimensions where the width allows, fewer where not (head
    size must divide the width and be even, for rotary positions)."""
    n_head = max(1, d_model // 16)
    while n_head > 1 and (d_model % n_head or (d_model // n_head) % 2):
        n_head -= 1
    return ModelConfig(n_layer=n_layer, d_model=d_model, n_head=n_head, vocab_size=vocab_size)


def probe_kind(probe: str) -> str:
    """The run kind and result kind of a probe: "probe:<name>"."""
    return f"probe:{probe}"


# --- the recipe --------------------------------------------------------------------------------

@dataclass(frozen=True)
class FitRecipe:
    """How to train a GPT on a fixed set of sequences.

    steps: optimizer updates (the most; `stop_when` may end a fit earlier).
    optim: AdamW, clipping and the schedule (`OptimConfig`; the probes' defaults: `PROBE_OPTIM`).
    batch_size: sequences per update; None or >= n trains full batch. Minibatches visit every
      sequence once per epoch in an order drawn from (seed, epoch).
    eval_every: steps between evaluations of the whole training set (the last step always
      evaluated).
    seed: initialisation and batch order.
    device, dtype, threads: where to train (see `scalinglab.device.place`).
    checkpoint_every: seconds between checkpoints (see `scalinglab.train.engine`).
    """

    steps: int
    optim: OptimConfig = field(default_factory=probe_optim)
    batch_size: int | None = None
    eval_every: int = 100
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    threads: int = 1
    checkpoint_every: float = 60.0

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or self.steps <= 0:
            raise UserError(f"steps must be a positive integer, got {self.steps!r}")
        if self.optim.lr is None or self.optim.warmup is None:
            raise UserError("a probe fit needs optim.lr and optim.warmup set (no size rules apply)")
        self.optim.validate()
        if self.batch_size is not None and self.batch_size <= 0:
            raise UserError(f"batch_size must be a positive integer, got {self.batch_size}")
        if self.eval_every <= 0:
            raise UserError(f"eval_every must be a positive integer, got {self.eval_every}")

    def identity(self) -> dict:
        """The recipe as fits are keyed by: the flat layout fit folders were first named with
        (so they keep resuming); settings added since enter only when changed from the value
        those fits used."""
        keep = ("lr", "warmup", "schedule", "cooldown_frac", "min_lr_frac", "weight_decay", "beta1", "beta2", "eps",
                "grad_clip")
        return flat_optim(asdict(self), PROBE_OPTIM, keep, prefix="")


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

class SequenceTask(engine.Task):
    """A GPT trained on fixed sequences; an evaluation scores every training sequence (and runs
    the probe's own `evaluate`)."""

    def __init__(self, model_cfg: ModelConfig, data: torch.Tensor, mask: torch.Tensor | None, recipe: FitRecipe,
                 evaluate: Callable[[GPT, np.ndarray], dict[str, float]] | None,
                 stop_when: Callable[[list[dict]], bool] | None) -> None:
        self.model_cfg, self.data, self.mask, self.recipe = model_cfg, data, mask, recipe
        self.extra_measures, self.stop_when = evaluate, stop_when
        n, L = data.shape
        self.batch = n if recipe.batch_size is None else min(recipe.batch_size, n)
        self.scored_tokens = float(mask.sum()) if mask is not None else float(n * (L - 1))
        self.fpt = flops_per_token(model_cfg, L - 1)
        self.last_bits: tuple[int, np.ndarray] | None = None  # (step, per-sequence bits) of the last evaluation

    def setup(self, placement) -> None:
        super().setup(placement)
        self.data_dev = self.data.to(placement.device)
        self.mask_dev = self.mask.to(placement.device) if self.mask is not None else None

    def build_model(self) -> GPT:
        return GPT(self.model_cfg)

    def batch_rows(self, step: int) -> torch.Tensor | None:
        """The rows of update `step` (None: all of them), a pure function of the step."""
        return _batch_indices(step, self.data.shape[0], self.batch, self.recipe.seed)

    def loss(self, model: torch.nn.Module, step: int) -> torch.Tensor:
        device = self.placement.device
        idx = self.batch_rows(step)
        rows = self.data_dev if idx is None else self.data_dev[idx.to(device)]
        nats = _token_nats(model, rows)
        if self.mask_dev is None:
            return nats.mean()
        weights = self.mask_dev if idx is None else self.mask_dev[idx.to(device)]
        return (nats * weights).sum() / weights.sum().clamp_min(1.0)

    def evaluate(self, model: torch.nn.Module, ctx: engine.EvalContext) -> dict:
        bits = sequence_bits(model, self.data_dev, self.mask_dev)
        self.last_bits = (ctx.step, bits)
        point = {"step": ctx.step, "train_loss": float(bits.sum() * LN2 / self.scored_tokens),
                 "train_bits": float(bits.sum()), "lr": ctx.lr, "wall_time": ctx.wall_time}
        if self.extra_measures is not None:
            point.update({k: float(v) for k, v in self.extra_measures(model, bits).items()})
        return point

    def store_point(self, point: dict) -> dict:
        tokens = point["step"] * self.batch * (self.data.shape[1] - 1)
        core = {"step", "train_loss", "lr", "wall_time"}
        return dict(step=point["step"], tokens=tokens, flops=tokens * self.fpt, train_loss=point["train_loss"],
                    val_loss=point.get("val_loss"), lr=point["lr"], wall_time=point["wall_time"],
                    extra={k: v for k, v in point.items() if k not in core})

    def should_stop(self, points: list[dict]) -> bool:
        return self.stop_when is not None and self.stop_when(points)


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
        "recipe": recipe.identity(),
        "data": {"shape": list(data.shape), "digest": data_digest(data, loss_mask)},
        "identity": identity or {},
    }
    run_id = f"{record.probe if record else 'fit'}-{config_hash(config)}"
    batch = data.shape[0] if recipe.batch_size is None else min(recipe.batch_size, data.shape[0])
    check_memory({f"a {model_cfg.n_layer}x{model_cfg.d_model} fit on {batch} sequences of {data.shape[1]}":
                  training_memory(model_cfg, batch, data.shape[1] - 1)},
                 device="cuda" if recipe.device.startswith("cuda") else "cpu")
    task = SequenceTask(model_cfg, data, mask, recipe, evaluate, stop_when)
    store, row = None, {}
    if record is not None:
        counts = count_params(model_cfg)
        store = open_store(record.db)
        row = dict(name=record.name or run_id, kind=probe_kind(record.probe), group_name=record.probe,
                   config={**config, "meta": record.meta}, n_total=counts.total, n_embedding=counts.embedding,
                   n_nonembedding=counts.non_embedding, param_convention=PARAM_CONVENTION, flops_per_token=task.fpt,
                   unique_train_tokens=int(data.numel()))
    spec = engine.RunSpec(
        run_id=run_id, identity=config, optim=recipe.optim, lr=recipe.optim.lr,
        schedule=recipe.optim.schedule_for(recipe.steps), seed=recipe.seed, device=recipe.device,
        dtype=recipe.dtype, threads=recipe.threads, eval_steps=engine.every(recipe.eval_every, recipe.steps),
        store=store, row=row, checkpoint_every=recipe.checkpoint_every, what="fit",
        fix="remove it or choose another output folder",
    )
    outcome = engine.train(task, spec, out_dir, on_step=on_step)
    model = outcome.load_model()
    if task.last_bits is not None and task.last_bits[0] == outcome.steps:
        seq_bits = task.last_bits[1]
    else:
        with keep_torch_threads():
            seq_bits = sequence_bits(model, data, mask)
    return SequenceFit(model=model, run_id=run_id, out_dir=out_dir, steps=outcome.steps, points=outcome.points,
                       stopped_early=outcome.stopped_early, seq_bits=seq_bits, wall_time=outcome.wall_time)


def _batch_indices(step: int, n: int, batch: int, seed: int) -> torch.Tensor | None:
    """Rows of update `step`: all (None) for full batch, else a slice of a per-epoch permutation.
    A pure function of the step, so resuming needs no sampler state."""
    if batch >= n:
        return None
    per_epoch = n // batch  # the last partial batch of each epoch is dropped
    epoch, k = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return torch.from_numpy(order[k * batch : (k + 1) * batch])


# --- results -----------------------------------------------------------------------------------

def put_probe_result(store: Store, probe: str, key: str, data: dict, run_id: str | None = None) -> None:
    """Store an analysis output of a probe (kind "probe:<probe>"), replacing one with the same key."""
    store.put_result(probe_kind(probe), key, data, run_id=run_id)


def probe_results(store: Store, probe: str) -> list[dict]:
    return store.results(probe_kind(probe))


# --- many small fits in parallel -----------------------------------------------------------------

def run_parallel(fn: Callable[[Any], Any], jobs: Sequence[Any], *, workers: int | None = None,
                 label: str = "probe", describe: Callable[[Any], str] = str, console=None,
                 backend: BackendSpec | None = None, work_dir: Path | str = ".") -> list[Any]:
    """`[fn(job) for job in jobs]` on `workers` processes (`scalinglab.backends.local.map_jobs`: one
    torch thread each; a worker that dies is replaced and its job retried; default: one per CPU
    core), with a progress bar over the jobs. `fn` and the jobs must be picklable (a
    module-level function).

    With workers <= 1 (or a single job) the jobs run in this process, one torch thread, the
    caller's thread count restored afterwards. The first job that raises stops the dispatch of
    new ones; its `UserError` is raised here as a `UserError`, an interrupted job (Ctrl-C: each
    running fit checkpoints and stops) as `KeyboardInterrupt`. Finished jobs are in their
    directories, so rerunning the same work resumes it.

    `backend` (default: this machine's processes) runs the jobs elsewhere, e.g. on a Ray cluster;
    `work_dir` is the folder of their run directories (on a cluster, shared by every node).
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from scalinglab.backends.local import map_jobs
    from scalinglab.device import default_workers

    workers = default_workers() if workers is None else workers
    progress = Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("{task.fields[last]}"), console=console or Console(stderr=True))
    with progress:
        task = progress.add_task(label, total=len(jobs), last="")
        on_done = lambda i, _value: progress.update(task, advance=1, last=describe(jobs[i]))  # noqa: E731
        if backend is not None and backend.name != "local":
            pool = open_backend(backend, workers=workers, work_dir=work_dir)
            try:
                return map_jobs(_call, [(fn, job) for job in jobs], workers=workers, on_done=on_done, backend=pool)
            finally:
                pool.close()
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
        return map_jobs(_call, [(fn, job) for job in jobs], workers=workers, on_done=on_done)


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
