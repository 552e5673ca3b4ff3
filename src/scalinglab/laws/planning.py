"""Allocation planning with a law: compute-optimal, inference-optimal, over-trained, data-constrained.

Compute is C = 6·N·D training FLOPs and 2·N per inference token, the conventions of Kaplan,
Hoffmann, Sardana and Muennighoff. For the Chinchilla form the compute-optimal split has a closed
form (Hoffmann et al. 2022, eq. 4):

    N_opt = G (C/6)^a,  D_opt = G^-1 (C/6)^b,  G = (αA / βB)^(1/(α+β)),  a = β/(α+β),  b = α/(α+β)

Other forms are minimised numerically along the iso-FLOP line. Each function returns a `Plan`:
named quantities, each an `Estimate` with an interval when the law came from a bootstrapped fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping

import numpy as np
from scipy.optimize import brentq, minimize_scalar

from scalinglab.errors import UserError, positive
from scalinglab.laws.forms import DataConstrained, PowerLawSum, effective_params_data
from scalinglab.laws.law import Estimate, Law

if TYPE_CHECKING:
    import pandas as pd

TRAIN_FLOPS = 6.0  # per parameter per training token
INFER_FLOPS = 2.0  # per parameter per inference token


def count(x: float) -> str:
    """8e9 -> '8B', 1.5e13 -> '15T': parameter and token counts as people say them."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{suffix}"
    return f"{x:.3g}"


@dataclass(frozen=True)
class Quantity:
    label: str
    estimate: Estimate
    unit: str = ""  # params | tokens | FLOPs | nats | ratio | x (a multiple) | fraction | epochs


@dataclass
class Plan:
    """Named quantities from one planning question, plus notes that qualify them."""

    title: str
    law: str
    quantities: dict[str, Quantity] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def __getitem__(self, key: str) -> Estimate:
        return self.quantities[key].estimate

    def add(self, key: str, label: str, estimate: Estimate | float, unit: str = "") -> None:
        self.quantities[key] = Quantity(label, estimate if isinstance(estimate, Estimate) else Estimate(float(estimate)), unit)

    def table(self) -> "pd.DataFrame":
        import pandas as pd

        return pd.DataFrame(
            [{"quantity": q.label, "key": k, "value": q.estimate.value, "lo": q.estimate.lo, "hi": q.estimate.hi, "unit": q.unit}
             for k, q in self.quantities.items()]
        )

    def to_dict(self) -> dict:
        return {"title": self.title, "law": self.law, "notes": self.notes,
                "quantities": {k: {"label": q.label, "unit": q.unit, **q.estimate.to_dict()} for k, q in self.quantities.items()}}


# -- the physics: optimal splits for one parameter set -------------------------------------------
def _closed_form(law: Law) -> bool:
    form = law.form
    return isinstance(form, PowerLawSum) and form.variables == ("N", "D") and form.params == ("E", "A", "alpha", "B", "beta")


def optimal_split(law: Law, p: Mapping, flops, unique=None):
    """(N_opt, D_opt) at `flops` for parameters p (vectorised over p for the Chinchilla form)."""
    if _closed_form(law) and unique is None:
        al, be = p["alpha"], p["beta"]
        g = (al * p["A"] / (be * p["B"])) ** (1.0 / (al + be))
        scaled = np.asarray(flops, dtype=float) / TRAIN_FLOPS
        return g * scaled ** (be / (al + be)), scaled ** (al / (al + be)) / g
    scaled = float(flops) / TRAIN_FLOPS

    def loss_at(x: float) -> float:
        n = math.exp(x)
        X = {"N": n, "D": scaled / n} | ({"U": unique} if unique is not None else {})
        return float(law.form.predict(p, **X))

    xs = np.linspace(0.0, math.log(scaled), 401)  # N from 1 to C/6 (D >= 1 token)
    values = np.array([loss_at(x) for x in xs])
    i = int(np.nanargmin(values))
    lo, hi = xs[max(i - 1, 0)], xs[min(i + 1, xs.size - 1)]
    x = minimize_scalar(loss_at, bounds=(lo, hi), method="bounded", options={"xatol": 1e-10}).x
    return math.exp(x), scaled / math.exp(x)


