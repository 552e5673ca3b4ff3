"""The study's sections: the answer at a glance (1) and data scaling at fixed N (2).

Both read one study's points from the store (the final evaluation of each cooldown branch, as
study.csv holds them) and refit L(D) = E + B/D^β per N exactly as `scalinglab study` does (same
points, same seed), so the report's numbers are the study's numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from scalinglab.errors import UserError
from scalinglab.fmt import human
from scalinglab.probes.capacity import ANCHOR_BITS_PER_PARAM as CAPACITY_ANCHOR
from scalinglab.report.document import Section, Table, clean, interval, num, provenance, size_label, svg_figure
from scalinglab.store import Store
from scalinglab.study.analysis import (
    FIT_FROM_TPP,
    DataFit,
    control_points,
    control_split,
    fit_per_n,
    mark_plateau,
    study_points,
    trunk_points,
    with_control,
)

STUDY_COMMAND = "scalinglab study"
NATS_PER_BIT = float(np.log(2.0))


@dataclass
class StudyData:
    study_id: str
    points: pd.DataFrame  # study.csv's rows
    trunk: pd.DataFrame
    fits: list[DataFit]
    runs: list[dict]  # the study's trunks and branches as stored
    fit_from_tpp: float = FIT_FROM_TPP
    control_tpp: float | None = None  # the repeated-data control's D0 in tokens/param (None: no control)

    @property
    def folder(self) -> Path | None:
        """The study's folder (study.json, study.csv), found from its runs' directories."""
        for run in self.runs:
            if run.get("out_dir"):
                return Path(run["out_dir"]).parent.parent
        return None

    def by_n(self) -> dict[int, pd.DataFrame]:
        return {int(n): g.sort_values("D") for n, g in self.points.groupby("N")}


def study_ids(store: Store) -> list[str]:
    """Studies in the store (groups with cooldown branches), oldest first."""
    seen: dict[str, None] = {}
    for run in store.runs(kind="branch"):
        if run.get("group_name"):
            seen.setdefault(run["group_name"])
    return list(seen)


def load_study(store: Store, study_id: str | None, bootstrap: int = 400,
               fit_from_tpp: float = FIT_FROM_TPP) -> StudyData | None:
    """One study's points and fits (the newest study when `study_id` is None; None when the store
    has no study). An unknown id is a user error that lists the known ones."""
    known = study_ids(store)
    if study_id is None:
        if not known:
            return None
        study_id = known[-1]
    elif study_id not in known:
        listing = ", ".join(known) if known else "none"
        raise UserError(f"no study {study_id!r} in {store.path} (studies there: {listing}); pass one of them to --study")
    points, fit_plateau, control_tpp = study_record(store, study_id)
    fits = fit_per_n(points, bootstrap=bootstrap, from_tpp=fit_from_tpp, exclude_plateau=not fit_plateau) if len(points) else []
    runs = [r for r in store.runs(group=study_id) if r["kind"] in ("trunk", "branch")]
    return StudyData(study_id=study_id, points=points, trunk=trunk_points(store.path, study_id), fits=fits, runs=runs,
                     fit_from_tpp=fit_from_tpp, control_tpp=control_tpp)


def study_record(store: Store, study_id: str) -> tuple[pd.DataFrame, bool, float | None]:
    """The study's points as `study.analyse` made them (with its control's columns and the
    unigram-plateau flag, from what it stored), whether its fits kept plateau points, and the
    control's D0 in tokens/param (None without a control)."""
    points = study_points(store.path, study_id)
    record = store.get_result("study", study_id) or {}  # studies analysed before it was stored: neither
    control_tpp = record.get("control_unique") if record.get("control") else None
    if control_tpp is not None:
        points = with_control(points, control_points(store.path, study_id, set(record.get("control_runs") or []) or None))
    if record.get("unigram_entropy") is not None:
        points = mark_plateau(points, float(record["unigram_entropy"]))
    return points, bool(record.get("fit_plateau")), control_tpp


