"""The study's figures: loss vs data per N, loss vs tokens/param, loss vs compute."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from scalinglab.report.figures import pyplot, save
from scalinglab.study.analysis import DataFit


def _label(n: int) -> str:
    return f"N = {n / 1e6:.2g}M" if n >= 1e6 else f"N = {n / 1e3:.3g}k"


def draw_all(points: pd.DataFrame, trunk: pd.DataFrame, fits: list[DataFit], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    return [
        loss_vs_data(points, trunk, fits, out_dir / "loss_vs_data.png"),
        loss_vs_tokens_per_param(points, out_dir / "loss_vs_tokens_per_param.png"),
        loss_vs_compute(points, out_dir / "loss_vs_compute.png"),
    ]


def loss_vs_data(points: pd.DataFrame, trunk: pd.DataFrame, fits: list[DataFit], path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    fit_by_n = {f.N: f for f in fits}
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (n, group) in enumerate(points.groupby("N")):
        c = colors[i % len(colors)]
        ax.plot(group["D"], group["val_loss"], "o", color=c, label=_label(n))
        fit = fit_by_n.get(n)
        if fit:
            d = np.geomspace(fit.D_min, group["D"].max() * 2, 100)  # the fitted range and one more doubling
            lo, hi = fit.beta[1], fit.beta[2]
            ax.plot(d, fit.predict(d), "-", color=c, alpha=0.8,
                    label=f"  fit β = {fit.beta[0]:.2f} [{lo:.2f}, {hi:.2f}], E = {fit.E[0]:.2f}")
        t = trunk[trunk["N"] == n]
        if len(t):
            ax.plot(t["D"], t["val_loss"], ":", color=c, alpha=0.6)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training tokens D")
    ax.set_ylabel("val loss (nats/token)")
    ax.set_title("Fixed-capacity data scaling (dotted: trunk before cooldown)")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return save(fig, path)


def loss_vs_tokens_per_param(points: pd.DataFrame, path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    for n, group in points.groupby("N"):
        ax.plot(group["tokens_per_param"], group["val_loss"], "o-", label=_label(n))
    ax.axvline(20, color="k", linestyle="--", alpha=0.6, label="20 tokens/param (Chinchilla)")
    ax.set_xscale("log")
    ax.set_xlabel("tokens per parameter (D / N)")
    ax.set_ylabel("val loss (nats/token)")
    ax.set_title("Loss vs tokens per parameter")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return save(fig, path)


def loss_vs_compute(points: pd.DataFrame, path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    for n, group in points.groupby("N"):
        ax.plot(group["flops"], group["val_loss"], "o-", label=_label(n))
    # the compute-efficient frontier: the lowest loss reached at or below each budget
    ordered = points.sort_values("flops")
    frontier = ordered[ordered["val_loss"] <= ordered["val_loss"].cummin()]
    ax.plot(frontier["flops"], frontier["val_loss"], "k--", alpha=0.5, label="frontier")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training FLOPs (6N + attention per token)")
    ax.set_ylabel("val loss (nats/token)")
    ax.set_title("Loss vs compute")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return save(fig, path)
