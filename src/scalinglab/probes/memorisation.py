"""Sample-specific memorisation vs generalisation on a real corpus, at fixed N and growing D.

For each number of unique training tokens D (given as D/N, N = non-embedding parameters), two
models of the same shape are trained with `plan_run`/`train_run` on the same budget:

- the *model*, on a random subset of the corpus's training documents holding D tokens;
- the *reference*, on a disjoint subset of equal size from the same documents' distribution.

Both see the same number of training tokens (the budget; by default D_max, so the smallest D is
repeated D_max/D times and the largest is one pass: the data-constrained setting), so the
reference has the model's general skill but has never seen the model's training documents.

What is measured, per D, on fixed windows of `seq_len + 1` tokens (bits, base 2):

- sample-specific memorised bits (the reference estimate) = Σ over the model's training windows
  of (bits under the reference − bits under the model), estimated from a random sample of
  windows and scaled to all of them (with its standard error);
- the calibrated reference estimate: the same minus D × the mean (reference − model) bits/token
  on val windows, which neither model saw: it removes the difference in general skill between
  two models trained on different small samples, which otherwise dominates the noise;
- the cheap estimate = (held-out − train) bits/token of the model × D, held-out being the
  corpus's val split. It needs no reference model, and counts also the general skill the model
  lacks on held-out text, so it is the looser of the two;
- the training-set gain = D × (log2 V − the model's train bits/token): all the bits the model
  saves on its own training set against the uniform code; the sample-specific share of it is
  the calibrated memorised bits / gain, and the generalised bits are the rest;
- membership inference: the AUC of telling training windows from val windows by the model's
  loss (lower = member), and, calibrated by the reference, by (reference − model) bits;
  0.5 = no information about membership;
- the storage limit: the model can hold α·P bits (α from the capacity probe, P its total
  parameters); its training set holds D × b bits, b the train split's bits/token under xz -9 (a
  compressor's estimate of the data's information). Beyond D/N = α·P / (b·N) the model cannot
  store its training set.

Document subsets: the train split's documents are cut into pieces of at most `doc_tokens`
tokens (so one large file cannot make up a whole small subset), shuffled with the seed, and
dealt alternately to a member pool and a reference pool; the subset for D is the first pieces of
its pool up to D tokens, so the subsets are nested across D.

With `study=NAME`, the study's own cooldown branches (runs of kind "branch" in that group) are
measured as well: the cheap estimate and the loss-based AUC (members are windows the run
actually trained on, rebuilt from its batch sampler); they have no reference model.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from scalinglab.backends import BackendSpec
from scalinglab.config import ModelSpec, OptimConfig, RunConfig, TrainConfig, resolve_model
from scalinglab.corpus.prepare import CorpusConfig, PreparedCorpus, classical_bpb, prepare_corpus
from scalinglab.errors import UserError
from scalinglab.fsutil import atomic_write_json
from scalinglab.model import count_params
from scalinglab.probes.common import probe_kind, put_probe_result, run_parallel, sequence_bits

# Stored names keep the older spelling: existing stores and run folders find their runs, results
# and eval caches by the kinds and group below, the eval-cache file name and the CLI's default
# --out folder, so renaming them would orphan those results (and retrain and rescore everything).
# Run names keep it too, to match the runs already stored.
PROBE = "memorization"
REFERENCE_KIND = "probe:memorization-reference"
LOG2 = math.log(2.0)
EVAL_VERSION = 4  # bump when the scores cached in run directories change meaning


# --- configuration -----------------------------------------------------------------------------

@dataclass(frozen=True)
class MemorisationConfig:
    """A memorisation probe.

    corpus: which corpus (default: this Python's standard library, bytes).
    size / params: the model (a preset name or a non-embedding count), fixed across D.
    tokens_per_param: the D/N values (unique training tokens per non-embedding parameter).
    budget_tpp: training tokens per parameter of every run (None: the largest D/N, so the
      largest subset is one pass and smaller ones are repeated).
    seq_len, batch_size, lr: training (None: the defaults of `scalinglab train`).
    doc_tokens: documents are cut into pieces of at most this many tokens before subsets are drawn.
    eval_windows: member windows scored per D (and as many val windows); the sums over the whole
      training set are scaled from them.
    alpha: bits per (total) parameter for the storage limit (None: the latest capacity probe
      result in the store, else the anchor, 3.6).
    seed: subsets, initialisation and data order.
    """

    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    size: str | None = "30k"
    params: float | None = None
    tokens_per_param: tuple[float, ...] = (1.0, 4.0, 16.0, 64.0, 200.0)
    budget_tpp: float | None = None
    seq_len: int = 128
    batch_size: int | None = None
    lr: float | None = None
    doc_tokens: int = 4096
    eval_windows: int = 1024
    alpha: float | None = None
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not self.tokens_per_param or any(not (r > 0 and math.isfinite(r)) for r in self.tokens_per_param):
            raise UserError(f"--tpp values must be positive numbers, got {list(self.tokens_per_param)}")
        if self.budget_tpp is not None and not (self.budget_tpp > 0 and math.isfinite(self.budget_tpp)):
            raise UserError(f"--budget-tpp must be a positive number, got {self.budget_tpp}")
        if self.seq_len < 2:
            raise UserError(f"--seq-len must be >= 2, got {self.seq_len}")
        if self.doc_tokens < self.seq_len + 1:
            raise UserError(f"--doc-tokens ({self.doc_tokens}) must exceed --seq-len ({self.seq_len})")
        if self.eval_windows < 8:
            raise UserError(f"--eval-windows must be >= 8, got {self.eval_windows}")
        if self.alpha is not None and not (self.alpha > 0 and math.isfinite(self.alpha)):
            raise UserError(f"--alpha must be a positive number, got {self.alpha}")

    @property
    def budget(self) -> float:
        return self.budget_tpp if self.budget_tpp is not None else max(self.tokens_per_param)

    def model_spec(self) -> ModelSpec:
        return ModelSpec(size=None if self.params is not None else self.size, params=self.params)

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]

    def to_dict(self) -> dict:
        data = asdict(self)
        data["tokens_per_param"] = list(self.tokens_per_param)
        return data


# --- document subsets ----------------------------------------------------------------------------

class SubsetCorpus:
    """A prepared corpus whose train split is a subset of its documents' pieces; every other
    split and attribute is the base corpus's. `train_run` trains on it unchanged."""

    def __init__(self, base: PreparedCorpus, pieces: np.ndarray, description: dict) -> None:
        self.base = base
        train = base.tokens("train")
        self.pieces = pieces  # (k, 2) token ranges [start, end) in the base train split
        self._train = np.concatenate([np.asarray(train[s:e]) for s, e in pieces]) if len(pieces) else train[:0]
        self.description = description

    def tokens(self, split: str) -> np.ndarray:
        return self._train if split == "train" else self.base.tokens(split)

    @property
    def unique_train_tokens(self) -> int:
        return len(self._train)

    @property
    def key(self) -> str:
        """The base corpus's key and the subset's pieces: a run's identity names the exact
        documents it trained on, so subsets cut differently (another --doc-tokens, seed or
        pool) never share a run directory."""
        digest = hashlib.sha256(np.ascontiguousarray(self.pieces, dtype=np.int64).tobytes()).hexdigest()[:12]
        return f"{self.base.key}-subset-{digest}"

    def __getattr__(self, name: str):
        return getattr(self.base, name)


def document_pieces(corpus: PreparedCorpus, doc_tokens: int) -> np.ndarray:
    """The train split's documents cut into pieces of at most `doc_tokens` tokens: (k, 2) ranges."""
    offsets = corpus.doc_offsets("train")
    pieces = []
    for start, end in zip(offsets[:-1], offsets[1:]):
        for s in range(int(start), int(end), doc_tokens):
            pieces.append((s, min(s + doc_tokens, int(end))))
    return np.asarray(pieces, dtype=np.int64).reshape(-1, 2)


def subset_pools(corpus: PreparedCorpus, cfg: MemorisationConfig) -> tuple[np.ndarray, np.ndarray]:
    """(member pool, reference pool): the shuffled pieces dealt alternately."""
    pieces = document_pieces(corpus, cfg.doc_tokens)
    order = np.random.default_rng([cfg.seed, 7]).permutation(len(pieces))
    shuffled = pieces[order]
    return shuffled[0::2], shuffled[1::2]


def take_tokens(pool: np.ndarray, tokens: int) -> np.ndarray:
    """The first pieces of `pool` holding exactly `tokens` tokens (the last piece cut)."""
    lengths = pool[:, 1] - pool[:, 0]
    cum = np.cumsum(lengths)
    if len(cum) == 0 or cum[-1] < tokens:
        available = int(cum[-1]) if len(cum) else 0
        raise UserError(f"the corpus's train split has ~{available:,} tokens per subset pool, fewer than the "
                        f"{tokens:,} a subset needs (model and reference take disjoint halves); lower the largest "
                        "--tpp, use a smaller --size, or give a larger corpus")
    k = int(np.searchsorted(cum, tokens)) + 1
    chosen = pool[:k].copy()
    chosen[-1, 1] = chosen[-1, 0] + (tokens - (int(cum[k - 2]) if k > 1 else 0))
    return chosen


# --- training ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainJob:
    cfg: MemorisationConfig
    role: str  # model | reference
    ratio: float  # D/N
    out_root: Path
    db: Path
    cache_dir: Path | None

    @property
    def label(self) -> str:
        return f"{self.role} D/N={self.ratio:g}"


def _setup(cfg: MemorisationConfig, cache_dir: Path | None) -> tuple[PreparedCorpus, int]:
    corpus = prepare_corpus(cfg.corpus, cache_dir)
    model = resolve_model(cfg.model_spec(), corpus.vocab_size)
    return corpus, count_params(model).non_embedding


def subset_for(cfg: MemorisationConfig, corpus: PreparedCorpus, n_params: int, role: str, ratio: float) -> SubsetCorpus:
    """The training subset of the model ("model") or its reference ("reference") at D/N = ratio."""
    d_tokens = int(round(ratio * n_params))
    members, references = subset_pools(corpus, cfg)
    pieces = take_tokens(members if role == "model" else references, d_tokens)
    return SubsetCorpus(corpus, pieces, {"role": role, "tokens": d_tokens, "seed": cfg.seed,
                                         "doc_tokens": cfg.doc_tokens})


def plan_for(job: TrainJob, corpus: PreparedCorpus, n_params: int):
    """The RunPlan and the subset corpus of one training run."""
    from scalinglab.train import plan_run

    cfg = job.cfg
    subset = subset_for(cfg, corpus, n_params, job.role, job.ratio)
    d_tokens = subset.unique_train_tokens
    run_cfg = RunConfig(corpus=cfg.corpus, model=cfg.model_spec(), optim=OptimConfig(lr=cfg.lr),
                        train=TrainConfig(tokens=cfg.budget * n_params, tpp=None, seq_len=cfg.seq_len,
                                          batch_size=cfg.batch_size, seed=cfg.seed, device=cfg.device,
                                          eval_points=4),
                        name=f"memorization {job.label}")
    kind = probe_kind(PROBE) if job.role == "model" else REFERENCE_KIND
    plan = plan_run(run_cfg, subset, kind=kind)
    plan.group = PROBE
    plan.max_unique_tokens = d_tokens  # the subset is exactly D tokens; this keys the run by D
    plan.extra = {"subset": subset.description, "tokens_per_param": job.ratio, "probe_key": cfg.key()}
    return plan, subset


def run_train_job(job: TrainJob) -> dict:
    """Train (or find finished) one model or reference run; return where it is."""
    from scalinglab.store import open_store
    from scalinglab.train import train_run

    corpus, n_params = _setup(job.cfg, job.cache_dir)
    plan, subset = plan_for(job, corpus, n_params)
    out_dir = job.out_root / plan.run_id
    result = train_run(plan, subset, open_store(job.db), out_dir, resume=True)
    return {"role": job.role, "ratio": job.ratio, "run_id": result.run_id, "out_dir": str(out_dir),
            "tokens": plan.total_steps * plan.batch_tokens, "unique_tokens": subset.unique_train_tokens}


# --- evaluation ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class EvalJob:
    cfg: MemorisationConfig
    ratio: float
    model_dir: Path
    reference_dir: Path
    cache_dir: Path | None


def run_eval_job(job: EvalJob) -> dict:
    """Score member and val windows under the model and its reference; cached in the model's
    run directory so a rerun does not redo it."""
    from scalinglab.train.checkpoint import load_model

    cache = job.model_dir / f"memorization-eval-v{EVAL_VERSION}-{job.cfg.key()}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    torch.set_num_threads(1)
    cfg = job.cfg
    corpus, n_params = _setup(cfg, job.cache_dir)
    subset = subset_for(cfg, corpus, n_params, "model", job.ratio)
    model, _ = load_model(job.model_dir)
    reference, _ = load_model(job.reference_dir)
    # Windows inside one piece (members) or one document (val): a window across a boundary joins
    # unrelated text, which is harder to predict and would bias the comparison.
    rng = np.random.default_rng([cfg.seed, 11])
    member_starts = window_starts(subset.pieces, cfg.seq_len)
    members = windows_at(corpus.tokens("train"), sample(member_starts, cfg.eval_windows, rng), cfg.seq_len)
    val_docs = corpus.doc_offsets("val")
    val_starts = window_starts(np.stack([val_docs[:-1], val_docs[1:]], axis=1), cfg.seq_len)
    val = windows_at(corpus.tokens("val"), sample(val_starts, cfg.eval_windows, rng), cfg.seq_len)
    scored = cfg.seq_len  # predictions per window
    t_mem, r_mem = sequence_bits(model, members), sequence_bits(reference, members)
    t_val, r_val = sequence_bits(model, val), sequence_bits(reference, val)
    d_tokens = subset.unique_train_tokens
    n_windows_all = len(member_starts)
    diff = r_mem - t_mem
    train_bpt, val_bpt = t_mem.mean() / scored, t_val.mean() / scored
    log2v = math.log2(corpus.vocab_size)
    memorised = float(diff.mean() / scored * d_tokens)
    # The two models also differ in general skill (each learned from a different small sample);
    # that difference, measured on val windows neither saw, is removed in the calibrated estimate.
    offset = (r_val - t_val) / scored
    calibrated = memorised - float(offset.mean() * d_tokens)
    calibrated_se = math.sqrt((diff.std(ddof=1) / scored) ** 2 / len(diff) + offset.std(ddof=1) ** 2 / len(offset)) * d_tokens
    gain = float((log2v - train_bpt) * d_tokens)
    row = {
        "tokens_per_param": job.ratio, "D": d_tokens, "N": n_params, "windows_scored": len(members),
        "windows_total": n_windows_all, "train_bits_per_token": float(train_bpt),
        "val_bits_per_token": float(val_bpt), "reference_train_bits_per_token": float(r_mem.mean() / scored),
        "reference_val_bits_per_token": float(r_val.mean() / scored),
        "memorised_bits": memorised,
        "memorised_bits_se": float(diff.std(ddof=1) / math.sqrt(len(diff)) / scored * d_tokens),
        "memorised_bits_calibrated": calibrated, "memorised_bits_calibrated_se": calibrated_se,
        "cheap_memorised_bits": float((val_bpt - train_bpt) * d_tokens),
        "reference_offset_bits_per_token": float(offset.mean()),
        "train_gain_bits": gain, "generalised_bits": gain - calibrated,
        "heldout_gain_bits": float((log2v - val_bpt) * d_tokens),
        "sample_specific_share": calibrated / gain if gain > 0 else None,
        "auc_loss": auc(-t_mem, -t_val), "auc_reference": auc(r_mem - t_mem, r_val - t_val),
        "model_run": job.model_dir.name, "reference_run": job.reference_dir.name,
    }
    atomic_write_json(cache, row, sort_keys=True)
    return row


def window_starts(ranges: np.ndarray, seq_len: int) -> np.ndarray:
    """Start offsets of the non-overlapping windows of seq_len + 1 tokens that lie wholly inside
    one of the token ranges (k, 2)."""
    starts = [np.arange(s, e - seq_len, seq_len) for s, e in np.asarray(ranges, dtype=np.int64)]
    starts = np.concatenate(starts) if starts else np.zeros(0, dtype=np.int64)
    if len(starts) == 0:
        raise UserError(f"no document piece holds a window of {seq_len + 1} tokens; lower --seq-len")
    return starts


def sample(starts: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(starts, size=min(count, len(starts)), replace=False))


def spread_windows(tokens: np.ndarray, seq_len: int, count: int) -> torch.Tensor:
    """About `count` windows spread evenly over a whole split (as the training loop evaluates)."""
    from scalinglab.train.data import fixed_windows

    return fixed_windows(tokens, seq_len, count * seq_len)


def windows_at(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(tokens[s : s + seq_len + 1], dtype=np.int64) for s in starts]))


