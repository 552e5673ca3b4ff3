"""The report's "Phase transitions and data quality" section: grokking (memorisation first,
generalisation much later, with the progress measures that move before test accuracy does),
facts vs rules at a fixed model size, and what repeated and junk data cost against
Muennighoff et al. 2023's law.

Built from the results store only: results of kind "probe:grokking" (one per run, plus
training-fraction sweeps "sweep-..." and Grokfast comparisons "grokfast-..."), the run's stored
evaluation points, and the newest results of kinds "probe:facts-rules" and "probe:repetition".
"""

from __future__ import annotations

import json
import math

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
    svg_figure,
)
from scalinglab.report.figures import FIGSIZE, plain_log_axis, positive, pyplot

KEY = "phase"
TITLE = "Phase transitions and data quality"

GROKKING_COMMAND = "scalinglab probe grokking"
FACTS_RULES_COMMAND = "scalinglab probe facts-rules"
REPETITION_COMMAND = "scalinglab probe repetition"


# --- grokking ----------------------------------------------------------------------------------------

def _is_run(r: dict) -> bool:
    return "memorised_epoch" in r and "n_train" in r and "table" not in r and "plain" not in r


def _is_sweep(r: dict) -> bool:
    return "table" in r and "critical_frac" in r


def _is_grokfast(r: dict) -> bool:
    return "plain" in r and "grokfast" in r and "epoch_speedup" in r


def _task(cfg: dict) -> str:
    op = cfg.get("op", "+")
    return f"a{op}b mod {cfg.get('p')} ({cfg.get('model', 'mlp')} model{', Grokfast' if cfg.get('grokfast') else ''})"


def _history(store, run_id: str) -> list[dict]:
    """The run's evaluation points: epoch, train/test loss and the probe's extra measures."""
    out = []
    for p in store.points(run_id):
        extra = p.get("extra")
        extra = json.loads(extra) if isinstance(extra, str) else (extra or {})
        epoch = finite(p.get("epoch"))
        out.append({"epoch": epoch if epoch is not None else finite(p.get("step")),
                    "train_loss": finite(p.get("train_loss")), "test_loss": finite(p.get("val_loss")),
                    **{k: finite(extra.get(k)) for k in ("train_acc", "test_acc", "weight_norm", "fourier_sparsity")}})
    return sorted(out, key=lambda h: h["epoch"] or 0.0)


