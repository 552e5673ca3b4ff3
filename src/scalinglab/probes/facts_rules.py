"""The facts-vs-rules probe: a fixed model fed ever more data of two kinds.

Every item is one short sequence `TAG k1 k2 k3 = v1 v2` over an alphabet of A symbols:

- a fact (TAG = F): a random key and a random value. Facts are incompressible: each holds
  2·log2(A) bits that exist nowhere else, so the model can only store them, one by one;
- a rule item (TAG = R): a random key whose value follows a fixed rule, v1 = σ(k1), v2 = τ(k3)
  for two hidden permutations σ, τ of the alphabet (k2 is a distractor). The rule is a small
  grammar: once learnt, it answers every key, including keys never seen.

At a fixed model size N the dataset grows (D items, a fixed share of them rules; each smaller
dataset is a prefix of the larger ones). Each dataset is fitted for the same number of passes
(exposures per item). Measured on every fit: facts recalled (both value tokens right, greedy),
the information stored about the facts in bits, Σ max(0, 2·log2 A − NLL(value | key)), and the
accuracy on rule items with unseen keys. The facts stored saturate at a number set by the
model's capacity (about α·N bits, α from the capacity probe where it has run), while the rule,
which costs a fixed few hundred bits, keeps improving with data.

Training uses the probes' shared trainer (`probes.common.fit_sequences`): resumable, recorded in
the store as runs of kind "probe:facts-rules"; the summary is a result of that kind.
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
from scalinglab.model import ModelConfig, count_params
from scalinglab.probes.common import (
    FitRecipe,
    ProbeRecord,
    fit_sequences,
    flat_optim,
    probe_kind,
    probe_model,
    probe_optim,
    put_probe_result,
    run_parallel,
    sequence_bits,
)
from scalinglab.store import Store, open_store

PROBE = "facts-rules"
# Minibatch AdamW at a constant LR after warmup, no weight decay (the probes' β2 0.98).
FACTS_RULES_OPTIM = probe_optim(lr=1e-2, warmup=50, schedule="constant")
SEQ_LEN = 7  # TAG k1 k2 k3 = v1 v2
ANSWER = slice(4, 6)  # the predictions of v1 and v2 among the L-1 predictions
VALUES = slice(5, 7)  # v1 and v2 among the tokens


@dataclass(frozen=True)
class FactsRulesConfig:
    """The experiment.

    items: dataset sizes D (facts + rule items), one fit each.
    rule_share: share of each dataset that is rule items.
    alphabet: symbols A per key/value position (a fact holds 2·log2 A bits).
    n_layer, d_model: the GPT (fixed N across the sweep).
    epochs: passes over the dataset per fit (exposures per item); min_steps: floor on updates
      for the smallest datasets.
    batch_size, optim: minibatch training (`FACTS_RULES_OPTIM`: AdamW, constant LR after warmup).
    test_items: rule items with keys unseen in any training set.
    seed: data, rule and initialisation.
    """

    items: tuple[int, ...] = (128, 256, 512, 1024, 2048, 4096)
    rule_share: float = 0.5
    alphabet: int = 64
    n_layer: int = 1
    d_model: int = 16
    epochs: int = 400
    min_steps: int = 400
    batch_size: int = 256
    optim: OptimConfig = FACTS_RULES_OPTIM
    test_items: int = 512
    seed: int = 0
    eval_points: int = 8

    def __post_init__(self) -> None:
        if not self.items or any(not isinstance(d, int) or d < 2 for d in self.items):
            raise UserError(f"--items must be whole numbers >= 2, got {list(self.items)}")
        object.__setattr__(self, "items", tuple(sorted(set(self.items))))
        if not 0 <= self.rule_share <= 1:
            raise UserError(f"--rule-share must lie in [0, 1], got {self.rule_share}")
        if not 4 <= self.alphabet <= 1024:
            raise UserError(f"--alphabet must lie between 4 and 1024 symbols, got {self.alphabet}")
        n_facts = max(self.items) - round(max(self.items) * self.rule_share)
        if n_facts > self.alphabet ** 3:
            raise UserError(f"{n_facts:,} facts need distinct keys but the alphabet gives only {self.alphabet ** 3:,}; "
                            "raise --alphabet or lower --items")
        for name in ("epochs", "min_steps", "batch_size", "test_items", "eval_points", "n_layer", "d_model"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise UserError(f"{name.replace('_', '-')} must be a positive whole number, got {getattr(self, name)!r}")
        if self.optim.lr is None or self.optim.warmup is None:
            raise UserError("optim.lr and optim.warmup must be set for the facts-rules probe")
        self.optim.validate()
        if self.d_model % 2:
            raise UserError(f"--d-model must be even (rotary positions rotate pairs), got {self.d_model}")

    @property
    def vocab_size(self) -> int:
        return self.alphabet + 3  # symbols, F, R, =

    @property
    def bits_per_fact(self) -> float:
        return 2 * math.log2(self.alphabet)

    def model_config(self) -> ModelConfig:
        return probe_model(self.n_layer, self.d_model, self.vocab_size)

    def recipe(self, n_items: int) -> FitRecipe:
        steps = max(self.min_steps, math.ceil(self.epochs * n_items / self.batch_size))
        return FitRecipe(steps=steps, optim=self.optim, batch_size=self.batch_size, eval_every=max(1, steps // self.eval_points), seed=self.seed)

    def key(self) -> str:
        return config_hash(flat_optim(asdict(self), FACTS_RULES_OPTIM, ("lr", "weight_decay", "warmup")))

    def fit_identity(self, n_items: int) -> dict:
        """What fixes the fit at one dataset size: not the other sizes of the sweep."""
        data = {k: getattr(self, k) for k in ("rule_share", "alphabet", "test_items", "seed")}
        return {"probe": PROBE, "n_items": n_items, "data": data, "epochs": self.epochs}


# --- the data ------------------------------------------------------------------------------------

@dataclass
class FactsRulesData:
    """Items for the largest dataset (smaller ones are prefixes of facts and of rules) and the
    held-out rule items. Rows are token sequences of length 7."""

    facts: torch.Tensor  # (n_facts_max, 7)
    rules: torch.Tensor  # (n_rules_max, 7)
    test: torch.Tensor  # (test_items, 7) rule items with unseen keys
    alphabet: int

    def dataset(self, n_items: int, rule_share: float) -> tuple[torch.Tensor, int]:
        """(sequences with the facts first, number of facts) for a dataset of `n_items`."""
        n_rules = round(n_items * rule_share)
        n_facts = n_items - n_rules
        return torch.cat([self.facts[:n_facts], self.rules[:n_rules]]), n_facts


def make_data(cfg: FactsRulesConfig) -> FactsRulesData:
    """Facts with distinct random keys and random values; rule items with distinct random keys,
    the test keys disjoint from every training key.

    Every list is drawn as a stream (`_unique_codes`), so the data for a smaller largest D is a
    prefix of the data for a larger one: a fit at a given D is the same whatever the sweep.
    """
    A = cfg.alphabet
    F, R, EQ = A, A + 1, A + 2
    top = max(cfg.items)
    n_rules = round(top * cfg.rule_share)
    n_facts = top - n_rules
    if n_rules + cfg.test_items > A ** 3:
        raise UserError(f"{n_rules + cfg.test_items:,} rule keys needed but the alphabet gives {A ** 3:,}; "
                        "raise --alphabet")
    permutations = np.random.default_rng([cfg.seed, 1])
    sigma, tau = permutations.permutation(A), permutations.permutation(A)
    fact_keys = _keys(_unique_codes(np.random.default_rng([cfg.seed, 2]), A ** 3, n_facts), A)
    fact_values = np.random.default_rng([cfg.seed, 3]).integers(0, A, size=(n_facts, 2))
    # The test keys come first in the rule-key stream, so no training set ever contains one.
    rule_keys = _keys(_unique_codes(np.random.default_rng([cfg.seed, 4]), A ** 3, cfg.test_items + n_rules), A)

    def rule_rows(k: np.ndarray) -> np.ndarray:
        return np.column_stack([np.full(len(k), R), k, np.full(len(k), EQ), sigma[k[:, 0]], tau[k[:, 2]]])

    facts = np.column_stack([np.full(n_facts, F), fact_keys, np.full(n_facts, EQ), fact_values])
    as_tensor = lambda a: torch.from_numpy(a.astype(np.int64)).reshape(-1, SEQ_LEN)  # noqa: E731
    return FactsRulesData(facts=as_tensor(facts), rules=as_tensor(rule_rows(rule_keys[cfg.test_items:])),
                          test=as_tensor(rule_rows(rule_keys[: cfg.test_items])), alphabet=A)


def _unique_codes(rng: np.random.Generator, space: int, n: int) -> np.ndarray:
    """The first `n` distinct values of a stream of uniform draws from [0, space). Drawn in
    fixed-size chunks, so the stream (and so the prefix) does not depend on `n`."""
    seen: dict[int, None] = {}
    while len(seen) < n:
        for code in rng.integers(0, space, size=1024).tolist():
            seen.setdefault(code)
            if len(seen) == n:
                break
    return np.fromiter(seen, dtype=np.int64, count=n)


def _keys(codes: np.ndarray, A: int) -> np.ndarray:
    return np.stack([codes // A ** 2, codes // A % A, codes % A], axis=1)


def answer_mask() -> torch.Tensor:
    mask = torch.zeros(SEQ_LEN - 1)
    mask[ANSWER] = 1.0
    return mask


@torch.no_grad()
def answers_correct(model: torch.nn.Module, rows: torch.Tensor, batch: int = 4096) -> np.ndarray:
    """Whether the greedy prediction gets both value tokens right, per row (teacher forced)."""
    out = []
    device = next(model.parameters()).device
    for i in range(0, len(rows), batch):
        x = rows[i : i + batch].to(device)
        predicted = model(x[:, :-1]).argmax(dim=-1)[:, ANSWER]
        out.append((predicted == x[:, VALUES]).all(dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=bool)


# --- one fit per dataset size ------------------------------------------------------------------------

@dataclass(frozen=True)
class _Job:
    cfg: FactsRulesConfig
    n_items: int
    out_dir: str
    db: str | None


def _fit_one(job: _Job) -> dict:
    cfg = job.cfg
    data = make_data(cfg)
    sequences, n_facts = data.dataset(job.n_items, cfg.rule_share)
    mask = answer_mask()
    bits_per_fact = cfg.bits_per_fact

    def evaluate(model, train_bits: np.ndarray) -> dict:
        correct = answers_correct(model, sequences)
        test_correct = answers_correct(model, data.test)
        test_bits = sequence_bits(model, data.test, mask)
        fact_bits = train_bits[:n_facts]
        return {
            "facts_recalled": float(correct[:n_facts].sum()),
            "fact_bits_stored": float(np.clip(bits_per_fact - fact_bits, 0, None).sum()),
            "rule_train_acc": float(correct[n_facts:].mean()) if job.n_items > n_facts else float("nan"),
            "rule_test_acc": float(test_correct.mean()),
            "rule_test_bits": float(test_bits.mean()),
        }

    record = None
    if job.db is not None:
        record = ProbeRecord(db=Path(job.db), probe=PROBE, name=f"facts-rules D={job.n_items}",
                             meta={"n_items": job.n_items, "n_facts": n_facts, "bits_per_fact": bits_per_fact})
    result = fit_sequences(cfg.model_config(), sequences, cfg.recipe(job.n_items), job.out_dir, loss_mask=mask,
                           evaluate=evaluate, record=record,
                           identity=cfg.fit_identity(job.n_items))
    final = result.final
    return {"n_items": job.n_items, "n_facts": n_facts, "n_rules": job.n_items - n_facts, "run_id": result.run_id,
            "steps": result.steps, "exposures": result.steps * cfg.batch_size / job.n_items,
            "wall_time": result.wall_time, "train_loss": final["train_loss"],
            **{k: final[k] for k in ("facts_recalled", "fact_bits_stored", "rule_train_acc", "rule_test_acc",
                                     "rule_test_bits")},
            "history": result.points}


@dataclass
class FactsRulesResult:
    """table: one row per dataset size: n_items, n_facts, n_rules, facts_recalled,
    recall_share, fact_bits_stored, rule_train_acc, rule_test_acc, rule_test_bits (mean bits on
    unseen rule items; 2·log2 A = chance), train_loss, steps, exposures, wall_time, run_id.
    n_params: the model's parameters (total and non-embedding); capacity_alpha: bits per
    parameter from the capacity probe (None when it has not run), capacity_bits: α·N."""

    config: FactsRulesConfig
    table: pd.DataFrame
    histories: dict[int, list[dict]]
    n_params: dict
    capacity_alpha: float | None
    capacity_source: str | None
    notes: list[str] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)

    @property
    def capacity_bits(self) -> float | None:
        if self.capacity_alpha is None:
            return None
        return self.capacity_alpha * self.n_params[self.n_params["convention"]]

    @property
    def max_fact_bits(self) -> float:
        return float(self.table.fact_bits_stored.max())

    def to_dict(self) -> dict:
        return {"config": asdict(self.config), "table": self.table.to_dict("records"), "n_params": self.n_params,
                "capacity_alpha": self.capacity_alpha, "capacity_source": self.capacity_source,
                "capacity_bits": self.capacity_bits, "max_fact_bits": self.max_fact_bits,
                "bits_per_param": self.max_fact_bits / self.n_params[self.n_params["convention"]],
                "notes": self.notes}


def run_facts_rules(cfg: FactsRulesConfig, out_root: Path | str, *, db: Path | str | None = None, workers: int = 1,
                    figures: Path | str | None = None, console=None,
                    backend: BackendSpec | None = None) -> FactsRulesResult:
    """One fit per dataset size (resumable; finished fits are loaded), then the summary, and with
    `figures` a folder to draw its figure in (recorded in the store with `db`)."""
    out_root = Path(out_root)
    jobs = [_Job(cfg, d, str(out_root / _fit_dir(cfg, d)), None if db is None else str(db)) for d in cfg.items]
    # Largest first: with several workers the longest fits start early.
    order = sorted(range(len(jobs)), key=lambda i: -jobs[i].n_items)
    finished = run_parallel(_fit_one, [jobs[i] for i in order], workers=workers, label="facts-rules",
                            console=console, describe=lambda job: f"D={job.n_items}", backend=backend,
                            work_dir=out_root)
    rows = sorted(finished, key=lambda r: r["n_items"])
    histories = {r["n_items"]: r.pop("history") for r in rows}
    table = pd.DataFrame(rows)
    table.insert(4, "recall_share", table.facts_recalled / table.n_facts.clip(lower=1))
    counts = count_params(cfg.model_config())
    n_params = {"total": counts.total, "non_embedding": counts.non_embedding, "convention": "total"}
    notes: list[str] = []
    alpha, source = None, None
    if db is not None:
        alpha, source, convention = capacity_alpha(open_store(db))
        if convention in ("total", "non_embedding"):
            n_params["convention"] = convention
    if alpha is None:
        notes.append("no capacity result in the store (scalinglab probe capacity): facts stored are reported "
                     "in bits per parameter without the α·N line")
    result = FactsRulesResult(config=cfg, table=table, histories=histories, n_params=n_params, capacity_alpha=alpha,
                              capacity_source=source, notes=notes)
    if db is not None:
        put_probe_result(open_store(db), PROBE, cfg.key(), result.to_dict())
    if figures is not None:
        from scalinglab.report.figures import record
        from scalinglab.report.phase import facts_rules_figure

        result.figures = record([facts_rules_figure(result, Path(figures) / f"facts-rules-{cfg.key()}.png")], db)
    return result


def _fit_dir(cfg: FactsRulesConfig, n_items: int) -> str:
    recipe = cfg.recipe(n_items).identity()
    return f"D{n_items}-" + config_hash({**cfg.fit_identity(n_items), "model": cfg.model_config().to_dict(),
                                         "recipe": recipe})


def capacity_alpha(store: Store) -> tuple[float | None, str | None, str | None]:
    """(α in bits per parameter, where it came from, its parameter convention) from the newest
    capacity-probe result in the store, or (None, None, None) when there is none."""
    try:
        from scalinglab.probes.capacity import latest_alpha
    except ImportError:  # the capacity probe is not installed
        return None, None, None
    found = latest_alpha(store)
    alpha = found.get("alpha") if found else None
    if not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
        return None, None, None
    source = f"{probe_kind('capacity')} {found['key']}"
    if found.get("converged") is False:
        source += ", not converged: a lower bound"
    return float(alpha), source, found.get("param_convention", "total")


def alpha_or_anchor(db: Path | str | None) -> tuple[float, str]:
    """(α, where it came from): the newest capacity-probe result in the store `db`, else the
    anchor of Morris et al. 2025."""
    from scalinglab.probes.capacity import ANCHOR_BITS_PER_PARAM

    if db is not None:
        alpha, source, _ = capacity_alpha(open_store(db))
        if alpha is not None:
            return alpha, source
    return ANCHOR_BITS_PER_PARAM, "anchor (Morris et al. 2025); run `scalinglab probe capacity` to measure"


def parse_items(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(float(x)) for x in text.split(",") if x.strip())
    except ValueError:
        raise UserError(f"--items: cannot read {text!r} as comma-separated whole numbers (e.g. 256,1024,4096)") from None


def summary_lines(result: FactsRulesResult) -> Sequence[str]:
    t = result.table
    n = result.n_params[result.n_params["convention"]]
    best = t.loc[t.fact_bits_stored.idxmax()]
    lines = [f"model: {result.n_params['total']:,} parameters ({result.n_params['non_embedding']:,} non-embedding); "
             f"a fact holds {result.config.bits_per_fact:.1f} bits",
             f"most facts stored: {best.fact_bits_stored:,.0f} bits ({best.fact_bits_stored / n:.2f} bits/parameter, "
             f"{best.facts_recalled:,.0f} facts recalled of {best.n_facts:,}) at D = {best.n_items:,}"]
    if result.capacity_bits is not None:
        lines.append(f"capacity α·N = {result.capacity_alpha:.2f} x {n:,} = {result.capacity_bits:,.0f} bits "
                     f"({result.capacity_source}); stored/capacity = {best.fact_bits_stored / result.capacity_bits:.2f}")
    last = t.iloc[-1]
    lines.append(f"rule accuracy on unseen keys: {t.rule_test_acc.iloc[0]:.3f} at D = {t.n_items.iloc[0]:,} -> "
                 f"{last.rule_test_acc:.3f} at D = {last.n_items:,}")
    lines.extend(result.notes)
    return lines