def auc(members: np.ndarray, others: np.ndarray) -> float:
    """P(score of a random member > score of a random non-member), ties counting half
    (the Mann-Whitney AUC)."""
    from scipy.stats import rankdata

    members, others = np.asarray(members, float), np.asarray(others, float)
    ranks = rankdata(np.concatenate([members, others]))
    m, n = len(members), len(others)
    return float((ranks[:m].sum() - m * (m + 1) / 2) / (m * n))


# --- storage limit -------------------------------------------------------------------------------

def data_bits_per_token(corpus: PreparedCorpus, sample_bytes: int = 4_000_000) -> float:
    """The train split's bits per token under xz -9 (on its first `sample_bytes` bytes): a
    compressor's estimate of how much information each training token carries."""
    from scalinglab.corpus.prepare import split_bytes

    tokens = corpus.tokens("train")
    raw = split_bytes(corpus, "train")
    sample = raw[:sample_bytes]
    bytes_per_token = len(raw) / max(len(tokens), 1)
    return classical_bpb(sample)["xz-9"] * bytes_per_token


@dataclass(frozen=True)
class StorageLimit:
    """Where a model of N non-embedding (P total) parameters can no longer store its training set."""

    label: str
    N: int
    P: int
    capacity_bits: float
    limit_tokens: float  # D beyond which D × bits/token > α·P
    limit_tokens_per_param: float  # that D over N


