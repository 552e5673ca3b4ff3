"""The grokking probe: memorisation first, generalisation much later, on modular arithmetic.

A model is trained full batch with AdamW and weight decay on a share of all pairs (a, b) of
a∘b mod p (`probes.modular`) and evaluated on the rest. It reaches 100% on its training pairs
early (memorisation, here: train accuracy >= 99%) and, long after, on the held-out pairs too
(generalisation: test accuracy >= 95%). Between the two, weight decay slowly trades the
memorising solution for a cheaper, structured one; the progress measures show it happening
before test accuracy moves: the weight norm falls, the number embedding concentrates on a few
Fourier frequencies, the loss restricted to those frequencies falls and the loss with them
excluded rises.

Two models (`probes.modular`): a fast embedding-MLP (the default; groks (a+b) mod 97 from 50%
of the pairs in about a thousand epochs, well under a minute on one core) and Nanda et al.'s
one-layer transformer (p=113, 30% of pairs; tens of thousands of epochs). Optional Grokfast
(Lee et al. 2024) amplifies the slow component of the gradient: g <- g + λ·EMA_α(g).

A run is a directory named by its identity (everything that changes the trajectory; not the
epoch budget or the stopping rule, so a larger budget continues a run instead of redoing it):

    config.json          the identity
    last.pt              the latest checkpoint (model, optimizer, Grokfast state), atomic
    train_loss.f32, DONE the engine's loss log and end marker (`scalinglab.train.engine`)
    metrics.jsonl        one line per evaluation
    snapshots/E.pt       parameters every `snapshot_every` epochs (for the progress measures)
    measures.json        restricted/excluded loss over the snapshots, once the run has stopped

and rows in the results store: a run of kind "probe:grokking", a point per evaluation
(val_loss is the held-out pairs' loss) and a result with the summary and the progress measures.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
import torch.nn.functional as F

from scalinglab.config import OptimConfig, config_hash
from scalinglab.errors import UserError
from scalinglab.fsutil import atomic_open, atomic_write_json
from scalinglab.probes.common import flat_optim, probe_kind, put_probe_result
from scalinglab.probes.modular import (
    MODELS,
    ModularTask,
    build_model,
    canonical_op,
    effective_frequencies,
    embedding_spectrum,
    fourier_sparsity,
    grid_cells,
    grid_loss,
    key_frequencies,
    logit_grid,
    restricted_excluded_logits,
    weight_norm,
)
from scalinglab.store import open_store
from scalinglab.train import engine

PROBE = "grokking"
MEMORISED_AT = 0.99  # train accuracy that counts as memorised
GENERALISED_AT = 0.95  # test accuracy that counts as generalised
HISTORY_COLUMNS = ["epoch", "train_loss", "test_loss", "train_acc", "test_acc", "weight_norm", "fourier_sparsity",
                   "fourier_effective", "lr", "wall_time"]

# The grokking papers' optimizer: full-batch AdamW with weight decay on every parameter, β2 0.98,
# no clipping, constant LR after warmup (the model's defaults below fill in lr and warmup).
GROKKING_OPTIM = OptimConfig(lr=None, warmup=None, schedule="constant", weight_decay=1.0, decay="all", beta2=0.98,
                             grad_clip=0.0)

# Per-model defaults: the embedding-MLP recipe measured here (docs/probes-phase.md) and
# Nanda et al. 2023's recipe for their transformer.
_DEFAULTS = {
    "mlp": dict(p=97, train_frac=0.5, eval_every=10, snapshot_every=50, max_epochs=5000, optim=dict(lr=3e-3, warmup=0)),
    "transformer": dict(p=113, train_frac=0.3, eval_every=100, snapshot_every=1000, max_epochs=40000,
                        optim=dict(lr=1e-3, warmup=10)),
}


@dataclass(frozen=True)
class GrokConfig:
    """One grokking run. Fields left None take the model's default (`_DEFAULTS`).

    p, op: the task a∘b mod p (p prime; op one of + - * /).
    train_frac: share of all pairs used for training (the rest is the test set).
    model: "mlp" (embedding-MLP, default) or "transformer" (Nanda et al.'s one layer).
    optim: the optimizer (`GROKKING_OPTIM`; optim.lr and optim.warmup, in epochs, from the model's
      defaults when None).
    grokfast, grokfast_alpha, grokfast_lamb: gradient-EMA filter g <- g + lamb * EMA_alpha(g).
    seed: split and initialisation.
    eval_every, snapshot_every: epochs between evaluations / parameter snapshots.
    max_epochs: the budget; the run stops there if it has not generalised.
    stop_after: once generalised at epoch G, train on to G * (1 + stop_after) and stop
      (to show the curves after the transition); negative: always use the whole budget.
    fourier_top: frequencies counted by the Fourier sparsity measure.
    device, threads: where to train (not part of the run's identity).
    """

    p: int | None = None
    op: str = "+"
    train_frac: float | None = None
    model: str = "mlp"
    optim: OptimConfig = GROKKING_OPTIM
    grokfast: bool = False
    grokfast_alpha: float = 0.98
    grokfast_lamb: float = 2.0
    seed: int = 0
    eval_every: int | None = None
    snapshot_every: int | None = None
    max_epochs: int | None = None
    stop_after: float = 0.25
    fourier_top: int = 6
    device: str = "cpu"
    threads: int = 1

    def resolved(self) -> "GrokConfig":
        """This config with every None replaced by the model's default, validated."""
        if self.model not in MODELS:
            raise UserError(f"unknown grokking model {self.model!r}; choose {' or '.join(MODELS)}")
        defaults = _DEFAULTS[self.model]
        fills = {k: v for k, v in defaults.items() if k != "optim" and getattr(self, k) is None}
        optim = dataclasses.replace(self.optim, **{k: v for k, v in defaults["optim"].items()
                                                   if getattr(self.optim, k) is None})
        cfg = dataclasses.replace(self, op=canonical_op(self.op), optim=optim, **fills)
        cfg._validate()
        return cfg

    def _validate(self) -> None:
        ModularTask(self.p, self.op)  # checks p
        if not 0 < self.train_frac < 1:
            raise UserError(f"train_frac (--frac) must lie strictly between 0 and 1, got {self.train_frac}")
        self.optim.validate()
        if not 0 < self.grokfast_alpha < 1:
            raise UserError(f"grokfast_alpha (--grokfast-alpha) must lie in (0, 1), got {self.grokfast_alpha}")
        if not self.grokfast_lamb >= 0:
            raise UserError(f"grokfast_lamb (--grokfast-lambda) must be >= 0, got {self.grokfast_lamb}")
        for name in ("eval_every", "snapshot_every", "max_epochs", "fourier_top"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise UserError(f"{name} must be a positive integer, got {value!r}")
        if self.snapshot_every % self.eval_every:
            raise UserError(f"snapshot_every ({self.snapshot_every}) must be a multiple of eval_every ({self.eval_every})")

    def identity(self) -> dict:
        """What fixes the trajectory and what is recorded along it (and so names the run). The
        optimizer's settings keep the flat names runs were first keyed by; settings added since
        enter only when changed from the grokking recipe."""
        keep = ("p", "op", "train_frac", "model", "grokfast", "seed", "eval_every", "snapshot_every", "fourier_top")
        ident = {k: getattr(self, k) for k in keep}
        ident.update(flat_optim({"optim": dataclasses.asdict(self.optim)}, GROKKING_OPTIM,
                                ("lr", "weight_decay", "beta1", "beta2", "warmup")))
        if self.grokfast:
            ident.update(grokfast_alpha=self.grokfast_alpha, grokfast_lamb=self.grokfast_lamb)
        return {"probe": PROBE, **ident}

    @property
    def run_id(self) -> str:
        return f"{PROBE}-{config_hash(self.resolved().identity())}"

    def describe(self) -> str:
        gf = f" grokfast(α={self.grokfast_alpha}, λ={self.grokfast_lamb})" if self.grokfast else ""
        return (f"{self.model} a{self.op}b mod {self.p}, {self.train_frac:.0%} of pairs, lr {self.optim.lr:g} "
                f"wd {self.optim.weight_decay:g}{gf}, seed {self.seed}")


@dataclass
class GrokRun:
    """A grokking run as far as it went.

    status: "generalised" (test accuracy reached 95%), "budget" (max_epochs spent without it) or
      "stopped" (ended early on request, resumable).
    history: one row per evaluation: epoch, train/test loss (nats) and accuracy, weight_norm,
      fourier_sparsity (share of embedding energy in the top `fourier_top` frequencies),
      fourier_effective (effective number of frequencies used), lr, wall_time (s).
    measures: one row per snapshot: epoch, restricted_loss (test pairs, key frequencies only),
      excluded_loss (train pairs, key frequencies removed), grid train/test loss; None while
      the run has not stopped.
    """

    run_id: str
    out_dir: Path
    config: GrokConfig
    status: str
    epochs: int
    wall_time: float
    n_train: int
    n_test: int
    history: pd.DataFrame
    measures: pd.DataFrame | None
    key_frequencies: list[int]
    spectrum: list[float]
    figures: list[Path] = field(default_factory=list)

    @property
    def memorised_epoch(self) -> int | None:
        return _first_epoch(self.history, "train_acc", MEMORISED_AT)

    @property
    def generalised_epoch(self) -> int | None:
        return _first_epoch(self.history, "test_acc", GENERALISED_AT)

    @property
    def seconds_to_generalise(self) -> float | None:
        epoch = self.generalised_epoch
        if epoch is None:
            return None
        return float(self.history.loc[self.history.epoch == epoch, "wall_time"].iloc[0])

    @property
    def plateau_min_test_acc(self) -> float | None:
        """Lowest test accuracy between memorisation and generalisation (below 1/p: a pure memoriser)."""
        mem = self.memorised_epoch
        if mem is None:
            return None
        end = self.generalised_epoch or self.epochs
        window = self.history[(self.history.epoch >= mem) & (self.history.epoch <= end)]
        return float(window.test_acc.min()) if len(window) else None

    def summary(self) -> dict:
        last = self.history.iloc[-1]
        return {
            "run_id": self.run_id, "status": self.status, "epochs": self.epochs, "wall_time": self.wall_time,
            "memorised_epoch": self.memorised_epoch, "generalised_epoch": self.generalised_epoch,
            "seconds_to_generalise": self.seconds_to_generalise, "n_train": self.n_train, "n_test": self.n_test,
            "final_train_acc": float(last.train_acc), "final_test_acc": float(last.test_acc),
            "final_weight_norm": float(last.weight_norm), "final_fourier_sparsity": float(last.fourier_sparsity),
            "plateau_min_test_acc": self.plateau_min_test_acc, "chance_acc": 1.0 / self.config.p,
            "key_frequencies": self.key_frequencies, "config": dataclasses.asdict(self.config),
        }


def _first_epoch(history: pd.DataFrame, column: str, threshold: float) -> int | None:
    hit = history[history[column] >= threshold]
    return int(hit.epoch.iloc[0]) if len(hit) else None


# --- training ------------------------------------------------------------------------------------

class GrokTask(engine.Task):
    """Full-batch training on the training pairs; an evaluation measures both splits, the weight
    norm and the embedding's Fourier sparsity, and keeps a parameter snapshot every
    `snapshot_every` epochs (one epoch is one update)."""

    def __init__(self, cfg: GrokConfig, out_dir: Path) -> None:
        self.cfg, self.out_dir = cfg, out_dir
        self.task = ModularTask(cfg.p, cfg.op)
        self.train_idx, self.test_idx = self.task.split(cfg.train_frac, cfg.seed)
        self.grad_ema: dict[str, torch.Tensor] = {}
        model = build_model(cfg.model, cfg.p)
        self.n_params = sum(p.numel() for p in model.parameters())
        self.n_embedding = int(model.number_embedding().numel())

    def setup(self, placement) -> None:
        super().setup(placement)
        device = placement.device
        self.a, self.b, self.c = (t.to(device) for t in self.task.pairs)
        self.tr, self.te = self.train_idx.to(device), self.test_idx.to(device)

    def build_model(self) -> torch.nn.Module:
        return build_model(self.cfg.model, self.cfg.p)

    def loss(self, model: torch.nn.Module, step: int) -> torch.Tensor:
        return F.cross_entropy(model(self.a[self.tr], self.b[self.tr]), self.c[self.tr])

    def after_backward(self, model: torch.nn.Module) -> None:
        if self.cfg.grokfast:
            _grokfast_filter(model, self.grad_ema, self.cfg.grokfast_alpha, self.cfg.grokfast_lamb)

    def state_dict(self) -> dict:
        return {"grad_ema": {k: v.cpu() for k, v in self.grad_ema.items()}}

    def load_state_dict(self, extra: dict) -> None:
        self.grad_ema = {k: v.to(self.placement.device) for k, v in extra.get("grad_ema", {}).items()}

    def evaluate(self, model: torch.nn.Module, ctx: engine.EvalContext) -> dict:
        record = _evaluate(model, self.task, self.a, self.b, self.c, self.tr, self.te, self.cfg.fourier_top)
        record.update(step=ctx.step, epoch=ctx.step, lr=ctx.lr, wall_time=ctx.wall_time)
        if ctx.step % self.cfg.snapshot_every == 0:
            path = self.out_dir / "snapshots" / f"{ctx.step:07d}.pt"
            path.parent.mkdir(exist_ok=True)
            with atomic_open(path) as fh:
                torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, fh)
        return record

    def store_point(self, h: dict) -> dict:
        examples = h["epoch"] * len(self.train_idx)
        extra = {k: h[k] for k in ("train_acc", "test_acc", "weight_norm", "fourier_sparsity", "fourier_effective")}
        return dict(step=h["epoch"], tokens=examples, flops=6.0 * self.n_params * examples,
                    train_loss=h["train_loss"], val_loss=h["test_loss"], epoch=h["epoch"], lr=h["lr"],
                    wall_time=h["wall_time"], extra=extra)

    def should_stop(self, points: list[dict]) -> bool:
        return _generalised_and_shown(points, self.cfg)


class _ProgressReporter(engine.Reporter):
    def __init__(self, progress: Callable[[dict], None], max_epochs: int) -> None:
        self.progress, self.max_epochs = progress, max_epochs

    def point(self, point: dict) -> None:
        self.progress({**point, "max_epochs": self.max_epochs})


def train_grokking(cfg: GrokConfig, out_dir: Path | str, *, db: Path | str | None = None,
                   progress: Callable[[dict], None] | None = None, stop_at_epoch: int | None = None,
                   on_step: Callable[[int, float], None] | None = None, figures: Path | str | None = None) -> GrokRun:
    """Train (or resume, or just load) one grokking run in `out_dir`; record it in `db`; with
    `figures`, draw its curves there (recorded in the store).

    progress(record) is called after every evaluation with the history row plus "max_epochs".
    stop_at_epoch ends the call early with status "stopped" (the run stays resumable);
    on_step(epoch, loss) is called after every update.
    Raises `Interrupted` after checkpointing on SIGINT/SIGTERM, `Diverged` on a NaN/inf loss
    (and on every later call), `RunBusy` while another process trains the same directory.
    """
    cfg = cfg.resolved()
    out_dir = Path(out_dir)
    identity = cfg.identity()
    run_id = cfg.run_id
    task = GrokTask(cfg, out_dir)
    store = open_store(db) if db is not None else None
    row = dict(name=cfg.describe(), kind=probe_kind(PROBE), group_name=PROBE,
               config={**identity, "max_epochs": cfg.max_epochs, "stop_after": cfg.stop_after},
               n_total=task.n_params, n_embedding=task.n_embedding, n_nonembedding=task.n_params - task.n_embedding,
               param_convention="total")
    spec = engine.RunSpec(
        run_id=run_id, identity=identity, optim=cfg.optim, lr=cfg.optim.lr,
        schedule=cfg.optim.schedule_for(cfg.max_epochs), seed=cfg.seed, device=cfg.device, dtype="float32",
        threads=cfg.threads, eval_steps=[0, *engine.every(cfg.eval_every, cfg.max_epochs)],
        extendable=True,  # the budget is not part of the identity: a larger one continues the run
        store=store, row=row, checkpoint_every=30.0, what="grokking run",
        fix="remove it or choose another output folder",
    )
    reporter = _ProgressReporter(progress, cfg.max_epochs) if progress else None
    outcome = engine.train(task, spec, out_dir, reporter=reporter, stop_at_step=stop_at_epoch, on_step=on_step)
    model = outcome.load_model()

    history = pd.DataFrame(outcome.points)[HISTORY_COLUMNS]
    generalised = _first_epoch(history, "test_acc", GENERALISED_AT) is not None
    status = "stopped" if outcome.status == "interrupted" else "generalised" if generalised else "budget"
    spectrum = embedding_spectrum(task.task, model.number_embedding())
    measures, keys = None, []
    if status != "stopped":
        measures, keys = progress_measures(cfg, task.task, model, out_dir, task.train_idx, task.test_idx,
                                           outcome.steps)
    run = GrokRun(run_id=run_id, out_dir=out_dir, config=cfg, status=status, epochs=outcome.steps,
                  wall_time=outcome.wall_time, n_train=len(task.train_idx), n_test=len(task.test_idx),
                  history=history, measures=measures, key_frequencies=keys, spectrum=spectrum.tolist())
    if store is not None and status != "stopped":
        message = (f"generalised at epoch {run.generalised_epoch}" if status == "generalised"
                   else f"no generalisation within {cfg.max_epochs} epochs")
        store.upsert_run(run_id, message=message)
        put_probe_result(store, PROBE, run_id, {**run.summary(), "spectrum": run.spectrum,
                                                "measures": measures.to_dict("records")}, run_id=run_id)
    if figures is not None:
        from scalinglab.report.figures import record
        from scalinglab.report.phase import grokking_curves

        run.figures = record([grokking_curves(run, Path(figures) / f"{run_id}.png")], db, run_id)
    return run


def run_lines(run: GrokRun) -> list[str]:
    """What one run found, in plain sentences."""
    s, lines = run.summary(), []
    if run.memorised_epoch and run.generalised_epoch:
        lines.append(f"memorised at epoch {run.memorised_epoch:,}, generalised at epoch {run.generalised_epoch:,} "
                     f"({run.generalised_epoch / run.memorised_epoch:.1f}x later, {s['seconds_to_generalise']:.1f} s "
                     f"of training); lowest test accuracy on the plateau {s['plateau_min_test_acc']:.4f} "
                     f"(chance {s['chance_acc']:.4f})")
    if run.key_frequencies:
        lines.append(f"key frequencies {run.key_frequencies}; final Fourier sparsity {s['final_fourier_sparsity']:.2f} "
                     f"(top {run.config.fourier_top}), weight norm {run.history.weight_norm.iloc[0]:.1f} -> "
                     f"{s['final_weight_norm']:.1f}")
    return lines


def _generalised_and_shown(history: list[dict], cfg: GrokConfig) -> bool:
    """Stop now? Once generalised at epoch G, after G x (1 + stop_after) epochs: a pure function
    of the evaluations, so a resumed run stops exactly where an uninterrupted one would."""
    epoch = history[-1]["epoch"]
    generalised = next((h["epoch"] for h in history if h["test_acc"] >= GENERALISED_AT), None)
    return generalised is not None and cfg.stop_after >= 0 and epoch >= generalised * (1 + cfg.stop_after)


def _grokfast_filter(model: torch.nn.Module, ema: dict[str, torch.Tensor], alpha: float, lamb: float) -> None:
    """Grokfast-EMA (Lee et al. 2024): add λ x the exponential moving average of past gradients,
    amplifying their slow (generalising) component."""
    for name, param in model.named_parameters():
        if param.grad is None:
            continue
        if name not in ema:
            ema[name] = param.grad.detach().clone()
        else:
            ema[name].mul_(alpha).add_(param.grad.detach(), alpha=1 - alpha)
        param.grad.add_(ema[name], alpha=lamb)


@torch.no_grad()
def _evaluate(model, task: ModularTask, a, b, c, tr, te, fourier_top: int) -> dict:
    was_training = model.training
    model.eval()
    logits = model(a, b)
    losses = F.cross_entropy(logits, c, reduction="none")
    correct = (logits.argmax(dim=-1) == c).float()
    spectrum = embedding_spectrum(task, model.number_embedding())
    model.train(was_training)
    return {
        "train_loss": float(losses[tr].mean()), "test_loss": float(losses[te].mean()),
        "train_acc": float(correct[tr].mean()), "test_acc": float(correct[te].mean()),
        "weight_norm": weight_norm(model), "fourier_sparsity": fourier_sparsity(spectrum, fourier_top),
        "fourier_effective": effective_frequencies(spectrum),
    }


# --- progress measures over the snapshots -----------------------------------------------------------

def progress_measures(cfg: GrokConfig, task: ModularTask, final_model: torch.nn.Module, out_dir: Path,
                      train_idx: torch.Tensor, test_idx: torch.Tensor, epoch: int) -> tuple[pd.DataFrame, list[int]]:
    """Restricted and excluded loss at every snapshot, for the final model's key frequencies.

    Cached in `measures.json` for the epoch the run stopped at (recomputed if it went on).
    """
    cache = out_dir / "measures.json"
    if cache.exists():
        saved = json.loads(cache.read_text())
        if saved["final_epoch"] == epoch:
            return pd.DataFrame(saved["rows"]), saved["key_frequencies"]
    final_model.eval()
    keys = key_frequencies(task, logit_grid(task, final_model))
    answers = task.pairs[2][torch.from_numpy(task.grid_index().reshape(-1))].numpy()
    train_cells, test_cells = grid_cells(task, train_idx), grid_cells(task, test_idx)
    model = build_model(cfg.model, cfg.p)
    rows = []
    for path in sorted((out_dir / "snapshots").glob("*.pt")):
        snap_epoch = int(path.stem)
        if snap_epoch > epoch:
            continue
        model.load_state_dict(torch.load(path, map_location="cpu"))
        model.eval()
        logits = logit_grid(task, model)
        restricted, excluded = restricted_excluded_logits(task, logits, keys)
        rows.append({
            "epoch": snap_epoch,
            "restricted_loss": grid_loss(restricted, answers, test_cells),
            "excluded_loss": grid_loss(excluded, answers, train_cells),
            "grid_train_loss": grid_loss(logits, answers, train_cells),
            "grid_test_loss": grid_loss(logits, answers, test_cells),
        })
    atomic_write_json(cache, {"final_epoch": epoch, "key_frequencies": keys, "rows": rows})
    return pd.DataFrame(rows), keys
