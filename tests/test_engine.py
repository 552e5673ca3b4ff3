"""The one training engine: resume, divergence and interruption, tested once over every kind of run
(a corpus run, a study's cooldown branch, a probe's fit on fixed sequences, a grokking run)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import engine_kinds
from engine_kinds import KINDS, final_state, run
from scalinglab.store import open_store
from scalinglab.train import Diverged, Interrupted, engine
from scalinglab.train.engine import read_loss_log, read_metrics
from scalinglab.train.rundir import read_marker


def _same_weights(a: Path, b: Path) -> bool:
    sa, sb = final_state(a), final_state(b)
    return sa["step"] == sb["step"] and all(torch.equal(sa["model"][k], sb["model"][k]) for k in sa["model"])


def _metrics(out_dir: Path) -> list[dict]:
    return [{k: v for k, v in p.items() if k not in ("wall_time", "tokens_per_s")} for p in read_metrics(out_dir)]


@pytest.fixture
def reference(text_corpus, tmp_path):
    """The run never stopped, per kind, trained once per test."""
    def make(kind: str) -> Path:
        out = tmp_path / "reference"
        run(kind, out, tmp_path, text_corpus)
        return out
    return make


@pytest.mark.parametrize("kind", KINDS)
def test_kill_9_mid_run_then_rerun_is_bit_identical_to_a_run_never_stopped(kind, text_corpus, tmp_path, reference):
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    killed = subprocess.run([sys.executable, str(Path(engine_kinds.__file__)), kind, str(out), str(tmp_path),
                             str(text_corpus), "37"], env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert final_state(out)["step"] > 0 and not (out / "DONE").exists()  # it died mid-run, past a checkpoint
    run(kind, out, tmp_path, text_corpus)
    ref = reference(kind)
    assert _same_weights(out, ref)
    assert _metrics(out) == _metrics(ref)
    assert read_loss_log(out).tobytes() == read_loss_log(ref).tobytes()
    assert read_marker(out, "DONE")["step"] == read_marker(ref, "DONE")["step"]


@pytest.mark.parametrize("kind", KINDS)
def test_ctrl_c_checkpoints_and_a_rerun_continues_bit_identically(kind, text_corpus, tmp_path, reference):
    out = tmp_path / "stopped"

    def ctrl_c(step: int, loss: float) -> None:
        if step == 41:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted) as info:
        run(kind, out, tmp_path, text_corpus, on_step=ctrl_c)
    assert info.value.step == 41 and final_state(out)["step"] == 41  # the step finished, then a checkpoint
    assert open_store(tmp_path / "store.db").get_run(info.value.run_id)["status"] == "interrupted"
    assert "resume" in str(info.value)
    run(kind, out, tmp_path, text_corpus)
    assert _same_weights(out, reference(kind))


@pytest.mark.parametrize("kind", KINDS)
def test_a_nan_marks_the_run_diverged_and_a_rerun_refuses_it(kind, text_corpus, tmp_path, monkeypatch):
    real_update = engine.apply_update
    calls = []

    def exploding_update(model, optimizer, loss, grad_clip, after_backward=None):
        real_update(model, optimizer, loss, grad_clip, after_backward)
        calls.append(1)
        if len(calls) == 5:  # what an exploding update leaves behind: weights full of NaN
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))

    engine_kinds.prepare(kind, tmp_path, text_corpus)
    monkeypatch.setattr(engine, "apply_update", exploding_update)
    out = tmp_path / "run"
    with pytest.raises(Diverged) as info:
        run(kind, out, tmp_path, text_corpus)
    first_step = info.value.step
    assert read_marker(out, "DIVERGED")["step"] == first_step
    row = open_store(tmp_path / "store.db").get_run(info.value.run_id)
    assert row["status"] == "diverged" and row["diverged_step"] == first_step
    monkeypatch.setattr(engine, "apply_update", real_update)
    with pytest.raises(Diverged) as again:  # a healthy rerun does not train on: the run stays diverged
        run(kind, out, tmp_path, text_corpus)
    assert again.value.step == first_step and "\n" not in str(again.value)
    assert not (out / "DONE").exists()


@pytest.mark.parametrize("kind", KINDS)
def test_a_finished_run_is_not_trained_again(kind, text_corpus, tmp_path):
    out = tmp_path / "run"
    first = run(kind, out, tmp_path, text_corpus)
    stamp = (out / "last.pt").stat().st_mtime_ns
    again = run(kind, out, tmp_path, text_corpus)
    assert (out / "last.pt").stat().st_mtime_ns == stamp
    assert again.run_id == first.run_id and read_marker(out, "DONE")["step"] > 0
    assert open_store(tmp_path / "store.db").get_run(first.run_id)["status"] == "done"


def test_the_readme_example_task_trains_resumes_and_returns_when_done(tmp_path, monkeypatch):
    # the README's Layout section shows how a new kind of run plugs into the engine: run it as written
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    start = readme.index("import torch\nfrom scalinglab.config import OptimConfig")
    code = readme[start:readme.index("```", start)]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    outcome = namespace["outcome"]
    assert outcome.status == "done" and outcome.steps == 300 and abs(outcome.points[-1]["weight"] - 3.0) < 0.01
    stamp = (tmp_path / "runs" / "line" / "last.pt").stat().st_mtime_ns
    again = engine.train(namespace["Line"](), namespace["spec"], tmp_path / "runs" / "line")
    assert again.points == outcome.points and (tmp_path / "runs" / "line" / "last.pt").stat().st_mtime_ns == stamp
