"""Figures of a fit: the law against the data, the residuals, and an isoFLOP view (PNG)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scalinglab.laws.approaches import AllocationFit, isoflop_groups
from scalinglab.laws.result import FitResult
from scalinglab.report.figures import pyplot, save


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    return save(fig, path)


def save_figures(result: FitResult, out_dir: str | Path, approach2: AllocationFit | None = None) -> list[Path]:
    """Write fit.png, residuals.png and (for two-variable laws) isoflop.png into out_dir."""
    out = Path(out_dir)
    paths = [plot_fit(result, out / "fit.png"), plot_residuals(result, out / "residuals.png")]
    if {"N", "D"} <= set(result.form.variables):
        paths.append(plot_isoflop(result, out / "isoflop.png", approach2))
    return paths


def plot_fit(result: FitResult, path: Path) -> Path:
    """Loss against D (or N), points coloured by N, with the law's curve for several sizes."""
    plt = pyplot()
    data = result.data
    fig, ax = plt.subplots(figsize=(7, 4.5))
    x_var = "D" if "D" in result.form.variables else "N"
    x = getattr(data, x_var)
    grid = np.geomspace(x.min() / 1.5, x.max() * 1.5, 200)
    if x_var == "D" and "N" in result.form.variables:
        sizes = np.unique(data.N)
        cmap = plt.get_cmap("viridis")
        lo, hi = np.log(sizes.min()), np.log(sizes.max())
        shade = lambda n: cmap(0.0 if hi == lo else (np.log(n) - lo) / (hi - lo))  # noqa: E731
        ax.scatter(data.D, data.loss, c=[shade(n) for n in data.N], s=14, alpha=0.8)
        for n in np.unique(np.quantile(sizes, np.linspace(0, 1, min(6, sizes.size)), method="nearest")):
            extra = {"U": np.full(grid.size, np.median(data.U))} if data.U is not None else {}
            ax.plot(grid, result.predict(N=np.full(grid.size, n), D=grid, **extra), color=shade(n), lw=1.2, label=f"N={n:.3g}")
        ax.legend(fontsize=7, title="law at", title_fontsize=7)
    else:
        ax.scatter(x, data.loss, s=14, color="C0")
        ax.plot(grid, result.predict(**{x_var: grid}), color="C1", lw=1.5, label="fit")
        ax.legend(fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training tokens D" if x_var == "D" else "parameters N")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(f"{result.form.formula}  ({result.n_points} points)", fontsize=9)
    return _save(fig, path)


def plot_residuals(result: FitResult, path: Path) -> Path:
    """log L_pred - log L against each variable: structure here means the form is wrong."""
    plt = pyplot()
    res = result.residuals()
    variables = result.form.variables
    fig, axes = plt.subplots(1, len(variables), figsize=(4 * len(variables), 3.5), squeeze=False)
    for ax, var in zip(axes[0], variables):
        ax.scatter(getattr(result.data, var), res, s=10, alpha=0.7)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel(var)
        ax.set_ylabel("log L_pred - log L")
    fig.suptitle(f"residuals; median |r| = {np.median(np.abs(res)):.3g}", fontsize=9)
    return _save(fig, path)


def _budgets(flops: np.ndarray, n_bins: int = 6) -> np.ndarray:
    """IsoFLOP groups when the data have them; otherwise equal bins in log C (for the picture only)."""
    labels = isoflop_groups(flops)
    spans = [np.ptp(np.log10(flops[labels == g])) for g in np.unique(labels)]
    if 3 <= len(spans) <= 12 and max(spans) <= 0.3:
        return labels
    edges = np.linspace(np.log10(flops.min()), np.log10(flops.max()), n_bins + 1)
    return np.clip(np.digitize(np.log10(flops), edges[1:-1]), 0, n_bins - 1)


def plot_isoflop(result: FitResult, path: Path, approach2: AllocationFit | None = None) -> Path:
    """Loss against N at fixed compute: the data grouped by budget, the law's isoFLOP curves, and
    the law's compute-optimal N (and Approach 2's vertices, if given)."""
    from scalinglab.laws.planning import optimal_split

    plt = pyplot()
    data = result.data
    flops = data.flops
    labels = _budgets(flops)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    law = result.law()
    for i, g in enumerate(np.unique(labels)):
        m = labels == g
        c = float(np.exp(np.mean(np.log(flops[m]))))
        color = f"C{i % 10}"
        ax.scatter(data.N[m], data.loss[m], s=12, color=color)
        sizes = np.geomspace(data.N[m].min() / 2, data.N[m].max() * 2, 100)
        if data.U is None:
            ax.plot(sizes, law.predict(N=sizes, D=c / (6 * sizes)), color=color, lw=1, label=f"C={c:.2g}")
            n_opt = float(optimal_split(law, law.params, c)[0])
            ax.plot([n_opt], law.predict(N=n_opt, D=c / (6 * n_opt)), marker="*", color=color, ms=10)
    if approach2 is not None:
        t = approach2.table
        ax.scatter(t["n_opt"], t["loss"], marker="x", color="k", s=40, label="Approach 2 vertex", zorder=5)
    ax.set_xscale("log")
    ax.set_xlabel("parameters N")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("isoFLOP view, C = 6·N·D: ★ the law's compute-optimal N at each budget", fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    return _save(fig, path)
