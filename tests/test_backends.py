"""Backends: the same study on this machine's workers, on a private Ray cluster and on a Ray
cluster of two nodes, surviving a killed worker, a lost node and a killed driver; journals the
driver applies; and one-line errors for what a user can get wrong."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from scalinglab.backends import BackendSpec
from scalinglab.backends.journal import JournalReader, JournalStore
from scalinglab.corpus import CorpusConfig
from scalinglab.errors import UserError
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


def _held_lock_pids(out: Path) -> list[int]:
    """The pids of the processes training the study's runs right now (their run folders' locks)."""
    pids = []
    for lock in out.glob("*/runs/*/.lock"):
        with open(lock, "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(fh, fcntl.LOCK_UN)  # free: nobody trains it now
            except BlockingIOError:
                fh.seek(0)
                text = fh.read().strip()
                if text and (lock.parent / "train_loss.f32").exists():
                    pids.append(int(text))
    return pids


def test_a_study_on_ray_gives_the_local_points_and_survives_a_killed_worker(text_corpus, tmp_path,
                                                                           local_reference):
    study = prepare_study(tiny_study(text_corpus), tmp_path / "s.db", tmp_path / "out")
    killed: list[int] = []

    def kill_one_running_job() -> None:
        deadline = time.time() + 240
        while not killed and time.time() < deadline:
            pid = next(iter(_held_lock_pids(tmp_path / "out")), None)
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


# --- a cluster of two nodes --------------------------------------------------------------------

@pytest.fixture
def two_nodes(monkeypatch):
    """A Ray cluster of two simulated nodes on this machine, one CPU each; yields (cluster, the
    node that is not the head)."""
    import ray._private.ray_constants as ray_constants
    from ray.cluster_utils import Cluster

    # Ray replaces a loopback address by the machine's outward one when it thinks it runs on a
    # real cluster; tests must stay on loopback (in a subprocess: this environment variable).
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    node = dict(num_cpus=1, node_ip_address="127.0.0.1", object_store_memory=80 * 2**20)
    cluster = Cluster(initialize_head=True, head_node_args=dict(node, include_dashboard=False))
    worker = cluster.add_node(**node)
    try:
        yield cluster, worker
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_no_address_starts_a_private_cluster_even_beside_another_one(two_nodes, tmp_path):
    # Ray's own default would join the newest cluster on this machine (here: the two nodes)
    from scalinglab.backends.ray import RayBackend

    backend = RayBackend(BackendSpec("ray"), workers=1, work_dir=tmp_path)
    try:
        assert backend.owns_cluster and len([n for n in ray.nodes() if n["Alive"]]) == 1
    finally:
        backend.close()


def _journal_nodes(study_dir: Path) -> set[str]:
    return {path.name.split("-")[0] for path in (study_dir / "journal").glob("*.jsonl")}


def test_a_study_on_two_nodes_gives_the_local_points_and_survives_losing_a_node(text_corpus, tmp_path, two_nodes,
                                                                               local_reference):
    cluster, worker = two_nodes
    study = prepare_study(tiny_study(text_corpus), tmp_path / "s.db", tmp_path / "out")
    removed: list[str] = []

    def remove_the_worker_node_mid_run() -> None:
        node = worker.node_id[:12]  # the prefix of the journals its jobs write
        deadline = time.time() + 240
        while time.time() < deadline:
            for pid in _held_lock_pids(tmp_path / "out"):
                if list(study.study_dir.glob(f"journal/{node}-{pid}-*.jsonl")):  # a run training on the worker node
                    os.kill(pid, signal.SIGSTOP)  # so that it cannot finish before its node is gone
                    cluster.remove_node(worker, allow_graceful=False)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    removed.append(worker.node_id)
                    return
            time.sleep(0.02)

    remover = threading.Thread(target=remove_the_worker_node_mid_run, daemon=True)
    remover.start()
    tasks = execute(study, backend=BackendSpec("ray", address=cluster.address))
    remover.join(timeout=5)
    assert removed, "the worker node never ran a job"
    assert all(t.status == "done" for t in tasks)
    assert max(t.attempts for t in tasks) == 2  # the run on the lost node was resubmitted and resumed
    assert _points(tmp_path / "s.db") == _points(local_reference)  # none missing or doubled, same digits
    assert removed[0][:12] in _journal_nodes(study.study_dir)  # runs landed on both nodes
    assert len(_journal_nodes(study.study_dir)) == 2


def test_a_killed_driver_reruns_without_redoing_finished_runs(text_corpus, tmp_path, two_nodes, local_reference):
    cluster, _ = two_nodes
    cmd = [sys.executable, "-m", "scalinglab", "study", "--name", "t", "--corpus", str(text_corpus),
           "--sizes", "3e3,6e3", "--budget", "none", "--max-doublings", "1", "--set", "milestones_per_doubling=1",
           "--seq-len", "32", "--set", "eval_tokens=1024", "--workers", "2", "--backend", "ray",
           "--address", cluster.address, "--db", str(tmp_path / "s.db"), "--out", str(tmp_path / "out")]
    driver = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not list((tmp_path / "out").glob("*/runs/*/DONE")) and time.time() < deadline:
        time.sleep(0.05)
    driver.kill()  # kill -9 of the driver, its runs mid-flight
    driver.wait()
    finished = {path: path.read_bytes() for path in (tmp_path / "out").glob("*/runs/*/DONE")}
    assert finished, "no run finished before the driver was killed"
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert all(path.read_bytes() == marker for path, marker in finished.items())  # not redone
    assert _points(tmp_path / "s.db") == _points(local_reference)


def test_the_repetition_probe_on_ray_prints_the_local_table(run_cli, text_corpus, tmp_path):
    # its runs return their points from the worker, whose store only journals
    args = ["probe", "repetition", "--corpus", str(text_corpus), "--params", "2000", "--tokens", "16k",
            "--epochs", "1,4", "--junk", "none", "--seq-len", "32", "--workers", "2"]
    tables = {}
    try:
        for backend in ("local", "ray"):
            code, out, err = run_cli(*args, "--backend", backend, "--db", tmp_path / f"{backend}.db",
                                     "--out", tmp_path / backend)
            assert code == 0, err
            tables[backend] = [line for line in out.splitlines() if not line.startswith("figure")]
    finally:
        ray.shutdown()
    assert tables["ray"] == tables["local"]


class _FakeCluster:
    """Just enough of Ray for `check_nodes`: two alive nodes whose facts are given."""

    def __init__(self, facts: list[dict]) -> None:
        self.facts = facts

    def nodes(self) -> list[dict]:
        return [{"Alive": True, "NodeID": f"{i:056x}"} for i in range(len(self.facts))]

    def remote(self, **_):
        answers = iter(self.facts)

        class Probe:
            def options(self, **_):
                return self

            def remote(self, work_dir):
                return next(answers)

        return lambda fn: Probe()

    def get(self, refs):
        return refs


def test_a_node_that_cannot_see_out_or_runs_other_versions_stops_the_study_in_one_line(tmp_path):
    from scalinglab.backends.ray import _node_facts, check_nodes

    here = _node_facts(str(tmp_path))
    assert here["sees_work_dir"]
    check_nodes(_FakeCluster([here, dict(here, host="node-2")]), tmp_path)  # both see it: no error
    with pytest.raises(UserError, match=f"node node-2 cannot see {tmp_path}; put --out on a filesystem every node"):
        check_nodes(_FakeCluster([here, dict(here, host="node-2", sees_work_dir=False)]), tmp_path)
    other = dict(here, host="node-3", versions={**here["versions"], "torch": "2.0.0"})
    with pytest.raises(UserError, match="node node-3 runs .* install the same versions on every node"):
        check_nodes(_FakeCluster([here, other]), tmp_path)
