"""Figures of the storage probes (matplotlib, Agg): capacity and memorisation."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scalinglab.report.figures import pyplot, save


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    return save(fig, path, dpi=130)


def _log_x(ax) -> None:
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=2))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())


def capacity_figures(result, out_dir: Path | str) -> list[Path]:
    """memorised bits vs data bits per model with capacity lines; capacity vs P with α·P; the
    held-out excess loss (double descent) vs data bits / capacity."""
    plt = pyplot()
    out_dir = Path(out_dir)
    runs, models, fit = result.runs, result.models, result.fit
    colors = plt.cm.viridis(np.linspace(0.1, 0.85, len(models)))
    paths = []

    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    top = runs["data_bits"].max()
    ax.plot([0, top], [0, top], color="grey", lw=0.8, ls=":", label="H(data): all memorised")
    for color, model in zip(colors, models.itertuples()):
        group = runs[runs["model"] == model.model].sort_values("data_bits")
        ax.plot(group["data_bits"], group["memorised_bits"], "o-", color=color, label=f"{model.model} (P={model.params:,})")
        ax.axhline(fit.alpha * model.params, color=color, lw=0.8, ls="--")
    ax.set_xlabel("data set entropy H(data) (bits)")
    ax.set_ylabel("memorised bits")
    ax.set_title(f"memorisation of random sequences\ndashed: α·P with α = {fit.alpha:.2f} bits/parameter", fontsize=10)
    ax.legend(fontsize=7)
    paths.append(_save(fig, out_dir / "capacity_memorised_vs_data.png"))

    fig, ax = plt.subplots(figsize=(5.6, 4.4))
    ax.plot(models["params"], models["capacity_bits"], "o", color="C0", label="measured capacity")
    grid = np.linspace(0, models["params"].max() * 1.1, 50)
    band = f" [{fit.low:.2f}, {fit.high:.2f}]" if fit.low is not None else ""
    ax.plot(grid, fit.alpha * grid, color="C0", label=f"α·P, α = {fit.alpha:.2f}{band}")
    ax.plot(grid, 3.6 * grid, color="grey", ls="--", label="3.6 bits/param (Morris et al., converged)")
    ax.set_xlabel("parameters P (total)")
    ax.set_ylabel("capacity (bits)")
    ax.legend(fontsize=8)
    paths.append(_save(fig, out_dir / "capacity_vs_params.png"))

    fig, ax = plt.subplots(figsize=(6.0, 4.4))
    for color, model in zip(colors, models.itertuples()):
        group = runs[runs["model"] == model.model].sort_values("data_bits")
        x, y = group["data_bits"] / model.capacity_bits, group["heldout_excess_bits_per_token"]
        ax.plot(x, y, "-", color=color, label=model.model)
        early = group["stopped_early"].to_numpy(bool)
        ax.plot(x[~early], y[~early], "o", color=color)
        # fits that stored everything stopped early: fewer steps, so less confident
        ax.plot(x[early], y[early], "o", markerfacecolor="white", color=color)
    ax.plot([], [], "o", markerfacecolor="white", color="grey", label="stopped early (all stored)")
    ax.axvline(1.0, color="grey", lw=0.8, ls=":")
    _log_x(ax)
    ax.set_xlabel("H(data) / measured capacity")
    ax.set_ylabel("held-out bits/token − log2 V")
    ax.set_title("held-out loss on fresh random sequences (excess over uniform)", fontsize=10)
    ax.legend(fontsize=8)
    paths.append(_save(fig, out_dir / "capacity_heldout_double_descent.png"))
    return paths


def memorisation_figures(result, out_dir: Path | str) -> list[Path]:
    """memorised (both estimates) and generalised bits vs D/N against α·P; membership AUC vs D/N."""
    plt = pyplot()
    out_dir = Path(out_dir)
    rows = result.rows.sort_values("tokens_per_param")
    x = rows["tokens_per_param"]
    paths = []

    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    ax.errorbar(x, rows["memorised_bits"].clip(lower=1), yerr=rows["memorised_bits_se"], fmt="o-", color="C3",
                label="sample-specific memorised (reference model)")
    ax.plot(x, rows["memorised_bits_calibrated"].clip(lower=1), "d-", color="C4",
            label="sample-specific, calibrated (minus the skill difference on val)")
    ax.plot(x, rows["cheap_memorised_bits"].clip(lower=1), "s--", color="C1", label="cheap estimate (val − train) × D")
    ax.plot(x, rows["generalised_bits"].clip(lower=1), "^-", color="C0", label="generalised (training-set gain − calibrated memorised)")
    ax.axhline(result.capacity_bits, color="grey", ls=":", label=f"capacity α·P = {result.capacity_bits:,.0f} bits")
    limit = result.capacity_bits / result.bits_per_token / result.N
    ax.axvline(limit, color="grey", ls="--", lw=0.8, label=f"D/N = {limit:.2g}: training set holds α·P bits (xz)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("unique training tokens per parameter D/N")
    ax.set_ylabel("bits")
    ax.set_title(f"N = {result.N:,}: memorised vs generalised bits", fontsize=10)
    ax.legend(fontsize=7)
    paths.append(_save(fig, out_dir / "memorisation_bits_vs_dn.png"))

    fig, ax = plt.subplots(figsize=(5.6, 4.2))
    ax.plot(x, rows["auc_loss"], "o-", color="C3", label="loss-based")
    ax.plot(x, rows["auc_reference"], "s--", color="C1", label="reference-calibrated")
    study = result.study
    if study is not None and len(study):
        for n, group in study.groupby("N"):
            ax.plot(group["tokens_per_param"], group["auc_loss"], "^:", label=f"study N={n:,} (loss-based)")
    ax.axhline(0.5, color="grey", ls=":", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("D/N")
    ax.set_ylabel("membership-inference AUC")
    ax.legend(fontsize=8)
    paths.append(_save(fig, out_dir / "memorisation_auc_vs_dn.png"))
    return paths