def storage_limits(models: list[tuple[str, int, int]], alpha: float, bits_per_token: float) -> list[StorageLimit]:
    out = []
    for label, n, p in models:
        capacity = alpha * p
        d = capacity / bits_per_token
        out.append(StorageLimit(label, n, p, capacity, d, d / n))
    return out


# --- the probe -------------------------------------------------------------------------------------

@dataclass
class MemorisationResult:
    """rows: one per D (the measurements above). study: the study's runs, if asked. limits:
    the storage limit for each N considered. alpha / alpha_source: the capacity used."""

    config: MemorisationConfig
    rows: "pd.DataFrame"  # noqa: F821
    study: "pd.DataFrame | None"  # noqa: F821
    limits: list[StorageLimit]
    alpha: float
    alpha_source: str
    bits_per_token: float
    capacity_bits: float  # alpha x P of the probe's model
    P: int
    N: int
    figures: list[Path] = field(default_factory=list)

    def summary(self) -> dict:
        return {
            "alpha": self.alpha, "alpha_source": self.alpha_source, "data_bits_per_token": self.bits_per_token,
            "data_bits_source": "xz -9 on the train split", "N": self.N, "P": self.P,
            "capacity_bits": self.capacity_bits, "config": self.config.to_dict(),
            "rows": self.rows.to_dict(orient="records"),
            "study": None if self.study is None else self.study.to_dict(orient="records"),
            "limits": [asdict(limit) for limit in self.limits],
            "definitions": {
                "memorised_bits": "sum over training windows of (reference bits - model bits)",
                "memorised_bits_calibrated": "memorised_bits - D x mean over val windows of (reference - model) bits/token",
                "cheap_memorised_bits": "(val - train) bits/token of the model x D",
                "train_gain_bits": "D x (log2 V - train bits/token)",
                "generalised_bits": "train_gain_bits - memorised_bits_calibrated",
                "sample_specific_share": "memorised_bits_calibrated / train_gain_bits",
                "auc_loss": "membership AUC, score = -model bits (members: training windows, others: val windows)",
                "auc_reference": "membership AUC, score = reference bits - model bits",
                "storage_limit": "D/N where D x data bits/token = alpha x P (P total parameters)",
            },
        }


