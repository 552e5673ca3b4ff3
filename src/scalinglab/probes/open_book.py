"""The open-book probe: facts kept in the weights (closed book) against facts read from the
context (open book, retrieval).

Facts are `key -> value` pairs over an alphabet of A symbols: a 3-symbol key, a 2-symbol value,
2·log2 A bits each (12 at A = 64), random, so nothing but storage or a lookup can answer them.

- Closed book: a GPT is fitted on the rows `Q k1 k2 k3 v1 v2` of a table of F facts (loss on
  the value only), and asked the same rows back: recall (both value tokens right, greedy) and
  bits stored, Σ max(0, 12 − NLL). Past the model's capacity (about α·N bits), recall collapses.
- Open book: a reader sees k records `k1 k2 k3 v1 v2 ;` and then the query `Q k1 k2 k3`; it
  must find the record with the query's key and copy its value. The reader is trained on fresh
  random facts at every step, so it cannot store any; it is tested on the table's facts, which it
  has never seen, with records from a simulated retriever: the right record with probability ρ
  (the retriever's recall), plus k − 1 distractors, either random (other facts of the table) or
  hard (the query's key with one symbol changed). Removing the right record shows what the reader
  knows without it: nothing, as a closed book of no facts.

Every fit is an engine run (resumable, kind "probe:open-book" in the store); the summary is a
result of that kind.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from scalinglab.backends import BackendSpec
from scalinglab.config import OptimConfig, config_hash
from scalinglab.errors import UserError
from scalinglab.model import GPT, PARAM_CONVENTION, ModelConfig, count_params, flops_per_token
from scalinglab.probes.common import (
    FitRecipe,
    ProbeRecord,
    fit_sequences,
    probe_kind,
    probe_model,
    probe_optim,
    put_probe_result,
    run_parallel,
)
from scalinglab.probes.facts_rules import _keys, _unique_codes, alpha_or_anchor
from scalinglab.store import open_store
from scalinglab.train import engine

PROBE = "open-book"
CLOSED_BOOK_OPTIM = probe_optim(lr=1e-2, warmup=50, schedule="constant")
# induction (find the key, copy what follows) did not form at 3e-3 or 1e-2 within 3,000 steps
READER_OPTIM = probe_optim(lr=1e-3, warmup=100, schedule="cosine")
RECORD = 6  # k1 k2 k3 v1 v2 ;  (no "=": the value follows its key, so finding it is plain induction)
DISTRACTORS = ("random", "hard")


@dataclass(frozen=True)
class OpenBookConfig:
    """The experiment.

    facts: table sizes F (each table is a prefix of the largest); alphabet: symbols A.
    models: (layers, width) of each GPT; each is fitted closed-book on every table and trained
      as a reader.
    records: k, the records in the reader's context at test time; train_records: the records it
      trains with, so also the longest context it can be asked with. train_hard: the share of the reader's training distractors that are near
      misses (the rest are random records).
    recall: ρ, the simulated retriever's recall (probability that the right record is present).
    closed_epochs, closed_min_steps, closed_optim: the closed-book fits (passes over the table).
    reader_steps, reader_optim: the reader's training on fresh facts.
    batch_size: sequences per update (both arms); eval_queries: table facts asked per F (a
      random sample when F is larger).
    seed: the facts, the episodes and the initialisation.
    """

    facts: tuple[int, ...] = (512, 2048, 8192)
    alphabet: int = 64
    models: tuple[tuple[int, int], ...] = ((1, 32), (2, 32))
    records: tuple[int, ...] = (1, 2, 4)
    train_records: int = 4
    train_hard: float = 0.5
    recall: tuple[float, ...] = (1.0, 0.9, 0.5)
    closed_epochs: int = 200
    closed_min_steps: int = 500
    closed_optim: OptimConfig = CLOSED_BOOK_OPTIM
    reader_steps: int = 3000
    reader_optim: OptimConfig = READER_OPTIM
    batch_size: int = 128
    eval_queries: int = 2048
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", tuple(tuple(m) for m in self.models))
        for name in ("facts", "records"):
            object.__setattr__(self, name, tuple(sorted({int(v) for v in getattr(self, name)})))
        object.__setattr__(self, "recall", tuple(sorted({float(r) for r in self.recall}, reverse=True)))
        if not self.facts or self.facts[0] < 2:
            raise UserError(f"--facts must be whole numbers >= 2, got {list(self.facts)}")
        if not 4 <= self.alphabet <= 1024:
            raise UserError(f"--alphabet must lie between 4 and 1024 symbols, got {self.alphabet}")
        if self.facts[-1] > self.alphabet ** 3 // 2:
            raise UserError(f"{self.facts[-1]:,} facts need distinct keys, at most half the {self.alphabet ** 3:,} "
                            "the alphabet gives; raise --alphabet or lower --facts")
        if not self.records or self.records[0] < 1:
            raise UserError(f"--records (k) must be whole numbers >= 1, got {list(self.records)}")
        if not isinstance(self.train_records, int) or self.train_records < 1:
            raise UserError(f"--train-records must be a whole number >= 1, got {self.train_records!r}")
        if self.records[-1] > self.train_records:
            k = self.records[-1]
            raise UserError(f"the reader trains on contexts of up to {self.train_records} records "
                            f"({context_len(self.train_records)} tokens) and cannot be asked with k={k} "
                            f"({context_len(k)} tokens); raise --train-records to {k} or lower --records")
        if not 0 <= self.train_hard <= 1:
            raise UserError(f"--train-hard must lie in [0, 1], got {self.train_hard}")
        if not self.recall or not all(0 < r <= 1 for r in self.recall):
            raise UserError(f"--recall (ρ) must lie in (0, 1], got {list(self.recall)}")
        if not self.models:
            raise UserError("--models needs at least one LAYERSxWIDTH")
        for shape in self.models:
            if len(shape) != 2 or shape[0] < 1 or shape[1] < 2 or shape[1] % 2:
                raise UserError(f"model {shape}: give LAYERSxWIDTH with layers >= 1 and an even width >= 2")
        for name in ("closed_epochs", "closed_min_steps", "reader_steps", "batch_size", "eval_queries"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise UserError(f"{name.replace('_', '-')} must be a positive whole number, got {value!r}")
        for optim in (self.closed_optim, self.reader_optim):
            if optim.lr is None or optim.warmup is None:
                raise UserError("the open-book probe needs its learning rates and warmups set")
            optim.validate()

    @property
    def vocab_size(self) -> int:
        return self.alphabet + 2  # symbols, ";", Q

    @property
    def bits_per_fact(self) -> float:
        return 2 * math.log2(self.alphabet)

    def model_config(self, n_layer: int, d_model: int) -> ModelConfig:
        return probe_model(n_layer, d_model, self.vocab_size)

    def key(self) -> str:
        return config_hash(asdict(self))

    def closed_recipe(self, n_facts: int) -> FitRecipe:
        steps = max(self.closed_min_steps, math.ceil(self.closed_epochs * n_facts / self.batch_size))
        return FitRecipe(steps=steps, optim=self.closed_optim, batch_size=self.batch_size,
                         eval_every=max(1, steps // 4), seed=self.seed, device=self.device)


def context_len(k: int) -> int:
    """Tokens of an episode with k records: the records, then `Q k1 k2 k3 v1 v2`."""
    return RECORD * k + 6


# --- the facts and the episodes ------------------------------------------------------------------------

@dataclass
class FactTable:
    keys: np.ndarray  # (F, 3)
    values: np.ndarray  # (F, 2)

    def __len__(self) -> int:
        return len(self.keys)

    def prefix(self, n: int) -> "FactTable":
        return FactTable(self.keys[:n], self.values[:n])


def fact_table(cfg: OpenBookConfig) -> FactTable:
    """The largest table; smaller ones are its prefixes (both streams are drawn in order)."""
    A, n = cfg.alphabet, cfg.facts[-1]
    keys = _keys(_unique_codes(np.random.default_rng([cfg.seed, 41]), A ** 3, n), A)
    return FactTable(keys, np.random.default_rng([cfg.seed, 42]).integers(0, A, size=(n, 2)))


def closed_rows(table: FactTable, alphabet: int) -> torch.Tensor:
    """Rows `Q k1 k2 k3 v1 v2`, the closed book (and the query of every episode)."""
    n = len(table)
    rows = np.column_stack([np.full(n, alphabet + 1), table.keys, table.values])
    return torch.from_numpy(rows.astype(np.int64))


def near_misses(rng: np.random.Generator, keys: np.ndarray, alphabet: int) -> np.ndarray:
    """Keys equal to `keys` but for one symbol, at a random position, changed to another symbol."""
    out = keys.copy()
    rows = np.arange(len(keys))
    where = rng.integers(0, 3, size=len(keys))
    out[rows, where] = (keys[rows, where] + rng.integers(1, alphabet, size=len(keys))) % alphabet
    return out


def episodes(rng: np.random.Generator, keys: np.ndarray, values: np.ndarray, k: int, alphabet: int, *,
             hard: float, present: np.ndarray | bool = True, others: FactTable | None = None,
             own: np.ndarray | None = None) -> torch.Tensor:
    """(n, 6k + 6) episodes: k records, then the query `Q key value`.

    hard: the probability that a distractor is a near miss of the query's key; else it is a random
      record: a random key and value, or another fact of `others` (`own`: each query's row there,
      never drawn as its own distractor). present: per episode, whether the right record is among
      the k (at a random slot); where it is not, a distractor takes its place."""
    n = len(keys)
    SEP, Q = alphabet, alphabet + 1
    hard = rng.random((n, k)) < hard
    if others is None:
        rand_keys = rng.integers(0, alphabet, size=(n, k, 3))
        rand_values = rng.integers(0, alphabet, size=(n, k, 2))
    else:
        pick = (own[:, None] + 1 + rng.integers(0, len(others) - 1, size=(n, k))) % len(others)
        rand_keys, rand_values = others.keys[pick], others.values[pick]
    miss_keys = np.stack([near_misses(rng, keys, alphabet) for _ in range(k)], axis=1)
    rec_keys = np.where(hard[..., None], miss_keys, rand_keys)
    rec_values = np.where(hard[..., None], rng.integers(0, alphabet, size=(n, k, 2)), rand_values)
    slot = rng.integers(0, k, size=n)
    present = np.broadcast_to(np.asarray(present), (n,))
    rows = np.arange(n)[present]
    rec_keys[rows, slot[present]] = keys[present]
    rec_values[rows, slot[present]] = values[present]
    records = np.concatenate([rec_keys, rec_values, np.full((n, k, 1), SEP)], axis=2)
    query = np.column_stack([np.full(n, Q), keys, values])
    return torch.from_numpy(np.concatenate([records.reshape(n, RECORD * k), query], axis=1).astype(np.int64))


def answer_nats(model: torch.nn.Module, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(NLL in nats (n, 2), greedy prediction right (n, 2)) of the two value tokens at the end."""
    logits = model(rows[:, :-1])[:, -2:]  # the predictions of v1 (at k3) and of v2 (at v1)
    target = rows[:, -2:]
    nats = F.cross_entropy(logits.float().transpose(1, 2), target, reduction="none")
    return nats, logits.argmax(dim=-1) == target


