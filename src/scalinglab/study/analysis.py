"""What a study measured: its points, the per-N data-scaling fits, and the summary table.

A study's point at (N, D) is the final evaluation of the cooldown branch that ends at D; the
trunk's own evaluations (constant LR, no cooldown) are kept apart for comparison. For each N
the fit L(D) = E_N + B_N / D^β_N (Approach 3 with Huber on log residuals, bootstrap intervals)
answers "does the loss keep improving at fixed N, and how fast?".

With a control (`--control repeat`), each point also gets the control's loss at the same N and
D (the same steps on only D0 unique tokens, repeated) and the unique-data gain, control − main:
what the new data was worth at equal steps. Between the D nearest D0 and the largest D, the main
trunk's gain splits into the control's own gain (more steps on the same data) and the rest (new
data).

Points whose val loss is still within PLATEAU_NATS of the unigram entropy of the train split
(a model that has learnt token frequencies and no context yet: the optimisation plateau tiny
models sit on early in training) are flagged and left out of the per-N fits by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from scalinglab.store import load_points

CSV_COLUMNS = [
    "size", "N", "D", "tokens_per_param", "val_loss", "val_bpb", "train_loss", "gap", "epoch", "flops",
    "branch_flops", "branch_run", "trunk_run", "branch_start_tokens",
]
# after the columns above, so a study's existing columns read as they always did
CONTROL_COLUMNS = ["control_val_loss", "unique_data_gain", "control_epoch", "control_unique_tokens", "control_run"]
PLATEAU_COLUMNS = ["plateau", "control_plateau"]  # the second with a control only

# A point within this many nats of the unigram entropy has learnt (little more than) the token
# frequencies: the plateau before a tiny model picks up any context.
PLATEAU_NATS = 0.1


def study_points(db: str | Path, study_id: str) -> pd.DataFrame:
    """One row per finished cooldown branch: the study's (N, D) points (the main trunks' only;
    a control's are `control_points`)."""
    frame = load_points(db, group=study_id, status="done")
    branches = frame[frame["kind"] == "branch"].copy()
    if branches.empty:
        return pd.DataFrame(columns=CSV_COLUMNS)
    extra = branches["run_id"].map(_run_extra(db, study_id))
    final = branches.groupby("run_id")["step"].transform("max") == branches["step"]
    branches = branches[final].copy()
    extra = extra[final]
    out = pd.DataFrame({
        "size": [e.get("size") for e in extra],
        "N": branches["n_nonembedding"].astype(int),
        "D": branches["tokens"].astype(float),
        "val_loss": branches["val_loss"],
        "val_bpb": branches["val_bpb"],
        "train_loss": branches["train_loss"],
        "epoch": branches["epoch"],
        "flops": branches["flops"],
        "branch_run": branches["run_id"],
        "trunk_run": branches["parent_run"],
        "branch_start_tokens": [e.get("branch_start_tokens") for e in extra],
    })
    out["tokens_per_param"] = out["D"] / out["N"]
    out["gap"] = out["val_loss"] - out["train_loss"]
    # the branch's own compute: only its cooldown, the trunk part is shared
    out["branch_flops"] = (out["D"] - out["branch_start_tokens"].astype(float)) * branches["flops_per_token"].to_numpy()
    return out[CSV_COLUMNS].sort_values(["N", "D"]).reset_index(drop=True)


def control_points(db: str | Path, study_id: str, runs: set[str] | None = None) -> pd.DataFrame:
    """One row per finished control branch (of `runs` only, when given: the store group may hold
    a control of another D0 too): N, D, the control's val loss, its epochs over its unique
    tokens, those tokens (D0) and the run."""
    columns = ["N", "D", "control_val_loss", "control_epoch", "control_unique_tokens", "control_run"]
    frame = load_points(db, group=study_id, status="done")
    branches = frame[frame["kind"] == "control-branch"]
    if runs is not None:
        branches = branches[branches["run_id"].isin(runs)]
    if branches.empty:
        return pd.DataFrame(columns=columns)
    branches = branches[branches.groupby("run_id")["step"].transform("max") == branches["step"]]
    return pd.DataFrame({
        "N": branches["n_nonembedding"].astype(int), "D": branches["tokens"].astype(float),
        "control_val_loss": branches["val_loss"], "control_epoch": branches["epoch"],
        "control_unique_tokens": branches["unique_train_tokens"].astype(int), "control_run": branches["run_id"],
    })[columns].sort_values(["N", "D"]).reset_index(drop=True)


