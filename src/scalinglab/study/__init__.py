"""The fixed-capacity data-scaling study: N x D grids of WSD trunks with cooldown branches.

    from scalinglab.study import study_preset, prepare_study, execute, analyse
    study = prepare_study(study_preset("default"), db="scalinglab.db", out=Path("study"))
    print(study.grid)                    # the plan, sized to the budget
    execute(study)                       # resumable; finished points are never redone
    result = analyse(study)              # points, per-N fits L(D) = E + B/D^β, figures, study.csv

A study lives in `out/<study id>/`: `study.json` (its config and the planned grid), `runs/`
(one directory per trunk and branch), `study.csv` and `figures/`. Its runs and points are in the
results store under the group `<study id>`.

With `StudyConfig(control="repeat")` each N also trains a control trunk on its first
D0 = control_unique x N unique tokens, repeated, with branches at the same milestones; study.csv
then has the control's loss and the unique-data gain (control − main) at every D. The control
is not part of the study's identity: adding it to a finished study trains only the control.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from scalinglab.backends import BackendSpec
from scalinglab.config import config_hash
from scalinglab.corpus.prepare import PreparedCorpus, prepare_corpus
from scalinglab.errors import UserError
from scalinglab.resources import check_disk, checkpoint_bytes
from scalinglab.store import open_store
from scalinglab.study.analysis import (
    FIT_FROM_TPP,
    PLATEAU_NATS,
    DataFit,
    control_points,
    fit_per_n,
    mark_plateau,
    study_points,
    summary_rows,
    trunk_points,
    with_control,
)
from scalinglab.study.grid import (
    Grid,
    StudyConfig,
    check_study_memory,
    control_tokens,
    parse_budget,
    plan_grid,
    size_plan,
    study_preset,
)
from scalinglab.study.runner import StudyRuns, Task, build_tasks, run_tasks, steps_done

__all__ = [
    "Grid", "PreparedStudy", "StudyConfig", "StudyResult", "analyse", "execute", "parse_budget", "prepare_study", "run",
    "study_preset",
]


@dataclass
class PreparedStudy:
    config: StudyConfig
    study_id: str
    study_dir: Path
    db: Path
    corpus: PreparedCorpus
    grid: Grid
    runs: StudyRuns
    replanned: bool  # False when an earlier invocation's grid was reused
    disk_bytes: float = 0.0  # what the unfinished runs will still write


@dataclass
class StudyResult:
    points: pd.DataFrame
    trunk: pd.DataFrame
    fits: list[DataFit]
    summary: pd.DataFrame
    csv: Path
    figures: list[Path]
    tasks: list[Task]
    fit_from_tpp: float = FIT_FROM_TPP  # the fits cover points at and past this many tokens/param
    unigram_entropy: float | None = None  # nats/token of the train split's token counts
    plateau_nats: float = PLATEAU_NATS  # points within this of the unigram entropy are on the plateau
    fit_plateau: bool = False  # True: plateau points were kept in the fits
    control: str | None = None
    control_unique: float | None = None  # D0 in tokens/param

    @property
    def failed(self) -> list[Task]:
        return [t for t in self.tasks if t.status in ("diverged", "failed", "skipped")]


def study_identity(cfg: StudyConfig, corpus: PreparedCorpus) -> str:
    """Settings that change what a point means; the budget, the worker count and the control do
    not. The control adds runs beside the study's own: turning it on for a finished study trains
    only the control (its main runs are the same runs, in the same folder and store group, which
    a study of another id would take over in the store)."""
    ident = {
        "corpus": corpus.key, "sizes": cfg.sizes, "min_tpp": cfg.min_tpp,
        "per_doubling": cfg.milestones_per_doubling, "cooldown_frac": cfg.cooldown_frac,
        "cooldown_shape": cfg.cooldown_shape, "seq_len": cfg.seq_len, "eval_tokens": cfg.eval_tokens,
        "seed": cfg.seed, "dtype": cfg.dtype, "device": cfg.device.split(":")[0],
    }
    return f"{cfg.name}-{config_hash(ident)[:8]}"


def prepare_study(cfg: StudyConfig, db: str | Path, out: str | Path, *, cache_dir: Path | None = None) -> PreparedStudy:
    """Prepare the corpus and plan the grid (reusing an earlier invocation's plan when the
    settings are unchanged, so a rerun resumes exactly the same study)."""
    parse_budget(cfg.budget)  # fail early on a bad budget
    cfg.check_control()
    store = open_store(db)  # fail early on a foreign database
    del store
    corpus = prepare_corpus(cfg.corpus, cache_dir)
    study_id = study_identity(cfg, corpus)
    study_dir = Path(out) / study_id
    saved_path = study_dir / "study.json"
    saved = json.loads(saved_path.read_text()) if saved_path.exists() else None
    if saved and saved["config"] == json.loads(json.dumps(cfg.to_dict())):
        sizes = [size_plan(cfg, label, corpus.vocab_size, k) for label, k in saved["doublings"].items()]
        for size in sizes:
            size.tokens_per_s = saved["tokens_per_s"].get(size.label)
        grid = Grid(config=cfg, sizes=sorted(sizes, key=lambda s: s.n), budget=parse_budget(cfg.budget),
                    unique_train_tokens=corpus.unique_train_tokens, corpus_key=corpus.key)
        replanned = False
    else:
        grid = plan_grid(cfg, corpus)
        replanned = True
    if cfg.no_repeat and grid.max_epochs > 1:
        raise UserError(
            f"the largest D needs {grid.max_epochs:.2f} epochs over the {corpus.unique_train_tokens:,} unique train "
            "tokens; drop --no-repeat to repeat data (recorded per point) or give a larger corpus"
        )
    check_study_memory(cfg, grid.sizes)
    if cfg.control:
        check_control_data(cfg, grid, corpus)
    runs = build_tasks(grid, study_id, study_dir)
    disk = disk_to_write(runs)
    check_disk(disk, study_dir, f"study {study_id}")
    return PreparedStudy(config=cfg, study_id=study_id, study_dir=study_dir, db=Path(db), corpus=corpus, grid=grid,
                         runs=runs, replanned=replanned, disk_bytes=disk)


def check_control_data(cfg: StudyConfig, grid: Grid, corpus: PreparedCorpus) -> None:
    """Refuse a control whose unique tokens the train split cannot hold, or too few for a sequence."""
    for size in grid.sizes:
        unique = control_tokens(cfg, size)
        if unique > corpus.unique_train_tokens:
            most = corpus.unique_train_tokens / size.n
            raise UserError(
                f"the control of N = {size.n:,} needs D0 = {unique:,} unique tokens ({cfg.control_unique:g}/param), "
                f"more than the {corpus.unique_train_tokens:,} train tokens of the corpus; lower --control-unique "
                f"(at most {most:.3g} here) or give a larger corpus")
        if unique < 2 * cfg.seq_len + 2:
            raise UserError(
                f"the control of N = {size.n:,} has D0 = {unique:,} unique tokens ({cfg.control_unique:g}/param), "
                f"too few for sequences of {cfg.seq_len}; raise --control-unique")


def disk_to_write(runs: StudyRuns) -> float:
    """Bytes the unfinished runs will still write: a checkpoint each, and a trunk's snapshots
    (all of them at once at worst, before their branches finish)."""
    total = 0.0
    for task in runs.tasks:
        if (task.out_dir / "DONE").exists():
            continue
        trained = steps_done(task)  # snapshots behind the trunk are written already (or were used and deleted)
        copies = 1 + sum(s > trained for s in task.plan.snapshot_steps)
        total += copies * checkpoint_bytes(task.plan.model)
    return total


def _save_plan(study: PreparedStudy) -> None:
    study.study_dir.mkdir(parents=True, exist_ok=True)
    doublings = {size.label: size.doublings for size in study.grid.sizes}
    payload = {
        "study_id": study.study_id, "config": study.config.to_dict(), "doublings": doublings,
        "tokens_per_s": {s.label: s.tokens_per_s for s in study.grid.sizes}, "saved": time.time(),
    }
    tmp = study.study_dir / "study.json.tmp"
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(study.study_dir / "study.json")


def run(cfg: StudyConfig, db: str | Path = "scalinglab.db", out: str | Path = "study", *,
        cache_dir: Path | None = None, on_tick=None, fit_from_tpp: float = FIT_FROM_TPP,
        keep_snapshots: bool = False, backend: BackendSpec | None = None, fit_plateau: bool = False) -> StudyResult:
    """A whole study from Python, as `scalinglab study` runs it: plan the grid (reusing the last
    plan of the same study), train every run not finished yet, then fit and write the results.

        from scalinglab.study import run, study_preset
        result = run(study_preset("smoke"), db="scalinglab.db", out="study")
        result.summary                      # per N: loss at 20 tokens/param and at the largest D, fits
    """
    study = prepare_study(cfg, db, out, cache_dir=cache_dir)
    execute(study, on_tick=on_tick, keep_snapshots=keep_snapshots, backend=backend)
    return analyse(study, fit_from_tpp=fit_from_tpp, fit_plateau=fit_plateau)


def execute(study: PreparedStudy, on_tick=None, keep_snapshots: bool = False,
            backend: BackendSpec | None = None) -> list[Task]:
    """Train every trunk and branch that is not finished yet, on `backend` (default: worker
    processes on this machine), deleting each trunk snapshot once its branches are done unless
    `keep_snapshots`."""
    _save_plan(study)
    return run_tasks(study.runs, study.corpus, study.db, study.config.workers, on_tick=on_tick,
                     keep_snapshots=keep_snapshots, backend=backend)


def analyse(study: PreparedStudy, bootstrap: int = 400, fit_from_tpp: float = FIT_FROM_TPP,
            fit_plateau: bool = False) -> StudyResult:
    """Collect the study's points from the store, fit L(D) per N over its points at and past
    `fit_from_tpp` tokens/param (leaving out points on the unigram plateau unless `fit_plateau`),
    write study.csv and figures. With a control, each point also has the control's loss and the
    unique-data gain at its D."""
    from scalinglab.report.study import draw_all

    cfg = study.config
    entropy = study.corpus.unigram_entropy
    points = study_points(study.db, study.study_id)
    if cfg.control:
        planned = {t.key for t in study.runs.tasks if t.control and t.kind == "branch"}
        points = with_control(points, control_points(study.db, study.study_id, planned))
    points = mark_plateau(points, entropy)
    trunk = trunk_points(study.db, study.study_id)
    fits = fit_per_n(points, bootstrap=bootstrap, from_tpp=fit_from_tpp, exclude_plateau=not fit_plateau) if len(points) else []
    control_tpp = cfg.control_unique if cfg.control else None
    summary = summary_rows(points, fits, control_tpp=control_tpp) if len(points) else pd.DataFrame()
    study.study_dir.mkdir(parents=True, exist_ok=True)
    csv = study.study_dir / "study.csv"
    points.to_csv(csv, index=False)
    figures = draw_all(points, trunk, fits, study.study_dir / "figures") if len(points) else []
    store = open_store(study.db)
    # what a reader of the store needs to rebuild these numbers (the report does)
    store.put_result("study", study.study_id, {
        "study": study.study_id, "unigram_entropy": entropy, "fit_from_tokens_per_param": fit_from_tpp,
        "fit_plateau": fit_plateau, "control": cfg.control, "control_unique": cfg.control_unique if cfg.control else None,
        "control_runs": sorted(planned) if cfg.control else [],
    })
    for fit in fits:
        store.put_result("study-fit", f"{study.study_id}/N{fit.N}", {
            "study": study.study_id, "N": fit.N, "n_points": fit.n_points, "form": "L(D) = E + B/D^beta",
            "fit_from_tokens_per_param": fit_from_tpp, "D_min": fit.D_min,
            "E": fit.E, "B": fit.B, "beta": fit.beta, "converged": fit.converged,
            "plateau_points_left_out": 0 if fit_plateau else int(_past(points, fit.N, fit_from_tpp)["plateau"].sum()),
        })
    return StudyResult(points=points, trunk=trunk, fits=fits, summary=summary, csv=csv, figures=figures,
                       tasks=study.runs.tasks, fit_from_tpp=fit_from_tpp, unigram_entropy=entropy,
                       fit_plateau=fit_plateau, control=cfg.control, control_unique=control_tpp)


def _past(points: pd.DataFrame, n: int, from_tpp: float) -> pd.DataFrame:
    return points[(points["N"] == n) & (points["tokens_per_param"] >= from_tpp * 0.98)]