def optimal_tokens_for_size(law: Law, p: Mapping, n_params):
    """The D at which a model of n_params parameters is compute-optimal."""
    if _closed_form(law):
        al, be = p["alpha"], p["beta"]
        g = (al * p["A"] / (be * p["B"])) ** (1.0 / (al + be))
        scaled = (np.asarray(n_params, dtype=float) / g) ** ((al + be) / be)  # C/6 where N_opt = n_params
        return scaled / n_params

    def gap(logc: float) -> float:
        return math.log(optimal_split(law, p, math.exp(logc))[0]) - math.log(n_params)

    lo = hi = math.log(TRAIN_FLOPS * n_params * 20)  # start at 20 tokens/param and widen
    while gap(lo) > 0 and lo > math.log(TRAIN_FLOPS * n_params) - 30:
        lo -= 3.0
    while gap(hi) < 0 and hi < lo + 120:
        hi += 3.0
    logc = brentq(gap, lo, hi, xtol=1e-12)
    return math.exp(logc) / (TRAIN_FLOPS * n_params)


def tokens_for_loss(law: Law, p: Mapping, n_params, target):
    """D such that L(n_params, D) = target; inf where even infinite data cannot reach it."""
    if _closed_form(law):
        with np.errstate(all="ignore"):
            room = target - p["E"] - p["A"] / np.asarray(n_params, dtype=float) ** p["alpha"]
            return np.where(room > 0, (p["B"] / np.where(room > 0, room, 1.0)) ** (1.0 / p["beta"]), np.inf)
    lo_gap = float(law.form.predict(p, N=n_params, D=1e30)) - target
    if lo_gap >= 0:
        return math.inf
    f = lambda logd: float(law.form.predict(p, N=n_params, D=math.exp(logd))) - target  # noqa: E731
    return math.exp(brentq(f, 0.0, math.log(1e30), xtol=1e-12))


def _optimal_loss(law: Law, p: Mapping, flops):
    n, d = optimal_split(law, p, flops)
    return law.form.predict(p, N=n, D=d)


def flops_for_loss(law: Law, p: Mapping, target: float) -> float:
    """The least compute (trained compute-optimally) that reaches `target` loss."""
    f = lambda logc: float(_optimal_loss(law, p, math.exp(logc))) - target  # noqa: E731
    lo, hi = math.log(1e6), math.log(1e40)
    if f(hi) > 0:
        return math.inf
    return math.exp(brentq(f, lo, hi, xtol=1e-12))


# -- planning questions --------------------------------------------------------------------------
def _plan(law: Law, title: str, solve, rows: list[tuple[str, str, str]], vectorised: bool) -> Plan:
    """Evaluate solve(params) -> {key: number} at the law and its draws, in the order of `rows`."""
    found = law.estimate_all(solve, vectorised)
    plan = Plan(title, law.name)
    for key, label, unit in rows:
        plan.add(key, label, found[key], unit)
    return plan


def compute_optimal(law: Law, flops: float) -> Plan:
    """The compute-optimal N, D, tokens/param and loss at a budget of `flops` training FLOPs."""
    positive("flops", flops)
    if not {"N", "D"} <= set(law.form.variables):
        raise UserError(f"compute-optimal planning needs a law in both N and D; {law.name} is a {law.form.name} law")

    def solve(p):
        n, d = optimal_split(law, p, flops)
        return {"flops": flops, "n_params": n, "tokens": d, "tokens_per_param": d / n, "loss": law.form.predict(p, N=n, D=d)}

    return _plan(law, f"compute-optimal allocation at {flops:.3g} FLOPs", solve, [
        ("flops", "training compute C = 6ND", "FLOPs"),
        ("n_params", "parameters N_opt", "params"),
        ("tokens", "tokens D_opt", "tokens"),
        ("tokens_per_param", "tokens per parameter", "ratio"),
        ("loss", "predicted loss", "nats"),
    ], vectorised=_closed_form(law))