def with_control(points: pd.DataFrame, control: pd.DataFrame) -> pd.DataFrame:
    """The study's points with the control's loss at the same (N, D) and the unique-data gain,
    control − main (empty where the control's branch has not finished)."""
    out = points.merge(control, on=["N", "D"], how="left")
    out["unique_data_gain"] = out["control_val_loss"] - out["val_loss"]
    return out[[*points.columns, *CONTROL_COLUMNS]]


def mark_plateau(points: pd.DataFrame, unigram_entropy: float, margin: float = PLATEAU_NATS) -> pd.DataFrame:
    """The points with a `plateau` column: val loss not yet more than `margin` nats below the
    unigram entropy (nats/token) of the train split; with a control, `control_plateau` too."""
    out = points.copy()
    out["plateau"] = (out["val_loss"] >= unigram_entropy - margin).astype(bool)
    if "control_val_loss" in out.columns:
        out["control_plateau"] = (out["control_val_loss"] >= unigram_entropy - margin).astype(bool)
    return out


def trunk_points(db: str | Path, study_id: str) -> pd.DataFrame:
    """The trunks' evaluations (constant LR, before any cooldown)."""
    frame = load_points(db, group=study_id, status=None)
    trunks = frame[frame["kind"] == "trunk"]
    return pd.DataFrame({
        "N": trunks["n_nonembedding"].astype(int), "D": trunks["tokens"].astype(float),
        "val_loss": trunks["val_loss"], "trunk_run": trunks["run_id"],
    }).sort_values(["N", "D"]).reset_index(drop=True)


def _run_extra(db: str | Path, study_id: str) -> dict[str, dict]:
    from scalinglab.store import open_store

    return {r["run_id"]: r["config"].get("extra", {}) for r in open_store(db).runs(group=study_id)}


@dataclass
class DataFit:
    """L(D) = E + B / D^β at one N, with 95% bootstrap intervals."""

    N: int
    n_points: int
    D_min: float  # the smallest D fitted (points below FIT_FROM_TPP are left out)
    E: tuple[float, float, float]  # estimate, lo, hi
    B: tuple[float, float, float]
    beta: tuple[float, float, float]
    converged: bool
    result: object  # the laws.FitResult

    def predict(self, D) -> np.ndarray:
        return np.asarray(self.result.predict(D=np.asarray(D, dtype=float)))

    def gain_from_doubling(self, D: float) -> float:
        """Predicted drop in loss (nats) from doubling the data once more at D."""
        return float(self.predict([D])[0] - self.predict([2 * D])[0])


MIN_POINTS_FIT = 4  # three parameters need a point to spare
MIN_POINTS_INTERVAL = 6  # fewer points make most bootstrap resamples (nearly) exactly determined
# The fit covers the points at and past Chinchilla's 20 tokens/param: the regime the study asks
# about. The shorter branches of a study are a few dozen steps, near or inside the warmup (the
# 5 tokens/param branch of a 12k model starts its cooldown before warmup ends); their loss falls
# more slowly than the law, and fitted with the rest they bend the curve: on the default study
# they pushed the floor E of the two smaller sizes to 0 and doubled the predicted gain of the next
# doubling (docs/LOG.md).
FIT_FROM_TPP = 20.0


