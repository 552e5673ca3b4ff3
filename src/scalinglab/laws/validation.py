"""Validation that measures extrapolation: hold out the largest runs, predict them, compare.

What a user does with a law is predict a model larger than any fitted, so the check that matters
is the same move on the data at hand (Gadre et al. 2024 validate their over-training law this
way): fit on all but the K largest model sizes (`largest-n:K`) or compute budgets
(`largest-c:K`), predict the held-out runs, and report each one's error and whether its 95%
prediction interval (FitResult.prediction_interval) holds it.

    held = laws.validate(frame, "overtrain", "largest-n:1", bootstrap=200)
    held.table                        # N, D, C, loss, predicted, error, lo, hi, covered
    choice = laws.select_form(frame, "largest-n:1", bootstrap=1000)
    choice.chosen, choice.result      # the form with the smallest held-out error, refitted on all points

`beyond_range` says how far a point lies outside the fitted points, for the warnings of `fit`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from scalinglab.errors import UserError
from scalinglab.laws.data import FitData, as_fit_data
from scalinglab.laws.forms import Form, get_form

if TYPE_CHECKING:
    import pandas as pd

    from scalinglab.laws.result import FitResult

KINDS = {"largest-n": "model size", "largest-c": "compute budget"}
MIN_LEFT = 3  # a power law in N with E free needs 3 distinct sizes (forms.power_terms_need)
HELD_OUT_RESAMPLES = 200  # enough for a prediction interval, which the residual scatter smooths


@dataclass(frozen=True)
class Holdout:
    """Which points to hold out: the `k` largest model sizes ("largest-n") or budgets ("largest-c")."""

    by: str = "largest-n"
    k: int = 1

    @classmethod
    def parse(cls, text: "str | Holdout") -> "Holdout":
        if isinstance(text, Holdout):
            return text
        by, sep, k = str(text).strip().partition(":")
        if by not in KINDS or (sep and not k.strip().isdigit()) or (sep and int(k) < 1):
            raise UserError(f"--holdout {text!r}: write largest-n[:K] or largest-c[:K] with K >= 1, e.g. --holdout largest-n:2")
        return cls(by, int(k) if sep else 1)

    def describe(self) -> str:
        what = KINDS[self.by]
        return f"the largest {what}" if self.k == 1 else f"the {self.k} largest {what}s"

    def mask(self, data: FitData) -> np.ndarray:
        """True for the held-out points; refuses a split that leaves fewer than MIN_LEFT sizes or budgets."""
        if data.N is None or data.D is None:
            raise UserError(f"--holdout {self.by} needs N and D for every point; fit a form in N and D (e.g. --form chinchilla)")
        values = data.N if self.by == "largest-n" else np.round(np.log(data.flops), 9)  # equal budgets up to rounding
        distinct = np.unique(values)
        if self.k > distinct.size - MIN_LEFT:
            plural = "s" * (distinct.size != 1)
            raise UserError(f"--holdout {self.by}:{self.k} leaves {max(distinct.size - self.k, 0)} of {distinct.size} "
                            f"{KINDS[self.by]}{plural}; a fit needs at least {MIN_LEFT}: use K <= {max(distinct.size - MIN_LEFT, 0)}"
                            f"{'' if distinct.size > MIN_LEFT else f' (add {KINDS[self.by]}s first)'}")
        return values >= distinct[-self.k]


@dataclass(frozen=True)
class HeldOut:
    """A fit on the points not held out, judged on the held-out ones."""

    holdout: Holdout
    fit: "FitResult"  # on the points not held out
    table: "pd.DataFrame"  # per held-out point: N, D, C, loss, predicted, error, lo, hi, covered

    @property
    def error(self) -> float:
        """Mean |predicted - actual| / actual over the held-out points."""
        return float(np.mean(np.abs(self.table["error"])))

    @property
    def coverage(self) -> float:
        """Share of held-out points inside their 95% prediction interval (NaN without intervals)."""
        known = self.table["covered"].dropna()
        return float(known.mean()) if len(known) else float("nan")

    def to_dict(self) -> dict:
        rows = self.table.astype(object).where(self.table.notna(), None).to_dict("records")
        return {"holdout": f"{self.holdout.by}:{self.holdout.k}", "form": self.fit.form.name, "fitted_points": self.fit.n_points,
                "held_out_points": len(self.table), "mean_abs_error": self.error,
                "coverage": None if np.isnan(self.coverage) else self.coverage, "points": rows}


def validate(data, form: str | Form, holdout: "str | Holdout" = "largest-n:1", *, bootstrap: int = HELD_OUT_RESAMPLES,
             **fit_kwargs) -> HeldOut:
    """Fit `form` on all but the held-out points (with `bootstrap` resamples for the prediction
    intervals; 0 for none) and predict those. `fit_kwargs` go to `laws.fit`."""
    from scalinglab.laws.fitting import fit

    holdout, form = Holdout.parse(holdout), get_form(form)
    data = data if isinstance(data, FitData) else as_fit_data(data, form)
    held = holdout.mask(data)
    try:
        result = fit(data.subset(~held), form, bootstrap=bootstrap, **fit_kwargs)
    except UserError as exc:
        raise UserError(f"holding out {holdout.describe()}: {exc}") from None
    return HeldOut(holdout, result, held_out_table(result, data.subset(held)))


def held_out_table(result: "FitResult", held: FitData) -> "pd.DataFrame":
    import pandas as pd

    X = held.X(result.form)
    predicted = result.predict(**X)
    lo, hi = result.prediction_interval(0.95, **X)
    covered = np.where(np.isfinite(lo), (lo <= held.loss) & (held.loss <= hi), np.nan)
    return pd.DataFrame({"N": held.N, "D": held.D, "C": held.flops, "loss": held.loss, "predicted": predicted,
                         "error": predicted / held.loss - 1, "lo": lo, "hi": hi, "covered": covered})


# -- choosing a form ---------------------------------------------------------------------------
@dataclass(frozen=True)
class FormChoice:
    """The candidates, each one's held-out result (or why it does not apply), the choice, and the
    chosen form refitted on every point."""

    holdout: Holdout
    candidates: dict  # form name -> HeldOut, or the reason it was not tried (str)
    chosen: str
    held_out: HeldOut  # the chosen form's, with prediction intervals
    result: "FitResult"  # the chosen form on all points

    def to_dict(self) -> dict:
        return {"holdout": f"{self.holdout.by}:{self.holdout.k}", "chosen": self.chosen,
                "candidates": {name: ({"mean_abs_error": c.error} if isinstance(c, HeldOut) else {"not_applicable": c})
                               for name, c in self.candidates.items()}}


def candidate_forms(data: FitData) -> list[str]:
    """The forms that apply to these columns: every form in N and D (and U, when given)."""
    if data.N is None or np.unique(data.N).size < 2:
        return ["data"]
    return ["chinchilla", "overtrain", "kaplan"] + (["data-constrained"] if data.U is not None else [])


def select_form(data, holdout: "str | Holdout" = "largest-n:1", candidates: Sequence[str] | None = None, *,
                bootstrap: int = 1000, held_out_bootstrap: int = HELD_OUT_RESAMPLES, **fit_kwargs) -> FormChoice:
    """Fit every candidate on all but the held-out points, choose the one whose predictions of the
    held-out points are closest (mean |error|), then refit it on all points with `bootstrap`
    resamples. Candidates are fitted without a bootstrap; only the chosen one's held-out fit gets
    `held_out_bootstrap` resamples for its prediction intervals."""
    from scalinglab.laws.bootstrap import run_bootstrap
    from scalinglab.laws.fitting import fit

    holdout = Holdout.parse(holdout)
    data = data if isinstance(data, FitData) else as_fit_data(data, get_form("chinchilla"))
    names = list(candidates or candidate_forms(data))
    tried: dict = {}
    for name in names:
        try:
            tried[name] = validate(data, name, holdout, bootstrap=0, **fit_kwargs)
        except UserError as exc:
            tried[name] = str(exc)
    judged = {name: c for name, c in tried.items() if isinstance(c, HeldOut)}
    if not judged:
        reasons = "; ".join(f"{name}: {why}" for name, why in tried.items())
        raise UserError(f"no candidate form could be fitted with {holdout.describe()} held out ({reasons})")
    chosen = min(judged, key=lambda name: judged[name].error)
    best = judged[chosen]
    if held_out_bootstrap:
        boot = run_bootstrap(best.fit, held_out_bootstrap, by=fit_kwargs.get("bootstrap_by", "auto"), seed=fit_kwargs.get("seed", 0))
        with_intervals = best.fit.with_bootstrap(boot)
        best = HeldOut(holdout, with_intervals, held_out_table(with_intervals, data.subset(holdout.mask(data))))
    result = fit(data, chosen, bootstrap=bootstrap, **fit_kwargs)
    return FormChoice(holdout, tried, chosen, best, result)


# -- how far beyond the data -----------------------------------------------------------------
def beyond_range(result: "FitResult", points: Iterable[tuple[float, ...]] = (), flops: Iterable[float] = ()) -> list[str]:
    """One line for each `--predict` point or `--at-flops` budget outside the fitted points: how
    far in N, D and C, as multiples of the largest fitted value."""
    data, out = result.data, []
    if data.N is None or data.D is None:
        return out
    largest = {"N": data.N.max(), "D": data.D.max(), "C": data.flops.max()}
    for point in points:
        X = dict(zip(result.form.variables, point))
        if "N" in X and "D" in X:
            where = ", ".join(f"{k}={v:.3g}" for k, v in X.items())
            out += _beyond(f"--predict {where}", {"N": X["N"], "D": X["D"], "C": 6 * X["N"] * X["D"]}, largest)
    if result.form.variables == ("N", "D"):
        from scalinglab.laws.planning import compute_optimal

        for c in flops:
            plan = compute_optimal(result.law(), float(c))
            X = {"N": plan["n_params"].value, "D": plan["tokens"].value, "C": float(c)}
            out += _beyond(f"--at-flops {float(c):.3g} (N_opt {X['N']:.3g}, D_opt {X['D']:.3g})", X, largest)
    return out


def _beyond(what: str, X: dict, largest: dict) -> list[str]:
    ratios = {k: X[k] / largest[k] for k in ("N", "D", "C")}
    if max(ratios.values()) <= 1 + 1e-9:
        return []
    shown = ", ".join(f"{k} {r:.3g}x" for k, r in ratios.items())
    return [f"{what} lies beyond the fitted points ({shown} the largest fitted): an extrapolation; "
            f"its intervals grow with that distance"]
