"""The local runner: trunks and cooldown branches on a pool of worker processes.

Workers (a backend from `scalinglab.backends`: this machine's processes or a Ray cluster) hold one task at a time, so a worker that dies (even
by kill -9) is replaced and its task goes back to the queue, to resume from its last
checkpoint. Results flow to the store from the workers themselves; the parent only schedules.

Scheduling: trunks first, longest first (a trunk is the one sequential chain of its N), then
branches as soon as the trunk has written the snapshot they start from, longest first.
Finished runs are skipped (their directories hold DONE), so rerunning a study after an
interruption resumes it without redoing any point.

A study with a control has, per N, a control trunk (run kind "control-trunk") and its branches
("control-branch"): the same plans restricted to the first D0 unique train tokens
(`RunPlan.max_unique_tokens`). Their own kinds keep them out of the study's points, the store's
default fits and everything that reads a study's trunks and branches.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from scalinglab.backends import BackendSpec, job_resources, open_backend
from scalinglab.config import ModelSpec, OptimConfig, RunConfig, TrainConfig
from scalinglab.corpus.prepare import PreparedCorpus
from scalinglab.study.grid import Grid, SizePlan, control_tokens
from scalinglab.train.checkpoint import remove_checkpoint
from scalinglab.train.loop import RunPlan
from scalinglab.train.rundir import read_marker
from scalinglab.train.schedules import Schedule

MAX_ATTEMPTS = 3  # a task whose worker dies this often is given up (and reported)


@dataclass
class Task:
    key: str
    kind: str  # trunk | branch (a control's too; `control` tells them apart)
    plan: RunPlan
    out_dir: Path
    size: str
    needs: Path | None = None  # the snapshot a branch starts from
    needs_step: int = 0
    attempts: int = 0
    status: str = "pending"  # pending | running | done | diverged | skipped | failed
    message: str = ""
    control: bool = False

    @property
    def steps(self) -> int:
        return self.plan.total_steps - self.needs_step


@dataclass
class StudyRuns:
    tasks: list[Task]
    trunks: dict[str, Task] = field(default_factory=dict)
    controls: dict[str, Task] = field(default_factory=dict)  # the control trunk of each size

    def trunk_of(self, task: Task) -> Task:
        return (self.controls if task.control else self.trunks)[task.size]


def run_config(grid: Grid, size: SizePlan, tokens: float, schedule: str) -> RunConfig:
    cfg = grid.config
    return RunConfig(
        corpus=cfg.corpus,
        model=ModelSpec(size=None, n_layer=size.model.n_layer, d_model=size.model.d_model, n_head=size.model.n_head,
                        mlp_ratio=size.model.mlp_ratio, tie_embeddings=size.model.tie_embeddings),
        optim=OptimConfig(lr=size.lr, warmup=size.warmup, schedule=schedule, cooldown_frac=cfg.cooldown_frac,
                          cooldown_shape=cfg.cooldown_shape),
        train=TrainConfig(tokens=tokens, tpp=None, batch_size=size.batch_size, seq_len=size.seq_len,
                          eval_tokens=cfg.eval_tokens, seed=cfg.seed, device=cfg.device, dtype=cfg.dtype, threads=1,
                          compile=cfg.compile),
        name=None,
    )


def build_tasks(grid: Grid, study_id: str, study_dir: Path) -> StudyRuns:
    """One trunk task per N and one branch task per milestone, with their run plans; with a
    control, the same again per N on the control's unique tokens."""
    runs = StudyRuns(tasks=[])
    for size in grid.sizes:
        trunk = _add_size(runs, grid, size, study_id, study_dir, unique=None)
        runs.trunks[size.label] = trunk
        if grid.config.control:
            runs.controls[size.label] = _add_size(runs, grid, size, study_id, study_dir,
                                                  unique=control_tokens(grid.config, size))
    return runs


