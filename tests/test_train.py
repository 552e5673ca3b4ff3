"""Training: learning, schedules, exact resume, divergence, repetition bookkeeping."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from scalinglab.config import ModelSpec, OptimConfig, RunConfig, TrainConfig
from scalinglab.corpus import CorpusConfig, prepare_corpus
from scalinglab.device import place
from scalinglab.store import load_points, open_store
from scalinglab.train import Schedule, plan_run, read_loss_log, train_run
from scalinglab.train.checkpoint import load_checkpoint


def tiny_config(corpus_path, lr: float = 3e-3, **train) -> RunConfig:
    defaults = dict(tokens=40_000, batch_size=4, seq_len=64, eval_points=3, eval_tokens=2048)
    return RunConfig(
        corpus=CorpusConfig(source=str(corpus_path)),
        model=ModelSpec(size=None, n_layer=1, d_model=32, n_head=2),
        optim=OptimConfig(lr=lr),
        train=TrainConfig(**{**defaults, **train}),
    )


def test_loss_decreases_and_everything_lands_in_the_store(text_corpus, tmp_path):
    cfg = tiny_config(text_corpus)
    corpus = prepare_corpus(cfg.corpus)
    plan = plan_run(cfg, corpus)
    result = train_run(plan, corpus, open_store(tmp_path / "s.db"), tmp_path / "run")
    assert result.status == "done"
    losses = [p["val_loss"] for p in result.points]
    assert losses[0] > losses[-1] + 1.0  # from ~ln 256 = 5.5 nats to well below
    assert losses[-1] < 3.0
    frame = load_points(tmp_path / "s.db")
    assert len(frame) == len(plan.eval_steps)
    row = frame.iloc[-1]
    assert row["tokens"] == plan.total_steps * plan.batch_tokens
    assert row["flops"] == pytest.approx(row["tokens"] * row["flops_per_token"])
    assert row["val_bpb"] == pytest.approx(row["val_loss"] / math.log(2))  # byte tokens: exact
    assert row["param_convention"] == "non_embedding" and row["n_nonembedding"] > 0
    run = open_store(tmp_path / "s.db").get_run(result.run_id)
    assert run["corpus_hash"] == corpus.content_hash and run["seed"] == 0 and run["versions"]["torch"]
    assert len(read_loss_log(tmp_path / "run")) == plan.total_steps


def test_schedules():
    wsd = Schedule("wsd", total_steps=100, warmup_steps=10, decay_start=80, shape="1-sqrt")
    assert wsd.multiplier(0) == pytest.approx(0.1) and wsd.multiplier(9) == 1.0
    assert wsd.multiplier(50) == 1.0 and wsd.multiplier(79) == 1.0
    assert wsd.multiplier(99) == 0.0 and 0 < wsd.multiplier(85) < 1
    assert wsd.multiplier(84) == pytest.approx(1 - math.sqrt(5 / 20))
    cos = Schedule("cosine", total_steps=100, warmup_steps=0, min_lr_frac=0.1)
    assert cos.multiplier(0) == 1.0 and cos.multiplier(100) == pytest.approx(0.1)
    lin = Schedule("wsd", total_steps=10, warmup_steps=0, decay_start=0, shape="linear")
    assert [round(lin.multiplier(s), 2) for s in range(10)] == [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0]


def test_ctrl_c_checkpoints_and_resume_finishes_the_same_run(text_corpus, tmp_path):
    args = ["--corpus", str(text_corpus), "--set", "model.size='10k'", "--tokens", "400000", "--batch-size", "4",
            "--seq-len", "64", "--eval-points", "2", "--eval-tokens", "2048", "--quiet", "--db", str(tmp_path / "s.db")]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "scalinglab", "train", *args, "--out", str(tmp_path / "run")]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    loss_log = tmp_path / "run" / "train_loss.f32"
    deadline = time.time() + 60
    # wait until steps are logged (the log is flushed about once a second, well after the
    # loop has installed its signal handler) and stop the run long before its 1,563 steps end
    while time.time() < deadline and proc.poll() is None and (not loss_log.exists() or loss_log.stat().st_size < 4 * 32):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "--resume" in err
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    total = 400000 // (4 * 64) + 1
    assert 0 < ckpt["step"] < total
    done = subprocess.run(cmd + ["--resume"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    reference = subprocess.run([sys.executable, "-m", "scalinglab", "train", *args, "--out", str(tmp_path / "ref")],
                               env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert reference.returncode == 0, reference.stderr
    a, b = load_checkpoint(tmp_path / "run" / "last.pt"), load_checkpoint(tmp_path / "ref" / "last.pt")
    assert a["step"] == b["step"] == total
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_running_past_the_unique_tokens_repeats_epochs_and_records_them(text_corpus, tmp_path):
    cfg = tiny_config(text_corpus, tokens=30_000)
    corpus = prepare_corpus(cfg.corpus)
    plan = plan_run(cfg, corpus)
    plan.max_unique_tokens = 5_000
    result = train_run(plan, corpus, open_store(tmp_path / "s.db"), tmp_path / "run")
    epochs = result.points[-1]["epoch"]
    assert epochs > 5  # ~30k tokens over ~5k unique
    run = open_store(tmp_path / "s.db").get_run(result.run_id)
    assert run["unique_train_tokens"] == 5_000


def test_cpu_placement_never_initialises_cuda():
    placement = place("auto", "auto", 1)
    assert placement.device.type == "cpu" and placement.dtype == torch.float32
    assert not torch.cuda.is_initialized()
    assert torch.get_num_threads() == 1
