"""Figures of the phase-transition and data-quality probes (grokking, facts vs rules, repetition).

Each function draws one PNG with matplotlib's Agg backend and returns its path. They take the
probes' result objects, so a notebook can redraw any figure from a stored run.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from scalinglab.report.figures import label_log_axis, pyplot, save

if TYPE_CHECKING:
    from scalinglab.probes.facts_rules import FactsRulesResult
    from scalinglab.probes.grokking import GrokRun
    from scalinglab.probes.grokking_sweeps import FractionSweep
    from scalinglab.probes.repetition import RepetitionResult


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    return save(fig, path, dpi=120)


def _mark_transitions(ax, run: "GrokRun") -> None:
    for epoch, label, color in ((run.memorised_epoch, "memorised", "tab:blue"),
                                (run.generalised_epoch, "generalised", "tab:red")):
        if epoch:
            ax.axvline(epoch, color=color, ls=":", lw=1)
            ax.text(epoch, 0.02, f" {label}\n {epoch}", color=color, fontsize=7, transform=ax.get_xaxis_transform())


# --- grokking ----------------------------------------------------------------------------------------

def grokking_curves(run: "GrokRun", path: Path) -> Path:
    """Six panels: accuracy, loss, weight norm, Fourier sparsity, restricted/excluded loss and
    the final embedding's Fourier spectrum."""
    plt = pyplot()
    h = run.history
    h = h[h.epoch > 0]  # log-x axes
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5))
    cfg = run.config
    fig.suptitle(f"grokking: {cfg.describe()} — {run.n_train} train / {run.n_test} test pairs", fontsize=11)

    ax = axes[0, 0]
    ax.plot(h.epoch, h.train_acc, label="train", color="tab:blue")
    ax.plot(h.epoch, h.test_acc, label="test", color="tab:red")
    ax.axhline(1 / cfg.p, color="grey", ls="--", lw=0.8, label="chance 1/p")
    ax.set(xscale="log", xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(-0.02, 1.02))
    _mark_transitions(ax, run)
    ax.legend(fontsize=8, loc="center left")

    ax = axes[0, 1]
    ax.plot(h.epoch, h.train_loss, label="train", color="tab:blue")
    ax.plot(h.epoch, h.test_loss, label="test", color="tab:red")
    ax.set(xscale="log", yscale="log", xlabel="epoch", ylabel="cross-entropy (nats)", title="loss")
    _mark_transitions(ax, run)
    ax.legend(fontsize=8)

    ax = axes[0, 2]
    ax.plot(h.epoch, h.weight_norm, color="black")
    ax.set(xscale="log", xlabel="epoch", ylabel="‖θ‖₂", title="weight norm")
    _mark_transitions(ax, run)

    ax = axes[1, 0]
    ax.plot(h.epoch, h.fourier_sparsity, color="tab:purple")
    half = (len(run.spectrum) or 1)
    ax.axhline(min(1.0, cfg.fourier_top / half), color="grey", ls="--", lw=0.8,
               label=f"evenly spread ({cfg.fourier_top}/{half})")
    ax.set(xscale="log", xlabel="epoch", ylabel=f"energy share of top {cfg.fourier_top} frequencies",
           title="Fourier sparsity of the embedding", ylim=(0, 1))
    _mark_transitions(ax, run)
    ax.legend(fontsize=8)

    ax = axes[1, 1]
    m = run.measures
    if m is not None and len(m) > 1:
        m = m[m.epoch > 0]
        ax.plot(m.epoch, m.grid_test_loss, color="tab:red", label="test loss")
        ax.plot(m.epoch, m.restricted_loss, color="tab:green", label="restricted (test, key freqs only)")
        ax.plot(m.epoch, m.excluded_loss, color="tab:orange", label="excluded (train, key freqs removed)")
        ax.plot(m.epoch, m.grid_train_loss, color="tab:blue", lw=0.8, label="train loss")
        ax.set(xscale="log", yscale="log", xlim=axes[0, 0].get_xlim())
        ax.legend(fontsize=7, loc="center left")
    coords = " (discrete-log coordinates)" if cfg.op in "*/" else ""
    ax.text(0.98, 0.02, f"key frequencies {run.key_frequencies}{coords}", transform=ax.transAxes, ha="right",
            va="bottom", fontsize=7)
    ax.set(xlabel="epoch", ylabel="nats", title="restricted / excluded loss")

    ax = axes[1, 2]
    spectrum = np.asarray(run.spectrum)
    ks = np.arange(1, len(spectrum) + 1)
    colors = ["tab:green" if k in run.key_frequencies else "tab:grey" for k in ks]
    ax.bar(ks, spectrum / max(spectrum.sum(), 1e-30), color=colors)
    ax.set(xlabel="frequency k", ylabel="share of embedding energy",
           title=f"embedding spectrum at epoch {run.epochs:,}")
    ax.text(0.98, 0.98, "green: key frequencies", transform=ax.transAxes, ha="right", va="top", fontsize=7)
    return _save(fig, path)


