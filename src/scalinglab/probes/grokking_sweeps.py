"""Grokking over several runs: the training fraction swept to find the critical data size, and
the same run with and without Grokfast. Each run is `probes.grokking.train_grokking`, several at
a time on worker processes; a rerun loads finished runs and resumes the others."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd

from scalinglab.backends import BackendSpec
from scalinglab.config import config_hash
from scalinglab.errors import UserError
from scalinglab.probes.common import put_probe_result, run_parallel
from scalinglab.probes.grokking import PROBE, GrokConfig, GrokRun, train_grokking
from scalinglab.store import open_store


def run_dir(out_root: Path | str, cfg: GrokConfig) -> Path:
    return Path(out_root) / cfg.run_id


def run_many(configs: Sequence[GrokConfig], out_root: Path | str, *, db: Path | str | None = None,
             workers: int = 1, console=None, backend: BackendSpec | None = None) -> list[GrokRun]:
    """Train (or resume, or load) several runs, `workers` at a time (on `backend`), with a progress
    bar over runs."""
    jobs = [(cfg, str(run_dir(out_root, cfg)), None if db is None else str(db)) for cfg in configs]
    return run_parallel(_run_job, jobs, workers=workers, label="grokking", console=console,
                        describe=lambda job: job[0].resolved().describe(), backend=backend, work_dir=out_root)


def _run_job(job: tuple[GrokConfig, str, str | None]) -> GrokRun:
    cfg, out, db = job
    return train_grokking(cfg, out, db=db)


@dataclass
class FractionSweep:
    """Epochs to memorise and to generalise against the training fraction, within a budget.

    table: one row per fraction (train_frac, n_train, memorised_epoch, generalised_epoch,
      seconds_to_generalise, final_test_acc, epochs, status).
    critical_frac: the smallest fraction from which every larger one generalised within the
      budget (None: none did). largest_failed_frac: the largest fraction that did not.
    """

    table: pd.DataFrame
    max_epochs: int
    critical_frac: float | None
    largest_failed_frac: float | None
    figures: list[Path] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"table": self.table.to_dict("records"), "max_epochs": self.max_epochs,
                "critical_frac": self.critical_frac, "largest_failed_frac": self.largest_failed_frac}


def sweep_fractions(base: GrokConfig, fractions: Sequence[float], out_root: Path | str, *,
                    db: Path | str | None = None, workers: int = 1, figures: Path | str | None = None,
                    console=None, backend: BackendSpec | None = None) -> tuple[FractionSweep, list[GrokRun]]:
    """One run per training fraction (otherwise `base`); finds the critical data size. With
    `figures`, draws the sweep there (recorded in the store)."""
    if not fractions:
        raise UserError("--fractions needs at least one fraction, e.g. 0.2,0.3,0.4,0.5")
    configs = [dataclasses.replace(base, train_frac=float(f)).resolved() for f in sorted(set(fractions))]
    runs = run_many(configs, out_root, db=db, workers=workers, console=console, backend=backend)
    table = pd.DataFrame([{
        "train_frac": r.config.train_frac, "n_train": r.n_train, "memorised_epoch": r.memorised_epoch,
        "generalised_epoch": r.generalised_epoch, "seconds_to_generalise": r.seconds_to_generalise,
        "final_test_acc": float(r.history.test_acc.iloc[-1]), "epochs": r.epochs, "status": r.status,
    } for r in runs])
    critical, largest_failed = critical_fraction(table)
    sweep = FractionSweep(table=table, max_epochs=configs[0].max_epochs, critical_frac=critical,
                          largest_failed_frac=largest_failed)
    if db is not None:
        key = "sweep-" + config_hash({**configs[0].identity(), "train_frac": sorted(table.train_frac.tolist()),
                                      "max_epochs": configs[0].max_epochs})
        put_probe_result(open_store(db), PROBE, key, {"base": dataclasses.asdict(configs[0]), **sweep.to_dict()})
    if figures is not None:
        from scalinglab.report.figures import record
        from scalinglab.report.phase import grokking_fraction_sweep

        path = grokking_fraction_sweep(sweep, runs, Path(figures) / f"sweep-{runs[0].run_id}.png")
        sweep.figures = record([path], db)
    return sweep, runs


def sweep_lines(sweep: FractionSweep) -> list[str]:
    """The critical training fraction in a sentence."""
    if sweep.critical_frac is None:
        return [f"no fraction generalised within {sweep.max_epochs:,} epochs"]
    n_crit = int(sweep.table.loc[sweep.table.train_frac == sweep.critical_frac, "n_train"].iloc[0])
    below = f"; {sweep.largest_failed_frac:g} did not" if sweep.largest_failed_frac is not None else ""
    return [f"critical training fraction ≈ {sweep.critical_frac:g} ({n_crit:,} pairs) within "
            f"{sweep.max_epochs:,} epochs{below}"]


def critical_fraction(table: pd.DataFrame) -> tuple[float | None, float | None]:
    """(the smallest fraction above every failed one that generalised, the largest failed one)
    from a table with columns train_frac and status."""
    ok = table.status == "generalised"
    failed = table.train_frac[~ok]
    largest_failed = float(failed.max()) if len(failed) else None
    above = table.train_frac[ok & (table.train_frac > (largest_failed if largest_failed is not None else -1.0))]
    return (float(above.min()) if len(above) else None), largest_failed


def compare_grokfast(base: GrokConfig, out_root: Path | str, *, db: Path | str | None = None, workers: int = 1,
                     figures: Path | str | None = None, console=None,
                     backend: BackendSpec | None = None) -> tuple[dict, list[GrokRun]]:
    """The same run with and without Grokfast: epochs and seconds to generalise, and their ratio
    (with `figures`, the two runs' curves drawn there and recorded)."""
    plain = dataclasses.replace(base, grokfast=False).resolved()
    fast = dataclasses.replace(base, grokfast=True).resolved()
    runs = run_many([plain, fast], out_root, db=db, workers=workers, console=console, backend=backend)
    p, g = runs[0], runs[1]
    speedup = (p.generalised_epoch / g.generalised_epoch
               if p.generalised_epoch and g.generalised_epoch else None)
    out = {"plain": p.summary(), "grokfast": g.summary(), "epoch_speedup": speedup,
           "max_epochs": plain.max_epochs}
    if db is not None:
        put_probe_result(open_store(db), PROBE, "grokfast-" + config_hash(plain.identity()), out)
    if figures is not None:
        from scalinglab.report.figures import record
        from scalinglab.report.phase import grokking_grokfast

        out["figures"] = record([grokking_grokfast(p, g, Path(figures) / f"grokfast-{p.run_id}.png")], db)
    return out, runs


def grokfast_lines(result: dict, runs: Sequence[GrokRun]) -> list[str]:
    """The Grokfast comparison in sentences."""
    ratio = result["epoch_speedup"]
    lines = ["Grokfast speed-up in epochs to generalise: "
             + (f"{ratio:.2f}x" if ratio else "undefined (one of the runs did not generalise)")]
    secs = [r.seconds_to_generalise for r in runs]
    if all(secs):
        lines.append(f"training seconds to generalise: {secs[0]:.1f} without, {secs[1]:.1f} with Grokfast (each "
                     "measured when its run trained; compare only runs trained under the same load)")
    return lines