def _add_size(runs: StudyRuns, grid: Grid, size: SizePlan, study_id: str, study_dir: Path,
              unique: int | None) -> Task:
    """A trunk and its branches for one N (a control's when `unique` caps the train tokens);
    returns the trunk."""
    control = unique is not None
    prefix = "control-" if control else ""
    extra = {"study": study_id, "size": size.label}
    if control:
        extra |= {"control": grid.config.control, "control_unique_tokens": unique,
                  "control_unique_tpp": grid.config.control_unique}
    starts = sorted({m.start_step for m in size.milestones})
    trunk_plan = RunPlan(
        config=run_config(grid, size, size.trunk_steps * size.batch_tokens, "constant"),
        model=size.model, batch_size=size.batch_size, seq_len=size.seq_len, lr=size.lr,
        schedule=Schedule("constant", total_steps=size.trunk_steps, warmup_steps=size.warmup),
        eval_steps=starts, kind=f"{prefix}trunk", name=f"{study_id}/N{size.n}/{prefix}trunk", group=study_id,
        snapshot_steps=starts, max_unique_tokens=unique, extra=dict(extra), corpus_key=grid.corpus_key,
    )
    trunk_dir = study_dir / "runs" / trunk_plan.run_id
    trunk = Task(key=trunk_plan.run_id, kind="trunk", plan=trunk_plan, out_dir=trunk_dir, size=size.label,
                 control=control)
    runs.tasks.append(trunk)
    for m in size.milestones:
        branch_plan = RunPlan(
            config=run_config(grid, size, m.end_step * size.batch_tokens, "wsd"),
            model=size.model, batch_size=size.batch_size, seq_len=size.seq_len, lr=size.lr,
            schedule=Schedule("wsd", total_steps=m.end_step, warmup_steps=size.warmup, decay_start=m.start_step,
                              shape=grid.config.cooldown_shape),
            eval_steps=[m.end_step], kind=f"{prefix}branch", name=f"{study_id}/N{size.n}/{prefix}D{m.tpp:.3g}tpp",
            group=study_id, parent_run=trunk_plan.run_id, init_from=str(trunk_dir / f"snap-{m.start_step}.pt"),
            max_unique_tokens=unique,
            extra={**extra, "tpp": m.tpp, "init_from_step": m.start_step,
                   "branch_start_tokens": m.start_step * size.batch_tokens,
                   "milestone_tokens": m.end_step * size.batch_tokens, "trunk": trunk_plan.run_id},
            corpus_key=grid.corpus_key,
        )
        runs.tasks.append(Task(
            key=branch_plan.run_id, kind="branch", plan=branch_plan,
            out_dir=study_dir / "runs" / branch_plan.run_id, size=size.label,
            needs=trunk_dir / f"snap-{m.start_step}.pt", needs_step=m.start_step, control=control,
        ))
    return trunk


# --- one task in a worker ---------------------------------------------------------------------

def run_study_task(payload: tuple[str, str, RunPlan, str]) -> tuple[str, str]:
    """Train one trunk or branch to its end (resuming it); returns (status, message).
    Runs in a worker process; the run's outcome is a status, not an exception."""
    from scalinglab.store import open_store
    from scalinglab.train.loop import Diverged, Interrupted, train_run
    from scalinglab.train.rundir import RunBusy

    corpus_path, db, plan, out_dir = payload
    try:
        train_run(plan, PreparedCorpus(Path(corpus_path)), open_store(db), Path(out_dir), resume=True)
        return "done", ""
    except Diverged as exc:
        return "diverged", f"step {exc.step}"
    except Interrupted as exc:
        return "interrupted", f"step {exc.step}"
    except RunBusy as exc:
        return "busy", str(exc)


