"""Bootstrap intervals: refit on resampled data, read off percentiles.

A resample draws points with replacement, or whole runs when several points share a run (the
cooldown branches of one trunk are correlated; resampling them as independent points would make
the intervals too narrow). It is represented by a weight per point, how often the point was drawn,
so no data are copied.

Runs are resampled only when there are at least MIN_RUNS of them. With g runs there are only
C(2g-1, g) distinct resamples (10 for 3 runs, 126 for 5, 92,378 for 10), so with few runs the
2.5% tails are set by a handful of outcomes, and many of them repeat one or two model sizes;
cluster resampling is known to give unreliable intervals with few clusters (Cameron, Gelbach &
Miller 2008). Below that, "auto" resamples points and says so in the result's warnings.

A resample that cannot identify the form is drawn again (`redrawn` counts them): one with fewer
distinct values of a variable than the form's terms need (Form.distinct_needed: 3 distinct N for
the free A/N^α of the Chinchilla law, since E absorbs the level), or with fewer distinct points
than free parameters. Its optimum would lie anywhere along a valley of equal objective, which
says nothing about the data. The rule never asks more of a resample than the full data hold.

Every resample is refitted from the full-data optimum (a warm start: resampling moves the optimum
a little) by a Levenberg-Marquardt/IRLS solver that moves all resamples at once
(objective.refit_batch), instead of one L-BFGS call per resample. Three checks keep that honest:
- a warm start only finds the basin it starts in, so for forms with variable-projection structure
  each resample also gets a coarse exponent grid, vectorised over all resamples (`grid_guard`);
  where the grid finds a lower objective than the warm-started fit, the resample is refitted from
  there with L-BFGS-B and the better optimum kept (`switched` counts those);
- resamples the batched solver did not converge are polished with L-BFGS-B;
- a few resamples are also refitted with L-BFGS-B, and the largest relative gap between the two
  optima is reported (`check_gap`; it is ~1e-12 on the Epoch data).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping

import numpy as np
from threadpoolctl import threadpool_limits

from scalinglab.errors import UserError
from scalinglab.laws.forms import Form
from scalinglab.laws.objective import Objective, RobustLoss, polish, refit_batch

if TYPE_CHECKING:
    import pandas as pd

    from scalinglab.laws.result import FitResult

BLOCK = 200  # resamples solved together; progress is reported per block
CHECKED = 8  # resamples refitted with L-BFGS-B as well, as a check
MIN_RUNS = 10  # fewest runs for resampling runs (see the module doc)
MAX_DRAWS = 50  # give up when fewer than about 1 resample in MAX_DRAWS identifies the form


@dataclass(frozen=True)
class Bootstrap:
    params: "pd.DataFrame"  # one row per resample, one column per parameter (natural units)
    objective: np.ndarray
    converged: np.ndarray
    by: str  # "points" or "runs"
    n_groups: int
    seed: int
    switched: int  # resamples where the grid found a better basin than the warm start
    check_gap: float  # largest relative objective gap, batched solver vs L-BFGS-B, on a few resamples
    seconds: float
    redrawn: int = 0  # resamples drawn again because they could not identify the form
    warnings: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.params)

    def summary(self) -> dict:
        return {"resamples": len(self), "by": self.by, "groups": self.n_groups, "seed": self.seed,
                "not_converged": int((~self.converged).sum()), "switched_basin": self.switched,
                "redrawn": self.redrawn, "check_gap": self.check_gap, "seconds": self.seconds,
                "warnings": list(self.warnings)}


def resample_weights(groups: np.ndarray | None, n_points: int, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(n_resamples, n_points) counts: how often each point is drawn in each resample."""
    codes = np.arange(n_points) if groups is None else groups
    n_groups = int(codes.max()) + 1
    draws = rng.integers(0, n_groups, size=(n_resamples, n_groups))
    counts = np.zeros((n_resamples, n_groups))
    np.add.at(counts, (np.arange(n_resamples)[:, None], draws), 1.0)
    return counts[:, codes]


def identifying_weights(groups: np.ndarray | None, n_points: int, n_resamples: int, rng: np.random.Generator,
                        accept: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, int]:
    """Like `resample_weights`, but every resample `accept` rejects is drawn again.

    Returns (weights, how many resamples were redrawn). The first draw is `resample_weights`'s, so
    a seed gives the same resamples as before wherever none is rejected."""
    weights = resample_weights(groups, n_points, n_resamples, rng)
    bad = np.flatnonzero(~accept(weights))
    redrawn, drawn = bad.size, n_resamples
    while bad.size:
        if drawn > MAX_DRAWS * n_resamples:
            raise UserError(
                f"fewer than 1 in {MAX_DRAWS} bootstrap resamples of these {'runs' if groups is not None else 'points'} can identify "
                f"the form (too few distinct values of a variable); use --by points, add runs or points, or --bootstrap 0"
            )
        fresh = resample_weights(groups, n_points, max(2 * bad.size, 64), rng)
        drawn += len(fresh)
        fresh = fresh[accept(fresh)][: bad.size]
        weights[bad[: len(fresh)]] = fresh
        bad = bad[len(fresh):]
    return weights, int(redrawn)


