"""The N x D grid of a fixed-capacity data-scaling study, sized to a budget.

For each model size N the study trains one trunk at constant LR (after warmup) and, at each D
milestone, branches a cooldown from the trunk: the branch starts at D x (1 - cooldown_frac) and
decays the LR to zero by D (Hägele et al. 2024). Branch tokens count toward D, so a point at D
has seen exactly D tokens. Milestones are 20 x 2^k tokens per parameter, from 1/4x the
Chinchilla ratio (5/param), two per doubling of D by default, up to the largest 20 x 2^k that the
budget allows for that N: small models are cheap, so they reach larger multiples.

Budget sizing measures each N's training throughput with a short probe, then doubles the largest
milestone of the N that has gone least far (the cheapest on ties) while the plan still fits, so
all sizes reach the same multiple before the cheap ones go further. The makespan estimate
is the larger of the longest single chain (a trunk plus its last cooldown; a trunk is
sequential) and the total work spread over the workers.

With `control="repeat"` every N gets a second trunk with the same steps, branches and milestones,
trained on only the first D0 = control_unique x N tokens of the train split, repeated: a point
of the main trunk and the control's point at the same D differ only in unique data, not in
steps. The control doubles every N's work, and the budget pays for it.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass, field

from scalinglab.config import RunConfig
from scalinglab.corpus.prepare import CorpusConfig, PreparedCorpus
from scalinglab.device import resolved_precision
from scalinglab.errors import UserError
from scalinglab.model import ModelConfig, count_params, flops_per_token, preset, shape_for_params
from scalinglab.resources import MemoryEstimate, check_memory, training_memory
from scalinglab.train import hparams

CHINCHILLA_TPP = 20.0


@dataclass
class StudyConfig:
    """A data-scaling study.

    sizes: model sizes, each a preset name ("10k") or a non-embedding count ("3e4").
    min_tpp: the smallest milestone in tokens/param (1/4 of 20 by default).
    milestones_per_doubling: milestones per doubling of D (2: spaced by sqrt 2). Denser
      milestones give the per-N fits more points; each branch costs only its cooldown.
    max_doublings: the largest milestone allowed is 20 x 2^max_doublings tokens/param.
    cooldown_frac, cooldown_shape: each branch's share of its milestone and its LR shape.
    budget: "10m", "2h", "90s" (wall clock) or "1e15flops"; None: every N to 20 x 2^max_doublings.
    workers: parallel training processes (CPU: one per core, one thread each).
    seq_len, eval_tokens, seed, device, dtype: as in `scalinglab train`.
    control: None, or "repeat": a control trunk per N on a fixed unique subset, repeated.
    control_unique: the control's unique tokens D0 in tokens/param.
    """

    name: str = "default"
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    sizes: list[str] = field(default_factory=lambda: ["1e4", "3e4", "1e5"])
    min_tpp: float = 5.0
    milestones_per_doubling: int = 2
    max_doublings: int = 6
    cooldown_frac: float = 0.2
    cooldown_shape: str = "1-sqrt"
    budget: str | None = "10m"
    workers: int = 2
    seq_len: int = 256
    eval_tokens: int = 65536
    seed: int = 0
    device: str = "cpu"
    dtype: str = "auto"
    compile: bool = False
    no_repeat: bool = False
    control: str | None = None
    control_unique: float = CHINCHILLA_TPP

    def __post_init__(self) -> None:
        if self.control in ("none", ""):
            self.control = None

    def to_dict(self) -> dict:
        data = asdict(self)
        if not self.control:  # a study without a control reads as it did before the option existed
            del data["control"], data["control_unique"]
        return data

    @property
    def copies(self) -> int:
        """Trunks (each with its branches) per N: the main one, and the control's."""
        return 2 if self.control else 1

    def check_control(self) -> None:
        if self.control not in CONTROLS:
            raise UserError(f"unknown control {self.control!r}; choose one of {', '.join(CONTROLS[1:])} "
                            "(or none)")
        if self.control and not (0 < self.control_unique < math.inf):
            raise UserError(f"--control-unique must be a positive number of tokens/param, got {self.control_unique}")


CONTROLS = (None, "repeat")


