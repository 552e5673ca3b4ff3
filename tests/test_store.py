"""The results store: round trips, foreign files, and integrity after a killed writer."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from scalinglab.errors import UserError
from scalinglab.store import load_points, open_store


def test_runs_points_and_results_round_trip(tmp_path):
    db = tmp_path / "s.db"
    store = open_store(db)
    store.upsert_run("r1", kind="train", config={"a": 1}, n_nonembedding=1000, status="done")
    store.add_point("r1", step=10, tokens=100.0, flops=1e6, val_loss=2.5, train_loss=2.4, extra={"x": 1})
    store.add_point("r1", step=10, tokens=100.0, flops=1e6, val_loss=2.4, train_loss=2.3)  # re-recorded step
    store.put_result("fit", "k", {"alpha": 0.3})
    again = open_store(db)
    assert again.get_run("r1")["config"] == {"a": 1}
    frame = load_points(db)
    assert len(frame) == 1 and frame.loc[0, "val_loss"] == 2.4 and frame.loc[0, "n_nonembedding"] == 1000
    assert again.get_result("fit", "k") == {"alpha": 0.3}


def test_foreign_databases_are_refused_and_left_alone(tmp_path):
    text = tmp_path / "notes.db"
    text.write_text("not a database")
    with pytest.raises(UserError, match="not a scalinglab results store"):
        open_store(text)
    assert text.read_text() == "not a database"
    other = tmp_path / "other.db"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE customers (id INTEGER)")
    con.commit()
    con.close()
    with pytest.raises(UserError, match="not a scalinglab results store"):
        open_store(other)
    con = sqlite3.connect(other)
    assert [r[0] for r in con.execute("SELECT name FROM sqlite_master")] == ["customers"]
    con.close()


WRITER = textwrap.dedent(
    """
    import sys
    from scalinglab.store import open_store
    store = open_store(sys.argv[1])
    store.upsert_run("w", kind="train", status="running")
    step = 0
    while True:
        step += 1
        store.add_point("w", step=step, tokens=float(step), flops=1.0, val_loss=1.0 / step,
                        extra={"pad": "x" * 2000})
        print(step, flush=True)
    """
)


def test_a_killed_writer_never_corrupts_the_store_or_loses_a_committed_point(tmp_path):
    db = tmp_path / "k.db"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE, text=True)
    committed = 0
    deadline = time.time() + 60
    while committed < 200 and time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        committed = int(line)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert committed >= 200
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    points = open_store(db).points("w")
    steps = [p["step"] for p in points]
    # every point the writer reported as committed is there, in order, without gaps
    assert steps[: committed] == list(range(1, committed + 1))
