"""The report's "Knowledge" section: does more data help a fixed-size model because rare facts
finally get seen often enough to be learnt (the long-tail probe: recall against exposures and
against D, up to capacity), and facts kept in the weights against facts read from the context
(the open-book probe: closed-book recall collapses past capacity, a reader does not).

Built from the results store only: the newest results of kinds "probe:long-tail" and
"probe:open-book".
"""

from __future__ import annotations

import numpy as np

from scalinglab.report.document import (
    Figure,
    Section,
    Table,
    clean,
    dropped_text,
    finite,
    newest,
    num,
    probe_section,
    result_provenance,
    size_colour,
    svg_figure,
)
from scalinglab.report.figures import FIGSIZE, plain_log_axis, positive, pyplot

KEY = "knowledge"
TITLE = "Knowledge"

LONG_TAIL_COMMAND = "scalinglab probe long-tail"
OPEN_BOOK_COMMAND = "scalinglab probe open-book"


def _slope(d: list[float], k: list[float]) -> float | None:
    """The log-log least-squares slope of k against d over the positive points (None with < 2)."""
    pts = [(x, y) for x, y in zip(d, k) if finite(x) and finite(y) and x > 0 and y > 0]
    if len(pts) < 2 or len({x for x, _ in pts}) < 2:
        return None
    x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return float(np.polyfit(x, y, 1)[0])


def _models_by_size(rows: list[dict]) -> list[tuple[str, int]]:
    sizes = {}
    for r in rows:
        sizes.setdefault(r["model"], int(r.get("params") or 0))
    return sorted(sizes.items(), key=lambda kv: kv[1])


# --- long tail -----------------------------------------------------------------------------------------

def _long_tail_part(store, section: Section) -> bool:
    kind = "probe:long-tail"
    result = newest(store, kind)
    if result is None:
        return False
    cfg = result.get("config") or {}
    table = [r for r in result.get("table") or [] if finite(r.get("D"))]
    bits = finite(result.get("bits_per_fact"))
    alpha = finite(result.get("alpha"))
    models = _models_by_size(table)
    per_model = {}
    for model, params in models:
        zipf = sorted((r for r in table if r["model"] == model and r.get("stream") == "zipf"), key=lambda r: r["D"])
        if not zipf:
            continue
        first, last = zipf[0], zipf[-1]
        per_model[model] = {
            "params": params, "D_first": first["D"], "D_last": last["D"],
            "recalled_first": first.get("facts_recalled"), "recalled_last": last.get("facts_recalled"),
            "growth_exponent": _slope([r["D"] for r in zipf], [r.get("facts_recalled") for r in zipf]),
            "capacity_share_first": first.get("capacity_share"), "capacity_share_last": last.get("capacity_share"),
            "c50_first": first.get("c50"), "c50_last": last.get("c50"),
            "capacity_facts": alpha * params / bits if alpha and bits and params else None,
        }
    top = max((r["D"] for r in table), default=None)
    at_top = {}
    for model, _ in models:
        by = {r.get("stream"): r for r in table if r["model"] == model and r["D"] == top}
        at_top[model] = {s: {k: r.get(k) for k in ("facts_recalled", "head_recall", "tail_recall", "bits_stored",
                                                   "weighted_accuracy")} for s, r in by.items()}
    zipf_rows = [r for r in table if r.get("stream") == "zipf"]
    falls = [r for r in zipf_rows if r.get("monotone") is False]
    section.numbers["long_tail"] = clean({
        "key": result["key"], "facts": cfg.get("facts"), "zipf": cfg.get("zipf"), "bits_per_fact": bits,
        "alpha": alpha, "alpha_source": result.get("alpha_source"), "top_D": top, "models": per_model,
        "at_top_D": at_top, "zipf_points": len(zipf_rows), "recall_falls": len(falls),
    })
    section.readings.append(
        f"Long tail: {int(cfg.get('facts') or 0):,} random facts of {num(bits)} bits each, presented i.i.d. with "
        f"Zipf exponent {num(cfg.get('zipf'))}, to {len(models)} model(s); capacity lines use α = {num(alpha)} "
        f"bits/param. Source of α: {result.get('alpha_source')}.")
    section.readings.append(
        "Recall rises with exposures at every (model, D) measured." if not falls else
        f"Recall falls with exposures somewhere at {len(falls)} of {len(zipf_rows)} (model, D): "
        + ", ".join(f"{r['model']} D = {int(r['D']):,}" for r in falls[:6]) + ".")
    for model, m in per_model.items():
        growth = f" (K ∝ D^{num(m['growth_exponent'])})" if m["growth_exponent"] is not None else ""
        section.readings.append(
            f"{model} (P = {m['params']:,}): facts recalled went from {num(m['recalled_first'])} at D = "
            f"{int(m['D_first']):,} to {num(m['recalled_last'])} at D = {int(m['D_last']):,} facts presented{growth}; "
            f"the bits stored went from {num(m['capacity_share_first'])} to {num(m['capacity_share_last'])} of α·P, "
            f"and the exposures needed for 50% recall from {num(m['c50_first'])} to {num(m['c50_last'])}.")
    for model, streams in at_top.items():
        z, u, h = streams.get("zipf"), streams.get("uniform"), streams.get("head")
        parts = []
        if z and u:
            parts.append(f"the Zipf stream recalls {num(z['facts_recalled'])} facts, a uniform stream "
                         f"{num(u['facts_recalled'])}")
        if z and h:
            parts.append(f"recall of the head is {num(z['head_recall'])} in the full stream and "
                         f"{num(h['head_recall'])} when trained on the head alone")
        if parts:
            section.readings.append(f"{model} at D = {int(top):,}: " + "; ".join(parts) + ".")
    bins = [b for b in result.get("bins") or [] if b.get("stream") == "zipf"]
    if models and bins:
        largest = models[-1][0]
        section.figures.append(_recall_figure([b for b in bins if b.get("model") == largest], largest))
    if table:
        section.figures.append(_facts_figure(table, models, alpha, bits))
    section.provenance.append(result_provenance(LONG_TAIL_COMMAND, store, result, [r.get("run_id") for r in table],
                                                kind, "the long tail of facts"))
    return True