PRESETS: dict[str, dict] = {
    # under a minute on 2 cores: three tiny models on short sequences
    "smoke": dict(sizes=["3e3", "6e3", "1.2e4"], budget="25s", max_doublings=2, seq_len=64, eval_tokens=4096),
    # about ten minutes on 2 cores
    "default": dict(sizes=["1e4", "3e4", "1e5"], budget="10m", max_doublings=6, seq_len=256, eval_tokens=65536),
    # about an hour on one GPU
    "gpu": dict(sizes=["1e6", "3e6", "1e7"], budget="1h", max_doublings=6, seq_len=512, eval_tokens=262144,
                device="cuda", workers=4, compile=True, control="repeat"),
}


def study_preset(preset_name: str, **overrides) -> StudyConfig:
    if preset_name not in PRESETS:
        raise UserError(f"unknown study preset {preset_name!r}; choose one of {', '.join(PRESETS)}")
    values = {**PRESETS[preset_name], **{k: v for k, v in overrides.items() if v is not None}}
    values.setdefault("name", preset_name)
    return StudyConfig(**values)


# --- budgets --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Budget:
    seconds: float | None = None
    flops: float | None = None

    def describe(self) -> str:
        if self.flops is not None:
            return f"{self.flops:.3g} FLOPs"
        if self.seconds is None:
            return "unlimited"
        return f"{self.seconds / 60:.1f} min" if self.seconds >= 60 else f"{self.seconds:.0f} s"


def parse_budget(text: str | None) -> Budget:
    """'10m', '2h', '90s', '1.5h' (wall clock) or '1e15flops'."""
    if text is None:
        return Budget()
    s = text.strip().lower().replace(" ", "")
    m = re.fullmatch(r"([0-9.]+(?:e[+-]?[0-9]+)?)(flops?|s|sec|m|min|h|hr)?", s)
    if not m:
        raise UserError(f"cannot read budget {text!r}; use e.g. 10m, 2h, 90s or 1e15flops")
    value = float(m.group(1))
    unit = m.group(2) or "s"
    if not (value > 0 and math.isfinite(value)):
        raise UserError(f"the budget must be positive, got {text!r}")
    if unit.startswith("flop"):
        return Budget(flops=value)
    scale = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}[unit]
    return Budget(seconds=value * scale)


# --- the grid -------------------------------------------------------------------------------

@dataclass
class Milestone:
    tpp: float
    end_step: int  # the branch's last step: D = end_step x batch tokens
    start_step: int  # where the branch leaves the trunk

    @property
    def branch_steps(self) -> int:
        return self.end_step - self.start_step


@dataclass
class SizePlan:
    """One N: its shape, batch, LR, warmup and milestones."""

    label: str
    model: ModelConfig
    batch_size: int
    seq_len: int
    lr: float
    warmup: int
    milestones: list[Milestone]
    doublings: int = 0  # the largest milestone is 20 x 2^doublings tokens/param
    tokens_per_s: float | None = None  # measured by the probe

    @property
    def n(self) -> int:
        return count_params(self.model).non_embedding

    @property
    def batch_tokens(self) -> int:
        return self.batch_size * self.seq_len

    @property
    def trunk_steps(self) -> int:
        return max(m.start_step for m in self.milestones)

    @property
    def work_steps(self) -> int:
        """Steps trained in all: the trunk plus every branch."""
        return self.trunk_steps + sum(m.branch_steps for m in self.milestones)

    @property
    def chain_steps(self) -> int:
        """The longest sequential chain: the trunk up to the last branch, then that branch."""
        last = max(self.milestones, key=lambda m: m.end_step)
        return last.start_step + last.branch_steps

    @property
    def separate_runs_steps(self) -> int:
        """Steps that separate runs (one per milestone, from scratch) would take."""
        return sum(m.end_step for m in self.milestones)

    @property
    def flops_per_token(self) -> float:
        return flops_per_token(self.model, self.seq_len)


@dataclass
class Grid:
    config: StudyConfig
    sizes: list[SizePlan]
    budget: Budget
    unique_train_tokens: int
    corpus_key: str | None = None

    def estimate_seconds(self) -> float | None:
        if any(s.tokens_per_s is None for s in self.sizes):
            return None
        return _makespan(self.sizes, self.config.workers, self.config.copies)

    @property
    def total_flops(self) -> float:
        return self.config.copies * sum(s.work_steps * s.batch_tokens * s.flops_per_token for s in self.sizes)

    @property
    def separate_runs_flops(self) -> float:
        return self.config.copies * sum(s.separate_runs_steps * s.batch_tokens * s.flops_per_token for s in self.sizes)

    @property
    def max_epochs(self) -> float:
        """Passes over the unique train tokens that the largest D needs."""
        return max(max(m.end_step for m in s.milestones) * s.batch_tokens for s in self.sizes) / self.unique_train_tokens