def _grokking_part(store, section: Section) -> bool:
    from scalinglab.probes.grokking import GENERALISED_AT, MEMORISED_AT

    kind = "probe:grokking"
    results = store.results(kind)
    runs = [r for r in results if _is_run(r)]
    plain = [r for r in runs if not (r.get("config") or {}).get("grokfast")]
    sweep = newest(store, kind, _is_sweep)
    fast = newest(store, kind, _is_grokfast)
    if not (runs or sweep or fast):
        return False
    numbers: dict = {}
    run = (plain or runs or [None])[-1]
    if run is not None:
        cfg = run.get("config") or {}
        history = _history(store, run["run_id"])
        mem, gen = run.get("memorised_epoch"), run.get("generalised_epoch")
        first_norm = history[0]["weight_norm"] if history else None
        measures = sorted((m for m in run.get("measures") or [] if finite(m.get("epoch")) is not None),
                          key=lambda m: m["epoch"])
        numbers["run"] = clean({
            "key": run["key"], "run_id": run["run_id"], "p": cfg.get("p"), "op": cfg.get("op"),
            "train_frac": cfg.get("train_frac"), "n_train": run.get("n_train"), "n_test": run.get("n_test"),
            "epochs": run.get("epochs"), "status": run.get("status"), "memorised_epoch": mem,
            "generalised_epoch": gen, "seconds_to_generalise": run.get("seconds_to_generalise"),
            "plateau_min_test_acc": run.get("plateau_min_test_acc"), "chance_acc": run.get("chance_acc"),
            "final_train_acc": run.get("final_train_acc"), "final_test_acc": run.get("final_test_acc"),
            "initial_weight_norm": first_norm, "final_weight_norm": run.get("final_weight_norm"),
            "final_fourier_sparsity": run.get("final_fourier_sparsity"), "key_frequencies": run.get("key_frequencies"),
            "fourier_top": cfg.get("fourier_top"), "memorised_at": MEMORISED_AT, "generalised_at": GENERALISED_AT,
            "restricted_loss_first": measures[0]["restricted_loss"] if measures else None,
            "restricted_loss_last": measures[-1]["restricted_loss"] if measures else None,
            "excluded_loss_first": measures[0]["excluded_loss"] if measures else None,
            "excluded_loss_last": measures[-1]["excluded_loss"] if measures else None,
        })
        n = numbers["run"]
        task = (f"the grokking run on {_task(cfg)}, {int(run['n_train']):,} training / {int(run['n_test']):,} test "
                f"pairs (train fraction {num(cfg.get('train_frac'))})")
        if mem and gen:
            plateau = (f"; on the plateau between them test accuracy fell as low as {num(n['plateau_min_test_acc'])} "
                       f"(chance 1/p = {num(n['chance_acc'])})" if n["plateau_min_test_acc"] is not None else "")
            section.readings.append(
                f"In {task}, train accuracy reached {num(100 * MEMORISED_AT)}% at epoch {int(mem):,} (memorised) and "
                f"test accuracy {num(100 * GENERALISED_AT)}% at epoch {int(gen):,} (generalised), {num(gen / mem)}× "
                f"later{plateau}.")
        elif mem:
            section.readings.append(
                f"In {task}, train accuracy reached {num(100 * MEMORISED_AT)}% at epoch {int(mem):,}, but test "
                f"accuracy did not reach {num(100 * GENERALISED_AT)}% within {int(run['epochs']):,} epochs (final "
                f"test accuracy {num(n['final_test_acc'])}, chance {num(n['chance_acc'])}).")
        else:
            section.readings.append(
                f"In {task}, train accuracy did not reach {num(100 * MEMORISED_AT)}% within {int(run['epochs']):,} "
                f"epochs (final {num(n['final_train_acc'])}; test {num(n['final_test_acc'])}).")
        parts = []
        if first_norm is not None and n["final_weight_norm"] is not None:
            parts.append(f"the weight norm went from {num(first_norm)} to {num(n['final_weight_norm'])}")
        if n["final_fourier_sparsity"] is not None:
            parts.append(f"the top {n['fourier_top']} Fourier frequencies hold {num(100 * n['final_fourier_sparsity'])}%"
                         f" of the number embedding's energy at the end (key frequencies "
                         f"{', '.join(str(k) for k in run.get('key_frequencies') or []) or 'none found'})")
        if len(measures) > 1:
            parts.append(f"the test loss restricted to the key frequencies went from "
                         f"{num(n['restricted_loss_first'])} to {num(n['restricted_loss_last'])} nats and the train "
                         f"loss with them excluded from {num(n['excluded_loss_first'])} to "
                         f"{num(n['excluded_loss_last'])} nats")
        if parts:
            section.readings.append("Progress measures: " + "; ".join(parts) + ".")
        if history:
            section.figures.append(_accuracy_figure(history, run, cfg))
        if len(measures) > 1:
            section.figures.append(_measures_figure(measures, run))
        section.provenance.append(result_provenance(GROKKING_COMMAND, store, run, [run["run_id"]], kind,
                                                    "one grokking run"))
    if sweep is not None:
        _sweep_part(store, section, sweep, numbers)
    if fast is not None:
        speed = finite(fast.get("epoch_speedup"))
        p, g = fast["plain"], fast["grokfast"]
        numbers["grokfast"] = clean({"key": fast["key"], "epoch_speedup": speed,
                                     "plain_generalised_epoch": p.get("generalised_epoch"),
                                     "grokfast_generalised_epoch": g.get("generalised_epoch"),
                                     "max_epochs": fast.get("max_epochs")})
        if speed is not None:
            section.readings.append(
                f"Grokfast (gradient EMA filter) generalised at epoch {int(g['generalised_epoch']):,} against "
                f"{int(p['generalised_epoch']):,} without it: {num(speed)}× fewer epochs on {_task(p.get('config') or {})}.")
        else:
            section.readings.append(
                f"Grokfast comparison on {_task(p.get('config') or {})}: no speed-up can be given, since "
                f"{'neither run' if not (p.get('generalised_epoch') or g.get('generalised_epoch')) else 'one of the runs'}"
                f" generalised within {int(fast.get('max_epochs') or 0):,} epochs.")
        section.provenance.append(result_provenance(GROKKING_COMMAND + " --compare-grokfast", store, fast,
                                                    [p.get("run_id"), g.get("run_id")], kind, "Grokfast comparison"))
    section.numbers["grokking"] = numbers
    return True


