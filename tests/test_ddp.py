"""One run data-parallel over 2 ranks (torchrun, gloo on CPU): the same run as in one process
(within float rounding), deterministic, resumable after kill -9, NaN and batch checks."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from scalinglab.train.checkpoint import load_checkpoint
from scalinglab.train.engine import read_loss_log, read_metrics
from scalinglab.train.rundir import read_marker

TESTS = Path(__file__).parent
STEPS = 50


def _args(corpus: Path, out: Path, *extra: str) -> list[str]:
    """`scalinglab train` arguments of a 1x16 GPT, batch 4x32, 50 steps, a checkpoint every step."""
    return ["train", "--corpus", str(corpus), "--set", "model.size=None", "--set", "model.n_layer=1",
            "--set", "model.d_model=16", "--set", "model.n_head=1", "--batch-size", "4", "--seq-len", "32",
            "--tokens", str(STEPS * 4 * 32), "--lr", "3e-3", "--warmup", "4", "--eval-points", "5",
            "--eval-tokens", "1024", "--set", "train.checkpoint_every=0", "--quiet",
            "--db", str(out.parent / f"{out.name}.db"), "--out", str(out), *extra]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    """The environment of the runs' processes: this checkout, the tests' corpus cache, no GPU."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path]), "CUDA_VISIBLE_DEVICES": "",
            "SCALINGLAB_CACHE": str(tmp_path_factory.getbasetemp() / "corpus-cache"), "OMP_NUM_THREADS": "1"}


def torchrun(env: dict, *args: str) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run --nproc_per_node=2 ARGS` (ARGS: `-m scalinglab ...` or a script)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
               *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def two_rank_runs(text_corpus, tmp_path_factory, env) -> tuple[Path, Path]:
    """The same config trained twice over 2 ranks."""
    root = tmp_path_factory.mktemp("ddp")
    outs = root / "a", root / "b"
    for out in outs:
        done = torchrun(env, "-m", "scalinglab", *_args(text_corpus, out))
        assert done.returncode == 0, done.stderr
    return outs


def _weights(out: Path) -> dict:
    return load_checkpoint(out / "last.pt")["model"]  # the weights from its safetensors file


def _metrics(out: Path) -> list[dict]:
    return [{k: v for k, v in p.items() if k not in ("wall_time", "tokens_per_s")} for p in read_metrics(out)]


def test_two_ranks_train_the_one_process_run_within_float_rounding(two_rank_runs, text_corpus, tmp_path, run_cli):
    code, out, err = run_cli(*_args(text_corpus, tmp_path / "one"))
    assert code == 0, err
    one, two = tmp_path / "one", two_rank_runs[0]
    assert json.loads((one / "config.json").read_text()) == json.loads((two / "config.json").read_text())
    a, b = read_metrics(one), read_metrics(two)
    assert [p["step"] for p in a] == [p["step"] for p in b] and b[-1]["step"] == STEPS
    for key in ("val_loss", "train_loss"):
        assert max(abs(p[key] - q[key]) for p, q in zip(a, b)) < 1e-4
    batch = np.abs(read_loss_log(one) - read_loss_log(two))
    assert len(batch) == STEPS and batch.max() < 1e-4  # every logged batch loss


def test_two_rank_runs_of_one_config_are_bit_identical(two_rank_runs):
    a, b = two_rank_runs
    wa, wb = _weights(a), _weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert _metrics(a) == _metrics(b)
    assert read_loss_log(a).tobytes() == read_loss_log(b).tobytes()
    assert read_marker(a, "DONE")["step"] == read_marker(b, "DONE")["step"] == STEPS


def test_kill_9_of_a_two_rank_run_then_resume_is_bit_identical(two_rank_runs, text_corpus, tmp_path, env):
    out = tmp_path / "killed"
    killed = torchrun(env, str(TESTS / "ddp_rank.py"), "kill", "30", "--", *_args(text_corpus, out))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 29 and not (out / "DONE").exists()
    resumed = subprocess.run([sys.executable, "-m", "scalinglab", *_args(text_corpus, out, "--resume", "--nproc", "2")],
                             env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    reference = two_rank_runs[0]
    wa, wb = _weights(out), _weights(reference)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert _metrics(out) == _metrics(reference)
    assert read_loss_log(out).tobytes() == read_loss_log(reference).tobytes()


def test_a_nan_on_one_rank_stops_every_rank_and_rank_0_marks_the_run_diverged(text_corpus, tmp_path, env):
    out = tmp_path / "nan"
    run = torchrun(env, str(TESTS / "ddp_rank.py"), "nan", "12", "1", "--", *_args(text_corpus, out))
    assert run.returncode != 0 and "diverged" in run.stderr
    assert read_marker(out, "DIVERGED")["step"] == 12
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 12  # the NaN step never changed the weights
    assert len(read_loss_log(out)) == 12


def test_a_batch_the_ranks_cannot_share_is_refused_in_one_line(text_corpus, tmp_path, run_cli):
    args = _args(text_corpus, tmp_path / "odd")
    args[args.index("--batch-size") + 1] = "3"
    code, out, err = run_cli(*args, "--nproc", "2")
    assert code == 2 and not (tmp_path / "odd").exists()
    assert err.strip().count("\n") == 0 and "batch of 3" in err and "--batch-size 2 or 4" in err