def inference_optimal(law: Law, inference_tokens: float, *, flops: float | None = None, n_params: float | None = None) -> Plan:
    """Sardana et al. 2023: the (N, D) that reaches the loss of a compute-optimal reference model at
    the least total compute 6·N·D + 2·N·T, T the tokens served over the model's life.

    The reference is the compute-optimal model at `flops`, or the compute-optimal model with
    `n_params` parameters (their "13B Chinchilla-quality model").
    """
    positive("inference tokens", inference_tokens, allow_zero=True)
    if (flops is None) == (n_params is None):
        raise UserError("inference planning needs the reference model: give --flops C or --params N (not both)")
    _require_chinchilla_like(law, "inference-optimal planning")

    def solve(p):
        if flops is not None:
            n0, d0 = (float(v) for v in optimal_split(law, p, flops))
        else:
            n0, d0 = float(n_params), float(optimal_tokens_for_size(law, p, n_params))
        target = float(law.form.predict(p, N=n0, D=d0))

        def log_total(x: float) -> float:
            n = math.exp(x)
            return math.log(TRAIN_FLOPS * n * float(tokens_for_loss(law, p, n, target)) + INFER_FLOPS * n * inference_tokens)

        # Serving cost only pushes N down, so the optimum lies between the reference size and the
        # size that reaches the target only with infinite data.
        floor = _min_size_for_loss(law, p, target)
        x = minimize_scalar(log_total, bounds=(math.log(floor) + 1e-9, math.log(n0) + 1e-9), method="bounded",
                            options={"xatol": 1e-10}).x
        n = math.exp(x)
        d = float(tokens_for_loss(law, p, n, target))
        ref_total = TRAIN_FLOPS * n0 * d0 + INFER_FLOPS * n0 * inference_tokens
        total = TRAIN_FLOPS * n * d + INFER_FLOPS * n * inference_tokens
        return {"target_loss": target, "ref_n_params": n0, "ref_tokens": d0, "ref_total_flops": ref_total,
                "n_params": n, "tokens": d, "tokens_per_param": d / n, "train_flops": TRAIN_FLOPS * n * d,
                "inference_flops": INFER_FLOPS * n * inference_tokens, "total_flops": total, "saving": 1.0 - total / ref_total}

    ref = f"{flops:.3g} FLOPs" if flops is not None else f"a {count(n_params)}-parameter model"
    plan = _plan(law, f"inference-optimal model for {count(inference_tokens)} inference tokens at the loss of the compute-optimal model for {ref}", solve, [
        ("target_loss", "target loss (the compute-optimal reference's)", "nats"),
        ("ref_n_params", "reference parameters", "params"),
        ("ref_tokens", "reference tokens", "tokens"),
        ("ref_total_flops", "reference total compute (training + inference)", "FLOPs"),
        ("n_params", "inference-optimal parameters", "params"),
        ("tokens", "inference-optimal training tokens", "tokens"),
        ("tokens_per_param", "tokens per parameter", "ratio"),
        ("train_flops", "training compute", "FLOPs"),
        ("inference_flops", "inference compute", "FLOPs"),
        ("total_flops", "total compute", "FLOPs"),
        ("saving", "total compute saved vs the reference", "fraction"),
    ], vectorised=False)
    plan.notes.append("Sardana et al. 2023: minimise 6·N·D + 2·N·T at fixed loss (2N FLOPs per inference token).")
    if flops is not None and plan["train_flops"].value > flops * (1 + 1e-9):
        train = plan["train_flops"].value
        plan.notes.append(f"This plan trains with {train:.3g} FLOPs, {train / flops:.2f}x the {flops:.3g} given: the "
                          "loss is what stays fixed (the compute-optimal model's at that budget), not the training "
                          "budget; a smaller model needs more training to reach it, paid back by cheaper serving.")
    return plan