def _sweep_part(store, section: Section, sweep: dict, numbers: dict) -> None:
    kind = "probe:grokking"
    table = sorted((r for r in sweep.get("table") or [] if finite(r.get("train_frac")) is not None),
                   key=lambda r: float(r["train_frac"]))
    base = sweep.get("base") or {}
    critical, failed = finite(sweep.get("critical_frac")), finite(sweep.get("largest_failed_frac"))
    max_epochs = sweep.get("max_epochs")
    numbers["sweep"] = clean({"key": sweep["key"], "critical_frac": critical, "largest_failed_frac": failed,
                              "max_epochs": max_epochs, "table": table})
    if critical is not None:
        n_crit = next((r.get("n_train") for r in table if r["train_frac"] == critical), None)
        below = f"; {num(failed)} did not" if failed is not None else ""
        section.readings.append(
            f"Sweeping the training fraction on {_task(base)}: from a fraction of {num(critical)} "
            f"({int(n_crit or 0):,} pairs) up, every run generalised within {int(max_epochs):,} epochs{below}.")
    else:
        section.readings.append(
            f"Sweeping the training fraction ({', '.join(num(r['train_frac']) for r in table)}) on {_task(base)}: "
            f"no fraction generalised within {int(max_epochs or 0):,} epochs (largest tried that failed: "
            f"{num(failed)}).")
    if table:
        section.figures.append(_sweep_figure(table, max_epochs, critical))
        section.tables.append(Table(
            columns=["train fraction", "training pairs", "memorised at epoch", "generalised at epoch",
                     "final test accuracy", "status"],
            rows=[[num(r["train_frac"]), f"{int(r.get('n_train') or 0):,}",
                   f"{int(r['memorised_epoch']):,}" if finite(r.get("memorised_epoch")) else "not within budget",
                   f"{int(r['generalised_epoch']):,}" if finite(r.get("generalised_epoch")) else "not within budget",
                   num(r.get("final_test_acc")), str(r.get("status"))] for r in table],
            caption=f"Grokking against the training fraction ({_task(base)}, budget {int(max_epochs or 0):,} epochs)."))
    fractions = {float(r["train_frac"]) for r in table}
    same = ("p", "op", "model", "grokfast", "seed")
    ids = [r["run_id"] for r in store.runs(kind=kind)
           if all((r.get("config") or {}).get(k) == base.get(k) for k in same)
           and finite((r.get("config") or {}).get("train_frac")) in fractions]
    section.provenance.append(result_provenance(GROKKING_COMMAND + " --fractions", store, sweep, ids, kind,
                                                "training-fraction sweep"))


def _epoch_axis(ax, epochs) -> None:
    ax.set_xscale("log")
    plain_log_axis(ax.xaxis)
    ax.set_xlabel("epoch (full-batch updates)")


def _accuracy_figure(history: list[dict], run: dict, cfg: dict) -> Figure:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=FIGSIZE)
    h = [r for r in history if r["epoch"] and r["epoch"] > 0]
    epochs = [r["epoch"] for r in h]
    for column, label, colour in (("train_acc", "train pairs", "C0"), ("test_acc", "held-out pairs", "C3")):
        pts = [(r["epoch"], r[column]) for r in h if r[column] is not None]
        if pts:
            ax.plot(*zip(*pts), color=colour, label=label)
    chance = finite(run.get("chance_acc"))
    if chance:
        ax.axhline(chance, color="grey", ls=":", lw=0.9, label=f"chance 1/p = {num(chance)}")
    for epoch, label, colour in ((run.get("memorised_epoch"), "memorised", "C0"),
                                 (run.get("generalised_epoch"), "generalised", "C3")):
        if epoch:
            ax.axvline(epoch, color=colour, ls="--", lw=0.8)
            ax.text(epoch, 0.5, f" {label}\n epoch {int(epoch):,}", color=colour, fontsize=7,
                    transform=ax.get_xaxis_transform())
    ax.set_ylim(-0.02, 1.02)
    _epoch_axis(ax, epochs)
    ax.set_ylabel("accuracy (share of pairs right)")
    ax.legend(fontsize=8, frameon=False, loc="upper left")
    caption = (f"Grokking on {_task(cfg)}: accuracy on the {int(run['n_train']):,} training pairs and the "
               f"{int(run['n_test']):,} held-out pairs against epochs (epoch 0 not drawn on the log axis).")
    marks = [what for epoch, what in ((run.get("memorised_epoch"), "train accuracy passed 99%"),
                                      (run.get("generalised_epoch"), "test accuracy passed 95%")) if epoch]
    caption += f" Dashed: the epoch at which {' and '.join(marks)}." if marks else ""
    if not run.get("generalised_epoch"):
        caption += f" Test accuracy did not reach 95% within the {int(run.get('epochs') or 0):,} epochs trained."
    return svg_figure(fig, "phase-grokking-accuracy", caption)