def grokking_fraction_sweep(sweep: "FractionSweep", runs: Sequence["GrokRun"], path: Path) -> Path:
    """Epochs to memorise / generalise against the training fraction, and the test-accuracy curves."""
    plt = pyplot()
    t = sweep.table
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    ok = t.status == "generalised"
    left.plot(t.train_frac, t.memorised_epoch, "o-", color="tab:blue", label="memorised (train ≥ 99%)")
    left.plot(t.train_frac[ok], t.generalised_epoch[ok], "o-", color="tab:red", label="generalised (test ≥ 95%)")
    if (~ok).any():
        left.plot(t.train_frac[~ok], [sweep.max_epochs] * int((~ok).sum()), "x", color="tab:red", ms=10,
                  label=f"not within {sweep.max_epochs} epochs")
    left.axhline(sweep.max_epochs, color="grey", ls="--", lw=0.8)
    if sweep.critical_frac is not None:
        left.axvline(sweep.critical_frac, color="tab:green", ls=":", label=f"critical ≈ {sweep.critical_frac:g}")
    left.set(yscale="log", xlabel="training fraction of all pairs", ylabel="epoch", title="time to grok vs data")
    left.legend(fontsize=8)
    cmap = plt.get_cmap("viridis")
    for i, run in enumerate(sorted(runs, key=lambda r: r.config.train_frac)):
        h = run.history[run.history.epoch > 0]
        right.plot(h.epoch, h.test_acc, color=cmap(i / max(1, len(runs) - 1)), label=f"{run.config.train_frac:g}")
    right.set(xscale="log", xlabel="epoch", ylabel="test accuracy", title="test accuracy by training fraction")
    right.legend(fontsize=7, title="fraction")
    cfg = runs[0].config
    fig.suptitle(f"grokking sweep: {cfg.model} a{cfg.op}b mod {cfg.p}", fontsize=11)
    return _save(fig, path)


def grokking_grokfast(plain: "GrokRun", fast: "GrokRun", path: Path) -> Path:
    """Train and test accuracy with and without Grokfast, against epochs and against seconds."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for run, label, color in ((plain, "AdamW", "tab:blue"), (fast, "AdamW + Grokfast", "tab:red")):
        h = run.history[run.history.epoch > 0]
        for ax, x in ((axes[0], h.epoch), (axes[1], h.wall_time)):
            ax.plot(x, h.test_acc, color=color, label=f"{label} test")
            ax.plot(x, h.train_acc, color=color, ls=":", label=f"{label} train")
    axes[0].set(xscale="log", xlabel="epoch", ylabel="accuracy", title="by epoch")
    axes[1].set(xscale="log", xlabel="training seconds", ylabel="accuracy", title="by wall time")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Grokfast vs plain: {plain.config.describe()}", fontsize=10)
    return _save(fig, path)


# --- facts vs rules -----------------------------------------------------------------------------------

def facts_rules_figure(result: "FactsRulesResult", path: Path) -> Path:
    """Facts recalled and bits stored against the data, and the rule's accuracy on unseen keys."""
    plt = pyplot()
    t = result.table
    cfg = result.config
    n = result.n_params[result.n_params["convention"]]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    fig.suptitle(f"facts vs rules at fixed N = {n:,} parameters ({result.n_params['convention']}), "
                 f"{cfg.epochs} passes per dataset", fontsize=11)

    ax = axes[0]
    ax.plot(t.n_facts, t.facts_recalled, "o-", color="tab:blue", label="facts recalled (both tokens right)")
    ax.plot(t.n_facts, t.n_facts, ":", color="grey", label="every fact")
    if result.capacity_bits is not None:
        ax.axhline(result.capacity_bits / cfg.bits_per_fact, color="tab:red", ls="--",
                   label=f"α·N / {cfg.bits_per_fact:.0f} bits per fact")
    ax.set(xscale="log", yscale="log", xlabel="facts in the dataset", ylabel="facts", title="fact recall")
    label_log_axis(ax.xaxis, t.n_facts)
    ax.legend(fontsize=7)

    ax = axes[1]
    ax.plot(t.n_items, t.fact_bits_stored, "o-", color="tab:blue", label="information stored about the facts")
    ax.plot(t.n_items, t.n_facts * cfg.bits_per_fact, ":", color="grey", label="information in the facts")
    if result.capacity_bits is not None:
        ax.axhline(result.capacity_bits, color="tab:red", ls="--",
                   label=f"capacity α·N, α = {result.capacity_alpha:.2f} bits/param")
    ax.set(xscale="log", yscale="log", xlabel="dataset size D (items)", ylabel="bits", title="facts stored")
    label_log_axis(ax.xaxis, t.n_items)
    right = ax.secondary_yaxis("right", functions=(lambda b: b / n, lambda r: r * n))
    right.set_ylabel("bits per parameter")
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    right.yaxis.set_major_formatter(ScalarFormatter())
    right.yaxis.set_minor_formatter(NullFormatter())
    ax.legend(fontsize=7)

    ax = axes[2]
    ax.plot(t.n_items, t.rule_test_acc, "o-", color="tab:green", label="rule, unseen keys")
    ax.plot(t.n_items, t.rule_train_acc, "x:", color="tab:green", alpha=0.6, label="rule, training keys")
    ax.plot(t.n_items, t.recall_share, "o-", color="tab:blue", alpha=0.6, label="share of facts recalled")
    ax.set(xscale="log", xlabel="dataset size D (items)", ylabel="accuracy", ylim=(-0.02, 1.02),
           title="the rule keeps improving, fact recall does not")
    label_log_axis(ax.xaxis, t.n_items)
    ax.legend(fontsize=7)
    return _save(fig, path)