@torch.no_grad()
def answers(model: torch.nn.Module, rows: torch.Tensor, batch: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """(bits of the value (n,), both value tokens right (n,)) per row."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    bits, right = [], []
    for i in range(0, len(rows), batch):
        nats, ok = answer_nats(model, rows[i : i + batch].to(device))
        bits.append(nats.sum(dim=1).double().cpu().numpy() / math.log(2))
        right.append(ok.all(dim=1).cpu().numpy())
    model.train(was_training)
    return np.concatenate(bits), np.concatenate(right)


# --- the reader ---------------------------------------------------------------------------------------

def training_episodes(rng: np.random.Generator, n: int, k: int, alphabet: int, hard: float) -> torch.Tensor:
    """(n, 12k) reader training sequences: k records of fresh random facts, then k queries
    (`Q k1 k2 k3 v1 v2` each) of records drawn at random, so a sequence carries 2k answers to
    learn from, not 2. A record is, with probability `hard`, a near miss of the first
    record's key (so keys must be matched whole), else a random key."""
    keys = rng.integers(0, alphabet, size=(n, k, 3))
    hard_rows = rng.random((n, k)) < hard
    hard_rows[:, 0] = False
    for j in range(1, k):
        keys[hard_rows[:, j], j] = near_misses(rng, keys[hard_rows[:, j], 0], alphabet)
    values = rng.integers(0, alphabet, size=(n, k, 2))
    SEP, Q = alphabet, alphabet + 1
    column = lambda v: np.full((n, k, 1), v)  # noqa: E731
    records = np.concatenate([keys, values, column(SEP)], axis=2)
    # each query asks a record drawn with replacement: asking every record once would let a
    # reader answer the last queries by elimination instead of by matching keys
    asked = np.take_along_axis(records, rng.integers(0, k, size=(n, k, 1)), axis=1)
    queries = np.concatenate([column(Q), asked[..., :5]], axis=2)
    return torch.from_numpy(np.concatenate([records.reshape(n, -1), queries.reshape(n, -1)], axis=1).astype(np.int64))


class ReaderTask(engine.Task):
    """A GPT trained to answer from its context, on fresh random facts at every step (so it
    stores none); an evaluation asks held-out fresh episodes with the most records."""

    def __init__(self, cfg: OpenBookConfig, model_cfg: ModelConfig) -> None:
        self.cfg, self.model_cfg = cfg, model_cfg
        self.fpt = flops_per_token(model_cfg, 2 * RECORD * cfg.train_records - 1)
        rng = np.random.default_rng([cfg.seed, 51])
        n, A = 512, cfg.alphabet
        self.val = episodes(rng, rng.integers(0, A, size=(n, 3)), rng.integers(0, A, size=(n, 2)),
                            cfg.train_records, A, hard=0.5)

    def build_model(self) -> GPT:
        return GPT(self.model_cfg)

    def batch(self, step: int) -> torch.Tensor:
        # always the most records: with fewer (one record is a copy from a fixed place) the
        # reader learnt to copy some record's value and not to match keys within its budget
        cfg = self.cfg
        return training_episodes(np.random.default_rng([cfg.seed, 53, step]), cfg.batch_size, cfg.train_records,
                                 cfg.alphabet, cfg.train_hard)

    def loss(self, model: torch.nn.Module, step: int) -> torch.Tensor:
        rows = self.batch(step).to(self.placement.device)
        k = rows.shape[1] // (2 * RECORD)
        logits = model(rows[:, :-1])
        # the answers: v1 predicted at each query's k3, v2 at its v1
        at = torch.tensor([RECORD * (k + j) + i for j in range(k) for i in (3, 4)], device=rows.device)
        return F.cross_entropy(logits[:, at].float().transpose(1, 2), rows[:, at + 1])

    def evaluate(self, model: torch.nn.Module, ctx: engine.EvalContext) -> dict:
        bits, right = answers(model, self.val)
        return {"step": ctx.step, "train_loss": ctx.batch_loss, "val_loss": float(bits.mean() * math.log(2) / 2),
                "copy_acc": float(right.mean()), "lr": ctx.lr, "wall_time": ctx.wall_time}

    def store_point(self, point: dict) -> dict:
        episodes_seen = point["step"] * self.cfg.batch_size
        tokens = episodes_seen * 2 * RECORD * self.cfg.train_records
        return dict(step=point["step"], tokens=int(tokens), flops=tokens * self.fpt, train_loss=point["train_loss"],
                    val_loss=point["val_loss"], lr=point["lr"], wall_time=point["wall_time"],
                    extra={"copy_acc": point["copy_acc"]})


# --- the jobs --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Job:
    cfg: OpenBookConfig
    role: str  # closed | reader
    model: tuple[int, int]
    n_facts: int | None
    out_dir: str
    db: str | None

    @property
    def label(self) -> str:
        shape = f"{self.model[0]}x{self.model[1]}"
        return f"{shape} reader" if self.role == "reader" else f"{shape} closed book F={self.n_facts:,}"


def _closed(job: _Job) -> list[dict]:
    cfg = job.cfg
    table = fact_table(cfg).prefix(job.n_facts)
    rows = closed_rows(table, cfg.alphabet)
    mask = torch.zeros(rows.shape[1] - 1)
    mask[-2:] = 1.0
    record = None if job.db is None else ProbeRecord(
        db=Path(job.db), probe=PROBE, name=f"open-book {job.label}",
        meta={"role": "closed", "n_facts": job.n_facts, "bits_per_fact": cfg.bits_per_fact})
    fit = fit_sequences(cfg.model_config(*job.model), rows, cfg.closed_recipe(job.n_facts), job.out_dir,
                        loss_mask=mask, record=record,
                        identity={"probe": PROBE, "role": "closed", "alphabet": cfg.alphabet, "seed": cfg.seed})
    bits, right = answers(fit.model, rows)
    return [{"role": "closed", "model": f"{job.model[0]}x{job.model[1]}", "F": job.n_facts,
             "recalled": int(right.sum()), "bits_stored": float(np.clip(cfg.bits_per_fact - bits, 0, None).sum()),
             "steps": fit.steps, "run_id": fit.run_id}]


def _reader(job: _Job) -> list[dict]:
    cfg = job.cfg
    model_cfg = cfg.model_config(*job.model)
    task = ReaderTask(cfg, model_cfg)
    identity = {"probe": PROBE, "role": "reader", "model": model_cfg.to_dict(), "alphabet": cfg.alphabet,
                "train_records": cfg.train_records, "train_hard": cfg.train_hard, "batch_size": cfg.batch_size,
                "seed": cfg.seed,
                "optim": asdict(cfg.reader_optim), "steps": cfg.reader_steps}
    run_id = f"{PROBE}-{config_hash(identity)}"
    store, row = None, {}
    if job.db is not None:
        counts = count_params(model_cfg)
        store = open_store(job.db)
        row = dict(name=f"open-book {job.label}", kind=probe_kind(PROBE), group_name=PROBE, config=identity,
                   n_total=counts.total, n_embedding=counts.embedding, n_nonembedding=counts.non_embedding,
                   param_convention=PARAM_CONVENTION, flops_per_token=task.fpt)
    optim = cfg.reader_optim
    spec = engine.RunSpec(run_id=run_id, identity=identity, optim=optim, lr=optim.lr,
                          schedule=optim.schedule_for(cfg.reader_steps), seed=cfg.seed, device=cfg.device,
                          eval_steps=engine.every(max(1, cfg.reader_steps // 8), cfg.reader_steps), store=store,
                          row=row, checkpoint_every=60.0, fix="remove it or choose another --out")
    outcome = engine.train(task, spec, job.out_dir)
    model = outcome.load_model()
    with engine.keep_torch_threads():
        torch.set_num_threads(1)
        return [{"role": "reader", "model": f"{job.model[0]}x{job.model[1]}", "steps": outcome.steps,
                 "run_id": run_id, "copy_acc": outcome.points[-1]["copy_acc"], **measure}
                for measure in read_tables(model, cfg)]


def read_tables(model: torch.nn.Module, cfg: OpenBookConfig) -> list[dict]:
    """The reader's accuracy on each table's facts, for every k, distractor kind and ρ, and with
    the right record removed (ρ = 0)."""
    table = fact_table(cfg)
    out = []
    for n_facts in cfg.facts:
        facts = table.prefix(n_facts)
        rng = np.random.default_rng([cfg.seed, 61, n_facts])
        asked = np.sort(rng.choice(n_facts, size=min(n_facts, cfg.eval_queries), replace=False))
        keys, values = facts.keys[asked], facts.values[asked]
        for k in cfg.records:
            for kind in DISTRACTORS:
                for rho in (*cfg.recall, 0.0):
                    if rho == 0.0 and k != max(cfg.records):
                        continue  # removal is measured once, with the most records
                    present = rng.random(len(asked)) < rho
                    rows = episodes(rng, keys, values, k, cfg.alphabet, hard=float(kind == "hard"),
                                    present=present, others=facts, own=asked)
                    bits, right = answers(model, rows)
                    out.append({"F": n_facts, "k": k, "distractors": kind, "rho": rho, "asked": len(asked),
                                "accuracy": float(right.mean()), "value_bits": float(bits.mean())})
    return out


def _run_job(job: _Job) -> list[dict]:
    return _reader(job) if job.role == "reader" else _closed(job)


# --- the experiment and what it says ----------------------------------------------------------------------

COPY_LEARNT = 0.5  # a reader below this accuracy with one record and the right one present did not learn to copy


@dataclass
class OpenBookResult:
    """closed: one row per (model, F): recalled, recall (share), bits_stored, capacity_share
    S/(α·N), params, params_per_fact. reader: one row per (model, F, k, distractors, rho):
    accuracy on the table's facts (rho 0: the right record removed), answered (accuracy × F),
    params_per_fact. crossover: per model, the smallest F of the sweep at which the reader answers
    more facts than the closed book recalls (k = `k_compare`, hard distractors, ρ = 1), and the F
    the capacity predicts, α·N / bits per fact."""

    config: OpenBookConfig
    closed: pd.DataFrame
    reader: pd.DataFrame
    crossover: pd.DataFrame
    alpha: float
    alpha_source: str
    k_compare: int
    notes: list[str] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"config": asdict(self.config), "closed": self.closed.to_dict("records"),
                "reader": self.reader.to_dict("records"), "crossover": self.crossover.to_dict("records"),
                "alpha": self.alpha, "alpha_source": self.alpha_source, "k_compare": self.k_compare,
                "bits_per_fact": self.config.bits_per_fact, "notes": self.notes}


def analyse(cfg: OpenBookConfig, rows: list[dict], alpha: float, alpha_source: str) -> OpenBookResult:
    params = {f"{m[0]}x{m[1]}": count_params(cfg.model_config(*m)).total for m in cfg.models}
    closed = pd.DataFrame([r for r in rows if r["role"] == "closed"]).drop(columns="role")
    closed = closed.sort_values(["model", "F"], kind="stable").reset_index(drop=True)
    closed["params"] = closed.model.map(params)
    closed["recall"] = closed.recalled / closed.F
    closed["capacity_share"] = closed.bits_stored / (alpha * closed.params)
    closed["params_per_fact"] = closed.params / closed.recalled.clip(lower=1)
    reader = pd.DataFrame([r for r in rows if r["role"] == "reader"]).drop(columns="role")
    reader = reader.sort_values(["model", "F", "k", "distractors", "rho"], ascending=[True, True, True, True, False],
                                kind="stable").reset_index(drop=True)
    reader["params"] = reader.model.map(params)
    reader["answered"] = reader.accuracy * reader.F
    reader["params_per_fact"] = reader.params / reader.answered.clip(lower=1)
    k_compare = 4 if 4 in cfg.records else max(cfg.records)
    crossover = []
    for model, c in closed.groupby("model", sort=False):
        r = reader[(reader.model == model) & (reader.k == k_compare) & (reader.distractors == "hard")
                   & (reader.rho == 1.0)].set_index("F")
        wins = [f for f in c.F if r.loc[f, "answered"] > c.set_index("F").loc[f, "recalled"]]
        crossover.append({"model": model, "params": params[model], "measured_F": min(wins) if wins else None,
                          "predicted_F": alpha * params[model] / cfg.bits_per_fact})
    return OpenBookResult(config=cfg, closed=closed, reader=reader, crossover=pd.DataFrame(crossover), alpha=alpha,
                          alpha_source=alpha_source, k_compare=k_compare)


def notes(result: OpenBookResult) -> list[str]:
    cfg, closed, reader, k = result.config, result.closed, result.reader, result.k_compare
    out = []
    for cross in result.crossover.itertuples():
        c = closed[closed.model == cross.model]
        r = reader[(reader.model == cross.model) & (reader.distractors == "hard") & (reader.k == k)]
        best = r[r.rho == 1.0]
        one = reader[(reader.model == cross.model) & (reader.k == min(cfg.records)) & (reader.rho == 1.0)]
        if one.accuracy.max() < COPY_LEARNT:
            out.append(f"{cross.model}: the reader did not learn to copy within {cfg.reader_steps:,} steps "
                       f"(accuracy {one.accuracy.max():.3f} with {min(cfg.records)} record(s), the right one present)")
        out.append(f"{cross.model}: closed-book recall {c.recall.iloc[0]:.3f} at F={c.F.iloc[0]:,} -> "
                   f"{c.recall.iloc[-1]:.3f} at F={c.F.iloc[-1]:,} (stores {c.bits_stored.max():,.0f} bits, "
                   f"{c.capacity_share.max():.2f} of α·N); open book (k={k}, hard distractors, ρ=1) "
                   f"{best.accuracy.min():.3f}-{best.accuracy.max():.3f} over F")
        measured = "not within the sweep" if cross.measured_F is None else f"F={cross.measured_F:,}"
        out.append(f"{cross.model}: retrieval overtakes storage at {measured}; capacity predicts "
                   f"α·N/{cfg.bits_per_fact:.0f} bits = {cross.predicted_F:,.0f} facts")
        removed = reader[(reader.model == cross.model) & (reader.rho == 0.0)]
        if len(removed):
            out.append(f"{cross.model}: right record removed: accuracy {removed.accuracy.max():.4f} "
                       f"(the reader stores none of the facts; chance is {cfg.alphabet ** -2:.5f})")
        for rho in cfg.recall:
            if rho < 1:
                at = r[r.rho == rho]
                out.append(f"{cross.model}: ρ={rho:g}: accuracy {at.accuracy.mean():.3f} "
                           f"(ρ x accuracy at ρ=1 = {rho * best.accuracy.mean():.3f})")
    last_f = closed.F.max()
    for model, c in closed[closed.F == last_f].groupby("model", sort=False):
        r = reader[(reader.model == model) & (reader.F == last_f) & (reader.k == k) & (reader.distractors == "hard")
                   & (reader.rho == 1.0)]
        out.append(f"{model} at F={last_f:,}: {c.params_per_fact.iloc[0]:,.1f} parameters per fact recalled "
                   f"closed-book, {r.params_per_fact.iloc[0]:,.1f} per fact answered open-book")
    return out


def run_open_book(cfg: OpenBookConfig, out_root: Path | str, *, db: Path | str | None = None, workers: int = 1,
                  figures: Path | str | None = None, console=None,
                  backend: BackendSpec | None = None) -> OpenBookResult:
    """Every closed-book fit and reader (resumable; finished runs are loaded), the analysis, the
    stored result and, with `figures`, its figure."""
    out_root = Path(out_root)
    db_text = None if db is None else str(db)
    jobs = []
    for model in cfg.models:
        shape = f"{model[0]}x{model[1]}"
        identity = {"model": model, "alphabet": cfg.alphabet, "seed": cfg.seed, "batch_size": cfg.batch_size}
        reader_id = config_hash({**identity, "train_records": cfg.train_records, "train_hard": cfg.train_hard,
                                 "steps": cfg.reader_steps,
                                 "optim": asdict(cfg.reader_optim)})
        jobs.append(_Job(cfg, "reader", model, None, str(out_root / f"reader-{shape}-{reader_id}"), db_text))
        for n_facts in cfg.facts:
            closed_id = config_hash({**identity, "F": n_facts, "recipe": cfg.closed_recipe(n_facts).identity()})
            jobs.append(_Job(cfg, "closed", model, n_facts, str(out_root / f"closed-{shape}-F{n_facts}-{closed_id}"),
                             db_text))
    # the readers and the largest tables first: with several workers the longest jobs start early
    jobs.sort(key=lambda j: (j.role != "reader", -(j.n_facts or 0), -j.model[0] * j.model[1]))
    done = run_parallel(_run_job, jobs, workers=workers, label="open-book", console=console,
                        describe=lambda job: job.label, backend=backend, work_dir=out_root)
    result = analyse(cfg, [row for rows in done for row in rows], *alpha_or_anchor(db))
    result.notes = notes(result)
    if db is not None:
        put_probe_result(open_store(db), PROBE, cfg.key(), result.to_dict())
    if figures is not None:
        from scalinglab.report.figures import record
        from scalinglab.report.knowledge import open_book_figure

        result.figures = record([open_book_figure(result, Path(figures) / f"open-book-{cfg.key()}.png")], db)
    return result


def summary_lines(result: OpenBookResult) -> Sequence[str]:
    cfg = result.config
    return [f"facts of {cfg.bits_per_fact:.0f} bits; α = {result.alpha:.2f} bits/param ({result.alpha_source})",
            *result.notes]