def _measures_figure(measures: list[dict], run: dict) -> Figure:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=FIGSIZE)
    series = (("grid_test_loss", "held-out loss", "C3", "-"),
              ("restricted_loss", "held-out, key frequencies only (restricted)", "C2", "-"),
              ("excluded_loss", "train, key frequencies removed (excluded)", "C1", "-"),
              ("grid_train_loss", "train loss", "C0", ":"))
    xs = [float(m["epoch"]) for m in measures]
    drops = ""
    for column, label, colour, style in series:
        x, y, dropped = positive(xs, [m.get(column) for m in measures])
        if len(x):
            ax.plot(x, y, style, color=colour, label=label, marker="o", ms=3)
        drops += dropped_text(label, [(a, b) for a, b in dropped if a > 0], "epoch")
    ax.set_yscale("log")
    plain_log_axis(ax.yaxis)
    _epoch_axis(ax, xs)
    ax.set_ylabel("cross-entropy (nats per answer)")
    ax.legend(fontsize=7, frameon=False)
    keys = ", ".join(str(k) for k in run.get("key_frequencies") or []) or "none"
    caption = (f"Progress measures over the parameter snapshots (key frequencies {keys}): the held-out loss using "
               "only the key Fourier frequencies of the logits (restricted) tracks the structured solution; the "
               "training loss with them removed (excluded) tracks memorisation without them. Epoch 0 is not drawn "
               "on the log axis." + drops)
    return svg_figure(fig, "phase-grokking-measures", caption)


def _sweep_figure(table: list[dict], max_epochs, critical: float | None) -> Figure:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=FIGSIZE)
    x = [float(r["train_frac"]) for r in table]
    mem = [(f, finite(r.get("memorised_epoch"))) for f, r in zip(x, table) if finite(r.get("memorised_epoch"))]
    gen = [(f, finite(r.get("generalised_epoch"))) for f, r in zip(x, table) if finite(r.get("generalised_epoch"))]
    if mem:
        ax.plot(*zip(*mem), "o-", color="C0", label="memorised (train ≥ 99%)")
    if gen:
        ax.plot(*zip(*gen), "o-", color="C3", label="generalised (test ≥ 95%)")
    failed = [f for f, r in zip(x, table) if not finite(r.get("generalised_epoch"))]
    if failed and max_epochs:
        ax.plot(failed, [max_epochs] * len(failed), "x", color="C3", ms=9,
                label=f"not generalised within {int(max_epochs):,} epochs")
        ax.axhline(max_epochs, color="grey", ls="--", lw=0.8)
    if critical is not None:
        ax.axvline(critical, color="C2", ls=":", label=f"critical fraction {num(critical)}")
    ax.set_yscale("log")
    plain_log_axis(ax.yaxis)
    ax.set_xlabel("training fraction of all pairs (share)")
    ax.set_ylabel("epoch (full-batch updates)")
    ax.legend(fontsize=8, frameon=False)
    caption = ("Epochs to memorise (train accuracy ≥ 99%) and to generalise (test accuracy ≥ 95%) against the share "
               "of all pairs used for training; crosses: runs that did not generalise within the epoch budget.")
    return svg_figure(fig, "phase-grokking-sweep", caption)


# --- facts vs rules ----------------------------------------------------------------------------------