def _recall_figure(bins: list[dict], model: str) -> Figure:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=FIGSIZE)
    ds = sorted({b["D"] for b in bins})
    colours = plt.cm.viridis(np.linspace(0.05, 0.9, max(len(ds), 1)))
    xs = []
    for colour, d in zip(colours, ds):
        pts = sorted((float(b["mean_exposures"]), float(b["recall"])) for b in bins
                     if b["D"] == d and finite(b.get("mean_exposures")) and b["mean_exposures"] > 0
                     and finite(b.get("recall")) is not None)
        if pts:
            ax.plot(*zip(*pts), "o-", ms=3, color=colour, label=f"D = {int(d):,}")
            xs += [p[0] for p in pts]
    ax.set_xscale("log")
    plain_log_axis(ax.xaxis)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("exposures of a fact during training (count, bin mean)")
    ax.set_ylabel("recall (share of facts, both value tokens right)")
    ax.legend(fontsize=7, frameon=False, title="facts presented", title_fontsize=7)
    caption = (f"Recall of a fact against how often it was seen, model {model} (the largest), Zipf stream, one curve "
               "per number of facts presented D. Facts never seen (0 exposures) are not drawn on the log axis.")
    return svg_figure(fig, "knowledge-long-tail-recall", caption)


def _facts_figure(table: list[dict], models: list[tuple[str, int]], alpha: float | None,
                  bits: float | None) -> Figure:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=FIGSIZE)
    colours = size_colour([p for _, p in models])
    styles = {"zipf": "o-", "uniform": "s--", "head": "^:"}
    dropped_all: list[tuple[float, float]] = []
    ds = sorted({float(r["D"]) for r in table})
    for model, params in models:
        for stream in ("zipf", "uniform", "head"):
            rows = sorted((r for r in table if r["model"] == model and r.get("stream") == stream), key=lambda r: r["D"])
            if not rows:
                continue
            x, y, dropped = positive([r["D"] for r in rows], [r.get("facts_recalled") for r in rows])
            dropped_all += dropped
            if len(x):
                ax.plot(x, y, styles.get(stream, "o-"), color=colours[params], ms=4, label=f"{model}, {stream} stream")
        if alpha and bits and params:
            ax.axhline(alpha * params / bits, color=colours[params], lw=0.8, alpha=0.7)
    if alpha and bits:
        ax.plot([], [], color="grey", lw=0.8, label=f"α·P / {num(bits)} bits per fact")
    ax.set_xscale("log")
    ax.set_yscale("log")
    plain_log_axis(ax.xaxis, ds)
    plain_log_axis(ax.yaxis)
    ax.set_xlabel("facts presented D (count)")
    ax.set_ylabel("facts recalled K (count)")
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    caption = ("Facts recalled against facts presented, per model and stream (Zipf; uniform: every fact equally "
               "often; head: the most frequent facts alone). Horizontal lines: the facts each model's capacity "
               "could hold, α·P / bits per fact." + dropped_text("facts recalled", dropped_all, "D"))
    return svg_figure(fig, "knowledge-long-tail-facts", caption)