def _makespan(sizes: list[SizePlan], workers: int, copies: int = 1) -> float:
    """copies: trunks per N (a control trunk runs beside the main one, as long)."""
    chain = max(s.chain_steps * s.batch_tokens / s.tokens_per_s for s in sizes)
    work = copies * sum(s.work_steps * s.batch_tokens / s.tokens_per_s for s in sizes)
    return max(chain, work / max(1, workers))


def control_tokens(cfg: StudyConfig, size: SizePlan) -> int:
    """D0: the unique train tokens of the control trunk of this N."""
    return int(round(cfg.control_unique * size.n))


def resolve_size(text: str, vocab_size: int) -> ModelConfig:
    try:
        return preset(text, vocab_size=vocab_size)
    except UserError:
        pass
    try:
        target = float(text)
    except ValueError:
        raise UserError(f"cannot read size {text!r}; give a preset name (10k, 1m, ...) or a count like 3e4") from None
    return shape_for_params(target, vocab_size=vocab_size)


def _distinct_sizes(labels: list[str], vocab_size: int) -> list[str]:
    """The sizes asked for, one label per distinct shape ("10k" and "1e4" may be one model)."""
    seen: dict[tuple, str] = {}
    for label in labels:
        model = resolve_size(label, vocab_size)
        seen.setdefault((model.n_layer, model.d_model, model.n_head, model.mlp_ratio), label)
    return list(seen.values())


def study_warmup(batch_tokens: int, n: int, min_tpp: float, cooldown_frac: float) -> int:
    """Warmup ends well before the smallest milestone's branch starts, so every branch leaves
    a trunk that is already at its peak LR; it does not depend on the budget, so a longer study
    continues the same trunk."""
    first_branch = min_tpp * n * (1 - cooldown_frac) / batch_tokens
    return int(max(1, min(256, round(0.4 * first_branch))))


def size_plan(cfg: StudyConfig, label: str, vocab_size: int, doublings: int) -> SizePlan:
    model = resolve_size(label, vocab_size)
    n = count_params(model).non_embedding
    batch = hparams.default_batch_size(n, cfg.seq_len)
    batch_tokens = batch * cfg.seq_len
    step = 2 ** (1 / cfg.milestones_per_doubling)
    tpps = [cfg.min_tpp * step**k for k in range(200)]
    tpps = [t for t in tpps if t <= CHINCHILLA_TPP * 2**doublings * (1 + 1e-9)]
    milestones: list[Milestone] = []
    for tpp in tpps:
        end = max(2, round(tpp * n / batch_tokens))
        start = max(1, end - max(1, round(cfg.cooldown_frac * end)))
        if milestones and end <= milestones[-1].end_step:
            continue  # two milestones closer than a step apart would be the same run
        milestones.append(Milestone(tpp=tpp, end_step=end, start_step=start))
    return SizePlan(label=label, model=model, batch_size=batch, seq_len=cfg.seq_len, lr=hparams.default_lr(model.d_model),
                    warmup=study_warmup(batch_tokens, n, cfg.min_tpp, cfg.cooldown_frac), milestones=milestones,
                    doublings=doublings)


def measure_throughput(plan: SizePlan, device: str, dtype: str, steps: int = 4) -> float:
    """Training tokens/s of one worker for this size (a few timed steps after a warm-up)."""
    import numpy as np
    import torch

    from scalinglab.device import place
    from scalinglab.model import GPT
    from scalinglab.train.loop import RunPlan, make_optimizer, train_step
    from scalinglab.train.schedules import Schedule

    placement = place(device, dtype, 1)
    torch.manual_seed(0)
    model = GPT(plan.model).to(placement.device)
    run_plan = RunPlan(config=RunConfig(), model=plan.model, batch_size=plan.batch_size, seq_len=plan.seq_len,
                       lr=plan.lr, schedule=Schedule("constant", 1, 0), eval_steps=[])
    optimizer = make_optimizer(model, run_plan)
    data = torch.from_numpy(np.random.default_rng(0).integers(0, plan.model.vocab_size, (plan.batch_size, plan.seq_len + 1)))
    x, y = data[:, :-1], data[:, 1:]
    train_step(model, optimizer, x, y, plan.lr, 1.0, placement)  # warm-up
    if placement.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        train_step(model, optimizer, x, y, plan.lr, 1.0, placement)
    if placement.device.type == "cuda":
        torch.cuda.synchronize()
    return steps * plan.batch_tokens / (time.perf_counter() - t0)