def _facts_rules_part(store, section: Section) -> bool:
    kind = "probe:facts-rules"
    result = newest(store, kind)
    if result is None:
        return False
    cfg = result.get("config") or {}
    table = sorted((r for r in result.get("table") or [] if finite(r.get("n_items"))), key=lambda r: r["n_items"])
    counts = result.get("n_params") or {}
    convention = counts.get("convention", "total")
    n = counts.get(convention)
    # a fact is a random 2-symbol value over the alphabet: 2·log2 A bits (the probe's definition)
    bits_per_fact = 2 * math.log2(cfg["alphabet"]) if cfg.get("alphabet") else None
    capacity, alpha = finite(result.get("capacity_bits")), finite(result.get("capacity_alpha"))
    best = max(table, key=lambda r: finite(r.get("fact_bits_stored")) or -math.inf) if table else None
    numbers = clean({
        "key": result["key"], "n_params": n, "convention": convention, "bits_per_fact": bits_per_fact,
        "max_fact_bits": result.get("max_fact_bits"), "bits_per_param": result.get("bits_per_param"),
        "capacity_alpha": alpha, "capacity_bits": capacity, "capacity_source": result.get("capacity_source"),
        "table": [{k: r.get(k) for k in ("n_items", "n_facts", "facts_recalled", "recall_share", "fact_bits_stored",
                                         "rule_train_acc", "rule_test_acc", "exposures")} for r in table],
    })
    section.numbers["facts_rules"] = numbers
    if best is not None:
        section.readings.append(
            f"Facts vs rules at a fixed model of N = {int(n):,} parameters ({convention.replace('_', '-')}): the most "
            f"information stored about the facts was {num(result.get('max_fact_bits'))} bits "
            f"({num(result.get('bits_per_param'))} bits/param), {num(best.get('facts_recalled'))} of "
            f"{int(best['n_facts']):,} facts recalled, at D = {int(best['n_items']):,} items"
            + (f"; each fact holds {num(bits_per_fact)} bits." if bits_per_fact else "."))
        if capacity is not None:
            section.readings.append(
                f"Against the capacity α·N = {num(alpha)} × {int(n):,} = {num(capacity)} bits "
                f"({result.get('capacity_source')}), the facts filled {num(result['max_fact_bits'] / capacity)} of it.")
        first, last = table[0], table[-1]
        section.readings.append(
            f"The rule, answered on keys never seen in training, went from {num(first.get('rule_test_acc'))} accuracy "
            f"at D = {int(first['n_items']):,} to {num(last.get('rule_test_acc'))} at D = {int(last['n_items']):,}, "
            f"while the share of facts recalled went from {num(first.get('recall_share'))} to "
            f"{num(last.get('recall_share'))}.")
        section.figures.append(_facts_bits_figure(table, bits_per_fact, capacity, alpha))
        section.figures.append(_facts_accuracy_figure(table, n))
    for note in result.get("notes") or []:
        section.readings.append(f"Facts-rules probe note: {note}.")
    section.provenance.append(result_provenance(FACTS_RULES_COMMAND, store, result, [r.get("run_id") for r in table],
                                                kind, "facts vs rules"))
    return True


def _facts_bits_figure(table: list[dict], bits_per_fact: float | None, capacity: float | None,
                       alpha: float | None) -> Figure:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=FIGSIZE)
    d = [float(r["n_items"]) for r in table]
    x, y, dropped = positive(d, [r.get("fact_bits_stored") for r in table])
    ax.plot(x, y, "o-", color="C0", label="information stored about the facts")
    if bits_per_fact:
        ax.plot(d, [r["n_facts"] * bits_per_fact for r in table], ":", color="grey",
                label=f"information in the facts ({num(bits_per_fact)} bits each)")
    if capacity:
        ax.axhline(capacity, color="C3", ls="--", lw=1, label=f"capacity α·N, α = {num(alpha)} bits/param")
    ax.set_xscale("log")
    ax.set_yscale("log")
    plain_log_axis(ax.xaxis, d)
    plain_log_axis(ax.yaxis)
    ax.set_xlabel("dataset size D (items: facts + rule items)")
    ax.set_ylabel("information (bits)")
    ax.legend(fontsize=8, frameon=False)
    caption = ("Bits stored about the facts, Σ max(0, bits per fact − NLL of its value), against the dataset size "
               "at a fixed model size, with the information the facts hold (dotted)."
               + ("" if capacity else " No capacity result was stored with this run, so no α·N line.")
               + dropped_text("bits stored", dropped, "D"))
    return svg_figure(fig, "phase-facts-rules-bits", caption)


