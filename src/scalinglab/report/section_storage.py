"""The report's "Storage vs structure" section: how many bits a parameter holds (the capacity
probe, α with its convergence), where a model can no longer store its training set outright
(the storage limit D/N), and how much of what it learns is sample-specific storage against
generalisation as D/N grows (the memorisation probe: memorised vs generalised bits and
membership-inference AUC).

Built from the results store only: the newest result of kind "probe:capacity" and of kind
"probe:memorization" (the stored spelling). The small helpers at the top are shared with the
other probe sections (`section_phase`, `section_knowledge`).
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
    interval,
    newest,
    num,
    probe_section,
    result_provenance,
    size_colour,
    svg_figure,
)
from scalinglab.report.figures import FIGSIZE, plain_log_axis, positive, pyplot

KEY = "storage"
TITLE = "Storage vs structure"
CHINCHILLA_TPP = 20.0  # Hoffmann et al. 2022's compute-optimal tokens per parameter

CAPACITY_COMMAND = "scalinglab probe capacity"
MEMORISATION_COMMAND = "scalinglab probe memorisation"


# --- capacity ----------------------------------------------------------------------------------------

def _capacity_part(store, section: Section) -> bool:
    from scalinglab.probes.capacity import CONVERGED_GAIN

    kind = "probe:capacity"
    result = newest(store, kind)
    if result is None:
        return False
    models = [m for m in result.get("models") or [] if finite(m.get("params"))]
    alpha, low, high = finite(result.get("alpha")), finite(result.get("alpha_low")), finite(result.get("alpha_high"))
    anchor = finite(result.get("anchor_bits_per_param")) or 3.6
    ne, ne_low, ne_high = (finite(result.get(k)) for k in
                           ("alpha_nonembedding", "alpha_nonembedding_low", "alpha_nonembedding_high"))
    median_gain, max_gain = finite(result.get("median_doubling_gain")), finite(result.get("max_doubling_gain"))
    to_anchor = finite(result.get("median_doublings_to_anchor"))
    converged = result.get("converged")
    numbers = {
        "key": result["key"], "alpha": alpha, "alpha_low": low, "alpha_high": high, "n_models": len(models),
        "anchor_bits_per_param": anchor, "alpha_nonembedding": ne, "alpha_nonembedding_low": ne_low,
        "alpha_nonembedding_high": ne_high, "r2": finite(result.get("r2")), "log_slope": finite(result.get("log_slope")),
        "median_doubling_gain": median_gain, "max_doubling_gain": max_gain, "median_doublings_to_anchor": to_anchor,
        "converged": converged, "converged_gain": CONVERGED_GAIN,
        "models": [{k: m.get(k) for k in ("model", "params", "params_nonembedding", "capacity_bits", "bits_per_param",
                                          "memorised_bits_half_steps", "doubling_gain")} for m in models],
    }
    section.numbers["capacity"] = clean(numbers)

    section.readings.append(
        f"The capacity probe measured α = {num(alpha)} bits/param {interval(low, high)} over {len(models)} "
        f"model(s), counting all parameters (anchor: {num(anchor)}, Morris et al. 2025); against non-embedding "
        f"parameters α = {num(ne)} {interval(ne_low, ne_high)}.")
    slope, r2 = numbers["log_slope"], numbers["r2"]
    if slope is not None:
        section.readings.append(
            f"Capacity grows as P^{num(slope)} across the sizes (1 = proportional to size)"
            + (f"; the line α·P explains R² = {num(r2)} of its variance." if r2 is not None else "."))
    if median_gain is not None:
        verdict = ("every fit gained less than that, so the fits count as converged" if converged else
                   "not every fit did, so α is a lower bound on what longer training would store")
        tail = (f"; at that rate about {num(to_anchor)} more doublings would reach {num(anchor)} bits/param "
                "(optimistic: the gain per doubling shrinks)" if to_anchor is not None else "")
        section.readings.append(
            f"Convergence: the last doubling of training steps added {num(100 * median_gain)}% of a model's capacity "
            f"(median over models; largest {num(100 * (max_gain or 0.0))}%); a fit counts as converged below "
            f"{num(100 * CONVERGED_GAIN)}%, and {verdict}{tail}.")
    if models and alpha is not None:
        section.figures.append(_capacity_figure(models, alpha, low, high, anchor))
    ids = [r.get("run_id") for r in (result.get("runs") or []) + (result.get("twins") or [])]
    section.provenance.append(result_provenance(CAPACITY_COMMAND, store, result, ids, kind, "α in bits per parameter"))
    return True


def _capacity_figure(models: list[dict], alpha: float, low: float | None, high: float | None,
                     anchor: float) -> Figure:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=FIGSIZE)
    params = [float(m["params"]) for m in models]
    colours = size_colour(params)
    x, y, dropped = positive(params, [m.get("capacity_bits") for m in models])
    grid = np.geomspace(min(params) / 1.5, max(params) * 1.5, 50)
    if low is not None and high is not None and low > 0:
        ax.fill_between(grid, low * grid, high * grid, color="C0", alpha=0.12, lw=0)
    band = interval(low, high)
    ax.plot(grid, alpha * grid, color="C0", lw=1.2, label=f"α·P, α = {num(alpha)} bits/param {band}")
    ax.plot(grid, anchor * grid, color="grey", lw=1, ls="--", label=f"{num(anchor)} bits/param (Morris et al. 2025)")
    for px, py in zip(x, y):
        ax.plot(px, py, "o", color=colours[int(px)], ms=7)
    hx, hy, _ = positive(params, [m.get("memorised_bits_half_steps") for m in models])
    for px, py in zip(hx, hy):
        ax.plot(px, py, "o", color=colours[int(px)], ms=7, markerfacecolor="white")
    ax.plot([], [], "o", color="black", label="capacity (most bits memorised over data sizes)")
    ax.plot([], [], "o", color="black", markerfacecolor="white", label="same fit with half the steps")
    ax.set_xscale("log")
    ax.set_yscale("log")
    plain_log_axis(ax.xaxis, params)
    plain_log_axis(ax.yaxis)
    ax.set_xlabel("parameters P (count, total incl. embeddings)")
    ax.set_ylabel("capacity (bits)")
    ax.legend(fontsize=8, frameon=False)
    caption = ("Memorisation capacity of each model on uniformly random sequences against its size, with the "
               "fitted α·P (band: 95% interval) and the converged anchor of Morris et al. 2025. Open circles: "
               "the same fit with half the training steps; the gap between open and filled circles is what the "
               "last doubling of training added.")
    caption += dropped_text("capacity", dropped, "P")
    return svg_figure(fig, "storage-capacity-vs-params", caption)


# --- memorisation ------------------------------------------------------------------------------------

def _memorisation_part(store, section: Section) -> bool:
    kind = "probe:memorization"
    result = newest(store, kind)
    if result is None:
        return False
    rows = sorted((r for r in result.get("rows") or [] if finite(r.get("tokens_per_param"))),
                  key=lambda r: float(r["tokens_per_param"]))
    alpha, bpt = finite(result.get("alpha")), finite(result.get("data_bits_per_token"))
    capacity, n, p = finite(result.get("capacity_bits")), result.get("N"), result.get("P")
    limits = [lim for lim in result.get("limits") or [] if finite(lim.get("limit_tokens_per_param"))]
    own = next((lim for lim in limits if lim.get("label") == "probe model"), None)
    limit = finite(own["limit_tokens_per_param"]) if own else (
        capacity / bpt / n if capacity and bpt and n else None)
    numbers: dict = {
        "key": result["key"], "alpha": alpha, "alpha_source": result.get("alpha_source"), "data_bits_per_token": bpt,
        "data_bits_source": result.get("data_bits_source"), "N": n, "P": p, "capacity_bits": capacity,
        "storage_limit_tokens_per_param": limit,
        "chinchilla_tokens_per_param": CHINCHILLA_TPP,
        "chinchilla_over_limit": CHINCHILLA_TPP / limit if limit else None,
        "limits": [{k: lim.get(k) for k in ("label", "N", "P", "capacity_bits", "limit_tokens",
                                            "limit_tokens_per_param")} for lim in limits],
        "rows": [{k: r.get(k) for k in ("tokens_per_param", "D", "memorised_bits", "memorised_bits_se",
                                        "memorised_bits_calibrated", "memorised_bits_calibrated_se",
                                        "cheap_memorised_bits", "generalised_bits", "train_gain_bits",
                                        "sample_specific_share", "auc_loss", "auc_reference", "storable")}
                 for r in rows],
    }
    section.numbers["memorisation"] = clean(numbers)

    if limit is not None:
        beyond = (f"; Chinchilla's {num(CHINCHILLA_TPP)} tokens/param is {num(CHINCHILLA_TPP / limit)}× that"
                  if limit > 0 else "")
        section.readings.append(
            f"Storage limit: the memorisation probe's model (N = {int(n):,} non-embedding, P = {int(p):,} total "
            f"parameters) holds α·P = {num(capacity)} bits at α = {num(alpha)} bits/param, and its training data "
            f"carries {num(bpt)} bits per token ({result.get('data_bits_source')}), so it could store its whole "
            f"training set only up to D/N = {num(limit)} tokens/param{beyond}. Source of α: "
            f"{result.get('alpha_source')}.")
        measured = (section.numbers.get("capacity") or {}).get("alpha")
        if measured and alpha and abs(measured / alpha - 1) > 0.01:
            rescaled = limit * measured / alpha
            numbers["storage_limit_at_measured_alpha"] = rescaled
            section.numbers["memorisation"]["storage_limit_at_measured_alpha"] = rescaled
            section.readings.append(
                f"With the α = {num(measured)} bits/param of the capacity result above instead, that limit is "
                f"D/N = {num(rescaled)} tokens/param (the limit scales with α).")
    if len(limits) > 1:
        values = [float(lim["limit_tokens_per_param"]) for lim in limits]
        section.readings.append(
            f"Across the {len(limits)} sizes considered (N = {int(min(lim['N'] for lim in limits)):,} to "
            f"{int(max(lim['N'] for lim in limits)):,}) the storage limit lies between D/N = {num(min(values))} and "
            f"{num(max(values))} tokens/param.")
    if rows:
        parts = []
        for r in ([rows[0], rows[-1]] if len(rows) > 1 else rows):
            share = finite(r.get("sample_specific_share"))
            share_text = f", {num(100 * share)}% of the {num(r.get('train_gain_bits'))} bits it saves on its training " \
                         "set" if share is not None else ""
            mem, se = finite(r.get("memorised_bits_calibrated")), finite(r.get("memorised_bits_calibrated_se"))
            noise = "; within two standard errors of zero" if mem is not None and se and abs(mem) <= 2 * se else ""
            parts.append(f"at D/N = {num(r['tokens_per_param'])} the model holds {num(mem)} ± {num(se)} "
                         f"sample-specific bits (calibrated{noise}){share_text}, and {num(r.get('generalised_bits'))} "
                         "bits generalise")
        section.readings.append("Memorised vs generalised: " + "; ".join(parts) + ".")
        first, last = rows[0], rows[-1]
        if len(rows) > 1:
            section.readings.append(
                f"Membership inference (AUC of telling training windows from held-out ones by the model's loss; "
                f"0.5 = no signal): {num(first.get('auc_loss'))} at D/N = {num(first['tokens_per_param'])} → "
                f"{num(last.get('auc_loss'))} at D/N = {num(last['tokens_per_param'])}; calibrated by the reference "
                f"model: {num(first.get('auc_reference'))} → {num(last.get('auc_reference'))}.")
        else:
            section.readings.append(
                f"Membership inference AUC at D/N = {num(first['tokens_per_param'])}: {num(first.get('auc_loss'))} "
                f"(loss-based), {num(first.get('auc_reference'))} (reference-calibrated); 0.5 = no signal.")
        section.figures.append(_bits_figure(rows, capacity, limit, n))
        section.figures.append(_auc_figure(rows, result.get("study") or [], limit))
        section.tables.append(Table(
            columns=["D/N (tokens/param)", "D (tokens)", "memorised, calibrated (bits)", "generalised (bits)",
                     "sample-specific share", "AUC (loss)", "AUC (reference)"],
            rows=[[num(r["tokens_per_param"]), f"{int(r['D']):,}" if finite(r.get("D")) else "n/a",
                   f"{num(r.get('memorised_bits_calibrated'))} ± {num(r.get('memorised_bits_calibrated_se'))}",
                   num(r.get("generalised_bits")), num(r.get("sample_specific_share")), num(r.get("auc_loss")),
                   num(r.get("auc_reference"))] for r in rows],
            caption=f"The memorisation probe at fixed N = {int(n):,}: one model and one reference model per D."))
    if limits:
        section.tables.append(Table(
            columns=["model", "N (non-embedding)", "P (total)", "capacity α·P (bits)", "limit D (tokens)",
                     "limit D/N (tokens/param)"],
            rows=[[str(lim.get("label")), f"{int(lim['N']):,}", f"{int(lim['P']):,}", num(lim.get("capacity_bits")),
                   num(lim.get("limit_tokens")), num(lim.get("limit_tokens_per_param"))] for lim in limits],
            caption=f"Storage limit: the D/N beyond which D × {num(bpt)} bits/token exceeds α·P, α = {num(alpha)} "
                    "bits/param."))
    ids = [r.get(k) for r in rows for k in ("model_run", "reference_run")]
    section.provenance.append(result_provenance(MEMORISATION_COMMAND, store, result, ids, kind,
                                                "memorised vs generalised bits, membership AUC"))
    return True


def _limit_line(ax, limit: float | None) -> None:
    if limit is not None and limit > 0:
        ax.axvline(limit, color="grey", ls="--", lw=0.9, label=f"storage limit D/N = {num(limit)}")


def _bits_figure(rows: list[dict], capacity: float | None, limit: float | None, n) -> Figure:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=FIGSIZE)
    xs = [float(r["tokens_per_param"]) for r in rows]
    caption_drops = ""
    series = (("memorised_bits_calibrated", "memorised, sample-specific (calibrated)", "o-", "C3"),
              ("cheap_memorised_bits", "memorised, cheap estimate (val − train) × D", "s--", "C1"),
              ("generalised_bits", "generalised (training-set gain − memorised)", "^-", "C0"))
    drawn: list[float] = []
    for column, label, style, colour in series:
        x, y, dropped = positive(xs, [r.get(column) for r in rows])
        if len(x):
            if column == "memorised_bits_calibrated":
                se = {float(r["tokens_per_param"]): finite(r.get("memorised_bits_calibrated_se")) or 0.0 for r in rows}
                err = np.array([min(se[float(v)], 0.999 * w) for v, w in zip(x, y)])  # keep the lower bar > 0
                ax.errorbar(x, y, yerr=[err, [se[float(v)] for v in x]], fmt=style, color=colour, label=label,
                            capsize=3, ms=5)
            else:
                ax.plot(x, y, style, color=colour, label=label, ms=5)
            drawn.extend(y)
        caption_drops += dropped_text(label.split(" (")[0], dropped, "D/N")
    if capacity:
        ax.axhline(capacity, color="grey", ls=":", lw=1, label=f"capacity α·P = {num(capacity)} bits")
        drawn.append(capacity)
    _limit_line(ax, limit)
    ax.set_xscale("log")
    if drawn:
        ax.set_yscale("log")
        plain_log_axis(ax.yaxis)
    plain_log_axis(ax.xaxis, xs)
    ax.set_xlabel("unique training tokens per parameter D/N (tokens/param)")
    ax.set_ylabel("information (bits)")
    ax.legend(fontsize=7, frameon=False)
    caption = (f"Memorised vs generalised bits at fixed N = {int(n):,} as the unique training data grows. Error bars: "
               "one standard error of the calibrated estimate. Right of the dashed line the training set holds more "
               "bits than the model's capacity α·P (dotted).") + caption_drops
    return svg_figure(fig, "storage-memorised-vs-generalised", caption)


def _auc_figure(rows: list[dict], study: list[dict], limit: float | None) -> Figure:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=FIGSIZE)
    xs = [float(r["tokens_per_param"]) for r in rows]
    for column, label, style, colour in (("auc_loss", "loss-based", "o-", "C3"),
                                         ("auc_reference", "reference-calibrated", "s--", "C1")):
        pts = [(x, finite(r.get(column))) for x, r in zip(xs, rows) if finite(r.get(column)) is not None]
        if pts:
            ax.plot(*zip(*pts), style, color=colour, label=label, ms=5)
    by_n: dict[int, list[tuple[float, float]]] = {}
    for r in study:
        if finite(r.get("tokens_per_param")) and finite(r.get("auc_loss")) is not None and r["tokens_per_param"] > 0:
            by_n.setdefault(int(r["N"]), []).append((float(r["tokens_per_param"]), float(r["auc_loss"])))
    colours = size_colour(by_n)
    for size, pts in sorted(by_n.items()):
        pts.sort()
        ax.plot(*zip(*pts), "^:", color=colours[size], label=f"study run, N = {size:,} (loss-based)", ms=5)
        xs += [p[0] for p in pts]
    ax.axhline(0.5, color="grey", ls=":", lw=0.9, label="0.5: no membership signal")
    _limit_line(ax, limit)
    ax.set_xscale("log")
    plain_log_axis(ax.xaxis, xs)
    ax.set_xlabel("unique training tokens per parameter D/N (tokens/param)")
    ax.set_ylabel("membership-inference AUC (probability)")
    ax.legend(fontsize=7, frameon=False)
    caption = ("Membership inference against D/N: the AUC of telling the model's training windows from held-out "
               "windows by its loss (and by the loss minus a reference model's that never saw them). It falls "
               "towards 0.5 as single samples leave less trace.")
    return svg_figure(fig, "storage-membership-auc", caption)


# --- the section --------------------------------------------------------------------------------------

def build(store) -> Section:
    """The storage-vs-structure section from the newest capacity and memorisation results."""
    return probe_section(store, KEY, TITLE, [
        (_capacity_part, "capacity", CAPACITY_COMMAND, "bits per parameter"),
        (_memorisation_part, "memorization", MEMORISATION_COMMAND,
         "the storage limit, memorised vs generalised bits and membership AUC as D/N grows"),
    ])
