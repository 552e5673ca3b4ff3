"""Section 3, the laws: the user's own fit beside Hoffmann's and Epoch's, where the study's points
and Llama 1/2/3 sit against compute-optimal D, and an inference-optimal plan example."""

from __future__ import annotations

import numpy as np

from scalinglab.report.document import Section, Table, date, interval, num, size_colour, size_label, svg_figure
from scalinglab.report.figures import plain_log_axis, pyplot
from scalinglab.store import Store

# Published training runs (parameters, training tokens): Touvron et al. 2023a (Llama 65B, 1.4T),
# Touvron et al. 2023b (Llama 2 70B, 2T), Llama 3 herd (8B, 15T; ~1,875 tokens/param).
LLAMA_RUNS = [("Llama 1 65B", 65.2e9, 1.4e12), ("Llama 2 70B", 70e9, 2.0e12), ("Llama 3 8B", 8.0e9, 15e12)]
INFERENCE_EXAMPLE = {"flops": 1e23, "inference_tokens": 2e12}


def _laws(store: Store) -> list[tuple[str, object, dict | None]]:
    """(label, Law, stored fit or None): the newest stored Chinchilla-form fit, then Hoffmann and Epoch."""
    from scalinglab.laws.law import law_from_dict
    from scalinglab.laws.reference import EPOCH_2024, HOFFMANN_2022

    out = []
    fits = [f for f in store.results("fit") if f.get("form") == "chinchilla"]
    if fits:
        stored = fits[-1]
        out.append((f"your fit ({stored['key']})", law_from_dict(stored, name=stored["key"], where=f"stored fit {stored['key']}"), stored))
    out += [("Hoffmann 2022", HOFFMANN_2022, None), ("Epoch 2024", EPOCH_2024, None)]
    return out


def build(store: Store, study=None) -> Section:
    from scalinglab.laws.planning import compute_optimal, count, inference_optimal

    section = Section(key="laws", title="The laws")
    laws = _laws(store)
    epoch = laws[-1][1]

    table_rows, numbers = [], {}
    for label, law, _ in laws:
        params = {k: law.param(k) for k in ("E", "A", "alpha", "B", "beta")}
        cells = [label]
        for k in ("E", "A", "alpha", "B", "beta"):
            est = params[k]
            cells.append(num(est.value) + ("" if not est.has_interval else f" {interval(est.lo, est.hi)}"))
        opt = compute_optimal(law, 1e23)
        cells.append(num(opt["tokens_per_param"].value))
        table_rows.append(cells)
        numbers[label] = {k: params[k].value for k in params} | {"tpp_at_1e23": opt["tokens_per_param"].value}
    section.tables = [Table(
        columns=["law", "E", "A", "α", "B", "β", "tokens/param at 1e23 FLOPs"], rows=table_rows,
        caption="L(N, D) = E + A/N^α + B/D^β. Losses (E) are in each source's own nats/token and not comparable "
                "across laws; exponents and allocations are. Intervals: 95% bootstrap (your fit) where stored.")]

    llama = []
    for name, n, d in LLAMA_RUNS:
        c = 6 * n * d
        d_opt = compute_optimal(epoch, c)["tokens"].value
        llama.append({"name": name, "N": n, "D": d, "C": c, "D_opt": d_opt, "times_optimal": d / d_opt})
    numbers["llama"] = llama
    section.readings = [
        f"{r['name']} trained on {num(r['D'] / 1e12)}T tokens ({num(r['D'] / r['N'])} tokens/param) at C = 6ND = "
        f"{r['C']:.2g} FLOPs, {num(r['times_optimal'])}x the compute-optimal D of Epoch's law at that budget."
        for r in llama]
    if len(laws) == 3:
        fit = laws[0][2]
        section.readings.insert(0, f"Your stored fit {fit['key']} ({fit.get('n_points', '?')} points) puts the "
                                   f"compute-optimal split at {num(numbers[laws[0][0]]['tpp_at_1e23'])} tokens/param at 1e23 "
                                   f"FLOPs; Epoch's refit says {num(numbers['Epoch 2024']['tpp_at_1e23'])}.")
    else:
        section.readings.insert(0, "No fit of your own in the store: `scalinglab fit --db DB` (a study with three or more "
                                   "sizes) stores one, and it appears here beside the published laws.")

    plan = inference_optimal(epoch, INFERENCE_EXAMPLE["inference_tokens"], flops=INFERENCE_EXAMPLE["flops"])
    inf = {k: plan[k].value for k in ("n_params", "tokens", "tokens_per_param", "ref_n_params", "ref_tokens", "saving")}
    numbers["inference_plan"] = inf | INFERENCE_EXAMPLE
    section.readings.append(
        f"An inference-optimal plan (Sardana et al. 2023, Epoch's law): to serve {num(INFERENCE_EXAMPLE['inference_tokens'] / 1e12)}T "
        f"tokens at the loss of the compute-optimal model for {INFERENCE_EXAMPLE['flops']:.0e} FLOPs "
        f"({count(inf['ref_n_params'])} params, {count(inf['ref_tokens'])} tokens), train "
        f"{count(inf['n_params'])} params on {count(inf['tokens'])} tokens ({num(inf['tokens_per_param'])} "
        f"tokens/param), {num(100 * inf['saving'])}% less total compute: serving cost is one reason to train past 20:1.")

    study_pts = None
    if study is not None and not study.points.empty:
        study_pts = study.points[["N", "D"]].copy()
        study_pts["C"] = 6 * study_pts["N"] * study_pts["D"]
        study_pts["D_opt"] = [compute_optimal(epoch, c)["tokens"].value for c in study_pts["C"]]
        last = study_pts.loc[study_pts["D"].idxmax()]
        numbers["study_largest_times_optimal"] = float(last["D"] / last["D_opt"])
        section.readings.append(
            f"The study's largest run ({size_label(last['N'])}, D = {num(last['D'])}) is {num(last['D'] / last['D_opt'])}x "
            "the compute-optimal D at its compute under Epoch's law, read far below the compute that law was fitted on.")
    section.figures = [_optimal_figure(laws, llama, study_pts)]
    section.numbers = numbers
    section.provenance = [
        "Published laws: Hoffmann et al. 2022 (arXiv:2203.15556), Approach 3; Besiroglu et al. 2024 (arXiv:2404.10102)."]
    if len(laws) == 3:
        fit = laws[0][2]
        section.provenance.insert(0, f"Your fit: `scalinglab fit`, stored as {fit['key']} on {date(fit.get('created'))} "
                                     f"from {fit.get('source') or 'data'}.")
    return section


