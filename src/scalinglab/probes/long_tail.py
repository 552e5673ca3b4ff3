"""The long-tail probe: does more data help a fixed-size model because rare facts finally get seen
often enough to be learnt, and when does capacity, not data, stop it?

Data: F facts `F k1 k2 k3 = v1 v2` over an alphabet of A symbols, the format of the facts-rules
probe: distinct random keys and random values, so a fact holds 2·log2 A bits (12 at A = 64) that
exist nowhere else. Training presents one fact per sequence, drawn i.i.d. from a Zipf
distribution over the facts (p(rank r) ∝ r^-s), so exposure counts span one to thousands. The
facts presented at update `step` are a pure function of the step: a run resumes exactly, and the
exact exposure count of every fact up to any step is recomputed from the stream (and saved with
each measurement) rather than trusted to a counter.

Per model size, one constant-LR trunk reads the stream; for each D (facts presented) a branch
starts from the trunk at (1 - cooldown_frac)·D and cools the LR to zero by D, the study's WSD
idea: on an i.i.d. stream the branch at D is the run of length D. Each branch is scored on every
fact: greedy recall (both value tokens right, teacher-forced) and stored bits max(0, 12 − NLL).

Controls at the same D: a uniform stream (every fact equally often) and the head alone (only the
`head` most frequent facts, presented as often as in the Zipf stream).

Runs are engine runs (resumable, kind "probe:long-tail" in the store); the summary is a result
of that kind.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from scalinglab.backends import BackendSpec
from scalinglab.config import OptimConfig, config_hash
from scalinglab.errors import UserError
from scalinglab.fsutil import atomic_open
from scalinglab.model import GPT, PARAM_CONVENTION, ModelConfig, count_params
from scalinglab.probes.common import (
    FitRecipe,
    SequenceTask,
    flat_optim,
    probe_kind,
    probe_model,
    probe_optim,
    put_probe_result,
    run_parallel,
    sequence_bits,
)
from scalinglab.probes.facts_rules import SEQ_LEN, _keys, _unique_codes, alpha_or_anchor, answer_mask, answers_correct
from scalinglab.store import open_store
from scalinglab.train import engine
from scalinglab.train.schedules import Schedule

PROBE = "long-tail"
LONG_TAIL_OPTIM = probe_optim(lr=1e-2, warmup=20, schedule="constant")
STREAMS = ("zipf", "uniform", "head")
EXPOSURE_BINS = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 2**62)


@dataclass(frozen=True)
class LongTailConfig:
    """The experiment.

    facts: F facts in the table; zipf: exponent s of the stream (p(rank r) ∝ r^-s, > 0).
    alphabet: symbols A per key/value position (a fact holds 2·log2 A bits).
    models: (layers, width) of each GPT; one trunk and its branches per model and stream.
    presented: the D values, facts presented to a branch (rounded to whole batches).
    batch_size: facts per update; cooldown_frac: each branch's share of its D.
    optim: AdamW at a constant LR after warmup on the trunk (`LONG_TAIL_OPTIM`).
    controls: also run the uniform and head-only streams; head: the facts counted as the head.
    seed: the facts, the stream and the initialisation.
    """

    facts: int = 16384
    zipf: float = 1.0
    alphabet: int = 64
    models: tuple[tuple[int, int], ...] = ((1, 16), (1, 32))
    presented: tuple[int, ...] = tuple(2**k for k in range(14, 21))
    batch_size: int = 256
    cooldown_frac: float = 0.2
    optim: OptimConfig = LONG_TAIL_OPTIM
    controls: bool = True
    head: int = 1000
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", tuple(tuple(m) for m in self.models))
        object.__setattr__(self, "presented", tuple(sorted({int(d) for d in self.presented})))
        if not isinstance(self.facts, int) or self.facts < 2:
            raise UserError(f"--facts must be a whole number >= 2, got {self.facts!r}")
        if not (isinstance(self.zipf, (int, float)) and math.isfinite(self.zipf) and self.zipf > 0):
            raise UserError(f"--zipf must be a number > 0 (1 is the usual exponent), got {self.zipf!r}")
        if not 4 <= self.alphabet <= 1024:
            raise UserError(f"--alphabet must lie between 4 and 1024 symbols, got {self.alphabet}")
        if self.facts > self.alphabet ** 3:
            raise UserError(f"{self.facts:,} facts need distinct keys but the alphabet gives only "
                            f"{self.alphabet ** 3:,}; raise --alphabet or lower --facts")
        if not self.models:
            raise UserError("--models needs at least one LAYERSxWIDTH")
        for shape in self.models:
            if len(shape) != 2:
                raise UserError(f"--models: each model is LAYERSxWIDTH, got {shape}")
            n_layer, d_model = shape
            if n_layer < 1 or d_model < 2 or d_model % 2:
                raise UserError(f"model {n_layer}x{d_model}: layers must be >= 1 and the width even and >= 2")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise UserError(f"--batch-size must be a positive whole number, got {self.batch_size!r}")
        if not self.presented or self.presented[0] < 5 * self.batch_size:
            raise UserError(f"every D in --presented must be at least 5 batches ({5 * self.batch_size:,} facts), "
                            f"got {list(self.presented)}")
        if not 0 < self.cooldown_frac < 1:
            raise UserError(f"--cooldown-frac must lie in (0, 1), got {self.cooldown_frac}")
        if not 1 <= self.head < self.facts:
            raise UserError(f"--head must lie in [1, facts), got {self.head}")
        if self.optim.lr is None or self.optim.warmup is None:
            raise UserError("optim.lr and optim.warmup must be set for the long-tail probe")
        self.optim.validate()

    @property
    def vocab_size(self) -> int:
        return self.alphabet + 3  # symbols, the fact and rule tags, "="

    @property
    def bits_per_fact(self) -> float:
        return 2 * math.log2(self.alphabet)

    @property
    def streams(self) -> tuple[str, ...]:
        return STREAMS if self.controls else STREAMS[:1]

    def model_config(self, n_layer: int, d_model: int) -> ModelConfig:
        return probe_model(n_layer, d_model, self.vocab_size)

    def key(self) -> str:
        return config_hash(flat_optim(asdict(self), LONG_TAIL_OPTIM, ("lr", "warmup")))

    def stream_identity(self, stream: str, model: tuple[int, int]) -> dict:
        """What fixes a trunk: not the D values of the sweep (the trunk extends to the largest)."""
        data = {"facts": self.facts, "zipf": self.zipf, "alphabet": self.alphabet, "seed": self.seed}
        return {"probe": PROBE, "data": data, "stream": stream, "head": self.head if stream == "head" else None,
                "model": self.model_config(*model).to_dict(), "batch_size": self.batch_size,
                "optim": flat_optim({"optim": asdict(self.optim)}, LONG_TAIL_OPTIM, ("lr", "warmup"))}


# --- the facts and the stream ------------------------------------------------------------------------

def fact_table(cfg: LongTailConfig) -> torch.Tensor:
    """(F, 7) rows `F k1 k2 k3 = v1 v2`; row i is the fact of Zipf rank i + 1."""
    A = cfg.alphabet
    keys = _keys(_unique_codes(np.random.default_rng([cfg.seed, 2]), A ** 3, cfg.facts), A)
    values = np.random.default_rng([cfg.seed, 3]).integers(0, A, size=(cfg.facts, 2))
    rows = np.column_stack([np.full(cfg.facts, A), keys, np.full(cfg.facts, A + 2), values])
    return torch.from_numpy(rows.astype(np.int64)).reshape(-1, SEQ_LEN)


def zipf_probs(cfg: LongTailConfig) -> np.ndarray:
    weights = np.arange(1, cfg.facts + 1, dtype=np.float64) ** -cfg.zipf
    return weights / weights.sum()


def stream_probs(cfg: LongTailConfig, stream: str) -> np.ndarray:
    """How often the stream presents each fact."""
    if stream == "uniform":
        return np.full(cfg.facts, 1.0 / cfg.facts)
    probs = zipf_probs(cfg)
    if stream == "head":
        probs[cfg.head:] = 0.0
        probs /= probs.sum()
    return probs


class FactStream:
    """Facts presented at each update: `batch` i.i.d. draws, a pure function of (seed, step)."""

    def __init__(self, probs: np.ndarray, batch: int, seed: int) -> None:
        self.cdf = np.cumsum(probs)
        self.cdf /= self.cdf[-1]
        self.batch, self.seed, self.n = batch, seed, len(probs)

    def ids(self, step: int) -> np.ndarray:
        draws = np.random.default_rng([self.seed, 11, step]).random(self.batch)
        return np.minimum(np.searchsorted(self.cdf, draws, side="right"), self.n - 1)

    def exposures(self, steps: int) -> np.ndarray:
        """Exact presentations of each fact in updates 0 .. steps-1."""
        counts = np.zeros(self.n, dtype=np.int64)
        for start in range(0, steps, 1024):
            ids = np.concatenate([self.ids(s) for s in range(start, min(steps, start + 1024))])
            counts += np.bincount(ids, minlength=self.n)
        return counts


def milestones(cfg: LongTailConfig, stream: str) -> list[tuple[int, int, int]]:
    """(D, branch end step, branch start step) per D. The head alone gets the head's share of D,
    so each head fact is presented as often as in the Zipf stream."""
    share = float(zipf_probs(cfg)[: cfg.head].sum()) if stream == "head" else 1.0
    out = []
    for d in cfg.presented:
        end = max(2, round(d * share / cfg.batch_size))
        out.append((d, end, max(1, end - max(1, round(cfg.cooldown_frac * end)))))
    return out


class FactStreamTask(SequenceTask):
    """A GPT reading the fact stream; an evaluation scores every fact of the table."""

    def __init__(self, model_cfg: ModelConfig, table: torch.Tensor, stream: FactStream, recipe: FitRecipe) -> None:
        mask = answer_mask().expand(table.shape[0], -1)
        super().__init__(model_cfg, table, mask, recipe, evaluate=self._recall, stop_when=None)
        self.stream = stream
        self.batch = stream.batch

    def batch_rows(self, step: int) -> torch.Tensor:
        return torch.from_numpy(self.stream.ids(step))

    def _recall(self, model: GPT, bits: np.ndarray) -> dict:
        return {"facts_recalled": float(answers_correct(model, self.data_dev).sum())}


# --- one trunk and its branches per model and stream -------------------------------------------------

@dataclass(frozen=True)
class _StreamJob:
    cfg: LongTailConfig
    model: tuple[int, int]
    stream: str
    out_dir: str
    db: str | None

    @property
    def label(self) -> str:
        return f"{self.model[0]}x{self.model[1]} {self.stream}"


def _run(task: FactStreamTask, job: _StreamJob, out_dir: Path, identity: dict, name: str, schedule: Schedule,
         **spec) -> engine.Outcome:
    cfg = job.cfg
    run_id = f"{PROBE}-{config_hash(identity)}"
    store, row = None, {}
    if job.db is not None:
        counts = count_params(task.model_cfg)
        store = open_store(job.db)
        row = dict(name=name, kind=probe_kind(PROBE), group_name=PROBE, config=identity, n_total=counts.total,
                   n_embedding=counts.embedding, n_nonembedding=counts.non_embedding,
                   param_convention=PARAM_CONVENTION, flops_per_token=task.fpt,
                   unique_train_tokens=cfg.facts * (SEQ_LEN - 1))
    run = engine.RunSpec(run_id=run_id, identity=identity, optim=cfg.optim, lr=cfg.optim.lr, schedule=schedule,
                         seed=cfg.seed, device=cfg.device, store=store, row=row, checkpoint_every=60.0, what="run",
                         fix="remove it or choose another --out", **spec)
    return engine.train(task, run, out_dir)


def _train_stream(job: _StreamJob) -> list[dict]:
    """Train the trunk, then every branch; score each branch on every fact (saved as facts.npz)."""
    cfg, out = job.cfg, Path(job.out_dir)
    table = fact_table(cfg)
    stream = FactStream(stream_probs(cfg, job.stream), cfg.batch_size, cfg.seed)
    model_cfg = cfg.model_config(*job.model)
    marks = milestones(cfg, job.stream)
    trunk_end = max(start for _, _, start in marks)
    recipe = FitRecipe(steps=trunk_end, optim=cfg.optim, batch_size=cfg.batch_size, seed=cfg.seed, device=cfg.device)
    identity = cfg.stream_identity(job.stream, job.model)
    warmup = min(cfg.optim.warmup, trunk_end)
    _run(FactStreamTask(model_cfg, table, stream, recipe), job, out / "trunk", {**identity, "role": "trunk"},
         f"long-tail {job.label} trunk", Schedule("constant", trunk_end, warmup),
         snapshot_steps=sorted({start for _, _, start in marks}), extendable=True)
    probs, mask = zipf_probs(cfg), answer_mask()
    rows = []
    for d, end, start in marks:
        branch = {**identity, "role": "branch", "presented": d, "start": start, "end": end,
                  "cooldown_frac": cfg.cooldown_frac}
        task = FactStreamTask(model_cfg, table, stream, recipe)
        outcome = _run(task, job, out / f"D{d}", branch, f"long-tail {job.label} D={d:,}",
                       Schedule("wsd", end, warmup, decay_start=start),
                       init_from=out / "trunk" / f"snap-{start}.pt", first_step=start)
        model = outcome.load_model()
        with engine.keep_torch_threads():
            torch.set_num_threads(1)
            bits = sequence_bits(model, table, mask)
            correct = answers_correct(model, table)
        exposures = stream.exposures(end)
        path = out / f"D{d}" / "facts.npz"
        with atomic_open(path, suffix=".npz") as fh:
            np.savez(fh, exposures=exposures, bits=bits, correct=correct)
        stored = np.clip(cfg.bits_per_fact - bits, 0, None)
        rows.append({
            "model": f"{job.model[0]}x{job.model[1]}", "stream": job.stream, "D": d, "presented": end * cfg.batch_size,
            "steps": end, "facts_recalled": int(correct.sum()), "bits_stored": float(stored.sum()),
            "head_recall": float(correct[: cfg.head].mean()), "tail_recall": float(correct[cfg.head:].mean()),
            "weighted_accuracy": float((probs * correct).sum()), "facts_seen": int((exposures > 0).sum()),
            "run_id": outcome.run_id, "facts_path": str(path),
        })
    return rows


# --- the analysis ----------------------------------------------------------------------------------------

def exposure_bins(exposures: np.ndarray, correct: np.ndarray) -> pd.DataFrame:
    """Recall per bin of exposure counts [lo, hi) (powers of two; 0 on its own)."""
    edges = np.asarray(EXPOSURE_BINS)
    which = np.searchsorted(edges, exposures, side="right") - 1
    rows = []
    for i in np.unique(which):
        inside = which == i
        rows.append({"lo": int(edges[i]), "hi": int(edges[i + 1]), "facts": int(inside.sum()),
                     "mean_exposures": float(exposures[inside].mean()), "recall": float(correct[inside].mean())})
    return pd.DataFrame(rows)


def rises(bins: pd.DataFrame, min_facts: int = 30) -> bool:
    """Whether recall never falls from one exposure bin to the next by more than sampling noise
    (two standard errors of the difference, plus 0.02), over bins of at least `min_facts` facts."""
    b = bins[bins.facts >= min_facts]
    p, n = b.recall.to_numpy(), b.facts.to_numpy()
    se = np.sqrt(p * (1 - p) / n)
    noise = 2 * np.sqrt(se[1:] ** 2 + se[:-1] ** 2) + 0.02
    return bool((np.diff(p) >= -noise).all())


def logistic_fit(exposures: np.ndarray, correct: np.ndarray) -> tuple[float, float]:
    """(c50, slope): recall ≈ sigmoid(slope·(log10 n − log10 c50)) over facts seen at least once,
    by maximum likelihood; (nan, nan) when the data cannot place the curve (no variation in
    recall or in exposures), and c50 nan when it lies outside the exposures seen (no
    extrapolation)."""
    from scipy.optimize import minimize

    seen = exposures > 0
    x, y = np.log10(exposures[seen]), correct[seen].astype(np.float64)
    if len(x) < 10 or y.min() == y.max() or x.min() == x.max():
        return math.nan, math.nan

    def nll(theta: np.ndarray) -> float:
        z = theta[0] + theta[1] * x
        return float(np.mean(np.logaddexp(0, z) - y * z))

    a, b = minimize(nll, np.zeros(2), method="BFGS").x
    if b <= 0 or not x.min() <= -a / b <= x.max():  # no 50% point among the exposures seen
        return math.nan, float(b)
    return float(10 ** (-a / b)), float(b)


def growth_exponent(d: pd.Series, k: pd.Series) -> float:
    """The log-log slope of K against D (least squares), nan with fewer than two positive points."""
    ok = (d > 0) & (k > 0)
    if ok.sum() < 2:
        return math.nan
    return float(np.polyfit(np.log(d[ok]), np.log(k[ok]), 1)[0])


@dataclass
class LongTailResult:
    """table: one row per (model, stream, D): facts_recalled K, bits_stored S, capacity_share
    S/(α·N), c50 and slope of the logistic recall curve (slope per decade of exposures),
    head_recall, tail_recall (ranks beyond `head`), weighted_accuracy (recall weighted by the Zipf
    stream: the accuracy on facts as they are asked), facts_seen, monotone (binned recall never
    falls as exposures grow, beyond sampling noise: `rises`), params, run_id, facts_path.
    bins: recall per exposure bin, with model, stream and D."""

    config: LongTailConfig
    table: pd.DataFrame
    bins: pd.DataFrame
    alpha: float
    alpha_source: str
    notes: list[str] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"config": asdict(self.config), "table": self.table.to_dict("records"),
                "bins": self.bins.to_dict("records"), "alpha": self.alpha, "alpha_source": self.alpha_source,
                "bits_per_fact": self.config.bits_per_fact, "notes": self.notes}


def analyse(cfg: LongTailConfig, rows: list[dict], alpha: float, alpha_source: str) -> LongTailResult:
    table = pd.DataFrame(rows).sort_values(["model", "stream", "D"], kind="stable").reset_index(drop=True)
    params = {f"{m[0]}x{m[1]}": count_params(cfg.model_config(*m)).total for m in cfg.models}
    table["params"] = table.model.map(params)
    table["capacity_share"] = table.bits_stored / (alpha * table.params)
    fits, monotone, all_bins = [], [], []
    for row in table.itertuples():
        facts = np.load(row.facts_path)
        fits.append(logistic_fit(facts["exposures"], facts["correct"]))
        bins = exposure_bins(facts["exposures"], facts["correct"])
        monotone.append(rises(bins))
        all_bins.append(bins.assign(model=row.model, stream=row.stream, D=row.D))
    table["c50"] = [f[0] for f in fits]
    table["slope"] = [f[1] for f in fits]
    table["monotone"] = monotone
    return LongTailResult(config=cfg, table=table, bins=pd.concat(all_bins, ignore_index=True), alpha=alpha,
                          alpha_source=alpha_source)


def run_long_tail(cfg: LongTailConfig, out_root: Path | str, *, db: Path | str | None = None, workers: int = 1,
                  figures: Path | str | None = None, console=None,
                  backend: BackendSpec | None = None) -> LongTailResult:
    """Every trunk and branch (resumable; finished runs are loaded), the analysis, the stored
    result and, with `figures`, its figure."""
    out_root = Path(out_root)
    jobs = []
    for model in cfg.models:
        for stream in cfg.streams:
            folder = f"{stream}-{model[0]}x{model[1]}-{config_hash(cfg.stream_identity(stream, model))}"
            jobs.append(_StreamJob(cfg, model, stream, str(out_root / folder), None if db is None else str(db)))
    # the widest models first: with several workers the longest jobs start early
    jobs.sort(key=lambda j: (-j.model[0] * j.model[1], STREAMS.index(j.stream)))
    done = run_parallel(_train_stream, jobs, workers=workers, label="long-tail", console=console,
                        describe=lambda job: job.label, backend=backend, work_dir=out_root)
    result = analyse(cfg, [row for rows in done for row in rows], *alpha_or_anchor(db))
    result.notes = notes(result)
    if db is not None:
        put_probe_result(open_store(db), PROBE, cfg.key(), result.to_dict())
    if figures is not None:
        from scalinglab.report.figures import record
        from scalinglab.report.knowledge import long_tail_figure

        result.figures = record([long_tail_figure(result, Path(figures) / f"long-tail-{cfg.key()}.png")], db)
    return result


# --- what it says --------------------------------------------------------------------------------------

def notes(result: LongTailResult) -> list[str]:
    """The claims the probe tests, each with the measured numbers."""
    t, cfg = result.table, result.config
    zipf = t[t.stream == "zipf"]
    out = []
    falls = zipf[~zipf.monotone]
    out.append("recall rises with exposures at every D" if falls.empty else
               f"recall falls with exposures somewhere at {len(falls)} of {len(zipf)} (model, D): "
               + ", ".join(f"{r.model} D={r.D:,}" for r in falls.itertuples()))
    for model, rows in zipf.groupby("model", sort=False):
        below = rows[rows.capacity_share < 0.5]
        above = rows[rows.capacity_share >= 0.5]
        parts = [f"{model}: K grows as D^{growth_exponent(rows.D, rows.facts_recalled):.2f} over the sweep"]
        if len(below) >= 2:
            parts.append(f"D^{growth_exponent(below.D, below.facts_recalled):.2f} while S < α·N/2")
        if len(above) >= 2:
            parts.append(f"D^{growth_exponent(above.D, above.facts_recalled):.2f} once S >= α·N/2")
        first, last = rows.iloc[0], rows.iloc[-1]
        parts.append(f"S/(α·N) {first.capacity_share:.2f} -> {last.capacity_share:.2f}; "
                     f"c50 {_fmt(first.c50)} -> {_fmt(last.c50)} exposures")
        out.append("; ".join(parts))
    top = t.D.max()
    for model, rows in t[t.D == top].groupby("model", sort=False):
        by = rows.set_index("stream")
        if "uniform" in by.index:
            u = by.loc["uniform"]
            out.append(f"{model} at D={top:,}: Zipf stream recalls {by.loc['zipf'].facts_recalled:,} facts, "
                       f"uniform stream {u.facts_recalled:,} ({top / cfg.facts:.0f} exposures each; stores "
                       f"{u.bits_stored / u.params:.2f} bits/param)")
        if "head" in by.index:
            out.append(f"{model} at D={top:,}: head recall {by.loc['zipf'].head_recall:.3f} in the full stream, "
                       f"{by.loc['head'].head_recall:.3f} trained on the head alone")
    return out


def _fmt(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:,.0f}" if value >= 10 else f"{value:.1f}"


def summary_lines(result: LongTailResult) -> Sequence[str]:
    cfg = result.config
    lines = [f"{cfg.facts:,} facts of {cfg.bits_per_fact:.0f} bits, Zipf exponent {cfg.zipf:g}; "
             f"α = {result.alpha:.2f} bits/param ({result.alpha_source})"]
    return lines + result.notes