def peak_memory(cfg: StudyConfig, size: SizePlan) -> MemoryEstimate:
    """Peak memory of one of the study's training processes for this size."""
    _, dtype = resolved_precision(cfg.device, cfg.dtype)
    return training_memory(size.model, size.batch_size, size.seq_len, bf16=dtype == "bfloat16")


def check_study_memory(cfg: StudyConfig, sizes: list[SizePlan]) -> None:
    """Refuse, before any model is built, a study whose largest run times the workers sharing the
    machine (or the GPU) cannot fit; the message names the sizes that would."""
    device_type, _ = resolved_precision(cfg.device, cfg.dtype)
    estimates = {f"N = {s.n:,} ({s.label})": peak_memory(cfg, s) for s in sizes}
    check_memory(estimates, processes=cfg.workers, device=device_type)


# Evaluation, process start-up and checkpoints cost time the step probe does not see.
OVERHEAD = 1.25


def plan_grid(cfg: StudyConfig, corpus: PreparedCorpus, *, probe: bool = True) -> Grid:
    """The grid for a study: every N's milestones, extended as far as the budget allows."""
    if not cfg.sizes:
        raise UserError("a study needs at least one model size")
    if cfg.workers < 1:
        raise UserError(f"--workers must be at least 1, got {cfg.workers}")
    if not 0 < cfg.cooldown_frac < 1:
        raise UserError(f"cooldown_frac must lie in (0, 1), got {cfg.cooldown_frac}")
    if not 0 < cfg.min_tpp <= CHINCHILLA_TPP:
        raise UserError(f"min_tpp must lie in (0, 20], got {cfg.min_tpp}")
    if cfg.milestones_per_doubling < 1:
        raise UserError(f"milestones_per_doubling must be at least 1, got {cfg.milestones_per_doubling}")
    cfg.check_control()
    budget = parse_budget(cfg.budget)
    labels = _distinct_sizes(cfg.sizes, corpus.vocab_size)
    # every size starts at the 20:1 milestone, the least a data-scaling study should reach
    doublings = {label: 0 for label in labels}
    plans = {label: size_plan(cfg, label, corpus.vocab_size, 0) for label in labels}
    check_study_memory(cfg, list(plans.values()))
    if probe and budget.seconds is not None:
        for plan in plans.values():
            plan.tokens_per_s = measure_throughput(plan, cfg.device, cfg.dtype) / OVERHEAD

    def fits(candidate: dict[str, SizePlan]) -> bool:
        sizes = list(candidate.values())
        if budget.flops is not None:
            return cfg.copies * sum(s.work_steps * s.batch_tokens * s.flops_per_token for s in sizes) <= budget.flops
        if budget.seconds is not None and all(s.tokens_per_s for s in sizes):
            return _makespan(sizes, cfg.workers, cfg.copies) <= budget.seconds
        return True

    # Greedy: extend the N that has gone least far past 20:1 (the cheaper on ties) while the
    # plan fits, so that every N reaches the same multiple before the small ones go further.
    while True:
        options = []
        for label in labels:
            if doublings[label] >= cfg.max_doublings:
                continue
            trial = size_plan(cfg, label, corpus.vocab_size, doublings[label] + 1)
            trial.tokens_per_s = plans[label].tokens_per_s
            candidate = {**plans, label: trial}
            if fits(candidate):
                cost = trial.work_steps * trial.batch_tokens / (trial.tokens_per_s or 1.0)
                options.append((doublings[label], cost, label, trial))
        if not options:
            break
        *_, label, trial = min(options, key=lambda o: o[:2])
        plans[label], doublings[label] = trial, doublings[label] + 1

    grid = Grid(config=cfg, sizes=sorted(plans.values(), key=lambda s: s.n), budget=budget,
                unique_train_tokens=corpus.unique_train_tokens, corpus_key=corpus.key)
    if not fits(plans):
        estimate = grid.estimate_seconds()
        need = f"about {estimate / 60:.1f} min" if estimate else f"{grid.total_flops:.3g} FLOPs"
        raise UserError(
            f"the budget {budget.describe()} is too small even for 20 tokens/param at every size (needs {need}); "
            "raise --budget or choose smaller --sizes"
        )
    return grid