# --- per-N numbers ---------------------------------------------------------------------------------

def size_numbers(study: StudyData) -> dict[int, dict]:
    """Per N: the point nearest 20 tokens/param, the largest D, the drop between them and the
    fit's predicted gain from one more doubling (with its bootstrap interval)."""
    fit_by_n = {f.N: f for f in study.fits}
    out = {}
    for n, group in study.by_n().items():
        at20 = group.iloc[int((group["tokens_per_param"] - 20).abs().argmin())]
        last = group.iloc[-1]
        row = {
            "N": n, "tpp_at_20": float(at20["tokens_per_param"]), "loss_at_20": float(at20["val_loss"]),
            "max_tpp": float(last["tokens_per_param"]), "max_D": float(last["D"]), "loss_at_max": float(last["val_loss"]),
            "drop": float(at20["val_loss"] - last["val_loss"]), "gap_at_max": float(last["gap"]),
            "gap_at_20": float(at20["gap"]), "epoch_at_max": float(last["epoch"]),
        }
        if study.control_tpp is not None and "control_val_loss" in group.columns:
            split = control_split(group, study.control_tpp)
            if np.isfinite(split["control_gain"]):
                row.update(split)
        fit = fit_by_n.get(n)
        if fit is not None:
            D = row["max_D"]
            form = fit.result.form
            gain = fit.result.law().estimate(lambda p, D=D: form.predict(p, D=D) - form.predict(p, D=2 * D))
            row.update(beta=fit.beta[0], beta_lo=fit.beta[1], beta_hi=fit.beta[2], E=fit.E[0],
                       next_gain=gain.value, next_gain_lo=gain.lo, next_gain_hi=gain.hi, fit_points=fit.n_points)
        out[n] = row
    return out


def reading_for_size(row: dict) -> str:
    text = (f"At {size_label(row['N'])} the val loss fell {num(row['drop'])} nats from {num(row['tpp_at_20'])} to "
            f"{num(row['max_tpp'])} tokens/param ({row['loss_at_20']:.4f} → {row['loss_at_max']:.4f})")
    if "next_gain" in row:
        text += (f"; the fit (β = {num(row['beta'])}, {row['fit_points']} points) predicts {num(row['next_gain'])} more "
                 f"from the next doubling {interval(row['next_gain_lo'], row['next_gain_hi'])}")
    else:
        text += "; too few points past 20 tokens/param for a fit"
    return text + "."


def control_reading(row: dict, control_tpp: float) -> str:
    gain = row["control_gain"]
    share = row["gain_from_new_data"] / gain if gain > 0 else float("nan")
    return (f"More data or more steps, at {size_label(row['N'])}: from {num(row['control_anchor_tpp'])} to "
            f"{num(row['control_max_tpp'])} tokens/param the loss fell {num(gain)} nats, {num(row['gain_from_new_data'])} "
            f"({num(100 * share)}%) from new data and {num(row['gain_from_steps'])} from more steps on the same "
            f"{num(control_tpp)} tokens/param ({num(row['control_epochs_at_max'])} epochs of it by the largest D).")


# --- section 2: data scaling ------------------------------------------------------------------------

