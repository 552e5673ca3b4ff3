"""Fit a law to (N, D, loss) points: Approach 3 of Hoffmann et al., solved by variable projection.

    fit(data, "chinchilla")  ->  FitResult

1. Variable projection (laws/varpro.py) searches the exponents on a grid, solves the coefficients
   for each, and refines the best basins with finer grids on the profile objective.
2. L-BFGS-B polishes all parameters jointly on the exact objective (analytic gradient).
3. A multistart check: L-BFGS-B from random starts spread like Hoffmann's grid. If any start beats
   variable projection, the fit says so and keeps the better optimum. Forms without a linear
   structure (data-constrained, custom) are fitted by this multistart alone.

A fit that does not converge is returned with converged=False, its message and the best point
found; the CLI prints that warning above the table.
"""

from __future__ import annotations

import time
from typing import Callable, Mapping

import numpy as np
from threadpoolctl import threadpool_limits

from scalinglab.errors import UserError
from scalinglab.laws import varpro
from scalinglab.laws.data import FitData, as_fit_data
from scalinglab.laws.forms import EXPONENT_BOUNDS, LOG_COEF_BOUNDS, Form, PowerLawSum, get_form, tie
from scalinglab.laws.objective import Objective, Polished, RobustLoss, polish
from scalinglab.laws.result import FitResult

SAME_OPTIMUM_RTOL = 1e-7  # two objective values this close are the same optimum


def fit(
    data,
    form: str | Form = "chinchilla",
    *,
    delta: float = 1e-3,
    asymmetry: float = 1.0,
    fixed: Mapping[str, float] | None = None,
    ties: Mapping[str, str] | None = None,
    multistart: int | None = None,
    seed: int = 0,
    bootstrap: int = 0,
    bootstrap_by: str = "auto",
    progress: Callable[[int, int], None] | None = None,
) -> FitResult:
    """Fit `form` to `data` (FitData, or a DataFrame with columns N, D, [U], loss, [group]).

    delta: Huber threshold on log-loss residuals (Hoffmann/Epoch: 1e-3).
    asymmetry: weight on over-predictions; > 1 gives a lower-envelope fit.
    fixed: parameters held at given values (e.g. the Chinchilla part of a data-constrained law).
    ties: parameters set equal to others, follower -> leader ({"beta": "alpha"}: β = α).
    multistart: random starts; by default 8 as a check of variable projection, 64 where the form
        has no variable-projection structure or parameters are fixed.
    bootstrap: resamples for percentile intervals (0: none); bootstrap_by "points", "runs" or
        "auto" (runs when the data say which run each point came from).
    """
    form = get_form(form)
    fixed = dict(fixed or {})
    unknown = set(fixed) - set(form.params)
    if unknown:
        raise UserError(f"cannot fix {sorted(unknown)}: the {form.name} form's parameters are {list(form.params)}")
    form = tie(form, dict(ties or {}), fixed)
    if delta <= 0 or not np.isfinite(delta):
        raise UserError(f"--delta must be a positive number, got {delta}")
    if asymmetry < 1 or not np.isfinite(asymmetry):
        raise UserError(f"--asymmetry must be >= 1 (1 = symmetric, larger pushes the law under the data), got {asymmetry}")
    n_free = len(form.params) - len(fixed)
    data = as_fit_data(data, form, free_params=n_free)
    robust = RobustLoss(delta, asymmetry)
    X = data.X(form)
    check_identified(form, X, fixed)
    if isinstance(form, PowerLawSum) and not fixed:  # centred coordinates tie a coefficient to its exponent
        form = form.centred(X)
    objective = Objective(form, X, data.loss, robust, fixed=fixed)
    use_varpro = form.varpro is not None and not fixed
    if multistart is None:
        multistart = 8 if use_varpro else 64
    started = time.perf_counter()

    with threadpool_limits(limits=1, user_api="blas"):
        found, diagnostics = _search(form, X, data.loss, objective, robust, use_varpro, multistart, seed, fixed)
    if not found:
        raise UserError("nothing to fit: with multistart 0 a form without variable projection has no starting point; use --multistart 16")

    origin, best, check, warnings = _choose(found, use_varpro)
    diagnostics["multistart_check"] = check
    diagnostics.update(iterations=best.iterations, grad_norm=best.grad_norm, found_by=origin, seconds=time.perf_counter() - started)
    warnings += _bound_warnings(form, best.z, fixed)

    params = {k: float(v) for k, v in form.natural(best.z).items()}
    if use_varpro:
        flat = varpro.flat_exponents(form, params, best.value, X, objective.log_loss, robust)
        diagnostics["flat_exponents"] = sorted(flat)
        for name in flat:
            warnings.append(f"the points cannot pin {name} down: at half or at twice {params[name]:.3g} (the rest "
                            "refitted) they fit as well, so the law is one of a family")
    method = (
        "Approach 3: " + robust.describe() + (
            "; variable projection over the exponents + L-BFGS-B polish, multistart check" if use_varpro
            else "; multistart L-BFGS-B")
    )
    message = "converged" if best.converged else f"did not converge ({best.message.strip()}); showing the best found"
    result = FitResult(
        form=form, params=params, z=best.z, objective=best.value, converged=best.converged, message=message,
        data=data, robust=robust, method=method, fixed=fixed, warnings=tuple(warnings), diagnostics=diagnostics,
    )
    if bootstrap:
        from scalinglab.laws.bootstrap import run_bootstrap

        result = result.with_bootstrap(run_bootstrap(result, bootstrap, by=bootstrap_by, seed=seed, progress=progress))
    return result


