"""Backends: the same study on this machine's workers and on a private Ray cluster, surviving a
killed worker, journals the driver applies, and one-line errors for what a user can get wrong."""

from __future__ import annotations

import fcntl
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from scalinglab.backends import BackendSpec
from scalinglab.backends.journal import JournalReader, JournalStore
from scalinglab.corpus import CorpusConfig
from scalinglab.store import load_points, open_store
from scalinglab.study import execute, prepare_study
from scalinglab.study.grid import StudyConfig

ray = pytest.importorskip("ray", reason="Ray is the optional extra scalinglab[ray] (CI installs it)")

def tiny_study(corpus_path) -> StudyConfig:
    return StudyConfig(name="t", corpus=CorpusConfig(source=str(corpus_path)), sizes=["3e3", "6e3"], budget=None,
                       max_doublings=1, milestones_per_doubling=1, seq_len=32, eval_tokens=1024, workers=2)


def _points(db: Path) -> list[tuple]:
    frame = load_points(db).sort_values(["run_id", "step"])
    return list(zip(frame.run_id, frame.step, frame.val_loss, frame.train_loss))


@pytest.fixture(scope="module")
def local_reference(text_corpus, tmp_path_factory):
    """The study on the local backend: what every cluster run must reproduce exactly."""
    root = tmp_path_factory.mktemp("local")
    study = prepare_study(tiny_study(text_corpus), root / "s.db", root / "out")
    assert all(t.status == "done" for t in execute(study))
    return root / "s.db"


def _held_lock_pid(out: Path) -> int | None:
    """The pid of a process training one of the study's runs right now (its run folder's lock)."""
    for lock in out.glob("*/runs/*/.lock"):
        with open(lock, "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(fh, fcntl.LOCK_UN)  # free: nobody trains it now
            except BlockingIOError:
                fh.seek(0)
                text = fh.read().strip()
                if text and (lock.parent / "train_loss.f32").exists():
                    return int(text)
    return None


def test_a_study_on_ray_gives_the_local_points_and_survives_a_killed_worker(text_corpus, tmp_path,
                                                                           local_reference):
    study = prepare_study(tiny_study(text_corpus), tmp_path / "s.db", tmp_path / "out")
    killed: list[int] = []

    def kill_one_running_job() -> None:
        deadline = time.time() + 240
        while not killed and time.time() < deadline:
            pid = _held_lock_pid(tmp_path / "out")
            if pid is not None and pid != os.getpid():
                os.kill(pid, signal.SIGKILL)  # a worker process dies mid-run, as kill -9 or OOM does
                killed.append(pid)
            time.sleep(0.02)

    killer = threading.Thread(target=kill_one_running_job, daemon=True)
    killer.start()
    try:
        tasks = execute(study, backend=BackendSpec("ray"))  # a private cluster on this machine
    finally:
        ray.shutdown()
    killer.join(timeout=5)
    assert killed, "no running job was found to kill"
    assert all(t.status == "done" for t in tasks)
    assert max(t.attempts for t in tasks) == 2  # the killed run was resubmitted once and resumed
    assert _points(tmp_path / "s.db") == _points(local_reference)  # same runs, same losses to the last digit
    assert list((study.study_dir / "journal").glob("*.jsonl"))  # the workers wrote journals, not SQLite


def test_journals_replay_once_and_skip_a_torn_line(tmp_path):
    db = tmp_path / "s.db"
    open_store(db)
    journal = JournalStore(tmp_path / "journal", db)
    journal.upsert_run("r", name="r", status="running")
    journal.add_point("r", step=1, tokens=8, flops=48.0, train_loss=2.0)
    with open(journal.path, "a") as fh:
        fh.write('{"op": "add_point", "db": "')  # a kill mid-line
    reader = JournalReader(tmp_path / "journal")
    assert reader.apply() == 2
    assert reader.apply() == 0
    JournalReader(tmp_path / "journal").apply()  # a second driver replays everything: nothing changes
    assert [p["step"] for p in open_store(db).points("r")] == [1]


def test_backend_input_errors_are_one_line(run_cli, text_corpus, tmp_path, monkeypatch):
    import socket

    monkeypatch.chdir(tmp_path)
    base = ["study", "--corpus", str(text_corpus), "--sizes", "3e3", "--budget", "none", "--max-doublings", "0",
            "--seq-len", "32"]
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code, _, err = run_cli(*base, "--backend", "ray", "--address", f"127.0.0.1:{port}")
    assert code == 2 and f"cannot reach a Ray cluster at 127.0.0.1:{port}" in err
    code, _, err = run_cli(*base, "--backend", "slurm")
    assert code == 2 and "unknown backend 'slurm'" in err
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    code, _, err = run_cli(*base, "--backend", "ray")
    assert code == 2 and "pip install 'scalinglab[ray]'" in err and err.strip().splitlines()[-1].startswith("error:")


def test_a_probe_on_ray_gives_the_local_numbers(tmp_path):
    from scalinglab.probes.capacity import CapacityConfig, run_capacity
    from scalinglab.probes.common import probe_optim

    cfg = CapacityConfig(models=((1, 8), (1, 16)), vocab_size=16, seq_len=9, data_bits_per_param=(1.0, 4.0),
                         steps=60, optim=probe_optim(lr=1e-2, schedule="cosine", warmup=10), eval_points=4,
                         heldout_sequences=32)
    local = run_capacity(cfg, tmp_path / "local", tmp_path / "local.db", workers=2)
    try:
        on_ray = run_capacity(cfg, tmp_path / "ray", tmp_path / "ray.db", workers=2, backend=BackendSpec("ray"))
    finally:
        ray.shutdown()
    columns = ["model", "n_sequences", "memorised_bits", "steps", "run_id"]
    assert on_ray.runs[columns].equals(local.runs[columns])
    stored = open_store(tmp_path / "ray.db").runs()  # the workers' journals, applied by the driver
    assert {r["status"] for r in stored} == {"done"}
    assert len(stored) == len(open_store(tmp_path / "local.db").runs())