def resolve_alpha(store, cfg: MemorisationConfig) -> tuple[float, str]:
    """α from the latest capacity result in the store, else the config's, else the anchor."""
    from scalinglab.probes.capacity import ANCHOR_BITS_PER_PARAM, latest_alpha

    if cfg.alpha is not None:
        return cfg.alpha, "given (--alpha)"
    found = latest_alpha(store)
    if found is not None:
        return float(found["alpha"]), f"capacity probe in the store (key {found['key']})"
    return ANCHOR_BITS_PER_PARAM, "anchor (Morris et al. 2025, 3.6 bits/param); run `scalinglab probe capacity` to measure"


def run_memorisation(cfg: MemorisationConfig, out_dir: Path | str, db: Path | str, *, workers: int = 2,
                     cache_dir: Path | None = None, study: str | None = None, figures: Path | str | None = None,
                     console=None, backend: BackendSpec | None = None) -> MemorisationResult:
    """Train (or resume) every model and reference, score them, and store the summary; with
    `figures`, draw the figures there (recorded in the store). `backend` runs the trainings and
    scorings elsewhere (a Ray cluster: `out_dir` and the corpus cache on a shared filesystem)."""
    import pandas as pd

    from scalinglab.store import open_store

    out_dir, db = Path(out_dir), Path(db)
    store = open_store(db)
    corpus, n_params = _setup(cfg, cache_dir)
    model_cfg = resolve_model(cfg.model_spec(), corpus.vocab_size)
    p_total = count_params(model_cfg).total
    members, references = subset_pools(corpus, cfg)  # check the corpus is large enough up front
    d_max = int(round(max(cfg.tokens_per_param) * n_params))
    take_tokens(members, d_max), take_tokens(references, d_max)
    runs_dir = out_dir / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)

    ratios = sorted(set(cfg.tokens_per_param))
    train_jobs = [TrainJob(cfg, role, r, runs_dir, db, cache_dir) for r in ratios for role in ("model", "reference")]
    trained = run_parallel(run_train_job, train_jobs, workers=workers, label="memorisation: train",
                           describe=lambda j: j.label, console=console, backend=backend, work_dir=out_dir)
    by_key = {(t["role"], t["ratio"]): t for t in trained}
    eval_jobs = [EvalJob(cfg, r, Path(by_key[("model", r)]["out_dir"]), Path(by_key[("reference", r)]["out_dir"]),
                         cache_dir) for r in ratios]
    rows = pd.DataFrame(run_parallel(run_eval_job, eval_jobs, workers=workers, label="memorisation: score",
                                     describe=lambda j: f"D/N={j.ratio:g}", console=console, backend=backend,
                                     work_dir=out_dir))

    alpha, source = resolve_alpha(store, cfg)
    bpt = data_bits_per_token(corpus)
    capacity = alpha * p_total
    rows["capacity_bits"] = capacity
    rows["storable"] = rows["D"] * bpt <= capacity
    study_rows = measure_study(store, db, study, cfg, cache_dir) if study else None
    sizes = [("probe model", n_params, p_total)]
    if study_rows is not None and len(study_rows):
        sizes += [(f"study N={int(n):,}", int(n), int(p)) for n, p in
                  study_rows[["N", "P"]].drop_duplicates().sort_values("N").itertuples(index=False)]
    else:
        for name in ("10k", "30k", "100k", "300k", "1m"):
            mc = resolve_model(ModelSpec(size=name), corpus.vocab_size)
            counts = count_params(mc)
            sizes.append((f"preset {name}", counts.non_embedding, counts.total))
    result = MemorisationResult(config=cfg, rows=rows, study=study_rows,
                                limits=storage_limits(sizes, alpha, bpt), alpha=alpha, alpha_source=source,
                                bits_per_token=bpt, capacity_bits=capacity, P=p_total, N=n_params)
    put_probe_result(store, PROBE, cfg.key(), result.summary())
    if figures is not None:
        from scalinglab.report.figures import record
        from scalinglab.report.storage import memorisation_figures

        result.figures = record(memorisation_figures(result, figures), db)
    return result


