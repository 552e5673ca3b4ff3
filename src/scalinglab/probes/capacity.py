"""Memorisation capacity in bits per parameter, measured on uniformly random sequences.

Following Morris et al. 2025 ("How much do language models memorize?"): train GPTs of several
sizes on data sets of uniformly random token sequences, whose information content is known
exactly, and count how many of those bits each model has stored. A model's capacity is the
plateau its memorised bits reach as the data set grows past what it can hold; capacity = α·P
across sizes gives α in bits per parameter.

Conventions (stored with every result):
- A sequence is S tokens drawn uniformly from V. The model predicts tokens 2..S from their
  prefixes; the first token has no context and is not scored (with no beginning-of-sequence
  token, the most a model could learn about first tokens is their marginal, which is uniform).
  So the data's entropy is H(data) = n·(S−1)·log2 V bits, and each sequence carries
  h = (S−1)·log2 V.
- Memorised bits of a model = Σ over training sequences max(0, h − NLL_bits(sequence)). The
  uniform model scores exactly h, so anything below h is information about that particular
  sequence; clipping at 0 keeps a badly predicted sequence from cancelling another's stored
  bits. Memorised bits never exceed H(data).
- Not all of H(data) can be stored: sequences that share their first token look alike until
  they differ. The best any model can do is the empirical conditional of the training set,
  p(x_t+1 | x_1..t) = c(x_1..t+1) / c(x_1..t) with c counting training sequences by prefix; its
  NLL telescopes to log2 c(x_1) per sequence. So the *knowable* bits are
  H(data) − Σ_i log2 c(first token of i), and "fully memorised" is judged against them.
  (The GPT here has rotary positions and no beginning-of-sequence token, so a sequence that
  opens with a repeated token, "a a ...", gives identical states at its first two positions and
  the model cannot predict them differently. That happens to 1/V of the sequences and costs a
  few bits each: ~1% of the knowable bits at V = 16, ~0.1% at V = 256.)
- P is the total parameter count (embedding included: with random tokens the embedding table
  stores bits like any other weight; Morris et al. count all parameters). The fit is also
  reported against non-embedding parameters.
- Capacity of a model = the largest memorised bits over its data set sizes (the plateau).

Convergence. Morris et al. train ~10^6 steps; a CPU budget allows ~10^3. So each model's
capacity fit is repeated with half the steps (a "twin": same data, same schedule, annealed to
the end like the full fit), and `doubling_gain` = (M(T) − M(T/2)) / M(T) is the share of the
capacity gained by the last doubling of training (0 for a converged fit). `doublings_to_anchor`
extrapolates that gain log-linearly to the anchor's 3.6 bits/parameter (an optimistic count:
the gain per doubling shrinks as training goes on). Fits that memorise their whole data set stop
early and are converged by definition. Every fit also reports `second_half_gain`, the share of
its memorised bits gained over its own second half; within one cosine run the half-way point is
not annealed, so this overstates what a doubling of steps buys and serves only as a cheap check.

Held-out loss (double descent). For uniformly random data no model can beat log2 V bits per
token on fresh sequences, so the held-out curve is the *excess* held-out loss: bits per token on
fixed fresh sequences minus log2 V. It is zero for a model that knows it knows nothing about
unseen data and grows with confident wrong predictions, i.e. with overfitting; plotted against
H(data)/capacity it shows where the peak of the variance term falls.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from scalinglab.backends import BackendSpec
from scalinglab.config import OptimConfig
from scalinglab.errors import UserError
from scalinglab.model import ModelConfig, count_params, flops_per_token
from scalinglab.probes.common import (
    FitRecipe,
    ProbeRecord,
    fit_sequences,
    flat_optim,
    probe_optim,
    probe_results,
    put_probe_result,
    run_parallel,
    sequence_bits,
)

PROBE = "capacity"
# Morris et al.'s setting on a CPU budget: a high peak LR with a cosine decay, no weight decay.
CAPACITY_OPTIM = probe_optim(lr=3e-2, schedule="cosine", warmup=50)
ANCHOR_BITS_PER_PARAM = 3.6  # Morris et al. 2025, bf16 (3.83 in fp32)
ANCHOR_BITS_PER_PARAM_FP32 = 3.83
FULLY_MEMORISED = 0.99  # of the knowable bits: a run this far stops early, converged
MIN_SIZES_FOR_ALPHA = 3  # model sizes behind an α that other probes prefer
CONVERGED_GAIN = 0.02  # a run that gained < 2% of its bits over its last doubling of steps


# --- configuration -----------------------------------------------------------------------------

@dataclass(frozen=True)
class CapacityConfig:
    """A capacity probe.

    models: (n_layer, d_model) shapes; heads of 16 dims (one head below 32 wide).
    vocab_size, seq_len: V and S of the random sequences.
    data_bits_per_param: data set sizes per model, as H(data) / P (total parameters). Sizes well
      below the capacity are memorised fully; those above show the plateau.
    steps, optim: the training recipe (`CAPACITY_OPTIM`: AdamW, β = (0.9, 0.98), cosine, no decay).
    max_batch_tokens: data sets up to this many scored tokens train full batch; larger ones in
      minibatches of about this size (each step then costs about the same).
    heldout_sequences: fresh random sequences for the held-out (double descent) curve.
    eval_points: evaluations over a run (memorised bits, held-out loss).
    seed: data and initialisation.
    """

    models: tuple[tuple[int, int], ...] = ((1, 24), (1, 32), (1, 48), (1, 64))
    vocab_size: int = 256
    seq_len: int = 32
    data_bits_per_param: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0, 6.0)
    steps: int = 4000
    optim: OptimConfig = CAPACITY_OPTIM
    max_batch_tokens: int = 2048
    heldout_sequences: int = 256
    eval_points: int = 12
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not self.models:
            raise UserError("give at least one model shape, e.g. --models 1x16,1x32")
        for n_layer, d_model in self.models:
            model_config(n_layer, d_model, self.vocab_size)  # validates the shape
        if not 2 <= self.vocab_size <= 65536:
            raise UserError(f"--vocab must lie in [2, 65536], got {self.vocab_size}")
        if self.seq_len < 2:
            raise UserError(f"--seq-len must be >= 2 (the first token is never scored), got {self.seq_len}")
        if not self.data_bits_per_param or any(not (r > 0 and math.isfinite(r)) for r in self.data_bits_per_param):
            raise UserError(f"--bits-per-param sizes must be positive numbers, got {list(self.data_bits_per_param)}")
        for name in ("steps", "max_batch_tokens", "heldout_sequences", "eval_points"):
            if getattr(self, name) <= 0:
                raise UserError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.optim.lr is None or self.optim.warmup is None:
            raise UserError("optim.lr and optim.warmup must be set for the capacity probe")
        self.optim.validate()
        if self.steps < 4:
            raise UserError(f"--steps must be >= 4 (convergence is judged over the last doubling), got {self.steps}")

    @property
    def bits_per_sequence(self) -> float:
        return (self.seq_len - 1) * math.log2(self.vocab_size)

    def sequences_for(self, params: int, ratio: float) -> int:
        """Sequences whose entropy is `ratio` bits per parameter (at least one)."""
        return max(1, round(ratio * params / self.bits_per_sequence))

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]

    def fit_key(self) -> str:
        """What one fit's folder is keyed by: every setting but the lists of models and data sizes,
        so a changed recipe gets new folders and adding a size reuses the finished ones."""
        recipe = {k: v for k, v in self.to_dict().items() if k not in ("models", "data_bits_per_param")}
        return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]

    def to_dict(self) -> dict:
        data = flat_optim(asdict(self), CAPACITY_OPTIM, ("lr", "schedule", "warmup", "weight_decay"))
        data["models"] = [list(m) for m in self.models]
        data["data_bits_per_param"] = list(self.data_bits_per_param)
        return data


def model_config(n_layer: int, d_model: int, vocab_size: int) -> ModelConfig:
    n_head = max(1, d_model // 16) if d_model >= 32 else 1
    while n_head > 1 and (d_model % n_head or (d_model // n_head) % 2):
        n_head -= 1
    return ModelConfig(n_layer=n_layer, d_model=d_model, n_head=n_head, vocab_size=vocab_size)


def parse_models(text: str) -> tuple[tuple[int, int], ...]:
    """'1x16,1x32,2x32' -> ((1, 16), (1, 32), (2, 32))."""
    shapes = []
    for item in text.replace(" ", "").split(","):
        if not item:
            continue
        try:
            n_layer, d_model = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise UserError(f"--models: cannot read {item!r}; write shapes as LAYERSxWIDTH, e.g. 1x16,1x32,2x32") from None
        shapes.append((n_layer, d_model))
    if not shapes:
        raise UserError("--models is empty; write shapes as LAYERSxWIDTH, e.g. 1x16,1x32,2x32")
    return tuple(shapes)


def random_sequences(n: int, cfg: CapacityConfig, stream: str = "train") -> torch.Tensor:
    """n uniformly random sequences (n, S). The training pool is nested: the first n sequences
    of a larger data set are the smaller one, so data set sizes differ only in size."""
    generator = torch.Generator().manual_seed(cfg.seed * 1000 + {"train": 1, "heldout": 2}[stream])
    return torch.randint(0, cfg.vocab_size, (n, cfg.seq_len), generator=generator, dtype=torch.int64)


# --- one run: a model on a data set ------------------------------------------------------------

@dataclass(frozen=True)
class CapacityJob:
    cfg: CapacityConfig
    shape: tuple[int, int]
    n_sequences: int
    out_dir: Path
    db: Path | None
    steps: int | None = None  # a convergence twin's shorter run (None: cfg.steps)

    @property
    def label(self) -> str:
        twin = f" ({self.steps} steps)" if self.steps else ""
        return f"{self.shape[0]}x{self.shape[1]} n={self.n_sequences}{twin}"

    def cost(self) -> float:
        """Relative compute, to start the largest runs first."""
        mc = model_config(*self.shape, self.cfg.vocab_size)
        tokens = min(self.n_sequences * (self.cfg.seq_len - 1), self.cfg.max_batch_tokens)
        return (self.steps or self.cfg.steps) * tokens * flops_per_token(mc, self.cfg.seq_len - 1)


def recipe_for(cfg: CapacityConfig, n_sequences: int, steps: int | None = None) -> FitRecipe:
    steps = steps or cfg.steps
    full_batch_sequences = max(1, cfg.max_batch_tokens // (cfg.seq_len - 1))
    batch = None if n_sequences <= full_batch_sequences else full_batch_sequences
    # Evaluate at even fractions of the run, so the point half-way (for second_half_gain) exists.
    eval_every = max(1, steps // (2 * max(1, cfg.eval_points // 2)))
    optim = replace(cfg.optim, warmup=min(cfg.optim.warmup, steps // 4))
    return FitRecipe(steps=steps, optim=optim, batch_size=batch, eval_every=eval_every, seed=cfg.seed,
                     device=cfg.device)


def run_capacity_job(job: CapacityJob) -> dict:
    """Train (or load, when finished) one model on one data set; return its row."""
    cfg = job.cfg
    mc = model_config(*job.shape, cfg.vocab_size)
    counts = count_params(mc)
    data = random_sequences(job.n_sequences, cfg)
    heldout = random_sequences(cfg.heldout_sequences, cfg, "heldout")
    h = cfg.bits_per_sequence
    entropy = job.n_sequences * h
    knowable = knowable_bits(data, h)
    log2v = math.log2(cfg.vocab_size)

    def evaluate(model, train_bits: np.ndarray) -> dict:
        held = sequence_bits(model, heldout)
        return {"memorised_bits": memorised_bits(train_bits, h),
                "heldout_excess": float(held.mean() / (cfg.seq_len - 1) - log2v)}

    def fully_memorised(points: list[dict]) -> bool:
        return points[-1]["memorised_bits"] >= FULLY_MEMORISED * knowable

    cpu_start = time.process_time()
    record = None
    if job.db is not None:
        record = ProbeRecord(job.db, PROBE, name=f"capacity {job.label}",
                             meta={"n_sequences": job.n_sequences, "data_bits": entropy, "vocab_size": cfg.vocab_size,
                                   "seq_len": cfg.seq_len, "probe_key": cfg.key()})
    result = fit_sequences(mc, data, recipe_for(cfg, job.n_sequences, job.steps), job.out_dir, evaluate=evaluate,
                           stop_when=fully_memorised, record=record,
                           identity={"probe": PROBE, "data_seed": cfg.seed, "heldout": cfg.heldout_sequences})
    final = result.final
    memorised = memorised_bits(result.seq_bits, h)
    half = _point_at_half(result.points)
    gain = 0.0 if result.stopped_early else (memorised - half["memorised_bits"]) / max(memorised, 1e-9)
    return {
        "model": f"{job.shape[0]}x{job.shape[1]}", "n_layer": job.shape[0], "d_model": job.shape[1],
        "params": counts.total, "params_nonembedding": counts.non_embedding, "n_sequences": job.n_sequences,
        "data_bits": entropy, "data_bits_per_param": entropy / counts.total, "knowable_bits": knowable,
        "memorised_bits": memorised, "memorised_fraction": memorised / knowable, "bits_per_param": memorised / counts.total,
        "train_bits_per_token": float(result.seq_bits.mean() / (cfg.seq_len - 1)),
        "heldout_excess_bits_per_token": final["heldout_excess"], "steps": result.steps,
        "stopped_early": result.stopped_early, "second_half_gain": gain,
        "wall_time": result.wall_time, "cpu_time": time.process_time() - cpu_start, "run_id": result.run_id,
    }


def knowable_bits(data: torch.Tensor, bits_per_sequence: float) -> float:
    """The most any model can store about `data` (see the module doc): H(data) minus, for each
    sequence, log2 of how many training sequences share its first token."""
    _, counts = torch.unique(data[:, 0], return_counts=True)
    ambiguity = float((counts.double() * torch.log2(counts.double())).sum())
    return data.shape[0] * bits_per_sequence - ambiguity


def memorised_bits(seq_bits: np.ndarray, bits_per_sequence: float) -> float:
    """Σ max(0, h − NLL) over sequences: the bits a model has stored about its training set."""
    return float(np.clip(bits_per_sequence - np.asarray(seq_bits, dtype=np.float64), 0.0, None).sum())


def _point_at_half(points: list[dict]) -> dict:
    """The evaluation closest to (and not after) half of the final step."""
    target = points[-1]["step"] / 2
    earlier = [p for p in points if p["step"] <= target]
    return earlier[-1] if earlier else {"step": 0, "memorised_bits": 0.0}


# --- the fit of capacity = α·P -----------------------------------------------------------------

@dataclass(frozen=True)
class AlphaFit:
    """capacity = alpha · P, least squares through the origin.

    low/high: a 95% t-interval from the residual scatter across models (k−1 degrees of freedom;
    None with a single model). r2: 1 − SS_res/SS_tot with SS_tot about the mean capacity (the
    honest R² for a line forced through the origin; it can be negative). log_slope: the slope of
    log capacity on log P (1 when capacity is proportional to size)."""

    alpha: float
    low: float | None
    high: float | None
    r2: float | None
    log_slope: float | None
    n_models: int
    convention: str

    def predict(self, params: float) -> float:
        return self.alpha * params


def fit_alpha(params: np.ndarray, capacity: np.ndarray, convention: str = "total") -> AlphaFit:
    from scipy import stats

    x, y = np.asarray(params, dtype=float), np.asarray(capacity, dtype=float)
    if len(x) == 0 or np.any(x <= 0):
        raise UserError("fitting α needs at least one model with positive capacity")
    alpha = float((x * y).sum() / (x * x).sum())
    k = len(x)
    low = high = r2 = slope = None
    if k >= 2:
        resid = y - alpha * x
        se = math.sqrt(float((resid ** 2).sum()) / (k - 1) / float((x * x).sum()))
        t = float(stats.t.ppf(0.975, k - 1))
        low, high = alpha - t * se, alpha + t * se
        ss_tot = float(((y - y.mean()) ** 2).sum())
        r2 = 1.0 - float((resid ** 2).sum()) / ss_tot if ss_tot > 0 else None
        if np.all(y > 0) and len(set(x.tolist())) > 1:
            slope = float(np.polyfit(np.log(x), np.log(y), 1)[0])
    return AlphaFit(alpha=alpha, low=low, high=high, r2=r2, log_slope=slope, n_models=k, convention=convention)


# --- the probe ---------------------------------------------------------------------------------

@dataclass
class CapacityResult:
    """runs: one row per (model, data set). twins: the half-length twins of the capacity fits.
    models: one row per model with its capacity (the plateau), its convergence and the data-set
    size at which it was reached. fit / fit_nonembedding: α against total and non-embedding
    parameters."""

    config: CapacityConfig
    runs: "pd.DataFrame"  # noqa: F821
    twins: "pd.DataFrame"  # noqa: F821
    models: "pd.DataFrame"  # noqa: F821
    fit: AlphaFit
    fit_nonembedding: AlphaFit
    figures: list[Path] = field(default_factory=list)

    @property
    def cpu_time(self) -> float:
        """CPU seconds spent training in this invocation (finished fits are loaded, ~0)."""
        return float(self.runs["cpu_time"].sum() + (self.twins["cpu_time"].sum() if len(self.twins) else 0.0))

    def summary(self) -> dict:
        return {
            "alpha": self.fit.alpha, "alpha_low": self.fit.low, "alpha_high": self.fit.high, "r2": self.fit.r2,
            "log_slope": self.fit.log_slope, "param_convention": "total",
            "alpha_nonembedding": self.fit_nonembedding.alpha, "alpha_nonembedding_low": self.fit_nonembedding.low,
            "alpha_nonembedding_high": self.fit_nonembedding.high, "r2_nonembedding": self.fit_nonembedding.r2,
            "anchor_bits_per_param": ANCHOR_BITS_PER_PARAM, "anchor_bits_per_param_fp32": ANCHOR_BITS_PER_PARAM_FP32,
            "median_doubling_gain": float(self.models["doubling_gain"].median()),
            "max_doubling_gain": float(self.models["doubling_gain"].max()),
            "median_doublings_to_anchor": _finite_median(self.models["doublings_to_anchor"]),
            "converged": bool((self.models["doubling_gain"] < CONVERGED_GAIN).all()),
            "config": self.config.to_dict(),
            "models": self.models.to_dict(orient="records"),
            "runs": self.runs.to_dict(orient="records"),
            "twins": self.twins.to_dict(orient="records"),
            "conventions": {
                "scored_tokens": "tokens 2..S of each sequence; the first token is not scored",
                "data_bits": "n * (S-1) * log2(V)",
                "knowable_bits": "data_bits - sum over sequences of log2(training sequences sharing its first token)",
                "memorised_fraction": "memorised_bits / knowable_bits",
                "memorised_bits": "sum over sequences of max(0, (S-1)*log2(V) - NLL bits)",
                "capacity": "max memorised bits over data set sizes",
                "doubling_gain": "(M(T) - M(T/2)) / M(T), M(T/2) from a twin fit with half the steps",
                "second_half_gain": "share of a fit's memorised bits gained in its own second half (not annealed)",
                "heldout_excess": "held-out bits/token on fresh random sequences minus log2(V)",
            },
        }


def capacity_runs(runs: "pd.DataFrame") -> "pd.DataFrame":  # noqa: F821
    """Each model's capacity fit: the row with its most memorised bits."""
    return runs.loc[runs.groupby("model", sort=False)["memorised_bits"].idxmax()]


