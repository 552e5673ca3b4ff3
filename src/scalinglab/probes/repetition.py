"""The repetition probe: what repeated epochs and junk data cost at a fixed model size and budget.

Three families of runs of one model size N, all trained by the ordinary loop (`scalinglab.train`)
and evaluated on the same clean val set:

- repeated: D tokens in total drawn from the first U = D/e tokens of the train split, for
  e = 1, 2, 4, ..., 64 epochs (`RunPlan.max_unique_tokens`);
- fresh: each of those prefixes seen once (U tokens in total): what the unique data alone is
  worth, L_fresh(U). The e = 1 repeated run is also the fresh run at U = D;
- junk: D tokens seen once from a train split in which a share f of the spans is junk
  (`probes.junk`); val stays clean.

The prediction for repeated data is Muennighoff et al. 2023's effective data: e epochs over U
tokens are worth D' = U + U·R*·(1 − exp(−(e−1)/R*)) fresh tokens, R* = R_D* = 15.39 (from
`scalinglab.laws.MUENNIGHOFF_2023`), so the predicted loss is L_fresh(D'). L_fresh is read off
the fresh runs themselves (log-log interpolation, `FreshCurve`); E + B/D^β, fitted to them with
`scalinglab.laws`, is reported and used only outside their range. The law's other correction
(excess parameters, N') is left out: it needs the parameter term A/N^α at this scale, which a
fixed-N experiment folds into E. R* is also fitted to these runs, to compare with the published
value.

For junk, the baseline is "junk tokens are merely wasted": a run with junk share f would score
L_fresh((1−f)·D). A loss above that means junk costs more than the tokens it displaced.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from scalinglab.backends import BackendSpec
from scalinglab.config import RunConfig, config_hash
from scalinglab.corpus.prepare import PreparedCorpus
from scalinglab.errors import UserError
from scalinglab.probes.common import probe_kind, put_probe_result, run_parallel
from scalinglab.probes.junk import JunkSpec, junk_corpus, junk_share
from scalinglab.store import open_store
from scalinglab.train import Diverged, RunPlan, plan_run, train_run

PROBE = "repetition"
DEFAULT_EPOCHS = (1, 2, 4, 8, 16, 32, 64)
DEFAULT_JUNK = (0.25, 0.5, 0.75)


@dataclass(frozen=True)
class RepetitionConfig:
    """The experiment. `base` fixes corpus, model and training recipe; `base.train.tokens` is
    the budget D every repeated and junk run spends.

    epochs: repetition counts e (1 is always included: it is the reference).
    junk: junk shares f of the train split (0 excluded: the e = 1 run is the clean reference).
    junk_kind, junk_span: what junk is and how long a junk "document" is (`probes.junk`).
    fresh: also train the single-epoch runs on each prefix (needed for the predictions).
    """

    base: RunConfig
    epochs: tuple[int, ...] = DEFAULT_EPOCHS
    junk: tuple[float, ...] = DEFAULT_JUNK
    junk_kind: str = "uniform"
    junk_span: int = 1024
    fresh: bool = True

    def __post_init__(self) -> None:
        if any(not isinstance(e, int) or e < 1 for e in self.epochs):
            raise UserError(f"--epochs must be positive whole numbers, got {list(self.epochs)}")
        object.__setattr__(self, "epochs", tuple(sorted(set(self.epochs) | {1})))
        junk = tuple(sorted({float(f) for f in self.junk if f != 0}))
        for f in junk:
            JunkSpec(f, self.junk_kind, self.junk_span)  # validates
        object.__setattr__(self, "junk", junk)
        if self.base.train.tokens is None:
            raise UserError("the repetition probe needs a token budget: --tokens D")

    @property
    def tokens(self) -> int:
        return int(self.base.train.tokens)

    def key(self) -> str:
        return config_hash({"base": self.base.to_dict(), "epochs": self.epochs, "junk": self.junk,
                            "junk_kind": self.junk_kind, "junk_span": self.junk_span, "fresh": self.fresh})


@dataclass(frozen=True)
class _Job:
    role: str  # repeated | fresh | junk
    epochs: int
    unique: int
    junk: float
    plan: RunPlan
    corpus_path: str
    out_dir: str
    db: str


@dataclass
class RepetitionResult:
    """The runs and what they show.

    table: one row per run: role, epochs (nominal), realised_epochs (passes over the unique
      windows, from the sampler), unique_tokens U, tokens D, junk_fraction (asked), junk_share
      (realised in the trained prefix), val_loss (nats/token), val_bpb, train_loss (on the run's
      own unique tokens), effective_tokens (the fresh tokens that would give this val loss, by
      inverting the fresh fit), predicted_loss (Muennighoff for repeated runs, "junk is wasted
      tokens" for junk runs), predicted_loss_fitted (repeated runs, with the fitted R*),
      run_id, status.
    fresh_fit: {"E", "B", "beta"} of L_fresh(U) = E + B/U^β, or None.
    rd_star_reference / rd_star_fitted: R_D* published and fitted here.
    """

    config: RepetitionConfig
    table: pd.DataFrame
    fresh_fit: dict | None
    rd_star_reference: float | None
    rd_star_fitted: float | None
    notes: list[str] = field(default_factory=list)
    key: str | None = None  # the result's key in the store
    figures: list[Path] = field(default_factory=list)

    def rows(self, role: str) -> pd.DataFrame:
        return self.table[self.table.role == role].sort_values(["epochs", "junk_fraction", "unique_tokens"])

    def to_dict(self) -> dict:
        return {"key": self.key, "config_key": self.config.key(), "tokens": self.config.tokens, "table": self.table.to_dict("records"),
                "fresh_fit": self.fresh_fit, "rd_star_reference": self.rd_star_reference,
                "rd_star_fitted": self.rd_star_fitted, "notes": self.notes,
                "base": self.config.base.to_dict(), "junk_kind": self.config.junk_kind,
                "junk_span": self.config.junk_span}


# --- planning --------------------------------------------------------------------------------------

def plan_jobs(cfg: RepetitionConfig, corpus: PreparedCorpus, out_root: Path, db: Path) -> list[_Job]:
    """Every run of the experiment (the junk corpora are built here, once, and cached)."""
    D, T = cfg.tokens, cfg.base.train.seq_len
    available = corpus.unique_train_tokens
    if D > available:
        raise UserError(f"--tokens {D:,} is more than the {available:,} tokens of the train split; one epoch "
                        f"needs D unique tokens: lower --tokens or use a larger corpus")
    smallest = D // max(cfg.epochs)
    if smallest < 3 * T:
        raise UserError(f"{max(cfg.epochs)} epochs of {D:,} tokens leave {smallest:,} unique tokens, fewer than three "
                        f"sequences of {T}; raise --tokens, lower the largest of --epochs or --seq-len")
    jobs: list[_Job] = []

    def add(role: str, epochs: int, unique: int, tokens: int, junk: float, data: PreparedCorpus, kind: str,
            name: str) -> None:
        run_cfg = dataclasses.replace(cfg.base, train=dataclasses.replace(cfg.base.train, tokens=float(tokens)),
                                      name=name)
        plan = plan_run(run_cfg, data, kind=kind)
        plan.max_unique_tokens = unique
        plan.group = PROBE
        plan.extra = {"probe": PROBE, "role": role, "epochs": epochs, "junk": junk, "unique_tokens": unique}
        jobs.append(_Job(role, epochs, unique, junk, plan, str(data.path), str(out_root / plan.run_id), str(db)))

    for e in cfg.epochs:
        U = D // e
        add("repeated", e, U, D, 0.0, corpus, probe_kind(PROBE), f"repeat {e}x of {U:,} tokens")
        if cfg.fresh and e > 1:
            add("fresh", 1, U, U, 0.0, corpus, probe_kind(PROBE), f"fresh {U:,} tokens")
    for f in cfg.junk:
        spec = JunkSpec(f, cfg.junk_kind, cfg.junk_span, seed=cfg.base.train.seed)
        # The junk variant is a different training set under the same corpus config, so its
        # tag goes into the run kind, which is part of the run's identity.
        add("junk", 1, D, D, f, junk_corpus(corpus, spec), f"{probe_kind(PROBE)}-{spec.tag}",
            f"{f:.0%} {cfg.junk_kind} junk, {D:,} tokens")
    return jobs


def _run_job(job: _Job) -> dict:
    """Train one run (or resume it, or find it done); return its final point."""
    corpus = PreparedCorpus(Path(job.corpus_path))
    try:
        result = train_run(job.plan, corpus, open_store(job.db), Path(job.out_dir), resume=True)
    except Diverged as exc:
        return {"run_id": exc.run_id, "status": "diverged"}
    final = result.points[-1] if result.points else {}
    return {"run_id": result.run_id, "status": result.status, **{k: final.get(k) for k in
            ("val_loss", "val_bpb", "train_loss", "epoch", "tokens")}}


# --- the experiment --------------------------------------------------------------------------------

def run_repetition(cfg: RepetitionConfig, corpus: PreparedCorpus, *, db: Path | str, out_root: Path | str,
                   workers: int = 1, figures: Path | str | None = None, console=None,
                   backend: BackendSpec | None = None) -> RepetitionResult:
    """Train every run not yet done, then compare with the predictions; stored under the result
    kind "probe:repetition", with its figure drawn in `figures` (and recorded) when given.
    `backend` trains the runs elsewhere (a Ray cluster: `out_root` and the corpus cache on a
    shared filesystem; the junk corpora are built here, before any run starts)."""
    db, out_root = Path(db), Path(out_root)
    jobs = plan_jobs(cfg, corpus, out_root, db)
    finals = run_parallel(_run_job, jobs, workers=workers, label="repetition", console=console,
                          describe=lambda job: job.plan.name, backend=backend, work_dir=out_root)
    rows = []
    for job, final in zip(jobs, finals):
        data = PreparedCorpus(Path(job.corpus_path))
        rows.append({
            "role": job.role, "epochs": job.epochs, "unique_tokens": job.unique,
            "tokens": job.plan.total_steps * job.plan.batch_tokens, "junk_fraction": job.junk,
            "junk_share": junk_share(data, job.unique), "realised_epochs": final.get("epoch"),
            "val_loss": final.get("val_loss"), "val_bpb": final.get("val_bpb"),
            "train_loss": final.get("train_loss"), "run_id": final["run_id"], "status": final["status"],
        })
    result = analyse(cfg, pd.DataFrame(rows))
    # The key names the runs, not just the request: a changed default recipe gives other runs
    # and so a result of its own instead of replacing the earlier one.
    key = config_hash({"config": cfg.key(), "runs": [job.plan.run_id for job in jobs]})
    result.key = key
    put_probe_result(open_store(db), PROBE, key, result.to_dict())
    if figures is not None:
        from scalinglab.report.figures import record
        from scalinglab.report.phase import repetition_figure

        result.figures = record([repetition_figure(result, Path(figures) / f"repetition-{key}.png")], db)
    return result


def analyse(cfg: RepetitionConfig, table: pd.DataFrame) -> RepetitionResult:
    """Build the fresh-data curve, predict the repeated and junk runs, fit R*."""
    notes: list[str] = []
    table = table.copy()
    for column in ("effective_tokens", "predicted_loss", "predicted_loss_fitted"):
        table[column] = np.nan
    ok = table.status == "done"
    fresh = table[ok & ((table.role == "fresh") | ((table.role == "repeated") & (table.epochs == 1)))]
    rd_star = _reference_rd_star(notes)
    if fresh.unique_tokens.nunique() < 2:
        notes.append("fewer than two fresh runs: no fresh-data curve, so no predictions")
        return RepetitionResult(config=cfg, table=table, fresh_fit=None, rd_star_reference=rd_star,
                                rd_star_fitted=None, notes=notes)
    tokens, loss = fresh.tokens.to_numpy(float), fresh.val_loss.to_numpy(float)
    fit = _fit_fresh(tokens, loss, notes) if fresh.unique_tokens.nunique() >= 3 else None
    curve = FreshCurve.from_runs(tokens, loss, fit)
    table.loc[ok, "effective_tokens"] = curve.inverse(table.loc[ok, "val_loss"].to_numpy(float))
    rep = ok & (table.role == "repeated")
    U, D = table.loc[rep, "unique_tokens"].to_numpy(float), table.loc[rep, "tokens"].to_numpy(float)
    if rd_star is not None:
        table.loc[rep, "predicted_loss"] = curve(effective_data(U, D, rd_star))
    fitted_rd = _fit_rd_star(U, D, table.loc[rep, "val_loss"].to_numpy(float), curve)
    if fitted_rd is not None:
        table.loc[rep, "predicted_loss_fitted"] = curve(effective_data(U, D, fitted_rd))
    junk = ok & (table.role == "junk")
    clean = (1 - table.loc[junk, "junk_share"].to_numpy(float)) * table.loc[junk, "tokens"].to_numpy(float)
    table.loc[junk, "predicted_loss"] = curve(clean)
    return RepetitionResult(config=cfg, table=table, fresh_fit=fit, rd_star_reference=rd_star,
                            rd_star_fitted=fitted_rd, notes=notes)


@dataclass(frozen=True)
class FreshCurve:
    """L_fresh(D), the val loss of D fresh tokens: interpolated in log-log between the fresh runs
    (no functional form assumed where there are measurements) and the fitted E + B/D^β outside
    their range. Losses are made non-increasing in D first (more fresh data does not hurt; a
    rise between neighbouring runs is seed noise)."""

    tokens: np.ndarray  # increasing
    loss: np.ndarray  # non-increasing
    fit: dict | None

    @classmethod
    def from_runs(cls, tokens: np.ndarray, loss: np.ndarray, fit: dict | None) -> "FreshCurve":
        order = np.argsort(tokens)
        return cls(tokens=tokens[order], loss=np.minimum.accumulate(loss[order]), fit=fit)

    def __call__(self, d) -> np.ndarray:
        d = np.asarray(d, float)
        inside = np.exp(np.interp(np.log(d), np.log(self.tokens), np.log(self.loss)))
        if self.fit is None:
            return inside
        law = self.fit["E"] + self.fit["B"] * d ** -self.fit["beta"]
        return np.where((d < self.tokens[0]) | (d > self.tokens[-1]), law, inside)

    def inverse(self, loss: np.ndarray) -> np.ndarray:
        """The fresh tokens that reach `loss` (NaN where neither the runs nor the fit say)."""
        loss = np.asarray(loss, float)
        xs, ys = np.log(self.loss[::-1]), np.log(self.tokens[::-1])  # loss increasing
        inside = np.exp(np.interp(np.log(loss), xs, ys))
        out = np.where((loss >= self.loss[-1]) & (loss <= self.loss[0]), inside, np.nan)
        if self.fit is not None:
            with np.errstate(all="ignore"):
                excess = loss - self.fit["E"]
                law = np.where(excess > 0, (excess / self.fit["B"]) ** (-1.0 / self.fit["beta"]), np.nan)
            out = np.where(np.isnan(out), law, out)
        return out


def effective_data(unique: np.ndarray, tokens: np.ndarray, rd_star: float) -> np.ndarray:
    """Muennighoff et al. 2023's D' = U + U·R*·(1 − exp(−R/R*)), R = D/U − 1 repetitions."""
    unique = np.minimum(unique, tokens)
    repeats = np.maximum(tokens / unique - 1.0, 0.0)
    return unique + unique * rd_star * (1.0 - np.exp(-repeats / rd_star))


def _reference_rd_star(notes: list[str]) -> float | None:
    try:
        from scalinglab.laws import MUENNIGHOFF_2023
    except ImportError:
        notes.append("scalinglab.laws is not available: no Muennighoff prediction (only the fitted R*)")
        return None
    return float(MUENNIGHOFF_2023.params["RD_star"])


def _fit_fresh(tokens: np.ndarray, loss: np.ndarray, notes: list[str]) -> dict | None:
    """L_fresh(D) = E + B/D^β fitted with the laws module (Huber on log residuals)."""
    try:
        from scalinglab import laws
    except ImportError:
        notes.append("scalinglab.laws is not available: no fresh-data fit")
        return None
    result = laws.fit(pd.DataFrame({"D": tokens, "loss": loss}), "data")
    if not result.converged:
        notes.append(f"the fresh-data fit did not converge ({result.message})")
    return {k: float(result.params[k]) for k in ("E", "B", "beta")}


def _fit_rd_star(unique: np.ndarray, tokens: np.ndarray, loss: np.ndarray, curve) -> float | None:
    """R* minimising the squared log error of L_fresh(D'(R*)) over the runs that repeat data."""
    from scipy.optimize import minimize_scalar

    repeat = tokens / unique > 1.5
    if repeat.sum() < 1:
        return None
    u, d, y = unique[repeat], tokens[repeat], loss[repeat]

    def error(log_r: float) -> float:
        return float(np.sum((np.log(curve(effective_data(u, d, math.exp(log_r)))) - np.log(y)) ** 2))

    best = minimize_scalar(error, bounds=(math.log(0.01), math.log(1e4)), method="bounded")
    return float(math.exp(best.x))


def parse_epochs(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UserError(f"--epochs: cannot read {text!r} as comma-separated whole numbers (e.g. 1,2,4,8)") from None
    if not values:
        raise UserError("--epochs needs at least one repetition count, e.g. 1,2,4,8,16,32,64")
    return values


def parse_junk(text: str) -> tuple[float, ...]:
    if text.strip().lower() in ("", "none", "0"):
        return ()
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UserError(f"--junk: cannot read {text!r} as comma-separated shares (e.g. 0.25,0.5,0.75)") from None


def summary_lines(result: RepetitionResult) -> Sequence[str]:
    """What the result says, in a few lines."""
    lines = []
    fit = result.fresh_fit
    if fit:
        lines.append(f"fresh-data law fitted to the fresh runs: L(U) = {fit['E']:.3f} + {fit['B']:.3g}/U^{fit['beta']:.3f} "
                     "(nats/token); predictions interpolate the runs themselves")
    if result.rd_star_fitted is not None:
        ref = f" (Muennighoff et al. 2023: {result.rd_star_reference:.2f})" if result.rd_star_reference else ""
        lines.append(f"fitted R_D* = {result.rd_star_fitted:.2f}{ref}: after R_D* repetitions a repeated token "
                     "has lost 1/e of its value")
    lines.extend(result.notes)
    return lines