# --- repetition ----------------------------------------------------------------------------------------

def repetition_figure(result: "RepetitionResult", path: Path) -> Path:
    """Val loss against epochs with Muennighoff's prediction, the value of a repeated token, the
    fresh-data curve, and val loss against the junk share."""
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    rep, fresh, junk = result.rows("repeated"), result.rows("fresh"), result.rows("junk")
    fit = result.fresh_fit
    D = result.config.tokens
    fig.suptitle(f"repeated and junk data at fixed N and D = {D:,} tokens", fontsize=11)

    ax = axes[0, 0]
    ax.plot(rep.epochs, rep.val_loss, "o-", color="black", label="val loss (measured)")
    if rep.predicted_loss.notna().any():
        ax.plot(rep.epochs, rep.predicted_loss, "s--", color="tab:red",
                label=f"Muennighoff D', R*={result.rd_star_reference:.1f}")
    if rep.predicted_loss_fitted.notna().any():
        ax.plot(rep.epochs, rep.predicted_loss_fitted, ":", color="tab:orange", label=f"fitted R*={result.rd_star_fitted:.1f}")
    if len(fresh):
        ax.plot(fresh.unique_tokens.rdiv(D).round(), fresh.val_loss, "^-", color="tab:green", alpha=0.7,
                label="one epoch of the same U tokens")
    ax.plot(rep.epochs, rep.train_loss, "x:", color="tab:blue", alpha=0.7, label="train loss on the repeated tokens")
    ax.set(xscale="log", xlabel="epochs over U = D / epochs unique tokens", ylabel="nats/token",
           title="loss at a fixed budget D")
    label_log_axis(ax.xaxis, rep.epochs)
    ax.legend(fontsize=7)

    ax = axes[0, 1]
    e = np.geomspace(1, max(rep.epochs.max(), 2), 100)
    ax.plot(e, e, color="grey", ls="--", label="every repeat as good as new")
    if result.rd_star_reference:
        r = result.rd_star_reference
        ax.plot(e, 1 + r * (1 - np.exp(-(e - 1) / r)), color="tab:red", label=f"Muennighoff, R*={r:.1f}")
    if rep.effective_tokens.notna().any():
        ax.plot(rep.epochs, rep.effective_tokens / rep.unique_tokens, "o", color="black",
                label="measured (read off the fresh runs)")
    ax.set(xscale="log", yscale="log", xlabel="epochs", ylabel="effective tokens / unique tokens",
           title="what the repeated data was worth")
    ax.legend(fontsize=7)

    ax = axes[1, 0]
    both = pd.concat([rep[rep.epochs == 1], fresh])
    both = both.sort_values("tokens")
    ax.plot(both.tokens, both.val_loss, "o-", color="tab:green", label="fresh runs (interpolated for the predictions)")
    if fit:
        d = np.geomspace(both.tokens.min(), both.tokens.max(), 100)
        ax.plot(d, fit["E"] + fit["B"] * d ** -fit["beta"], color="grey", ls="--", alpha=0.8,
                label=f"E + B/U^β, β={fit['beta']:.2f}, E={fit['E']:.2f}")
    ax.set(xscale="log", xlabel="unique tokens U (seen once)", ylabel="val nats/token", title="fresh-data curve")
    label_log_axis(ax.xaxis, both.tokens)
    ax.legend(fontsize=7)

    ax = axes[1, 1]
    if len(junk):
        base = rep[rep.epochs == 1]
        x = np.r_[0.0, junk.junk_share.to_numpy()]
        ax.plot(x, np.r_[base.val_loss.to_numpy()[:1], junk.val_loss.to_numpy()], "o-", color="black",
                label="val loss (measured)")
        if junk.predicted_loss.notna().any():
            ax.plot(x, np.r_[base.val_loss.to_numpy()[:1], junk.predicted_loss.to_numpy()], "s--", color="tab:red",
                    label="if junk tokens were merely wasted")
        ax.legend(fontsize=7)
    ax.set(xlabel=f"junk share of the training tokens ({result.config.junk_kind})", ylabel="val nats/token",
           title="junk in the training data (val stays clean)")
    return _save(fig, path)