def _search(form, X, loss, objective, robust, use_varpro, multistart, seed, fixed) -> tuple[list[tuple[str, Polished]], dict]:
    """Variable projection (when the form allows it) and multistart, each polished by L-BFGS-B."""
    found: list[tuple[str, Polished]] = []
    diagnostics: dict = {}
    if use_varpro:
        t0 = time.perf_counter()
        candidates = varpro.search(form, X, objective.log_loss, robust)
        diagnostics["varpro"] = {"basins": len(candidates), "profile_optimum": candidates[0][1] if candidates else None,
                                 "seconds": time.perf_counter() - t0}
        found += [("variable projection", polish(objective, z)) for z, _ in candidates]
    if multistart:
        t0 = time.perf_counter()
        starts = random_starts(form, X, loss, multistart, np.random.default_rng(seed), fixed)
        found += [("multistart", polish(objective, z)) for z in starts]
        diagnostics["multistart_seconds"] = time.perf_counter() - t0
    return found, diagnostics


def _choose(found: list[tuple[str, Polished]], use_varpro: bool) -> tuple[str, Polished, dict, list[str]]:
    """The best optimum found, what the multistart check says about it, and any warning.

    A tie is credited to variable projection; a multistart run that beats it is kept and flagged."""
    origin, best = min(found, key=lambda pair: pair[1].value)
    vp = [p for o, p in found if o == "variable projection"]
    ms = [p for o, p in found if o == "multistart"]
    reached = sum(same_value(p.value, best.value) for p in ms)
    if not use_varpro or not vp:
        return origin, best, {"starts": len(ms), "reached_optimum": reached}, []
    vp_best = min(vp, key=lambda p: p.value)
    agrees = same_value(vp_best.value, best.value)
    check = {"starts": len(ms), "reached_optimum": reached, "best": min((p.value for p in ms), default=None), "agrees": agrees}
    if agrees:
        return "variable projection", vp_best, check, []
    return origin, best, check, [f"a multistart run found a lower objective ({best.value:.6g}) than variable projection ({vp_best.value:.6g}); kept the lower"]


