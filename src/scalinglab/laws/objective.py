"""The fitting objective and the local optimiser that polishes a fit.

Approach 3 of Hoffmann et al. (and Epoch's replication) minimises

    Σ_i w_i · huber_δ(log L_pred,i - log L_i),   δ = 1e-3,

with w_i = 1 (a bootstrap resample sets w_i to how often point i was drawn). With δ that small
nearly every residual is in Huber's linear part, so the fit is close to a least-absolute-deviations
fit on log loss: robust to outliers and to the digitising noise of published curves.

`asymmetry` > 1 multiplies the loss of over-predictions (L_pred > L), pushing the law under the
data: a lower-envelope fit, for sweeps where only the best run at each (N, D) is meaningful.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
from scipy.optimize import minimize

from scalinglab.laws.forms import Form

Array = np.ndarray


@dataclass(frozen=True)
class RobustLoss:
    """Huber on log-loss residuals r = log L_pred - log L, optionally asymmetric."""

    delta: float = 1e-3
    asymmetry: float = 1.0  # weight on over-predictions (r > 0); 1 = symmetric

    def _side(self, r: Array) -> Array | float:
        return np.where(r > 0, self.asymmetry, 1.0) if self.asymmetry != 1.0 else 1.0

    def rho(self, r: Array) -> Array:
        a = np.abs(r)
        return self._side(r) * np.where(a <= self.delta, 0.5 * r * r, self.delta * (a - 0.5 * self.delta))

    def psi(self, r: Array) -> Array:
        """d rho / d r."""
        return self._side(r) * np.clip(r, -self.delta, self.delta)

    def irls_weight(self, r: Array) -> Array:
        """psi(r) / r: the weight that makes a weighted least-squares step majorise rho."""
        return self._side(r) * np.minimum(1.0, self.delta / np.maximum(np.abs(r), 1e-300))

    def describe(self) -> str:
        text = f"Huber (δ={self.delta:g}) on log-loss residuals"
        if self.asymmetry != 1.0:
            text += f", over-predictions weighted {self.asymmetry:g}x (lower envelope)"
        return text


@dataclass
class Objective:
    """Σ w ρ(log L_pred - log L) as a function of the free internal coordinates.

    `fixed` maps parameter names to values held constant. Calling the objective returns the value
    and gradient divided by δ (≈ Σ|r|), a scale on which L-BFGS's tolerances mean something.
    """

    form: Form
    X: Mapping[str, Array]
    loss: Array
    robust: RobustLoss = field(default_factory=RobustLoss)
    weights: Array | None = None
    fixed: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.log_loss = np.log(self.loss)
        names = self.form.params
        self.free = np.array([k not in self.fixed for k in names])
        self.z_fixed = np.zeros(len(names))
        if self.fixed:
            base = {k: self.fixed.get(k, 1.0) for k in names}
            self.z_fixed = self.form.internal(base)

    # -- coordinates -----------------------------------------------------------------------
    def full(self, z_free: Array) -> Array:
        z = self.z_fixed.copy()
        z[self.free] = z_free
        return z

    def bounds(self) -> list[tuple[float, float]]:
        return [b for b, free in zip(self.form.bounds(), self.free) if free]

    # -- values ----------------------------------------------------------------------------
    def residuals(self, z: Array) -> Array:
        return self.form.log_predict(z, self.X) - self.log_loss

    def value(self, z: Array) -> float:
        """Σ w ρ(r) at full internal coordinates z (the number Hoffmann and Epoch report)."""
        rho = self.robust.rho(self.residuals(z))
        return float(np.sum(rho if self.weights is None else self.weights * rho))

    def __call__(self, z_free: Array) -> tuple[float, Array]:
        z = self.full(z_free)
        lp, jac = self.form.log_predict_jac(z, self.X)
        r = lp - self.log_loss
        rho, psi = self.robust.rho(r), self.robust.psi(r)
        if self.weights is not None:
            rho, psi = self.weights * rho, self.weights * psi
        value, grad = float(np.sum(rho)), jac[:, self.free].T @ psi
        if not np.isfinite(value):
            return 1e30, np.zeros(int(self.free.sum()))
        return value / self.robust.delta, grad / self.robust.delta

    def with_weights(self, weights: Array | None) -> "Objective":
        clone = Objective(self.form, self.X, self.loss, self.robust, weights, self.fixed)
        return clone


@dataclass(frozen=True)
class Polished:
    z: Array  # full internal coordinates
    value: float  # Σ w ρ (unscaled)
    converged: bool
    message: str
    iterations: int
    grad_norm: float


def polish(objective: Objective, z0: Array, maxiter: int = 3000) -> Polished:
    """L-BFGS-B from z0 (full coordinates) to the nearest local optimum, with tight tolerances.

    With a Huber loss L-BFGS often stops on "ABNORMAL_TERMINATION_IN_LNSRCH" once it is at the
    optimum to machine precision; that counts as converged when the gradient is negligible.
    """
    x0 = np.clip(z0[objective.free], *np.array(objective.bounds()).T)
    res = minimize(
        objective, x0, jac=True, method="L-BFGS-B", bounds=objective.bounds(),
        options={"maxiter": maxiter, "maxfun": 4 * maxiter, "ftol": 1e-15, "gtol": 1e-10, "maxcor": 10},
    )
    z = objective.full(res.x)
    _, grad = objective(res.x)
    lo, hi = np.array(objective.bounds()).T
    inside = (res.x > lo + 1e-9) & (res.x < hi - 1e-9)  # a parameter at a bound has a legitimate gradient
    grad_norm = float(np.max(np.abs(grad[inside]), initial=0.0))
    message = res.message if isinstance(res.message, str) else res.message.decode()
    hit_limit = res.nit >= maxiter or "TOTAL NO. OF" in message.upper()
    converged = bool(np.isfinite(res.fun)) and not hit_limit and (res.success or grad_norm < 1e-4 * max(1.0, abs(res.fun)))
    return Polished(z, objective.value(z), converged, message, int(res.nit), grad_norm)


def refit_batch(
    form: Form,
    X: Mapping[str, Array],
    loss: Array,
    weights: Array,
    z0: Array,
    robust: RobustLoss = RobustLoss(),
    max_iter: int = 300,
) -> tuple[Array, Array, Array]:
    """Minimise Σ_i w_bi ρ(r_i) for every row b of `weights` (B, n) at once, from z0 (P,).

    Levenberg-Marquardt on the IRLS model of the Huber objective: the weighted Gauss-Newton
    matrix Jᵀ diag(w ψ(r)/r) J majorises the objective's curvature, so a damped step that lowers
    the objective is always found, and the fixed point is the exact optimum. All resamples move
    together (a few (B, P, P) solves per iteration) instead of one scipy call each.
    Returns (z (B, P), Σ w ρ (B,), converged (B,)).
    """
    B, P = weights.shape[0], z0.size
    log_loss = np.log(loss)
    lo, hi = np.array(form.bounds()).T
    z = np.broadcast_to(z0, (B, P)).copy()

    def evaluate(Z: Array, w: Array) -> tuple[Array, Array, Array]:
        lp, jac = form.log_predict_jac_batch(Z, X)
        r = lp - log_loss
        f = np.sum(w * robust.rho(r), axis=1)
        return np.where(np.isfinite(f), f, np.inf), r, jac

    f, r, jac = evaluate(z, weights)
    lam = np.full(B, 1e-3)
    active = np.ones(B, dtype=bool)
    converged = np.zeros(B, dtype=bool)
    eye = np.eye(P)
    for iteration in range(max_iter):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        w, J, rr = weights[idx], jac[idx], r[idx]
        Jt = J.transpose(0, 2, 1)  # (b, P, n)
        g = (Jt @ (w * robust.psi(rr))[..., None])[..., 0]
        H = (Jt * (w * robust.irls_weight(rr))[:, None, :]) @ J
        damped = H + (lam[idx, None, None] * np.diagonal(H, axis1=1, axis2=2)[:, None, :] + 1e-12) * eye
        step = -np.linalg.solve(damped, g[..., None])[..., 0]
        trial = np.clip(z[idx] + step, lo, hi)
        f_new, r_new, jac_new = evaluate(trial, w)
        better = f_new < f[idx]
        gain = np.where(better, f[idx] - f_new, 0.0)
        take = idx[better]
        z[take], f[take], r[take], jac[take] = trial[better], f_new[better], r_new[better], jac_new[better]
        lam[idx] = np.where(better, np.maximum(lam[idx] / 3, 1e-12), lam[idx] * 5)
        # done: a step that changes the objective by a relative 1e-13 or moves z by 1e-11, or a
        # damping so large that no descent step remains at machine precision
        small = (better & (gain <= 1e-13 * f[idx])) | (np.max(np.abs(step), axis=1) < 1e-11) | (lam[idx] > 1e12)
        converged[idx[small]] = True
        active[idx[small]] = False
    return z, f, converged