def steps_done(task: Task) -> int:
    """Progress of a task from its loss log (4 bytes per step), without asking the worker."""
    if task.status == "done":
        return task.steps
    path = task.out_dir / "train_loss.f32"
    try:
        return min(task.steps, path.stat().st_size // 4)
    except FileNotFoundError:
        return 0


def run_tasks(runs: StudyRuns, corpus: PreparedCorpus, db: Path, workers: int, on_tick=None,
              keep_snapshots: bool = False, backend: BackendSpec | None = None) -> list[Task]:
    """Run every task to completion (or failure). Raises KeyboardInterrupt after the running
    tasks have checkpointed when the user presses Ctrl-C. A trunk's snapshot is deleted once every
    branch that starts from it is done (a full optimizer state each), unless `keep_snapshots`."""
    from scalinglab.store import open_store

    store = open_store(db)
    for task in runs.tasks:
        done = read_marker(task.out_dir, "DONE")
        finished = done is not None and done.get("step", -1) >= task.plan.total_steps
        # a run whose store row does not say done yet goes to a worker, which settles it in no steps
        if finished and (store.get_run(task.key) or {}).get("status") == "done":
            task.status = "done"
    pending = [t for t in runs.tasks if t.status == "pending"]
    if not keep_snapshots:
        drop_used_snapshots(runs, store)
    if not pending:
        return runs.tasks
    by_key = {t.key: t for t in runs.tasks}

    def settle(key: str, status: str, value) -> None:
        task = by_key[key]
        if status == "ok":
            _settle(task, *value)
        elif status == "lost":
            _settle(task, "lost", value)
            if task.status == "pending":  # resubmitted: it resumes from its last checkpoint
                logging.getLogger("scalinglab").warning(
                    "%s: %s; retrying (attempt %d of %d)", task.plan.name, value, task.attempts + 1, MAX_ATTEMPTS)
        else:
            name, message, trace = value
            _settle(task, "failed", f"{name}: {message}\n{trace}")

    device = runs.tasks[0].plan.config.train.device
    pool = open_backend(backend, workers=min(workers, len(pending)), work_dir=runs.tasks[0].out_dir.parent.parent,
                        device=device)
    resources = job_resources(backend, device)
    try:
        while True:
            _skip_orphans(runs)
            waiting = [t for t in runs.tasks if t.status == "pending"]
            ready = sorted((t for t in waiting if t.needs is None or t.needs.exists()),
                           key=lambda t: (t.kind != "trunk", -t.steps))
            for task in ready[:pool.free_slots()]:
                task.status, task.attempts = "running", task.attempts + 1
                pool.submit(task.key, run_study_task, (str(corpus.path), str(db), task.plan, str(task.out_dir)),
                            resources)
            if not waiting and not pool.running():
                break
            if waiting and not ready and not pool.running():
                for task in waiting:  # nothing can ever produce their snapshots
                    task.status, task.message = "skipped", "its trunk stopped before this branch point"
                break
            finished = pool.poll(timeout=1.0)
            pool.apply_journals()  # a cluster's store writes, before anything reads the store
            for key, status, value in finished:
                settle(key, status, value)
                if not keep_snapshots and by_key[key].status == "done":
                    drop_used_snapshots(runs, store)
            if on_tick:
                on_tick(runs.tasks)
    except KeyboardInterrupt:
        pool.cancel()
        pool.drain(settle)
        for task in runs.tasks:
            if task.status == "running":
                task.status, task.message = "pending", "interrupted"
        raise
    finally:
        pool.close()
    return runs.tasks


def _settle(task: Task, status: str, message: str) -> None:
    if status == "done":
        task.status, task.message = "done", ""
    elif status == "diverged":
        task.status, task.message = "diverged", message
    elif status in ("lost", "interrupted", "busy"):
        # back to the queue: it resumes from its last checkpoint
        if task.attempts >= MAX_ATTEMPTS and status == "lost":
            task.status, task.message = "failed", f"{message}; gave up after {task.attempts} attempts"
        else:
            task.status, task.message = "pending", message
            if status == "busy":
                time.sleep(0.5)
    else:
        task.status, task.message = "failed", message


def drop_used_snapshots(runs: StudyRuns, store) -> list[Path]:
    """Delete each trunk snapshot that no unfinished branch starts from; returns what went."""
    needed = {t.needs for t in runs.tasks if t.needs is not None and t.status != "done"}
    gone = []
    for path in {t.needs for t in runs.tasks if t.needs is not None} - needed:
        if path.exists():
            remove_checkpoint(path)  # the .pt and its safetensors weights
            store.drop_artifact(path)
            gone.append(path)
    return gone


def _skip_orphans(runs: StudyRuns) -> None:
    """Branches whose trunk diverged or failed before their start cannot run."""
    for task in runs.tasks:
        if task.kind != "branch" or task.status != "pending" or task.needs is None or task.needs.exists():
            continue
        trunk = runs.trunk_of(task)
        if trunk.status == "done" and trunk.plan.total_steps >= task.needs_step:
            task.status, task.message = "skipped", (f"its trunk's snapshot {task.needs.name} was deleted; remove "
                                                    f"{trunk.out_dir} to retrain the trunk, or keep snapshots with "
                                                    "--keep-snapshots")
        elif trunk.status in ("diverged", "failed"):
            task.status, task.message = "skipped", f"trunk {trunk.status} ({trunk.message.splitlines()[0] if trunk.message else ''})"