def same_value(a: float, b: float) -> bool:
    return abs(a - b) <= SAME_OPTIMUM_RTOL * max(abs(a), abs(b)) + 1e-300


def random_starts(form: Form, X: Mapping, loss: np.ndarray, k: int, rng: np.random.Generator, fixed: Mapping | None = None) -> list[np.ndarray]:
    """k starting points in internal coordinates.

    For the Chinchilla family: uniform over the box of Hoffmann's 4,500-point grid (log E in
    [-1, 1], log A and log B in [0, 25], exponents in [0, 2]). Otherwise: the form's default start
    with its log-coefficients moved by up to ±3 and its exponents scaled by up to e^±1.
    """
    base = {**form.default_start(X, loss), **(fixed or {})}
    starts = []
    for _ in range(k):
        p = dict(base)
        for name in form.params:
            if fixed and name in fixed:
                continue
            if isinstance(form, PowerLawSum):
                log_range = (-1, 1) if name == "E" else (0, 25)
                p[name] = float(np.exp(rng.uniform(*log_range))) if name in form.positive else rng.uniform(0.02, 2.0)
            elif name in form.positive:
                p[name] = base[name] * float(np.exp(rng.uniform(-3, 3)))
            else:
                p[name] = base[name] * float(np.exp(rng.uniform(-1, 1)))
        starts.append(form.internal(p))
    return starts


def hoffmann_grid(form: Form) -> list[np.ndarray]:
    """Hoffmann's (and Epoch's) 4,500 starts for the Chinchilla form: α, β in {0, 0.5, ..., 2},
    e in {-1, -0.5, ..., 1}, a, b in {0, 5, ..., 25}, in internal coordinates."""
    if form.params != ("E", "A", "alpha", "B", "beta"):
        raise ValueError("Hoffmann's grid is defined for the Chinchilla form")
    exps, es, cs = np.arange(0, 2.01, 0.5), np.arange(-1, 1.01, 0.5), np.arange(0, 25.1, 5)
    grid = [(e, a, al, b, be) for al in exps for be in exps for e in es for a in cs for b in cs]
    return [form.internal({"E": np.exp(e), "A": np.exp(a), "alpha": al, "B": np.exp(b), "beta": be}) for e, a, al, b, be in grid]


def _bound_warnings(form: Form, z: np.ndarray, fixed: Mapping) -> list[str]:
    out = []
    for (lo, hi), name, value in zip(form.bounds(), form.params, z):
        if name in fixed:
            continue
        if value <= lo + 1e-6 or value >= hi - 1e-6:
            which = "lower" if value <= lo + 1e-6 else "upper"
            shown = np.exp(value) if name in form.positive else value
            hint = " (the data do not pin it down: extend the range of N or D)" if (lo, hi) in (EXPONENT_BOUNDS, LOG_COEF_BOUNDS) else ""
            out.append(f"{name} = {shown:.4g} is at its {which} bound{hint}")
    return out


__all__ = ["fit", "FitResult", "FitData", "random_starts", "hoffmann_grid"]


def check_identified(form: Form, X: Mapping[str, np.ndarray], fixed: Mapping[str, float]) -> None:
    """Refuse, in one line, a fit these points cannot pin down: with E free a power law in a
    variable is seen only through the differences between its distinct values, so A/N^α needs
    three distinct N (two give a family of equally good fits: α and E trade off exactly)."""
    for var, need in form.distinct_needed(fixed).items():
        values = np.unique(X[var])
        if values.size < need:
            shown = ", ".join(f"{v:.3g}" for v in values[:4])
            exponents = [e for c, e, v in getattr(form, "terms", ()) if v == var and e not in fixed]
            hold = f" or hold its exponent (--fix {exponents[0]}=VALUE)" if exponents else ""
            raise UserError(f"the {form.name} form needs at least {need} distinct {var} to identify its {var} term, "
                            f"these points have {values.size} ({shown}): add {var} values{hold}")
