"""The study's repeated-data control (more data, or only more steps?) and the unigram plateau."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from scalinglab.config import config_hash
from scalinglab.corpus import CorpusConfig, prepare_corpus
from scalinglab.laws import Selection
from scalinglab.laws.data import select_points
from scalinglab.store import load_points, open_store
from scalinglab.study import analyse, execute, prepare_study, study_identity
from scalinglab.study.analysis import (
    CONTROL_COLUMNS,
    CSV_COLUMNS,
    PLATEAU_COLUMNS,
    fit_per_n,
    mark_plateau,
    study_points,
)
from scalinglab.study.grid import StudyConfig, study_preset
from scalinglab.train import read_loss_log
from scalinglab.train.data import BatchSampler
from scalinglab.train.loop import train_run
from test_study import tiny_study


def test_the_control_trains_on_d0_unique_tokens_at_the_same_milestones(text_corpus, tmp_path):
    cfg = tiny_study(text_corpus, sizes=["3e3"], control="repeat", control_unique=5)
    study = prepare_study(cfg, tmp_path / "s.db", tmp_path / "out")
    tasks = execute(study)
    assert all(t.status == "done" for t in tasks)
    size = study.grid.sizes[0]
    d0 = round(5 * size.n)
    trunk, control = study.runs.trunks[size.label], study.runs.controls[size.label]
    store = open_store(tmp_path / "s.db")
    assert store.get_run(control.key)["kind"] == "control-trunk"
    assert store.get_run(control.key)["unique_train_tokens"] == d0
    assert store.get_run(trunk.key)["unique_train_tokens"] == study.corpus.unique_train_tokens
    assert {r["kind"] for r in store.runs(group=study.study_id)} == {"trunk", "branch", "control-trunk", "control-branch"}

    # every window the control trunk trained on lies in the first D0 tokens of the train split
    sampler = BatchSampler(np.arange(study.corpus.unique_train_tokens), cfg.seq_len, size.batch_size, cfg.seed,
                           control.plan.max_unique_tokens)
    assert max(int(sampler.rows(s).max()) for s in range(size.trunk_steps)) < d0
    # the same steps and milestones as the main trunk
    assert read_loss_log(control.out_dir).size == read_loss_log(trunk.out_dir).size == size.trunk_steps
    branch_points = lambda ctl: sorted((t.needs_step, t.plan.total_steps) for t in tasks  # noqa: E731
                                       if t.kind == "branch" and t.control == ctl)
    assert branch_points(True) == branch_points(False) == [(m.start_step, m.end_step) for m in size.milestones]

    result = analyse(study, bootstrap=0)
    points = result.points
    assert list(points.columns) == CSV_COLUMNS + CONTROL_COLUMNS + PLATEAU_COLUMNS
    assert len(points) == len(size.milestones) and points["control_val_loss"].notna().all()
    assert (points["unique_data_gain"] == points["control_val_loss"] - points["val_loss"]).all()
    assert (points["control_unique_tokens"] == d0).all()
    past = points["D"] > d0
    assert past.any() and (points.loc[past, "control_epoch"] > 1).all()
    assert (points["control_epoch"] > points["epoch"]).all()
    csv = pd.read_csv(result.csv)
    assert (csv["unique_data_gain"] == csv["control_val_loss"] - csv["val_loss"]).all()

    # the study's points, the default fits and the report read the main branches only
    assert study_points(tmp_path / "s.db", study.study_id).equals(points[CSV_COLUMNS])
    chosen, _ = select_points(load_points(tmp_path / "s.db"), Selection())  # what `scalinglab fit` takes by default
    assert set(chosen["kind"]) == {"branch"} and chosen["run_id"].nunique() == len(size.milestones)
    row = result.summary.iloc[0]
    assert row["gain_from_new_data"] + row["gain_from_steps"] == pytest.approx(row["control_gain"], abs=1e-12)
    anchor = points[points["tokens_per_param"] == row["control_anchor_tpp"]].iloc[0]
    last = points.iloc[-1]
    assert row["gain_from_new_data"] == pytest.approx(last["unique_data_gain"] - anchor["unique_data_gain"], abs=1e-12)


def _cli_study(text_corpus, tmp_path, *extra: str) -> list[str]:
    return ["study", "--corpus", text_corpus, "--sizes", "3e3", "--budget", "none", "--max-doublings", "0",
            "--seq-len", "32", "--workers", "2", "--set", "eval_tokens=1024", "--no-report",
            "--db", tmp_path / "s.db", "--out", tmp_path / "out", *extra]


def test_adding_the_control_to_a_finished_study_keeps_its_id_runs_and_numbers(run_cli, text_corpus, tmp_path):
    # the study `_cli_study` runs without --control, from Python
    plain = study_preset("default", sizes=["3e3"], budget=None, max_doublings=0, seq_len=32, workers=2, eval_tokens=1024,
                         corpus=CorpusConfig(source=str(text_corpus)))
    prepared = prepare_study(plain, tmp_path / "s.db", tmp_path / "out")
    execute(prepared)
    assert not [c for c in analyse(prepared, bootstrap=0).summary.columns if c.startswith("control")]
    (study_dir,) = (tmp_path / "out").iterdir()
    before = pd.read_csv(study_dir / "study.csv")
    assert list(before.columns) == CSV_COLUMNS + ["plateau"]  # no control: the columns it always had, and the flag
    done = {p.parent.name: p.stat().st_mtime_ns for p in study_dir.glob("runs/*/DONE")}

    # a study without a control keeps the identity it had before the option existed
    cfg = tiny_study(text_corpus)
    assert "control" not in cfg.to_dict() and "control_unique" not in cfg.to_dict()
    ident = {"corpus": prepare_corpus(cfg.corpus).key, "sizes": cfg.sizes, "min_tpp": cfg.min_tpp,
             "per_doubling": cfg.milestones_per_doubling, "cooldown_frac": cfg.cooldown_frac,
             "cooldown_shape": cfg.cooldown_shape, "seq_len": cfg.seq_len, "eval_tokens": cfg.eval_tokens,
             "seed": cfg.seed, "dtype": cfg.dtype, "device": "cpu"}
    assert study_identity(cfg, prepare_corpus(cfg.corpus)) == f"t-{config_hash(ident)[:8]}"

    code, out, err = run_cli(*_cli_study(text_corpus, tmp_path, "--control", "repeat", "--control-unique", "5",
                                         "--fit-from", "0"))
    assert code == 0, err
    assert [p.name for p in (tmp_path / "out").iterdir()] == [study_dir.name]  # the same study
    for name, stamp in done.items():  # its runs were not trained again
        assert (study_dir / "runs" / name / "DONE").stat().st_mtime_ns == stamp
    after = pd.read_csv(study_dir / "study.csv")
    assert after[CSV_COLUMNS].equals(before[CSV_COLUMNS])
    assert set(CONTROL_COLUMNS) <= set(after.columns) and after["control_val_loss"].notna().all()
    flat = " ".join(out.split())
    assert "control loss" in flat and "unique-data gain" in flat
    assert "more data, or only more steps?" in flat and "from new data" in flat and "from more steps" in flat

    # the plateau: flagged against the train split's unigram entropy, out of the fits, and said
    entropy = prepare_corpus(CorpusConfig(source=str(text_corpus))).unigram_entropy
    assert (after["plateau"] == (after["val_loss"] >= entropy - 0.1)).all()
    fit = open_store(tmp_path / "s.db").get_result("study-fit", f"{study_dir.name}/N{after['N'].iloc[0]}")
    if fit is not None:
        assert fit["n_points"] == int((~after["plateau"]).sum())
        assert fit["plateau_points_left_out"] == int(after["plateau"].sum())
    if after["plateau"].any():
        assert "on the unigram plateau, left out of the fits" in flat and f"{entropy:.4f} nats/token" in flat


@pytest.mark.parametrize("args, needle", [
    (["--control-unique", "5"], "--control-unique applies only"),
    (["--control", "twice"], "unknown control"),
    (["--control", "repeat", "--control-unique", "0"], "--control-unique must be"),
    (["--control", "repeat", "--control-unique", "400"], "lower --control-unique"),
])
def test_control_input_errors(run_cli, text_corpus, tmp_path, args, needle):
    code, _, err = run_cli(*_cli_study(text_corpus, tmp_path, "--dry-run", *args))
    assert code == 2 and needle in " ".join(err.split()) and "Traceback" not in err


def test_a_killed_control_run_resumes_to_the_same_numbers(text_corpus, tmp_path):
    cmd = [sys.executable, "-m", "scalinglab", *map(str, _cli_study(text_corpus, tmp_path, "--control", "repeat",
                                                                   "--control-unique", "5"))]
    cmd[cmd.index("0", cmd.index("--max-doublings"))] = "1"  # a longer control trunk, to kill it mid-run
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline, victim = time.time() + 120, None
    while time.time() < deadline and victim is None and proc.poll() is None:
        for lock in tmp_path.glob("out/*/runs/control-trunk-*/.lock"):
            pid, log = lock.read_text().strip(), lock.parent / "train_loss.f32"
            if pid and not (lock.parent / "DONE").exists() and log.exists() and log.stat().st_size >= 4 * 20:
                victim = int(pid)
                break
        time.sleep(0.005)
    assert victim is not None, "the control trunk was not caught training"
    os.kill(victim, signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err

    frame = load_points(tmp_path / "s.db")
    assert not frame.duplicated(["run_id", "step"]).any()
    (study_dir,) = (tmp_path / "out").iterdir()
    csv = pd.read_csv(study_dir / "study.csv")
    assert csv["control_val_loss"].notna().all()
    # the resumed control trunk is the run an uninterrupted one is, to the last bit
    import json

    saved = json.loads((study_dir / "study.json").read_text())["config"]
    cfg = StudyConfig(**{**saved, "corpus": CorpusConfig(**saved["corpus"])})
    study = prepare_study(cfg, tmp_path / "s.db", tmp_path / "out")
    control = study.runs.controls["3e3"]
    reference = train_run(control.plan, study.corpus, None, tmp_path / "reference")
    assert reference.status == "done"
    assert (read_loss_log(control.out_dir) == read_loss_log(tmp_path / "reference")).all()


def test_plateau_points_are_flagged_and_left_out_of_the_fits():
    n = 10_000
    tpp = 5 * 2 ** (np.arange(10) / 2)  # 5 .. 113 tokens/param
    loss = 1.5 + 100.0 / (tpp * n) ** 0.5
    loss[[4, 5]] = 3.2  # two points stuck near the unigram entropy past 20 tokens/param
    points = mark_plateau(pd.DataFrame({"N": n, "D": tpp * n, "tokens_per_param": tpp, "val_loss": loss}),
                          unigram_entropy=3.25)
    assert points["plateau"].tolist() == [i in (4, 5) for i in range(10)]
    fit = fit_per_n(points, bootstrap=0)[0]
    assert fit.n_points == int((tpp >= 20 * 0.98).sum()) - 2
    assert fit.beta[0] == pytest.approx(0.5, rel=1e-2) and fit.E[0] == pytest.approx(1.5, rel=1e-3)
    kept = fit_per_n(points, bootstrap=0, exclude_plateau=False)[0]
    assert kept.n_points == fit.n_points + 2 and abs(kept.beta[0] - 0.5) > 0.05


def test_the_unigram_entropy_comes_from_the_train_split_counts(text_corpus):
    corpus = prepare_corpus(CorpusConfig(source=str(text_corpus)))
    counts = np.bincount(np.asarray(corpus.tokens("train")), minlength=corpus.vocab_size)
    p = counts[counts > 0] / counts.sum()
    assert corpus.meta["splits"]["train"]["unigram_entropy"] == pytest.approx(-(p * np.log(p)).sum(), rel=1e-12)
    del corpus.meta["splits"]["train"]["unigram_entropy"]  # a corpus prepared before it was stored
    assert corpus.unigram_entropy == pytest.approx(-(p * np.log(p)).sum(), rel=1e-12)