def assess_run(law: Law, n_params: float, tokens: float) -> Plan:
    """Where a run of n_params parameters trained on `tokens` tokens sits relative to compute-optimal:
    how far past the compute-optimal D for its size it goes, the loss that bought, the extra
    compute, and what the same compute would have reached split compute-optimally."""
    positive("--params", n_params)
    positive("--tokens", tokens)
    _require_chinchilla_like(law, "run assessment")
    flops = TRAIN_FLOPS * n_params * tokens

    def solve(p):
        d_star = optimal_tokens_for_size(law, p, n_params)
        loss = law.form.predict(p, N=n_params, D=tokens)
        loss_star = law.form.predict(p, N=n_params, D=d_star)
        n_same, d_same = optimal_split(law, p, flops)
        return {"tokens_per_param": tokens / n_params + 0 * d_star, "optimal_tokens": d_star,
                "optimal_tokens_per_param": d_star / n_params, "multiple": tokens / d_star,
                "rule_multiple": tokens / (20.0 * n_params) + 0 * d_star, "loss": loss,
                "loss_at_optimal": loss_star, "loss_gain": loss_star - loss, "flops": flops + 0 * d_star,
                "extra_flops": TRAIN_FLOPS * n_params * (tokens - d_star),
                "same_flops_loss": law.form.predict(p, N=n_same, D=d_same), "same_flops_n_params": n_same}

    plan = _plan(law, f"a {count(n_params)}-parameter model trained on {count(tokens)} tokens", solve, [
        ("tokens_per_param", "tokens per parameter", "ratio"),
        ("optimal_tokens", "compute-optimal D for this N", "tokens"),
        ("optimal_tokens_per_param", "compute-optimal tokens per parameter", "ratio"),
        ("multiple", "multiple of the compute-optimal D", "x"),
        ("rule_multiple", "multiple of the 20 tokens/param rule of thumb", "x"),
        ("loss", "predicted loss", "nats"),
        ("loss_at_optimal", "predicted loss at the compute-optimal D", "nats"),
        ("loss_gain", "loss gained by training past it", "nats"),
        ("flops", "training compute 6ND", "FLOPs"),
        ("extra_flops", "extra compute beyond the compute-optimal D", "FLOPs"),
        ("same_flops_loss", "loss of the same compute split compute-optimally", "nats"),
        ("same_flops_n_params", "... with this many parameters", "params"),
    ], vectorised=_closed_form(law))
    plan.add("flops_overhead", "compute vs the least compute reaching the same loss",
             law.estimate(lambda p: flops / flops_for_loss(law, p, float(law.form.predict(p, N=n_params, D=tokens))), vectorised=False), "x")
    plan.notes.append("Training past the compute-optimal D buys a smaller model at a given loss, which is cheaper to serve (see --inference-tokens).")
    return plan