def _optimal_figure(laws, llama, study_pts):
    from scalinglab.laws.planning import compute_optimal

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.6))
    low = 1e10 if study_pts is None else max(1e6, float(study_pts["C"].min()) / 3)
    budgets = np.geomspace(low, 1e26, 60)
    for (label, law, _), style in zip(laws, ("-", "--", ":") if len(laws) == 3 else ("--", ":")):
        d_opt = [compute_optimal(law, c)["tokens"].value for c in budgets]
        ax.plot(budgets, d_opt, style, color="k", alpha=0.7, label=f"compute-optimal D: {label}")
    ax.plot(budgets, np.sqrt(budgets * 20 / 6), color="0.6", linewidth=0.8, label="20 tokens/param")
    for r, marker in zip(llama, ("s", "D", "^")):
        ax.plot(r["C"], r["D"], marker, color="tab:red", label=f"{r['name']} ({num(r['D'] / 1e12)}T tokens)")
    if study_pts is not None:
        colour = size_colour(study_pts["N"])
        for n, group in study_pts.groupby("N"):
            ax.plot(group["C"], group["D"], "o", markersize=3, color=colour[int(n)], label=f"study {size_label(n)}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    plain_log_axis(ax.xaxis)
    plain_log_axis(ax.yaxis)
    ax.set_xlabel("training compute C = 6ND (FLOPs)")
    ax.set_ylabel("training tokens D")
    ax.set_title("Trained tokens against compute-optimal D")
    ax.legend(fontsize=7)
    ax.grid(True, which="major", alpha=0.3)
    fig.tight_layout()
    return svg_figure(fig, "laws_compute_optimal",
                      "Compute-optimal training tokens by law against the tokens actually trained: Llama runs and the "
                      "study's points lie above the lines (over-trained). Below 1e18 FLOPs the published laws are extrapolated.")