# --- the study's runs ------------------------------------------------------------------------------

def measure_study(store, db: Path, study: str, cfg: MemorisationConfig, cache_dir: Path | None = None) -> "pd.DataFrame":  # noqa: F821
    """Cheap estimate and loss-based AUC for each finished cooldown branch of a study (each on
    the corpus it was trained on)."""
    import pandas as pd

    from scalinglab.train.checkpoint import load_model
    from scalinglab.train.data import BatchSampler

    runs = [r for r in store.runs(group=study, kind="branch") if r["status"] == "done"]
    if not runs:
        raise UserError(f"the store {db} holds no finished study branches in group {study!r}; run the study first "
                        "or leave out --study")
    rows = []
    for run in runs:
        conf = run["config"]
        if not Path(run["out_dir"] or "").exists():
            continue
        train = conf["train"]
        points = store.points(run["run_id"])
        if not points:
            continue
        final = points[-1]
        corpus = prepare_corpus(CorpusConfig(**conf["corpus"]), cache_dir)  # the study's own corpus
        model, _ = load_model(run["out_dir"])
        sampler = BatchSampler(corpus.tokens("train"), train["seq_len"], train["batch_size"], train["seed"],
                               conf.get("max_unique_tokens"))
        rng = np.random.default_rng([cfg.seed, 13])
        steps = rng.integers(0, train["total_steps"], size=cfg.eval_windows)
        rows_idx = rng.integers(0, train["batch_size"], size=cfg.eval_windows)
        members = []
        for s, i in zip(steps, rows_idx):
            x, y = sampler.batch(int(s))
            members.append(torch.cat([x[i], y[i, -1:]]))
        members = torch.stack(members)
        val = spread_windows(corpus.tokens("val"), train["seq_len"], cfg.eval_windows)
        t_mem, t_val = sequence_bits(model, members), sequence_bits(model, val)
        d = float(final["tokens"])
        gap_bits = (final["val_loss"] - final["train_loss"]) / LOG2
        rows.append({"run_id": run["run_id"], "N": int(run["n_nonembedding"]), "P": int(run["n_total"]), "D": d,
                     "tokens_per_param": d / run["n_nonembedding"], "epoch": final.get("epoch"),
                     "val_bits_per_token": final["val_loss"] / LOG2, "train_bits_per_token": final["train_loss"] / LOG2,
                     "cheap_memorised_bits": gap_bits * min(d, float(run["unique_train_tokens"] or d)),
                     "auc_loss": auc(-t_mem, -t_val)})
    return pd.DataFrame(rows).sort_values(["N", "D"]).reset_index(drop=True)