def _facts_accuracy_figure(table: list[dict], n) -> Figure:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=FIGSIZE)
    d = [float(r["n_items"]) for r in table]
    for column, label, style, colour in (("rule_test_acc", "rule, unseen keys", "o-", "C2"),
                                         ("rule_train_acc", "rule, training keys", "x:", "C2"),
                                         ("recall_share", "share of facts recalled", "s-", "C0")):
        pts = [(x, finite(r.get(column))) for x, r in zip(d, table) if finite(r.get(column)) is not None]
        if pts:
            ax.plot(*zip(*pts), style, color=colour, label=label, ms=5)
    ax.set_xscale("log")
    plain_log_axis(ax.xaxis, d)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("dataset size D (items: facts + rule items)")
    ax.set_ylabel("accuracy (share answered right)")
    ax.legend(fontsize=8, frameon=False)
    caption = (f"At a fixed N = {int(n):,}: accuracy of the rule on keys never seen in training and on training "
               "keys, and the share of the dataset's facts recalled (both value tokens right), against dataset size.")
    return svg_figure(fig, "phase-facts-rules-accuracy", caption)


# --- repetition and junk -----------------------------------------------------------------------------

def _repetition_part(store, section: Section) -> bool:
    kind = "probe:repetition"
    result = newest(store, kind)
    if result is None:
        return False
    table = result.get("table") or []
    ok = [r for r in table if r.get("status", "done") == "done" and finite(r.get("val_loss")) is not None]
    rep = sorted((r for r in ok if r.get("role") == "repeated"), key=lambda r: r["epochs"])
    fresh = sorted((r for r in ok if r.get("role") == "fresh"), key=lambda r: r["tokens"])
    junk = sorted((r for r in ok if r.get("role") == "junk"), key=lambda r: r.get("junk_share") or 0)
    budget = result.get("tokens")
    r_ref, r_fit = finite(result.get("rd_star_reference")), finite(result.get("rd_star_fitted"))
    fit = result.get("fresh_fit") or None
    keep = ("role", "epochs", "unique_tokens", "tokens", "junk_share", "val_loss", "predicted_loss",
            "predicted_loss_fitted", "effective_tokens")
    section.numbers["repetition"] = clean({"key": result["key"], "tokens": budget, "rd_star_reference": r_ref,
                                           "rd_star_fitted": r_fit, "fresh_fit": fit,
                                           "table": [{k: r.get(k) for k in keep} for r in ok]})
    if rep:
        first, last = rep[0], rep[-1]
        text = (f"Repeated data at a fixed budget of D = {int(budget):,} training tokens: with U = D/e unique tokens "
                f"seen e times, val loss went from {num(first['val_loss'])} nats/token at e = {int(first['epochs'])} "
                f"to {num(last['val_loss'])} at e = {int(last['epochs'])}")
        if finite(last.get("predicted_loss")) is not None and r_ref is not None:
            text += (f"; Muennighoff et al. 2023's effective-data law (R* = {num(r_ref)}) predicted "
                     f"{num(last['predicted_loss'])}")
        section.readings.append(text + ".")
        if r_fit is not None:
            ref = f" (published: {num(r_ref)})" if r_ref is not None else ""
            section.readings.append(
                f"Fitted to these runs, R* = {num(r_fit)}{ref}: after about R* repetitions a repeated token has lost "
                f"1/e of its value; a smaller R* means repeats lose their worth faster here than the law says.")
        eff = [r for r in rep if r["epochs"] > 1 and finite(r.get("effective_tokens")) and r.get("unique_tokens")]
        if eff:
            r = eff[-1]
            section.readings.append(
                f"Measured worth of repeats: {int(r['epochs'])} epochs over {int(r['unique_tokens']):,} unique tokens "
                f"scored like {num(r['effective_tokens'])} fresh tokens ({num(r['effective_tokens'] / r['unique_tokens'])}"
                f"× the unique tokens, {int(r['epochs'])}× if every repeat were as good as new).")
        section.figures.append(_repetition_figure(rep, fresh, budget, r_ref, r_fit))
    for r in junk:
        pred = finite(r.get("predicted_loss"))
        verdict = ""
        if pred is not None:
            verdict = (f" against {num(pred)} if the junk tokens were merely wasted: junk cost "
                       + ("more than the clean tokens it displaced" if r["val_loss"] > pred
                          else "less than the clean tokens it displaced" if r["val_loss"] < pred
                          else "as much as the clean tokens it displaced"))
        section.readings.append(
            f"Junk ({result.get('junk_kind', 'junk')} spans): with {num(100 * (r.get('junk_share') or 0))}% of the "
            f"{int(r['tokens']):,} training tokens junk, val loss (on clean text) was {num(r['val_loss'])} "
            f"nats/token{verdict}.")
    if junk:
        base = next((r for r in rep if r["epochs"] == 1), None)
        section.figures.append(_junk_figure(junk, base, result.get("junk_kind", "junk")))
    if fit:
        section.readings.append(
            f"Fresh-data curve fitted to the single-epoch runs: L(U) = {num(fit.get('E'))} + {num(fit.get('B'))}/"
            f"U^{num(fit.get('beta'))} nats/token (used only outside the runs' range).")
    for note in result.get("notes") or []:
        section.readings.append(f"Repetition probe note: {note}.")
    section.provenance.append(result_provenance(REPETITION_COMMAND, store, result, [r.get("run_id") for r in table],
                                                kind, "repeated and junk data"))
    return True