def scaling_section(study: StudyData | None) -> Section:
    from scalinglab.report import study as figures

    section = Section(key="scaling", title="Data scaling at fixed N")
    if study is None or study.points.empty:
        section.missing = ("Not measured yet: run `scalinglab study` (e.g. `scalinglab study --preset smoke` for a "
                           "two-minute one) to train fixed-size models far past 20 tokens/param.")
        return section
    rows = size_numbers(study)
    section.readings = [reading_for_size(r) for r in rows.values()]
    section.readings += [control_reading(r, study.control_tpp) for r in rows.values() if "control_gain" in r]
    if "plateau" in study.points.columns and study.points["plateau"].any():
        flagged = study.points[study.points["plateau"].astype(bool)]
        section.readings.append(
            "On the unigram plateau (val loss within 0.1 nats of the train split's unigram entropy), left out of the fits: "
            + ", ".join(f"{size_label(n)} at {num(t)} tokens/param" for n, t in zip(flagged["N"], flagged["tokens_per_param"])) + ".")
    elif study.control_tpp is None:
        section.readings.append("More data or only more steps? Not measured: `scalinglab study --control repeat` trains each "
                                "size again on a fixed unique subset for the same steps.")
    gaps = [r["gap_at_max"] for r in rows.values()]
    section.readings.append(
        f"The train−val gap at the largest D is {num(min(gaps))} to {num(max(gaps))} nats across sizes "
        f"(at 20 tokens/param: {num(min(r['gap_at_20'] for r in rows.values()))} to "
        f"{num(max(r['gap_at_20'] for r in rows.values()))}); the largest D is "
        f"{num(max(r['epoch_at_max'] for r in rows.values()))} epochs of the unique training text at most.")
    fit_note = (f"fits L(D) = E + B/D^β per N over the points at and past {study.fit_from_tpp:g} tokens/param, "
                "bands: 95% bootstrap over points; dashed: one more doubling, a prediction")
    section.figures = [
        svg_figure(figures.loss_vs_data_figure(study.points, study.trunk, study.fits), "loss_vs_data",
                   f"Val loss vs training tokens D per model size N; dotted: the trunk before its cooldown; {fit_note}."),
        svg_figure(figures.loss_vs_tpp_figure(study.points), "loss_vs_tokens_per_param",
                   "Val loss vs tokens per parameter; the dashed line is Chinchilla's compute-optimal 20:1."),
        svg_figure(figures.loss_vs_compute_figure(study.points), "loss_vs_compute",
                   "Val loss vs training compute; the dashed line is the lowest loss reached at each budget."),
        svg_figure(figures.gap_figure(study.points), "train_val_gap",
                   "Val minus train loss: storing the training set would open this gap; learning structure keeps it small."),
    ]
    section.provenance = [provenance(STUDY_COMMAND, study.runs, f"study {study.study_id}")]
    section.numbers = {"study": study.study_id, "sizes": {str(n): clean(r) for n, r in rows.items()}}
    return section


# --- section 1: the answer at a glance --------------------------------------------------------------

def glance_section(study: StudyData | None, alpha: float | None = None, alpha_source: str = "",
                   compression: dict | None = None) -> Section:
    """Per N, loss at 20 tokens/param vs the largest D and the next doubling's gain, and the two
    questions answered from the numbers. `alpha` (bits/param) is the capacity probe's measured
    value when there is one; `compression` the compression section's numbers."""
    section = Section(key="glance", title="The answer at a glance")
    if study is None or study.points.empty:
        section.missing = ("Not measured yet: run `scalinglab study` for the data-scaling curves; "
                           "the probes (`scalinglab probe ...`) and `scalinglab compress-vs-data` add the rest.")
        return section
    rows = size_numbers(study)
    section.tables = [Table(
        columns=["N (non-emb.)", "loss at ~20 tok/param", "loss at largest D", "largest tok/param", "fell by (nats)",
                 "next doubling gain (nats)"],
        rows=[[f"{n:,}", f"{r['loss_at_20']:.4f}", f"{r['loss_at_max']:.4f}", num(r["max_tpp"]), num(r["drop"]),
               (f"{num(r['next_gain'])} {interval(r['next_gain_lo'], r['next_gain_hi'])}" if "next_gain" in r else "no fit")]
              for n, r in rows.items()],
        caption="Val loss (nats/token) of each size at the point nearest 20 tokens/param and at the largest D; "
                "the gain predicted for one more doubling of D by the per-N fit.")]
    section.readings = [question_one(rows), question_two(study, rows, alpha, alpha_source, compression)]
    section.provenance = [provenance(STUDY_COMMAND, study.runs, f"study {study.study_id}")]
    section.numbers = {"study": study.study_id, "sizes": {str(n): clean(r) for n, r in rows.items()},
                       "alpha_bits_per_param": alpha if alpha is not None else CAPACITY_ANCHOR}
    return section


