"""What a study measured: its points, the per-N data-scaling fits, and the summary table.

A study's point at (N, D) is the final evaluation of the cooldown branch that ends at D; the
trunk's own evaluations (constant LR, no cooldown) are kept apart for comparison. For each N
the fit L(D) = E_N + B_N / D^β_N (Approach 3 with Huber on log residuals, bootstrap intervals)
answers "does the loss keep improving at fixed N, and how fast?".
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


def study_points(db: str | Path, study_id: str) -> pd.DataFrame:
    """One row per finished cooldown branch: the study's (N, D) points."""
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
              from_tpp: float = FIT_FROM_TPP) -> list[DataFit]:
    """Fit L(D) = E_N + B_N/D^β_N separately for every N, over its points at and past `from_tpp`
    tokens/param, where it has at least 4 of them.

    Intervals (bootstrap over points) need at least 6 points; they are conditional on the one
    trunk all of an N's points share, so they understate seed-to-seed variation.
    """
    from scalinglab import laws

    fits = []
    for n, group in points.groupby("N"):
        group = group[group["tokens_per_param"] >= from_tpp * 0.98]  # milestones are rounded to whole steps
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


def summary_rows(points: pd.DataFrame, fits: list[DataFit]) -> pd.DataFrame:
    """Per N: the loss at 20 tokens/param and at the largest D, and the fitted exponent."""
    by_n = {f.N: f for f in fits}
    rows = []
    for n, group in points.groupby("N"):
        group = group.sort_values("D")
        at20 = group.iloc[(group["tokens_per_param"] - 20).abs().argmin()]
        last = group.iloc[-1]
        fit = by_n.get(int(n))
        rows.append({
            "N": int(n),
            "max_tokens_per_param": float(last["tokens_per_param"]),
            "loss_at_20": float(at20["val_loss"]),
            "loss_at_max": float(last["val_loss"]),
            "improvement_past_20": float(at20["val_loss"] - last["val_loss"]),
            "beta": fit.beta if fit else None,
            "E": fit.E if fit else None,
            "next_doubling_gain": fit.gain_from_doubling(float(last["D"])) if fit else None,
        })
    return pd.DataFrame(rows)