def _repetition_figure(rep: list[dict], fresh: list[dict], budget, r_ref, r_fit) -> Figure:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=FIGSIZE)
    e = [float(r["epochs"]) for r in rep]
    ax.plot(e, [r["val_loss"] for r in rep], "o-", color="black", label="measured")
    for column, label, style, colour in (("predicted_loss", f"Muennighoff et al. 2023, R* = {num(r_ref)}", "s--", "C3"),
                                         ("predicted_loss_fitted", f"same law, R* fitted = {num(r_fit)}", "d:", "C1")):
        pts = [(x, finite(r.get(column))) for x, r in zip(e, rep) if finite(r.get(column)) is not None]
        if pts:
            ax.plot(*zip(*pts), style, color=colour, label=label, ms=5)
    # the one-epoch repeated run is also the fresh run at U = D
    pts = [(budget / r["unique_tokens"], r["val_loss"]) for r in fresh + [r for r in rep if r["epochs"] == 1]
           if r.get("unique_tokens")]
    if pts:
        ax.plot(*zip(*sorted(pts)), "^-", color="C2", alpha=0.8, label="one epoch of the same U tokens (fresh)")
    ax.set_xscale("log")
    plain_log_axis(ax.xaxis, e)
    ax.set_xlabel("epochs e over U = D/e unique tokens (count)")
    ax.set_ylabel("val loss (nats/token)")
    ax.legend(fontsize=8, frameon=False)
    caption = (f"Val loss at a fixed budget of D = {int(budget):,} training tokens when the data is repeated, against "
               "the effective-data law's prediction (read off the fresh runs) and against seeing the U unique tokens "
               "only once.")
    return svg_figure(fig, "phase-repetition", caption)


def _junk_figure(junk: list[dict], base: dict | None, junk_kind: str) -> Figure:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=FIGSIZE)
    start = [(0.0, base["val_loss"])] if base else []
    measured = start + [(float(r.get("junk_share") or 0.0), r["val_loss"]) for r in junk]
    ax.plot(*zip(*measured), "o-", color="black", label="measured")
    wasted = start + [(float(r.get("junk_share") or 0.0), finite(r.get("predicted_loss"))) for r in junk
                      if finite(r.get("predicted_loss")) is not None]
    if len(wasted) > len(start):
        ax.plot(*zip(*wasted), "s--", color="C3", label="if the junk tokens were merely wasted")
    ax.set_xlabel(f"junk share of the training tokens ({junk_kind}, share)")
    ax.set_ylabel("val loss on clean text (nats/token)")
    ax.legend(fontsize=8, frameon=False)
    caption = ("Val loss (clean val set) against the share of junk in the training tokens at a fixed budget, "
               "against the loss the remaining clean tokens alone would give.")
    return svg_figure(fig, "phase-repetition-junk", caption)


# --- the section --------------------------------------------------------------------------------------

def build(store) -> Section:
    """The phase-transition and data-quality section from the newest grokking, facts-rules and
    repetition results."""
    return probe_section(store, KEY, TITLE, [
        (_grokking_part, "grokking", GROKKING_COMMAND, "memorisation then generalisation"),
        (_facts_rules_part, "facts-rules", FACTS_RULES_COMMAND, "facts vs rules at fixed N"),
        (_repetition_part, "repetition", REPETITION_COMMAND, "repeated and junk data"),
    ])