# --- open book -----------------------------------------------------------------------------------------

def _open_book_part(store, section: Section) -> bool:
    from scalinglab.probes.open_book import COPY_LEARNT

    kind = "probe:open-book"
    result = newest(store, kind)
    if result is None:
        return False
    cfg = result.get("config") or {}
    closed = [r for r in result.get("closed") or [] if finite(r.get("F"))]
    reader = [r for r in result.get("reader") or [] if finite(r.get("F"))]
    k = result.get("k_compare")
    bits, alpha = finite(result.get("bits_per_fact")), finite(result.get("alpha"))
    records = sorted(cfg.get("records") or {r["k"] for r in reader})
    chance = cfg["alphabet"] ** -2 if cfg.get("alphabet") else None
    models = _models_by_size(closed)
    per_model = {}
    for cross in result.get("crossover") or []:
        model = cross["model"]
        c = sorted((r for r in closed if r["model"] == model), key=lambda r: r["F"])
        best = [r for r in reader if r["model"] == model and r.get("k") == k and r.get("distractors") == "hard"
                and r.get("rho") == 1.0]
        one = [r["accuracy"] for r in reader if r["model"] == model and records and r.get("k") == records[0]
               and r.get("rho") == 1.0 and finite(r.get("accuracy")) is not None]
        removed = [r["accuracy"] for r in reader if r["model"] == model and r.get("rho") == 0.0
                   and finite(r.get("accuracy")) is not None]
        last_f = c[-1]["F"] if c else None
        at_last = next((r for r in best if r["F"] == last_f), None)
        per_model[model] = {
            "params": cross.get("params"), "measured_F": cross.get("measured_F"), "predicted_F": cross.get("predicted_F"),
            "F_first": c[0]["F"] if c else None, "F_last": last_f,
            "recall_first": c[0].get("recall") if c else None, "recall_last": c[-1].get("recall") if c else None,
            "bits_stored_max": max((r.get("bits_stored") or 0 for r in c), default=None),
            "capacity_share_max": max((r.get("capacity_share") or 0 for r in c), default=None),
            "open_accuracy_min": min((r["accuracy"] for r in best), default=None),
            "open_accuracy_max": max((r["accuracy"] for r in best), default=None),
            "copy_accuracy_one_record": max(one, default=None), "removed_accuracy_max": max(removed, default=None),
            "closed_params_per_fact": c[-1].get("params_per_fact") if c else None,
            "open_params_per_fact": at_last.get("params_per_fact") if at_last else None,
        }
    section.numbers["open_book"] = clean({
        "key": result["key"], "alpha": alpha, "alpha_source": result.get("alpha_source"), "bits_per_fact": bits,
        "k_compare": k, "chance": chance, "copy_learnt": COPY_LEARNT, "models": per_model,
    })
    section.readings.append(
        f"Closed vs open book: tables of F random facts of {num(bits)} bits; closed book = the facts fitted into the "
        f"weights and asked back, open book = a reader that never stored them, given k records in its context "
        f"(compared at k = {k}, hard distractors, the right record always present); α = {num(alpha)} bits/param. "
        f"Source of α: {result.get('alpha_source')}.")
    for model, m in per_model.items():
        if m["copy_accuracy_one_record"] is not None and m["copy_accuracy_one_record"] < COPY_LEARNT:
            section.readings.append(
                f"{model}: the reader did not learn to copy (accuracy {num(m['copy_accuracy_one_record'])} with "
                f"{records[0]} record(s), the right one present; below {num(COPY_LEARNT)}), so its open-book numbers "
                "understate retrieval.")
        measured = ("not within the sweep" if finite(m["measured_F"]) is None
                    else f"F = {int(m['measured_F']):,}")
        section.readings.append(
            f"{model} (P = {int(m['params'] or 0):,}): closed-book recall {num(m['recall_first'])} at F = "
            f"{int(m['F_first']):,} → {num(m['recall_last'])} at F = {int(m['F_last']):,} (at most "
            f"{num(m['bits_stored_max'])} bits stored, {num(m['capacity_share_max'])} of α·P); open-book accuracy "
            f"{num(m['open_accuracy_min'])}–{num(m['open_accuracy_max'])} over F. Retrieval overtakes storage at "
            f"{measured}; capacity predicts α·P / {num(bits)} bits = {num(m['predicted_F'])} facts.")
        if m["removed_accuracy_max"] is not None:
            section.readings.append(
                f"{model}: with the right record removed the reader answers {num(m['removed_accuracy_max'])} "
                f"(chance {num(chance)}): it holds none of the facts itself.")
    if closed:
        section.figures.append(_open_book_figure(closed, reader, result.get("crossover") or [], models, k))
        section.tables.append(Table(
            columns=["model", "P (total)", "closed-book recall at largest F", "open-book accuracy at largest F",
                     "params per fact, closed", "params per fact, open", "crossover F (measured)",
                     "crossover F (α·P / bits)"],
            rows=[[model, f"{int(m['params'] or 0):,}", num(m["recall_last"]),
                   num(next((r["accuracy"] for r in reader if r["model"] == model and r["F"] == m["F_last"]
                             and r.get("k") == k and r.get("distractors") == "hard" and r.get("rho") == 1.0), None)),
                   num(m["closed_params_per_fact"]), num(m["open_params_per_fact"]),
                   f"{int(m['measured_F']):,}" if finite(m["measured_F"]) else "not within the sweep",
                   num(m["predicted_F"])] for model, m in per_model.items()],
            caption=f"Facts in the weights vs in the context (open book at k = {k}, hard distractors, ρ = 1)."))
    ids = [r.get("run_id") for r in closed + reader]
    section.provenance.append(result_provenance(OPEN_BOOK_COMMAND, store, result, ids, kind,
                                                "closed vs open book"))
    return True


