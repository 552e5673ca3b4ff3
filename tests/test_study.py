"""The data-scaling study: grid sizing, branch bookkeeping, the smoke study, resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from scalinglab.corpus import CorpusConfig, prepare_corpus
from scalinglab.errors import UserError
from scalinglab.store import load_points, open_store
from scalinglab.study import analyse, execute, prepare_study
from scalinglab.study import grid as grid_module
from scalinglab.study.grid import StudyConfig, parse_budget, plan_grid, size_plan
from scalinglab.study.runner import build_tasks, run_tasks
from scalinglab.train import read_loss_log


def tiny_study(corpus_path, **overrides) -> StudyConfig:
    values = dict(name="t", corpus=CorpusConfig(source=str(corpus_path)), sizes=["3e3", "6e3"], budget=None,
                  max_doublings=0, milestones_per_doubling=1, seq_len=32, eval_tokens=1024, workers=2)
    return StudyConfig(**{**values, **overrides})


# --- grid sizing ------------------------------------------------------------------------------

def test_budgets_parse():
    assert parse_budget("10m").seconds == 600 and parse_budget("2h").seconds == 7200
    assert parse_budget("90s").seconds == 90 and parse_budget("1e15flops").flops == 1e15
    for bad in ("ten minutes", "-5m", "0s"):
        with pytest.raises(UserError):
            parse_budget(bad)


def test_milestones_cooldowns_and_warmup(text_corpus):
    cfg = tiny_study(text_corpus, milestones_per_doubling=2)
    plan = size_plan(cfg, "6e3", 256, doublings=2)
    tpps = [m.tpp for m in plan.milestones]
    assert tpps[0] == 5 and tpps[-1] == pytest.approx(80)
    assert np.allclose(np.diff(np.log2(tpps)), 0.5)  # two milestones per doubling
    for m in plan.milestones:
        assert m.end_step * plan.batch_tokens == pytest.approx(m.tpp * plan.n, rel=0.15)
        assert m.branch_steps == round(0.2 * m.end_step)  # 20% cooldown counted inside D
    assert plan.warmup < plan.milestones[0].start_step
    assert plan.trunk_steps == plan.milestones[-1].start_step


def test_the_budget_chooses_the_grid(text_corpus, monkeypatch):
    corpus = prepare_corpus(CorpusConfig(source=str(text_corpus)))
    # a fixed throughput makes sizing deterministic: 100k tokens/s for everyone
    monkeypatch.setattr(grid_module, "measure_throughput", lambda plan, device, dtype: 1e5 * grid_module.OVERHEAD)
    cfg = tiny_study(text_corpus, sizes=["3e3", "1.2e4"], budget="20s", max_doublings=6)
    grid = plan_grid(cfg, corpus)
    assert grid.estimate_seconds() <= 20
    small, large = grid.sizes
    assert small.doublings >= large.doublings  # the cheap model goes further past 20:1
    assert max(m.tpp for m in large.milestones) >= 20
    bigger = plan_grid(tiny_study(text_corpus, sizes=["3e3", "1.2e4"], budget="80s", max_doublings=6), corpus)
    assert sum(s.doublings for s in bigger.sizes) > sum(s.doublings for s in grid.sizes)
    with pytest.raises(UserError, match="too small"):
        plan_grid(tiny_study(text_corpus, sizes=["1e5"], budget="1s"), corpus)
    by_flops = plan_grid(tiny_study(text_corpus, sizes=["3e3"], budget="1e12flops", max_doublings=8), corpus)
    assert by_flops.total_flops <= 1e12


# --- running ----------------------------------------------------------------------------------

def test_branch_bookkeeping(text_corpus, tmp_path):
    cfg = tiny_study(text_corpus, sizes=["3e3"], max_doublings=1)
    study = prepare_study(cfg, tmp_path / "s.db", tmp_path / "out")
    tasks = execute(study)
    assert all(t.status == "done" for t in tasks)
    size = study.grid.sizes[0]
    store = open_store(tmp_path / "s.db")
    trunk = study.runs.trunks[size.label]
    assert store.get_run(trunk.key)["kind"] == "trunk"
    assert read_loss_log(trunk.out_dir).size == size.trunk_steps  # the trunk stops at the last branch point
    result = analyse(study, bootstrap=0)
    points = result.points
    assert len(points) == len(size.milestones)
    for m, row in zip(size.milestones, points.itertuples()):
        assert row.D == m.end_step * size.batch_tokens  # branch tokens count toward D
        assert row.trunk_run == trunk.key
        assert row.branch_start_tokens == m.start_step * size.batch_tokens
        assert row.branch_flops == pytest.approx((m.end_step - m.start_step) * size.batch_tokens * size.flops_per_token)
        assert row.flops == pytest.approx(row.D * size.flops_per_token)
        branch = next(t for t in tasks if t.key == row.branch_run)
        log = read_loss_log(branch.out_dir)
        assert log.size == m.branch_steps
        # the branch leaves the trunk's exact state and data stream: its first loss is the trunk's
        # (the trunk itself stops at the last branch point)
        if m.start_step < size.trunk_steps:
            assert log[0] == read_loss_log(trunk.out_dir)[m.start_step]
    assert result.csv.exists() and all(p.exists() for p in result.figures)
    # each snapshot went once its branch was done (a full optimizer state each), from disk and store
    assert not list(trunk.out_dir.glob("snap-*.pt"))
    assert not [a for a in store.artifacts(trunk.key) if a["kind"] == "snapshot"]
    spent = (size.trunk_steps + sum(m.branch_steps for m in size.milestones)) * size.batch_tokens * size.flops_per_token
    assert study.grid.total_flops == pytest.approx(spent)


def test_keep_snapshots_keeps_them(text_corpus, tmp_path):
    study = prepare_study(tiny_study(text_corpus, sizes=["3e3"]), tmp_path / "s.db", tmp_path / "out")
    execute(study, keep_snapshots=True)
    trunk = study.runs.trunks[study.grid.sizes[0].label]
    assert len(list(trunk.out_dir.glob("snap-*.pt"))) == len({m.start_step for m in study.grid.sizes[0].milestones})


def test_a_diverged_trunk_is_recorded_and_the_study_goes_on(text_corpus, tmp_path):
    cfg = tiny_study(text_corpus)
    study = prepare_study(cfg, tmp_path / "s.db", tmp_path / "out")
    study.grid.sizes[1].lr = 1e4  # this size blows up at once
    runs = build_tasks(study.grid, study.study_id, study.study_dir)
    tasks = run_tasks(runs, study.corpus, study.db, workers=2)
    bad = [t for t in tasks if t.size == study.grid.sizes[1].label]
    good = [t for t in tasks if t.size == study.grid.sizes[0].label]
    assert all(t.status == "done" for t in good)
    assert next(t for t in bad if t.kind == "trunk").status == "diverged"
    assert all(t.status == "skipped" for t in bad if t.kind == "branch")
    trunk_run = open_store(tmp_path / "s.db").get_run(next(t for t in bad if t.kind == "trunk").key)
    assert trunk_run["status"] == "diverged" and trunk_run["diverged_step"] is not None


def test_data_repetition_is_reported_or_refused(text_corpus, tmp_path, run_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["study", "--corpus", text_corpus, "--sizes", "3e4", "--budget", "none", "--max-doublings", "2",
            "--seq-len", "32", "--dry-run"]
    code, out, err = run_cli(*args)
    assert code == 0, err
    assert "epochs over" in out and "data will repeat" in out
    code, _, err = run_cli(*args, "--no-repeat")
    assert code == 2 and "epochs over" in err and "Traceback" not in err


@pytest.mark.parametrize("args, needle", [
    (["--budget", "soon"], "cannot read budget"),
    (["--preset", "huge"], "unknown study preset"),
    (["--sizes", "1e5", "--budget", "1s"], "too small"),
    (["--fit-from", "-5"], "--fit-from must be"),
    (["--sizes", "big"], "cannot read size"),
])
def test_study_input_errors(run_cli, tmp_path, monkeypatch, text_corpus, args, needle):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli("study", "--corpus", text_corpus, "--dry-run", *args)
    assert code == 2 and needle in err and "Traceback" not in err


def test_smoke_study_end_to_end(run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli("study", "--preset", "smoke")
    assert code == 0, err
    assert "does the loss keep improving" in out and "study.csv" in out
    csv = next((tmp_path / "study").glob("smoke-*/study.csv"))
    import pandas as pd

    points = pd.read_csv(csv)
    assert points["N"].nunique() == 3
    assert (points.groupby("N")["tokens_per_param"].max() >= 20).all()  # at least the 20:1 point
    # at every N the largest D beats the 20:1 point: the loss keeps falling past Chinchilla
    for _, group in points.groupby("N"):
        group = group.sort_values("D")
        at20 = group.iloc[(group["tokens_per_param"] - 20).abs().argmin()]
        if group["tokens_per_param"].max() > 30:
            assert group["val_loss"].iloc[-1] < at20["val_loss"]
    frame = load_points(tmp_path / "scalinglab.db")
    assert set(frame["kind"]) == {"trunk", "branch"}


def _study_cmd(text_corpus, tmp_path) -> list[str]:
    return [sys.executable, "-m", "scalinglab", "study", "--corpus", str(text_corpus), "--sizes", "3e3,6e3",
            "--budget", "none", "--max-doublings", "1", "--seq-len", "32", "--workers", "2", "--db",
            str(tmp_path / "s.db"), "--out", str(tmp_path / "out")]


def test_a_killed_study_resumes_without_duplicates_or_lost_points(text_corpus, tmp_path):
    cmd = _study_cmd(text_corpus, tmp_path)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(tmp_path.glob("out/*/runs/*/DONE"))) < 2:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # the parent and its workers, mid-study
    proc.wait()
    done_before = {p.parent.name: p.stat().st_mtime_ns for p in tmp_path.glob("out/*/runs/*/DONE")}
    assert done_before
    finished = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    # finished runs were not redone
    for name, stamp in done_before.items():
        assert next(tmp_path.glob(f"out/*/runs/{name}/DONE")).stat().st_mtime_ns == stamp
    frame = load_points(tmp_path / "s.db")
    branches = frame[frame["kind"] == "branch"]
    assert not branches.duplicated(["run_id", "step"]).any()
    study = json.loads(next(tmp_path.glob("out/*/study.json")).read_text())
    expected = sum(len(size_plan(StudyConfig(**{**study["config"], "corpus": CorpusConfig(**study["config"]["corpus"])}),
                                 label, 256, k).milestones) for label, k in study["doublings"].items())
    assert branches["run_id"].nunique() == expected


def test_a_worker_killed_mid_run_is_replaced_and_its_run_resumed(text_corpus, tmp_path):
    cmd = _study_cmd(text_corpus, tmp_path)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # wait until a worker is training (its run directory holds a lock file with its pid)
    deadline = time.time() + 120
    victim = None
    while time.time() < deadline and victim is None:
        for lock in tmp_path.glob("out/*/runs/*/.lock"):
            pid = lock.read_text().strip()
            if pid and not (lock.parent / "DONE").exists() and pid != str(proc.pid):
                victim = int(pid)
                break
        time.sleep(0.05)
    assert victim is not None
    try:
        os.kill(victim, signal.SIGKILL)
    except ProcessLookupError:
        pass  # it finished first: the study must complete all the same
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    frame = load_points(tmp_path / "s.db")
    assert not frame.duplicated(["run_id", "step"]).any()
    assert (frame["kind"] == "branch").sum() == 14  # two sizes x 7 milestones (5..40 tokens/param, two per doubling)


def test_a_longer_study_continues_the_same_trunks(text_corpus, tmp_path):
    short = prepare_study(tiny_study(text_corpus, sizes=["3e3"], max_doublings=0), tmp_path / "s.db", tmp_path / "out")
    execute(short)
    trunk = short.runs.trunks["3e3"]
    first_branches = {t.key: (t.out_dir / "DONE").stat().st_mtime_ns for t in short.runs.tasks if t.kind == "branch"}
    longer = prepare_study(tiny_study(text_corpus, sizes=["3e3"], max_doublings=1), tmp_path / "s.db", tmp_path / "out")
    assert longer.study_id == short.study_id  # the budget is not part of the study's identity
    assert longer.runs.trunks["3e3"].key == trunk.key
    before = read_loss_log(trunk.out_dir).copy()
    execute(longer)
    after = read_loss_log(trunk.out_dir)
    assert after.size == longer.grid.sizes[0].trunk_steps > before.size
    assert (after[: before.size] == before).all()  # continued, not retrained
    for key, stamp in first_branches.items():
        assert (tmp_path / "out" / short.study_id / "runs" / key / "DONE").stat().st_mtime_ns == stamp
    assert len(analyse(longer, bootstrap=0).points) == len(longer.grid.sizes[0].milestones)


def test_per_n_fits_cover_only_the_points_past_the_fit_start():
    import pandas as pd

    from scalinglab.study.analysis import fit_per_n

    n = 10_000
    tpp = 5 * 2 ** (np.arange(10) / 2)  # 5 .. 113 tokens/param, sqrt 2 apart
    loss = 1.5 + 400.0 / (tpp * n) ** 0.5
    loss[tpp < 20] += 0.3 * (20 - tpp[tpp < 20]) / 15  # short, warmup-bound branches sit above the law
    points = pd.DataFrame({"N": n, "D": tpp * n, "tokens_per_param": tpp, "val_loss": loss})
    fit = fit_per_n(points, bootstrap=0)[0]
    assert fit.n_points == int((tpp >= 20 * 0.98).sum()) and fit.D_min == 20 * n
    assert fit.E[0] == pytest.approx(1.5, rel=1e-3) and fit.beta[0] == pytest.approx(0.5, rel=1e-2)
    everything = fit_per_n(points, bootstrap=0, from_tpp=0)[0]
    assert everything.n_points == len(points) and abs(everything.beta[0] - 0.5) > 0.05  # the bent fit
