"""Figures of the knowledge probes: the long tail of facts, and facts in weights vs in context."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from scalinglab.report.figures import label_log_axis, pyplot
from scalinglab.report.figures import save as _save

if TYPE_CHECKING:
    from scalinglab.probes.long_tail import LongTailResult
    from scalinglab.probes.open_book import OpenBookResult


def long_tail_figure(result: "LongTailResult", path: Path) -> Path:
    """Recall against exposures at each D (the largest model), facts recalled against D for every
    model and stream with the capacity line, and the exposures needed for 50% recall against D."""
    plt = pyplot()
    cfg, t, bins = result.config, result.table, result.bins
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    fig.suptitle(f"the long tail: {cfg.facts:,} facts of {cfg.bits_per_fact:.0f} bits, Zipf exponent {cfg.zipf:g}",
                 fontsize=11)
    largest = t.loc[t.params.idxmax(), "model"]
    colors = plt.cm.viridis([i / max(1, len(cfg.presented) - 1) for i in range(len(cfg.presented))])

    ax = axes[0]
    zipf = bins[(bins.model == largest) & (bins.stream == "zipf") & (bins.lo > 0)]
    for color, d in zip(colors, cfg.presented):
        b = zipf[zipf.D == d]
        ax.plot(b.mean_exposures, b.recall, "o-", ms=3, color=color, label=f"D = {d:,}")
    ax.set(xscale="log", xlabel="exposures of the fact", ylabel="recall (both value tokens right)",
           ylim=(-0.02, 1.02), title=f"{largest}: recall rises with exposures")
    ax.legend(fontsize=7)

    ax = axes[1]
    styles = {"zipf": "o-", "uniform": "s--", "head": "^:"}
    for i, (model, rows) in enumerate(t.groupby("model", sort=False)):
        color = f"C{i}"
        for stream, r in rows.groupby("stream", sort=False):
            ax.plot(r.D, r.facts_recalled.clip(lower=0.5), styles[stream], color=color, ms=4,
                    label=f"{model} {stream}")
        capacity = result.alpha * rows.params.iloc[0] / cfg.bits_per_fact
        ax.axhline(capacity, color=color, lw=0.8, alpha=0.6)
        ax.text(t.D.min(), capacity, f" α·N/{cfg.bits_per_fact:.0f} bits ({model})", color=color, fontsize=7,
                va="bottom")
    ax.set(xscale="log", yscale="log", xlabel="facts presented D", ylabel="facts recalled K",
           title="more data, more of the tail (until capacity)")
    ax.legend(fontsize=7, loc="lower right")

    ax = axes[2]
    drawn = 0
    for i, (model, rows) in enumerate(t[t.stream == "zipf"].groupby("model", sort=False)):
        ok = rows[rows.c50.notna() & (rows.c50 > 0)]
        ax.plot(ok.D, ok.c50, "o-", color=f"C{i}", label=model)
        drawn += len(ok)
    ax.set(xlabel="facts presented D", ylabel="exposures for 50% recall (c50)", title="exposures needed for recall")
    if drawn:
        ax.set(xscale="log", yscale="log")
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no 50% point within the exposures seen", ha="center", transform=ax.transAxes)
    return _save(fig, path)


def open_book_figure(result: "OpenBookResult", path: Path) -> Path:
    """Closed-book recall and open-book accuracy against the number of facts, the facts each
    answers, and the reader's accuracy against the records in its context."""
    plt = pyplot()
    cfg, closed, reader, k = result.config, result.closed, result.reader, result.k_compare
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    fig.suptitle(f"facts in the weights (closed book) vs facts in the context (open book), "
                 f"{cfg.bits_per_fact:.0f} bits per fact", fontsize=11)
    best = reader[(reader.k == k) & (reader.distractors == "hard") & (reader.rho == 1.0)]
    for i, cross in enumerate(result.crossover.itertuples()):
        color = f"C{i}"
        c, r = closed[closed.model == cross.model], best[best.model == cross.model]
        axes[0].plot(c.F, c.recall, "o-", color=color, label=f"{cross.model} closed book")
        axes[0].plot(r.F, r.accuracy, "s--", color=color, label=f"{cross.model} open book (k={k}, hard)")
        axes[0].axvline(cross.predicted_F, color=color, ls=":", lw=1)
        axes[1].plot(c.F, c.recalled.clip(lower=0.5), "o-", color=color, label=f"{cross.model} closed book")
        axes[1].plot(r.F, r.answered.clip(lower=0.5), "s--", color=color, label=f"{cross.model} open book")
    axes[0].set(xscale="log", xlabel="facts in the table F", ylabel="share answered", ylim=(-0.02, 1.02),
                title="storage collapses past capacity (dotted: α·N / bits per fact)")
    axes[1].plot(closed.F.unique(), closed.F.unique(), ":", color="grey", label="every fact")
    axes[1].set(xscale="log", yscale="log", xlabel="facts in the table F", ylabel="facts answered",
                title="facts answered")
    for ax in axes[:2]:
        label_log_axis(ax.xaxis, closed.F)
    ax = axes[2]
    top = reader[reader.F == reader.F.max()]
    for i, (model, m) in enumerate(top.groupby("model", sort=False)):
        for kind, style in (("hard", "o-"), ("random", "s--")):
            r = m[(m.distractors == kind) & (m.rho == 1.0)]
            ax.plot(r.k, r.accuracy, style, color=f"C{i}", label=f"{model} {kind} distractors")
    ax.set(xlabel="records in the context k", ylabel="accuracy (ρ = 1)", ylim=(-0.02, 1.02),
           title=f"the reader, F = {reader.F.max():,}", xticks=sorted(cfg.records))
    for ax in axes:
        ax.legend(fontsize=7)
    return _save(fig, path)