def question_one(rows: dict[int, dict]) -> str:
    """Does a fixed-size model keep improving far past 20 tokens/param, and how fast?"""
    improving = [r for r in rows.values() if r["drop"] > 0]
    top = max(r["max_tpp"] for r in rows.values())
    head = "**Does a fixed-size model keep improving past 20 tokens/param?** "
    if not improving:
        return head + (f"Not in this study: no size's val loss fell between 20 and {num(top)} tokens/param.")
    sizes = ", ".join(size_label(r["N"]) for r in improving)
    answer = "Yes" if len(improving) == len(rows) else "For some sizes"
    text = (f"{answer}: from ~20 to up to {num(top)} tokens/param the val loss fell by "
            f"{num(min(r['drop'] for r in improving))} to {num(max(r['drop'] for r in improving))} nats ({sizes}).")
    gains = [r for r in rows.values() if "next_gain" in r]
    if gains:
        text += (" The fits predict " + "; ".join(
            f"{num(r['next_gain'])} nats {interval(r['next_gain_lo'], r['next_gain_hi'])} for {size_label(r['N'])}"
            for r in gains) + " from one more doubling of D: the gains shrink but have not stopped.")
    else:
        text += " Too few points past 20 tokens/param to fit how fast it slows."
    split = [r for r in rows.values() if "control_gain" in r and r["control_gain"] > 0]
    if split:
        shares = [100 * r["gain_from_new_data"] / r["control_gain"] for r in split]
        text += (f" A repeated-data control (the same steps on a fixed unique subset) credits {num(min(shares))}% to "
                 f"{num(max(shares))}% of the gain to new data and the rest to more optimizer steps.")
    return head + text


def question_two(study: StudyData, rows: dict[int, dict], alpha: float | None, alpha_source: str,
                 compression: dict | None) -> str:
    """Is that structure (compression) rather than storage? Compare the information in the
    training text with what the parameters could store, and the train−val gap."""
    head = "**Is it structure rather than storage?** "
    a = alpha if alpha is not None else CAPACITY_ANCHOR
    source = alpha_source or "Morris et al. 2025's anchor; no capacity probe in this store"
    largest = max(rows.values(), key=lambda r: r["max_D"])
    group = study.by_n()[largest["N"]]
    last = group.iloc[-1]
    n_total = _total_params(study, largest["N"])
    unique = min(float(last["D"]), float(last["D"]) / max(float(last["epoch"]), 1.0))
    data_bits = unique * float(last["val_loss"]) / NATS_PER_BIT  # the text at the model's own code length
    storable = a * n_total
    text = (f"At its largest D, {size_label(largest['N'])} saw about {human(data_bits)} bits of text even at its own "
            f"code length, {num(data_bits / storable)}x what its {n_total:,} parameters could store at {num(a)} bits/param "
            f"({source}), and its train−val gap is {num(largest['gap_at_max'])} nats")
    if data_bits > storable and largest["drop"] > 0 and abs(largest["gap_at_max"]) < 0.1 * float(last["val_loss"]):
        text += ": the loss kept falling on text it could not have stored, so the gain is structure, not storage."
    else:
        text += (": this study alone cannot tell storage from structure (the text fits in the parameters, or the gap "
                 "is wide); `scalinglab probe memorisation` measures the two apart.")
    if compression and compression.get("model_bpb") is not None:
        better = compression["model_bpb"] < compression["baseline_bpb"]
        text += (f" As a compressor of held-out text the best model needs {num(compression['model_bpb'])} bits/byte, "
                 f"{'fewer' if better else 'more'} than {compression['baseline']}'s {num(compression['baseline_bpb'])}.")
    else:
        text += " Compression against classical coders: not measured yet (run `scalinglab compress-vs-data`)."
    return head + text


def _total_params(study: StudyData, n: int) -> int:
    for run in study.runs:
        if run.get("n_nonembedding") == n and run.get("n_total"):
            return int(run["n_total"])
    return n