def _open_book_figure(closed: list[dict], reader: list[dict], crossover: list[dict], models: list[tuple[str, int]],
                      k) -> Figure:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=FIGSIZE)
    colours = size_colour([p for _, p in models])
    fs = sorted({float(r["F"]) for r in closed})
    predicted = {c["model"]: finite(c.get("predicted_F")) for c in crossover}
    for model, params in models:
        colour = colours[params]
        c = sorted((r for r in closed if r["model"] == model), key=lambda r: r["F"])
        ax.plot([r["F"] for r in c], [r["recall"] for r in c], "o-", color=colour, label=f"{model}, closed book")
        o = sorted((r for r in reader if r["model"] == model and r.get("k") == k and r.get("distractors") == "hard"
                    and r.get("rho") == 1.0), key=lambda r: r["F"])
        if o:
            ax.plot([r["F"] for r in o], [r["accuracy"] for r in o], "s--", color=colour,
                    label=f"{model}, open book (k = {k})")
        if predicted.get(model) and predicted[model] > 0:
            ax.axvline(predicted[model], color=colour, ls=":", lw=1)
    ax.set_xscale("log")
    plain_log_axis(ax.xaxis, fs)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("facts in the table F (count)")
    ax.set_ylabel("share of the table's facts answered")
    ax.legend(fontsize=7, frameon=False)
    caption = ("Closed-book recall (facts stored in the weights) and open-book accuracy (a reader given k records, "
               "hard distractors, the right record present) against the number of facts. Dotted: the F at which the "
               "facts' bits equal the model's capacity, α·P / bits per fact.")
    return svg_figure(fig, "knowledge-open-book", caption)


# --- the section --------------------------------------------------------------------------------------

def build(store) -> Section:
    """The knowledge section from the newest long-tail and open-book results."""
    return probe_section(store, KEY, TITLE, [
        (_long_tail_part, "long-tail", LONG_TAIL_COMMAND, "recall vs exposures and D"),
        (_open_book_part, "open-book", OPEN_BOOK_COMMAND, "facts in the weights vs in the context"),
    ])