def model_table(runs: "pd.DataFrame", half_bits: dict[str, float]) -> "pd.DataFrame":  # noqa: F821
    """Per model: capacity (max memorised bits over data sizes) and its convergence, from the
    memorised bits of the capacity fit's half-length twin (`half_bits`, by model; a model whose
    capacity fit stored everything has none and is converged)."""
    import pandas as pd

    rows = []
    for model, group in runs.groupby("model", sort=False):
        best = group.loc[group["memorised_bits"].idxmax()]
        largest = group.loc[group["data_bits"].idxmax()]
        half = half_bits.get(model, best["memorised_bits"])
        per_doubling = best["memorised_bits"] - half
        target = ANCHOR_BITS_PER_PARAM * best["params"]
        to_anchor = (target - best["memorised_bits"]) / per_doubling if per_doubling > 0 else math.inf
        rows.append({
            "model": model, "n_layer": int(best["n_layer"]), "d_model": int(best["d_model"]),
            "params": int(best["params"]), "params_nonembedding": int(best["params_nonembedding"]),
            "capacity_bits": float(best["memorised_bits"]), "bits_per_param": float(best["bits_per_param"]),
            "at_data_bits_per_param": float(best["data_bits_per_param"]),
            "memorised_bits_largest_data": float(largest["memorised_bits"]), "memorised_bits_half_steps": float(half),
            "doubling_gain": float(per_doubling / best["memorised_bits"]),
            "doublings_to_anchor": float(max(to_anchor, 0.0)),
            "saturated": bool((group["memorised_fraction"] < 0.95).any()),
            "double_descent_peak_data_bits_per_param": float(
                group.loc[group["heldout_excess_bits_per_token"].idxmax(), "data_bits_per_param"]),
        })
    return pd.DataFrame(rows).sort_values("params").reset_index(drop=True)


