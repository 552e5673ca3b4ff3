"""Variable projection: search over the exponents, solve the coefficients.

For fixed exponents θ (Chinchilla: α, β) the law is linear in its coefficients c (E, A, B):
L_pred = Φ(θ) c. So the fit splits into
- an inner problem in c, solved here by iteratively reweighted Gauss-Newton on the exact Huber
  objective of log residuals (a few 3x3 solves, vectorised over thousands of θ at once), and
- an outer problem over θ alone: a grid, then finer grids around its best cells, on the *profile*
  f(θ) = min_c objective.

The profile is a smooth, low-dimensional function without the long curved valleys that the joint
(A, α) and (B, β) directions give a 5-parameter search, which is why a grid over two numbers finds
the basin that a 4,500-start L-BFGS grid finds, in a fraction of the time (benchmarks/fit_speed.py).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
from scipy.ndimage import minimum_filter

from scalinglab.laws.forms import EXPONENT_BOUNDS, Form, VarPro
from scalinglab.laws.objective import RobustLoss

Array = np.ndarray


def _weighted_lstsq(A: Array, y: Array, W: Array) -> Array:
    """argmin_c Σ_n W (A c - y)^2 for each of G problems: A (G, n, k), y and W (G, n) -> c (G, k).

    Columns are equilibrated first: N^-α and D^-β differ from 1 by orders of magnitude.
    """
    AW = A * W[..., None]
    AWt = AW.transpose(0, 2, 1)  # (G, k, n)
    scale = np.sqrt(np.sum(AW * A, axis=1))  # (G, k)
    scale = np.where(scale > 1e-150, scale, 1.0)  # a column that underflowed to 0 stays 0
    M = (AWt @ A) / (scale[:, :, None] * scale[:, None, :]) + 1e-12 * np.eye(A.shape[-1])
    b = (AWt @ y[..., None])[..., 0] / scale
    cs = np.linalg.solve(M, b[..., None])[..., 0]
    # Coefficients must stay positive (log coordinates); a basis column that wants a negative
    # coefficient is switched nearly off, which the objective then judges.
    floor = 1e-9 * np.max(np.abs(cs), axis=1, keepdims=True) + 1e-300
    return np.maximum(cs, floor) / scale


def profile(
    spec: VarPro,
    theta: Array,
    X: Mapping[str, Array],
    log_loss: Array,
    robust: RobustLoss,
    weights: Array | None = None,
    iters: int = 30,
) -> tuple[Array, Array]:
    """Best coefficients for each row of `theta` (G, q): (z (G, P) internal coordinates, Σ w ρ (G,))."""
    G, n = theta.shape[0], log_loss.size
    w = np.ones(n) if weights is None else weights
    Phi = spec.basis(theta, X)  # (G, n, k)
    gamma = np.ones(G) if spec.power is None else spec.power(theta)
    # Start from least squares on relative errors, Φc ≈ L^(1/γ): closed form, no iteration.
    target = np.exp(log_loss[None, :] / gamma[:, None])
    c = _weighted_lstsq(Phi / target[..., None], np.ones((G, n)), np.broadcast_to(w, (G, n)))
    for step in range(iters + 1):
        lin = np.einsum("gnk,gk->gn", Phi, c)
        r = gamma[:, None] * np.log(lin) - log_loss
        if step == iters:
            break
        # Gauss-Newton on log residuals, weighted by Huber's IRLS weights: the linearised step
        # minimises Σ W (r + J Δ)^2 with J = γ Φ / (Φc); as a target for c itself, J c = γ.
        J = gamma[:, None, None] * Phi / lin[..., None]
        c = _weighted_lstsq(J, gamma[:, None] - r, w * robust.irls_weight(r))
    values = np.sum(w * robust.rho(r), axis=1)
    return spec.assemble(theta, c), np.where(np.isfinite(values), values, np.inf)


def search(
    form: Form,
    X: Mapping[str, Array],
    log_loss: Array,
    robust: RobustLoss,
    weights: Array | None = None,
    n_candidates: int = 3,
) -> list[tuple[Array, float]]:
    """Grid over the exponents, then a zooming grid on the profile around the best few local minima.

    Returns up to `n_candidates` (z, Σ w ρ) pairs, best first, each in a different basin of the grid.
    """
    spec = form.varpro
    assert spec is not None, f"{form.name} has no variable-projection structure"
    axes = spec.grid()
    mesh = np.stack([m.ravel() for m in np.meshgrid(*axes, indexing="ij")], axis=1)  # (G, q)
    values = np.empty(mesh.shape[0])
    for start in range(0, mesh.shape[0], 512):  # chunks keep the (G, n, k) arrays small
        _, values[start : start + 512] = profile(spec, mesh[start : start + 512], X, log_loss, robust, weights, iters=1)
    surface = values.reshape([a.size for a in axes])
    is_min = (surface == minimum_filter(surface, size=3, mode="nearest")) & np.isfinite(surface)
    order = np.argsort(np.where(is_min.ravel(), values, np.inf))
    starts = [mesh[i] for i in order[:n_candidates] if np.isfinite(values[i]) and is_min.ravel()[i]]

    found = [_zoom(spec, th0, X, log_loss, robust, weights) for th0 in starts]
    return sorted(found, key=lambda pair: pair[1])


def _zoom(spec: VarPro, theta0: Array, X: Mapping[str, Array], log_loss: Array, robust: RobustLoss,
          weights: Array | None, levels: int = 6, points: int = 7) -> tuple[Array, float]:
    """Refine one grid cell: a points^q grid around the best point, shrunk 3x per level.

    The first level spans ±1.5 grid steps (the geometric grid's step is 11% of the value), the
    last ±0.006%; the L-BFGS-B polish that follows takes it to machine precision.
    """
    lo, hi = EXPONENT_BOUNDS
    center, span = theta0.copy(), 0.17 * theta0
    offsets = np.stack([m.ravel() for m in np.meshgrid(*[np.linspace(-1, 1, points)] * theta0.size, indexing="ij")], axis=1)
    for _ in range(levels):
        candidates = np.clip(center + offsets * span, lo * 1.001, hi * 0.999)
        z, values = profile(spec, candidates, X, log_loss, robust, weights, iters=15)
        best = int(np.argmin(values))
        center, span = candidates[best], span / 3
    z, values = profile(spec, center[None, :], X, log_loss, robust, weights)
    return z[0], float(values[0])


# An exponent is not identified when moving it by 2x (one way is enough: the interval is then
# open on that side) costs the fit, everything else re-optimised, less than this share of its
# objective: a family of laws fits the points.
FLAT_PROFILE = 1e-3


def flat_exponents(form: Form, params: Mapping[str, float], value: float, X: Mapping[str, Array], log_loss: Array,
                   robust: RobustLoss) -> dict[str, tuple[float, float]]:
    """The exponents along which the profile is flat on at least one side: {name: (objective at
    half, at double)}.

    For each exponent, the profile at half and at twice its fitted value, minimised over the
    other exponents on the search grid (plus their fitted values), is compared with the fit's
    objective `value`. Cheap: a few hundred profile evaluations, no refit."""
    spec = form.varpro
    if spec is None:
        return {}
    names = spec.nonlinear
    fitted = np.array([float(params[k]) for k in names])
    grids = [np.unique(np.append(axis, fitted[j])) for j, axis in enumerate(spec.grid())]
    lo, hi = EXPONENT_BOUNDS
    flat = {}
    for i, name in enumerate(names):
        costs = []
        for factor in (0.5, 2.0):
            others = [grids[j] if j != i else np.array([np.clip(fitted[i] * factor, lo, hi)]) for j in range(len(names))]
            mesh = np.stack([m.ravel() for m in np.meshgrid(*others, indexing="ij")], axis=1)
            _, values = profile(spec, mesh, X, log_loss, robust)
            costs.append(float(np.nanmin(values)))
        if any(c <= value * (1 + FLAT_PROFILE) + 1e-15 for c in costs):
            flat[name] = (costs[0], costs[1])
    return flat