def data_constrained(law: Law, unique_tokens: float, *, flops: float | None = None, n_params: float | None = None, tokens: float | None = None) -> Plan:
    """Planning with only `unique_tokens` of unique data, repeated for several epochs (Muennighoff et al. 2023).

    With `flops`: the allocation that minimises the data-constrained loss at that compute, against
    the compute-optimal one with unlimited data. With `n_params` and `tokens`: the epochs, the
    effective data and the loss lost to repetition for that run.
    """
    positive("--unique-tokens", unique_tokens)
    law = as_data_constrained(law)
    dc = lambda p, n, d: float(law.form.predict(p, N=n, D=d, U=unique_tokens))  # noqa: E731
    fresh = lambda p, n, d: float(law.form.predict(p, N=n, D=d, U=d))  # noqa: E731  every token unique
    if flops is not None:
        positive("--flops", flops)
        base = _base_chinchilla(law)

        def solve(p):
            n, d = optimal_split(law, p, flops, unique=unique_tokens)
            n_free, d_free = (float(v) for v in optimal_split(base, p, flops))
            n_eff, d_eff = effective_params_data(p, n, d, unique_tokens)
            return {"n_params": n, "tokens": d, "epochs": d / unique_tokens, "effective_tokens": d_eff,
                    "effective_params": n_eff, "loss": dc(p, n, d), "free_n_params": n_free, "free_tokens": d_free,
                    "free_epochs": d_free / unique_tokens, "free_loss": fresh(p, n_free, d_free),
                    "loss_penalty": dc(p, n, d) - fresh(p, n_free, d_free)}

        plan = _plan(law, f"data-constrained allocation at {flops:.3g} FLOPs with {count(unique_tokens)} unique tokens", solve, [
            ("n_params", "parameters", "params"),
            ("tokens", "training tokens", "tokens"),
            ("epochs", "epochs over the unique data", "epochs"),
            ("effective_tokens", "effective data D'", "tokens"),
            ("effective_params", "effective parameters N'", "params"),
            ("loss", "predicted loss with repetition", "nats"),
            ("free_n_params", "compute-optimal parameters with unlimited data", "params"),
            ("free_tokens", "compute-optimal tokens with unlimited data", "tokens"),
            ("free_epochs", "epochs that allocation would need here", "epochs"),
            ("free_loss", "loss with unlimited unique data", "nats"),
            ("loss_penalty", "loss lost to the data limit", "nats"),
        ], vectorised=False)
    elif n_params is not None and tokens is not None:
        positive("--params", n_params)
        positive("--tokens", tokens)

        def solve(p):
            n_eff, d_eff = effective_params_data(p, n_params, tokens, unique_tokens)
            return {"epochs": tokens / unique_tokens, "effective_tokens": d_eff, "effective_params": n_eff,
                    "loss": dc(p, n_params, tokens), "fresh_loss": fresh(p, n_params, tokens),
                    "loss_penalty": dc(p, n_params, tokens) - fresh(p, n_params, tokens)}

        plan = _plan(law, f"a {count(n_params)}-parameter model trained on {count(tokens)} tokens from {count(unique_tokens)} unique", solve, [
            ("epochs", "epochs over the unique data", "epochs"),
            ("effective_tokens", "effective data D'", "tokens"),
            ("effective_params", "effective parameters N'", "params"),
            ("loss", "predicted loss with repetition", "nats"),
            ("fresh_loss", "predicted loss if every token were unique", "nats"),
            ("loss_penalty", "loss lost to repetition", "nats"),
        ], vectorised=False)
    else:
        raise UserError("data-constrained planning needs --flops C, or --params N with --tokens D, besides --unique-tokens")
    plan.notes.append(
        f"Muennighoff et al. 2023: up to ~4 epochs a repeated token is worth almost a unique one; its value then "
        f"decays (R_D* = {float(law.params['RD_star']):.4g}), and beyond ~40 epochs more repetition buys little."
    )
    return plan


# -- helpers -------------------------------------------------------------------------------------
def as_data_constrained(law: Law) -> Law:
    """The law itself if it is data-constrained; a Chinchilla law gains Muennighoff's decay constants."""
    if isinstance(law.form, DataConstrained):
        return law
    _require_chinchilla_like(law, "data-constrained planning")
    from scalinglab.laws.reference import MUENNIGHOFF_2023

    extra = {k: MUENNIGHOFF_2023.params[k] for k in ("RD_star", "RN_star")}
    samples = None
    if law.samples is not None:
        samples = law.samples.copy()
        for k, v in extra.items():
            samples[k] = v
    return Law(
        name=f"{law.name} + Muennighoff 2023 repetition decay", form=DataConstrained(), params={**law.params, **extra},
        source=law.source, notes="R_D*, R_N* from Muennighoff et al. 2023", samples=samples, level=law.level,
    )


def _base_chinchilla(law: Law) -> Law:
    from scalinglab.laws.forms import chinchilla

    keep = ("E", "A", "alpha", "B", "beta")
    return Law(law.name, chinchilla(), {k: law.params[k] for k in keep}, law.source)


def _min_size_for_loss(law: Law, p: Mapping, target: float) -> float:
    """The N below which even infinite data cannot reach `target` (E + A/N^α = target)."""
    room = target - p["E"]
    if room <= 0:
        raise UserError(f"target loss {target:.4g} is at or below the law's irreducible loss E = {p['E']:.4g}")
    return (p["A"] / room) ** (1.0 / p["alpha"])


def _require_chinchilla_like(law: Law, what: str) -> None:
    needed = {"E", "A", "alpha", "B", "beta"}
    if not needed <= set(law.form.params):
        raise UserError(f"{what} needs a law of the Chinchilla family (E, A, α, B, β); {law.name} is a {law.form.name} law")