def identifies(form: Form, X: Mapping[str, np.ndarray], fixed: Mapping[str, float] | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """A test of resample weights (B, n) -> (B,) bool: does the resample hold enough distinct values
    of each variable (Form.distinct_needed) and enough distinct points (the free parameters) to
    identify `form`? Never stricter than the full data: a need is capped at what they hold."""
    free = len(form.params) - len(fixed or {})
    rows = np.stack([np.asarray(X[v], dtype=float) for v in form.variables], axis=1)
    checks = [(np.unique(rows, axis=0, return_inverse=True)[1].ravel(), free)]
    for var, need in form.distinct_needed(fixed).items():
        checks.append((np.unique(np.asarray(X[var], dtype=float), return_inverse=True)[1].ravel(), need))
    checks = [(codes, min(need, int(codes.max()) + 1)) for codes, need in checks]
    checks = [(codes, need) for codes, need in checks if need > 1]

    def accept(weights: np.ndarray) -> np.ndarray:
        ok = np.ones(len(weights), dtype=bool)
        for codes, need in checks:
            held = np.zeros((len(weights), int(codes.max()) + 1))
            np.add.at(held, (np.arange(len(weights))[:, None], codes[None, :]), weights)
            ok &= (held > 0).sum(axis=1) >= need
        return ok

    return accept


def run_bootstrap(
    result: "FitResult",
    n_resamples: int = 1000,
    *,
    by: str = "auto",
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> Bootstrap:
    """Refit `result`'s law on `n_resamples` resamples of its data."""
    import pandas as pd

    if n_resamples < 10:
        raise UserError(f"--bootstrap {n_resamples} is too few resamples for percentile intervals; use at least 100 (1000 for 95% intervals)")
    if by not in ("auto", "points", "runs"):
        raise UserError(f"--by must be auto, points or runs, got {by!r}")
    data = result.data
    if by == "runs" and data.groups is None:
        raise UserError("--by runs needs to know each point's run: give --group-col (the store provides it)")
    warnings: list[str] = []
    correlated = data.groups is not None and data.n_groups < len(data)  # some run has several points
    use_groups = correlated and (by == "runs" or (by == "auto" and data.n_groups >= MIN_RUNS))
    if correlated and by == "auto" and not use_groups:
        warnings.append(
            f"only {data.n_groups} runs (the points of a trunk's branches count as one run): too few to resample runs "
            f"(it takes {MIN_RUNS}), so the bootstrap resampled points; points of one run are correlated, so the "
            f"intervals are likely too narrow"
        )
    groups = data.groups if use_groups else None
    n_groups = data.n_groups if use_groups else len(data)
    if n_groups < 3:
        raise UserError(f"only {n_groups} runs to resample; the bootstrap needs several (use --by points, or add runs)")
    started = time.perf_counter()
    form, X, fixed = result.form, data.X(result.form), dict(result.fixed)
    weights, redrawn = identifying_weights(groups, len(data), n_resamples, np.random.default_rng(seed), identifies(form, X, fixed))
    if use_groups and data.n_groups < MIN_RUNS:
        distinct = len(np.unique(weights, axis=0))
        warnings.append(f"resampled {data.n_groups} runs as asked (--by runs): with fewer than {MIN_RUNS} runs the intervals "
                        f"are coarse (the {n_resamples} resamples that identify the form are only {distinct} distinct draws of runs)")
    base = Objective(form, X, data.loss, result.robust, fixed=fixed)
    z = np.empty((n_resamples, result.z.size))
    values = np.empty(n_resamples)
    ok = np.zeros(n_resamples, dtype=bool)
    switched = 0
    with threadpool_limits(limits=1, user_api="blas"):
        for start in range(0, n_resamples, BLOCK):
            block = slice(start, min(start + BLOCK, n_resamples))
            w = weights[block]
            if fixed:  # the batched solver moves every coordinate; fixed parameters go through L-BFGS-B
                fits = [polish(base.with_weights(wb), result.z) for wb in w]
                zb, fb, okb = np.array([p.z for p in fits]), np.array([p.value for p in fits]), np.array([p.converged for p in fits])
            else:
                zb, fb, okb = refit_batch(form, X, data.loss, w, result.z, result.robust)
                guard = grid_guard(form, X, base.log_loss, w, result.robust) if form.varpro is not None else None
                for i in range(w.shape[0]):
                    away = guard is not None and guard[1][i] < fb[i] * (1 - 1e-7)
                    if away or not okb[i]:
                        objective = base.with_weights(w[i])
                        best = polish(objective, zb[i])
                        if away:
                            other = polish(objective, guard[0][i])
                            if other.value < best.value * (1 - 1e-7):
                                best, switched = other, switched + 1
                        zb[i], fb[i], okb[i] = best.z, best.value, best.converged
            z[block], values[block], ok[block] = zb, fb, okb
            if progress:
                progress(block.stop, n_resamples)
        check_gap = _check(base, weights, z, values, result.z)
    natural = form.natural(z)
    return Bootstrap(
        params=pd.DataFrame({k: np.asarray(natural[k], dtype=float) for k in form.params}),
        objective=values, converged=ok, by="runs" if use_groups else "points", n_groups=n_groups, seed=seed,
        switched=switched, check_gap=check_gap, seconds=time.perf_counter() - started, redrawn=redrawn,
        warnings=tuple(warnings),
    )


def _check(base: Objective, weights: np.ndarray, z: np.ndarray, values: np.ndarray, z0: np.ndarray) -> float:
    """Refit a few resamples with L-BFGS-B from the same warm start; the largest relative amount by
    which L-BFGS-B beat the bootstrap's optimum (0 when it never did)."""
    gap = 0.0
    for i in np.linspace(0, len(weights) - 1, min(CHECKED, len(weights))).astype(int):
        other = polish(base.with_weights(weights[i]), z0)
        gap = max(gap, (values[i] - other.value) / max(other.value, 1e-300))
    return float(gap)


def grid_guard(form: Form, X: Mapping, log_loss: np.ndarray, weights: np.ndarray, robust: RobustLoss,
               points: int = 12, block: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """For every resample (row of `weights`), the best cell of a coarse exponent grid.

    Coefficients are solved by weighted least squares on relative errors (one solve per cell and
    resample, batched as matrix products); the exact objective then ranks the cells. Returns
    (z (B, P), objective (B,)): an upper bound on what each resample's global optimum reaches.
    """
    spec = form.varpro
    axes = [np.geomspace(0.02, 3.0, points) for _ in spec.nonlinear]
    theta = np.stack([m.ravel() for m in np.meshgrid(*axes, indexing="ij")], axis=1)  # (G, q)
    G, n = theta.shape[0], log_loss.size
    Phi = spec.basis(theta, X)  # (G, n, k)
    k = Phi.shape[-1]
    gamma = np.ones(G) if spec.power is None else spec.power(theta)
    rows = Phi / np.exp(log_loss[None, :] / gamma[:, None])[..., None]  # relative-error rows
    scale = np.sqrt(np.mean(rows**2, axis=1))  # (G, k) column equilibration
    scale = np.where(scale > 1e-150, scale, 1.0)
    rows = rows / scale[:, None, :]
    outer = np.einsum("gnk,gnl->ngkl", rows, rows).reshape(n, G * k * k)
    ones_rhs = rows.transpose(1, 0, 2).reshape(n, G * k)  # target 1 for every row

    best_z = np.empty((weights.shape[0], len(form.params)))
    best_f = np.empty(weights.shape[0])
    for start in range(0, weights.shape[0], block):
        w = weights[start : start + block]  # (c, n)
        M = (w @ outer).reshape(-1, G, k, k) + 1e-12 * np.eye(k)
        rhs = (w @ ones_rhs).reshape(-1, G, k)
        cs = np.linalg.solve(M, rhs[..., None])[..., 0]
        cs = np.maximum(cs, 1e-9 * np.max(np.abs(cs), axis=-1, keepdims=True) + 1e-300)
        coef = cs / scale[None]  # (c, G, k)
        with np.errstate(all="ignore"):
            lin = sum(Phi[None, :, :, j] * coef[:, :, None, j] for j in range(k))  # (c, G, n)
            r = gamma[None, :, None] * np.log(lin) - log_loss
            f = (robust.rho(r) @ w[:, :, None])[..., 0]
        f = np.where(np.isfinite(f), f, np.inf)
        pick = np.argmin(f, axis=1)
        rows_c = np.arange(w.shape[0])
        best_f[start : start + block] = f[rows_c, pick]
        best_z[start : start + block] = spec.assemble(theta[pick], coef[rows_c, pick])
    return best_z, best_f