def capacity_jobs(cfg: CapacityConfig, out_dir: Path, db: Path | None) -> list[CapacityJob]:
    jobs = []
    for shape in cfg.models:
        params = count_params(model_config(*shape, cfg.vocab_size)).total
        sizes = sorted({cfg.sequences_for(params, r) for r in cfg.data_bits_per_param})
        for n in sizes:
            jobs.append(CapacityJob(cfg, shape, n, Path(out_dir) / f"{shape[0]}x{shape[1]}-n{n}-{cfg.fit_key()}", db))
    return jobs


def run_capacity(cfg: CapacityConfig, out_dir: Path | str, db: Path | str | None = None, *, workers: int = 2,
                 figures: Path | str | None = None, console=None, backend: BackendSpec | None = None) -> CapacityResult:
    """Run (or resume) every (model, data set) fit, fit α and store the summary.

    Finished fits are loaded from `out_dir`, never retrained. With `db`, every fit is a run of
    kind "probe:capacity" and the summary a result of that kind (key: the config's hash).
    `figures`: a folder to draw the figures in (recorded in the store with `db`)."""
    import pandas as pd

    out_dir = Path(out_dir)
    db_path = Path(db) if db is not None else None
    store = None
    if db_path is not None:
        from scalinglab.store import open_store

        store = open_store(db_path)  # fail early on a bad --db
    jobs = sorted(capacity_jobs(cfg, out_dir, db_path), key=lambda j: -j.cost())
    rows = run_parallel(run_capacity_job, jobs, workers=workers, label="capacity", describe=lambda j: j.label,
                        console=console, backend=backend, work_dir=out_dir)
    order = {shape: i for i, shape in enumerate(cfg.models)}
    runs = pd.DataFrame(rows)
    runs = runs.sort_values(by=["model", "n_sequences"], key=lambda c: c.map(
        lambda v: order.get(tuple(int(x) for x in v.split("x")), 0) if isinstance(v, str) else v)).reset_index(drop=True)
    # Convergence: each capacity fit that did not store everything gets a twin with half the steps.
    twins = [CapacityJob(cfg, (int(r.n_layer), int(r.d_model)), int(r.n_sequences),
                         out_dir / f"{r.model}-n{r.n_sequences}-{cfg.fit_key()}-steps{cfg.steps // 2}", db_path,
                         steps=cfg.steps // 2)
             for r in capacity_runs(runs).itertuples() if not r.stopped_early]
    twin_rows = run_parallel(run_capacity_job, twins, workers=workers, label="capacity: half-length twins",
                             describe=lambda j: j.label, console=console, backend=backend,
                             work_dir=out_dir) if twins else []
    models = model_table(runs, {row["model"]: row["memorised_bits"] for row in twin_rows})
    result = CapacityResult(config=cfg, runs=runs, twins=pd.DataFrame(twin_rows), models=models,
                            fit=fit_alpha(models["params"].to_numpy(), models["capacity_bits"].to_numpy(), "total"),
                            fit_nonembedding=fit_alpha(models["params_nonembedding"].to_numpy(),
                                                       models["capacity_bits"].to_numpy(), "non_embedding"))
    if store is not None:
        put_probe_result(store, PROBE, cfg.key(), result.summary())
    if figures is not None:
        from scalinglab.report.figures import record
        from scalinglab.report.storage import capacity_figures

        result.figures = record(capacity_figures(result, figures), db_path)
    return result


def latest_alpha(store) -> dict | None:
    """The capacity summary other probes should compare with (α, its interval, convention), or None.

    The newest one with a usable α (finite, positive) fitted across at least MIN_SIZES_FOR_ALPHA
    model sizes; failing that, the newest usable one. A quick two-size run made later does not
    displace a fuller measurement."""
    usable = [r for r in probe_results(store, PROBE)
              if isinstance(r.get("alpha"), (int, float)) and math.isfinite(r["alpha"]) and r["alpha"] > 0]
    full = [r for r in usable if len(r.get("models") or []) >= MIN_SIZES_FOR_ALPHA]
    return (full or usable or [None])[-1]


def _finite_median(values) -> float | None:
    finite = [float(v) for v in values if math.isfinite(float(v))]
    return float(np.median(finite)) if finite else None
