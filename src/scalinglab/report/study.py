"""The study's figures: loss vs data per N (with fits and intervals), vs tokens/param, vs compute,
and the train−val gap.

Each `*_figure` function returns a matplotlib figure, so that `draw_all` saves the study's PNGs
and the report inlines the same figures as SVG. Colours follow `document.size_colour`: one
colour per N, the same in every figure.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from scalinglab.report.document import size_colour, size_label
from scalinglab.report.figures import plain_log_axis, pyplot, save
from scalinglab.study.analysis import DataFit


def draw_all(points: pd.DataFrame, trunk: pd.DataFrame, fits: list[DataFit], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    return [
        save(loss_vs_data_figure(points, trunk, fits), out_dir / "loss_vs_data.png"),
        save(loss_vs_tpp_figure(points), out_dir / "loss_vs_tokens_per_param.png"),
        save(loss_vs_compute_figure(points), out_dir / "loss_vs_compute.png"),
        save(gap_figure(points), out_dir / "train_val_gap.png"),
    ]


def fit_band(fit: DataFit, d: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The 95% band of the fitted curve over `d` from the fit's bootstrap draws (None without)."""
    boot = fit.result.bootstrap
    if boot is None or boot.params is None or len(boot.params) == 0:
        return None
    draws = boot.params
    curves = np.stack([fit.result.form.predict(dict(row), D=d) for row in draws.to_dict("records")])
    curves = curves[np.all(np.isfinite(curves), axis=1)]
    if len(curves) < 10:
        return None
    return np.percentile(curves, 2.5, axis=0), np.percentile(curves, 97.5, axis=0)


def _interval_text(lo: float, hi: float) -> str:
    return f"[{lo:.2f}, {hi:.2f}]" if np.isfinite(lo) and np.isfinite(hi) else "(no interval)"


def loss_vs_data_figure(points: pd.DataFrame, trunk: pd.DataFrame, fits: list[DataFit]):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.6))
    fit_by_n = {f.N: f for f in fits}
    colour = size_colour(points["N"])
    for n, group in points.groupby("N"):
        c = colour[int(n)]
        ax.plot(group["D"], group["val_loss"], "o", color=c, label=size_label(n))
        fit = fit_by_n.get(n)
        if fit:
            d = np.geomspace(fit.D_min, group["D"].max(), 100)  # the fitted range
            band = fit_band(fit, d)
            if band is not None:
                ax.fill_between(d, band[0], band[1], color=c, alpha=0.15, linewidth=0)
            ax.plot(d, fit.predict(d), "-", color=c, alpha=0.8,
                    label=f"  fit β = {fit.beta[0]:.2f} {_interval_text(fit.beta[1], fit.beta[2])}, E = {fit.E[0]:.2f}")
            ahead = np.geomspace(group["D"].max(), group["D"].max() * 2, 20)  # one more doubling: a prediction
            ax.plot(ahead, fit.predict(ahead), "--", color=c, alpha=0.6)
        t = trunk[trunk["N"] == n]
        if len(t):
            ax.plot(t["D"], t["val_loss"], ":", color=c, alpha=0.6)
    ax.set_xscale("log")
    plain_log_axis(ax.xaxis)
    ax.set_xlabel("training tokens D")
    ax.set_ylabel("val loss (nats/token)")
    ax.set_title("Fixed-capacity data scaling")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return fig


def loss_vs_tpp_figure(points: pd.DataFrame):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.6))
    colour = size_colour(points["N"])
    for n, group in points.groupby("N"):
        ax.plot(group["tokens_per_param"], group["val_loss"], "o-", color=colour[int(n)], label=size_label(n))
    ax.axvline(20, color="k", linestyle="--", alpha=0.6, label="20 tokens/param (Chinchilla)")
    ax.set_xscale("log")
    plain_log_axis(ax.xaxis)
    ax.set_xlabel("tokens per parameter (D / N)")
    ax.set_ylabel("val loss (nats/token)")
    ax.set_title("Loss vs tokens per parameter")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return fig


def loss_vs_compute_figure(points: pd.DataFrame):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.6))
    colour = size_colour(points["N"])
    for n, group in points.groupby("N"):
        ax.plot(group["flops"], group["val_loss"], "o-", color=colour[int(n)], label=size_label(n))
    # the compute-efficient frontier: the lowest loss reached at or below each budget
    ordered = points.sort_values("flops")
    frontier = ordered[ordered["val_loss"] <= ordered["val_loss"].cummin()]
    ax.plot(frontier["flops"], frontier["val_loss"], "k--", alpha=0.5, label="frontier")
    ax.set_xscale("log")
    plain_log_axis(ax.xaxis)
    ax.set_xlabel("training compute (FLOPs: 6N + attention per token)")
    ax.set_ylabel("val loss (nats/token)")
    ax.set_title("Loss vs compute")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return fig


def gap_figure(points: pd.DataFrame):
    """Val minus train loss per N: storage shows as a gap that opens, structure as one that stays
    near zero while both fall."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.0))
    colour = size_colour(points["N"])
    for n, group in points.groupby("N"):
        ax.plot(group["tokens_per_param"], group["gap"], "o-", color=colour[int(n)], label=size_label(n))
    ax.axhline(0, color="k", linewidth=0.8)
    ax.set_xscale("log")
    plain_log_axis(ax.xaxis)
    ax.set_xlabel("tokens per parameter (D / N)")
    ax.set_ylabel("val − train loss (nats/token)")
    ax.set_title("Generalisation gap")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return fig