def fit_per_n(points: pd.DataFrame, bootstrap: int = 400, seed: int = 0,
              from_tpp: float = FIT_FROM_TPP, exclude_plateau: bool = True) -> list[DataFit]:
    """Fit L(D) = E_N + B_N/D^β_N separately for every N, over its points at and past `from_tpp`
    tokens/param, where it has at least 4 of them. Points flagged in a `plateau` column
    (`mark_plateau`) are left out unless `exclude_plateau` is False.

    Intervals (bootstrap over points) need at least 6 points; they are conditional on the one
    trunk all of an N's points share, so they understate seed-to-seed variation.
    """
    from scalinglab import laws

    fits = []
    for n, group in points.groupby("N"):
        group = group[group["tokens_per_param"] >= from_tpp * 0.98]  # milestones are rounded to whole steps
        if exclude_plateau and "plateau" in group.columns:
            group = group[~group["plateau"].astype(bool)]
        if len(group) < MIN_POINTS_FIT:
            continue
        frame = pd.DataFrame({"D": group["D"].to_numpy(), "loss": group["val_loss"].to_numpy()})
        resamples = bootstrap if len(group) >= MIN_POINTS_INTERVAL else 0
        result = laws.fit(frame, "data", bootstrap=resamples, bootstrap_by="points", seed=seed)
        table = result.intervals().set_index("param")
        row = lambda k: (float(table.loc[k, "estimate"]), float(table.loc[k, "lo"]), float(table.loc[k, "hi"]))  # noqa: E731
        fits.append(DataFit(N=int(n), n_points=len(group), D_min=float(group["D"].min()), E=row("E"), B=row("B"), beta=row("beta"),
                            converged=bool(result.converged), result=result))
    return fits


def summary_rows(points: pd.DataFrame, fits: list[DataFit], control_tpp: float | None = None) -> pd.DataFrame:
    """Per N: the loss at 20 tokens/param and at the largest D, and the fitted exponent. With a
    control (points carrying `control_val_loss`; D0 = `control_tpp` tokens/param), also the split
    of the main gain from the point nearest D0 to the largest D into more steps (the control's
    own gain: the same unique tokens, repeated) and new data (the rest)."""
    by_n = {f.N: f for f in fits}
    rows = []
    for n, group in points.groupby("N"):
        group = group.sort_values("D")
        at20 = group.iloc[(group["tokens_per_param"] - 20).abs().argmin()]
        last = group.iloc[-1]
        fit = by_n.get(int(n))
        row = {
            "N": int(n),
            "max_tokens_per_param": float(last["tokens_per_param"]),
            "loss_at_20": float(at20["val_loss"]),
            "loss_at_max": float(last["val_loss"]),
            "improvement_past_20": float(at20["val_loss"] - last["val_loss"]),
            "beta": fit.beta if fit else None,
            "E": fit.E if fit else None,
            "next_doubling_gain": fit.gain_from_doubling(float(last["D"])) if fit else None,
        }
        if "plateau" in group.columns:
            row["plateau_tokens_per_param"] = [float(t) for t in group.loc[group["plateau"].astype(bool), "tokens_per_param"]]
        if control_tpp is not None and "control_val_loss" in group.columns:
            row |= control_split(group, control_tpp)
        rows.append(row)
    return pd.DataFrame(rows)


def control_split(group: pd.DataFrame, control_tpp: float) -> dict:
    """One N's gain from the point nearest D0 to its largest D, split by the control.

    gain = main(D0) − main(max); from_steps = control(D0) − control(max): what the same steps
    gave on only D0 unique tokens; from_new_data = gain − from_steps = unique-data gain at max −
    unique-data gain at D0 (the second term removes any difference the control's subset makes
    before it repeats). The first point is the first at or past D0 that neither trunk has on
    the unigram plateau (whose escape time differs from one data order to another by more
    than the data's worth): the split holds from any first point, only its range changes."""
    done = group.dropna(subset=["control_val_loss"]).sort_values("D")
    nan = float("nan")
    if len(done) < 2:
        return {"control_anchor_tpp": nan, "control_max_tpp": nan, "control_gain": nan, "gain_from_steps": nan,
                "gain_from_new_data": nan, "control_epochs_at_max": nan}
    candidates = done[done["tokens_per_param"] >= control_tpp * 0.98]  # milestones are rounded to whole steps
    if "plateau" in candidates.columns:
        off = candidates[~candidates["plateau"].astype(bool) & ~candidates["control_plateau"].astype(bool)]
        candidates = off if len(off) else candidates
    anchor = candidates.iloc[0] if len(candidates) else done.iloc[-1]
    last = done.iloc[-1]
    gain = float(anchor["val_loss"] - last["val_loss"])
    steps = float(anchor["control_val_loss"] - last["control_val_loss"])
    return {"control_anchor_tpp": float(anchor["tokens_per_param"]), "control_max_tpp": float(last["tokens_per_param"]),
            "control_gain": gain, "gain_from_steps": steps, "gain_from_new_data": gain - steps,
            "control_epochs_at_max": float(last["control_epoch"])}
