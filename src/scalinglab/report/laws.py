"""Figures of a fit: the law against the data, the residuals, and an isoFLOP view (PNG)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scalinglab.laws.approaches import AllocationFit, isoflop_groups
from scalinglab.laws.result import FitResult
from scalinglab.report.figures import plain_log_axis, pyplot, save


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    return save(fig, path)


def save_figures(result: FitResult, out_dir: str | Path, approach2: AllocationFit | None = None) -> list[Path]:
    """Write fit.png, residuals.png and (for two-variable laws) isoflop.png into out_dir."""
    out = Path(out_dir)
    paths = [_save(fit_figure(result), out / "fit.png"), plot_residuals(result, out / "residuals.png")]
    if {"N", "D"} <= set(result.form.variables):
        paths.append(_save(isoflop_figure(result, approach2), out / "isoflop.png"))
    return paths


def fit_figure(result: FitResult):
    """Loss against D (or N), points coloured by N, with the law's curve for several sizes."""
    plt = pyplot()
    data = result.data
    fig, ax = plt.subplots(figsize=(7, 4.5))
    x_var = "D" if "D" in result.form.variables else "N"
    x = getattr(data, x_var)
    grid = np.geomspace(x.min(), x.max(), 200)  # the law over the data; beyond it only if marked
    ahead = np.geomspace(x.max(), x.max() * 2, 20)
    if x_var == "D" and "N" in result.form.variables:
        sizes = np.unique(data.N)
        cmap = plt.get_cmap("viridis")
        lo, hi = np.log(sizes.min()), np.log(sizes.max())
        shade = lambda n: cmap(0.0 if hi == lo else (np.log(n) - lo) / (hi - lo))  # noqa: E731
        ax.scatter(data.D, data.loss, c=[shade(n) for n in data.N], s=14, alpha=0.8)
        for n in np.unique(np.quantile(sizes, np.linspace(0, 1, min(6, sizes.size)), method="nearest")):
            extra = {"U": np.full(grid.size, np.median(data.U))} if data.U is not None else {}
            ax.plot(grid, result.predict(N=np.full(grid.size, n), D=grid, **extra), color=shade(n), lw=1.2, label=f"N={n:.3g}")
            extra = {"U": np.full(ahead.size, np.median(data.U))} if data.U is not None else {}
            ax.plot(ahead, result.predict(N=np.full(ahead.size, n), D=ahead, **extra), "--", color=shade(n), lw=1)
        ax.plot([], [], "k--", lw=1, label="extrapolation (2x)")
        ax.legend(fontsize=7, title="law at", title_fontsize=7)
    else:
        ax.scatter(x, data.loss, s=14, color="C0")
        ax.plot(grid, result.predict(**{x_var: grid}), color="C1", lw=1.5, label="fit")
        ax.plot(ahead, result.predict(**{x_var: ahead}), "--", color="C1", lw=1, label="extrapolation (2x)")
        ax.legend(fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    plain_log_axis(ax.xaxis)
    plain_log_axis(ax.yaxis)
    ax.set_xlabel("training tokens D" if x_var == "D" else "parameters N")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(f"{result.form.formula}  ({result.n_points} points)", fontsize=9)
    return fig


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
        plain_log_axis(ax.xaxis)
        ax.set_xlabel({"N": "parameters N", "D": "training tokens D", "U": "unique tokens U"}.get(var, var))
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


def isoflop_figure(result: FitResult, approach2: AllocationFit | None = None):
    """Loss against N at fixed compute: the data grouped by budget, the law's isoFLOP curves, and
    the law's compute-optimal N (and Approach 2's vertices, if given)."""
    from scalinglab.laws.planning import optimal_split

    plt = pyplot()
    data = result.data
    flops = data.flops
    labels = _budgets(flops)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    law = result.law()
    n_lo, n_hi = data.N.min() / 2, data.N.max() * 2
    outside = 0  # budgets whose optimum the law puts far outside the data: not drawn (a degenerate fit)
    for i, g in enumerate(np.unique(labels)):
        m = labels == g
        c = float(np.exp(np.mean(np.log(flops[m]))))
        color = f"C{i % 10}"
        ax.scatter(data.N[m], data.loss[m], s=12, color=color)
        sizes = np.geomspace(data.N[m].min() / 2, data.N[m].max() * 2, 100)
        if data.U is None:
            ax.plot(sizes, law.predict(N=sizes, D=c / (6 * sizes)), color=color, lw=1, label=f"C={c:.2g}")
            n_opt = float(optimal_split(law, law.params, c)[0])
            if n_lo / 10 <= n_opt <= n_hi * 10:
                ax.plot([n_opt], law.predict(N=n_opt, D=c / (6 * n_opt)), marker="*", color=color, ms=10)
            else:
                outside += 1
    if approach2 is not None:
        t = approach2.table
        ax.scatter(t["n_opt"], t["loss"], marker="x", color="k", s=40, label="Approach 2 vertex", zorder=5)
    ax.set_xscale("log")
    # the axes follow the data, so a law whose optimum runs off to 1e-93 cannot stretch them
    ax.set_xlim(n_lo, n_hi)
    ax.set_ylim(data.loss.min() * 0.9, data.loss.max() * 1.1)
    plain_log_axis(ax.xaxis)
    ax.set_xlabel("parameters N")
    ax.set_ylabel("loss (nats/token)")
    title = "isoFLOP view, C = 6·N·D: ★ the law's compute-optimal N at each budget"
    if outside:
        title += f"\n({outside} budget(s) whose optimum lies over 10x outside the data: not drawn)"
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    return fig
