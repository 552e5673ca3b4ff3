"""Refusing what cannot fit before anything is built, and one line when the disk fills mid-run."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest

from scalinglab import store as store_module
from scalinglab.errors import UserError
from scalinglab.model import preset
from scalinglab.resources import check_memory, training_memory
from scalinglab.store import open_store


def _peak_rss_mib(args: list[str], cwd) -> tuple[subprocess.CompletedProcess, float]:
    """Run `python -m scalinglab ARGS` and return it with its peak resident memory (MiB)."""
    probe = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
             "sys.stderr.write(r.stderr); sys.stdout.write(r.stdout); "
             "print('RSS', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")
    done = subprocess.run([sys.executable, "-c", probe, sys.executable, "-m", "scalinglab", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)
    rss_kib = int(done.stdout.rsplit("RSS", 1)[1])
    return done, rss_kib / 1024


@pytest.mark.parametrize("command", [
    ["study", "--sizes", "1e12", "--dry-run"],
    ["train", "--params", "1e12"],
])
def test_a_model_that_cannot_fit_is_refused_in_one_line_without_allocating(command, text_corpus, tmp_path):
    done, rss = _peak_rss_mib([*command, "--corpus", str(text_corpus), "--db", str(tmp_path / "s.db")], tmp_path)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert "needs ~" in lines[-1] and "available" in lines[-1]
    assert not any("Traceback" in line for line in lines)
    assert rss < 1500, f"peak RSS {rss:.0f} MiB: something was allocated"


def test_the_memory_estimate_grows_with_model_batch_and_workers():
    small, big = preset("100k"), preset("10m")
    assert training_memory(big, 16, 256).total > training_memory(small, 16, 256).total
    assert training_memory(small, 64, 256).activations == pytest.approx(4 * training_memory(small, 16, 256).activations)
    one = training_memory(small, 16, 256)
    check_memory({"run": one}, processes=1, available=one.total * 1.5)  # fits alone...
    with pytest.raises(UserError, match=r"x 2 processes.*run with 1 worker"):
        check_memory({"run": one}, processes=2, available=one.total * 1.5)  # ...not twice


# --- a full disk (the `full_disk` fixture: writes to matching files fail with ENOSPC) ------------------

TINY_TRAIN = ["--size", "10k", "--tokens", "8192", "--seq-len", "64", "--batch-size", "4", "--eval-points", "2",
              "--eval-tokens", "1024", "--quiet"]


@pytest.mark.parametrize("pattern", ["last.pt", "config.json", "metrics.jsonl"])
def test_a_full_disk_mid_run_ends_in_one_line_and_a_rerun_resumes(pattern, run_cli, text_corpus, tmp_path,
                                                                  monkeypatch, full_disk):
    monkeypatch.chdir(tmp_path)
    args = ["train", "--corpus", str(text_corpus), *TINY_TRAIN, "--out", "run", "--db", "s.db"]
    full_disk.append(pattern)
    code, _, err = run_cli(*args)
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"error: no space left to write run/{pattern}; free space and rerun")
    assert not list((tmp_path / "run").glob(f".{pattern}*"))  # no partial file
    full_disk.clear()  # space was freed
    code, out, err = run_cli(*args, *(["--resume"] if (tmp_path / "run" / "config.json").exists() else []))
    assert code == 0, err
    assert "done: val" in out


def test_a_full_disk_while_writing_a_snapshot_or_figure_is_one_line(text_corpus, tmp_path, full_disk):
    from scalinglab.config import ModelSpec, OptimConfig, RunConfig, TrainConfig
    from scalinglab.corpus import CorpusConfig, prepare_corpus
    from scalinglab.report.figures import pyplot, save
    from scalinglab.train import plan_run, train_run

    cfg = RunConfig(corpus=CorpusConfig(source=str(text_corpus)), model=ModelSpec(size="10k"),
                    optim=OptimConfig(schedule="constant"), train=TrainConfig(tokens=8192, seq_len=64, batch_size=4))
    corpus = prepare_corpus(cfg.corpus)
    plan = plan_run(cfg, corpus, kind="trunk")
    plan.snapshot_steps = [10]
    full_disk.append("snap-*.pt")
    with pytest.raises(UserError, match="no space left to write .*snap-10.pt"):
        train_run(plan, corpus, open_store(tmp_path / "s.db"), tmp_path / "trunk", resume=True)
    assert not list((tmp_path / "trunk").glob("*snap-10*"))
    full_disk.clear()
    assert train_run(plan, corpus, open_store(tmp_path / "s.db"), tmp_path / "trunk", resume=True).status == "done"
    assert (tmp_path / "trunk" / "snap-10.pt").exists()

    full_disk.append("*.png")
    fig = pyplot().figure()
    with pytest.raises(UserError, match="no space left to write .*loss.png"):
        save(fig, tmp_path / "figures" / "loss.png")
    assert not list((tmp_path / "figures").iterdir())


def test_a_full_store_is_one_line_and_keeps_what_it_held(tmp_path, monkeypatch):
    store = open_store(tmp_path / "s.db")
    store.upsert_run("r", name="r")
    store.add_point("r", step=1, tokens=1, flops=6.0, train_loss=1.0)
    real_connect = sqlite3.connect

    def no_growth(*args, **kwargs):  # a real SQLITE_FULL: the file may not grow by a page
        con = real_connect(*args, **kwargs)
        pages = con.execute("PRAGMA page_count").fetchone()[0]
        con.execute(f"PRAGMA max_page_count = {pages}")
        return con

    monkeypatch.setattr(store_module.sqlite3, "connect", no_growth)
    with pytest.raises(UserError, match="no space left to write the results store"):
        for step in range(2, 5000):
            store.add_point("r", step=step, tokens=step, flops=6.0 * step, train_loss=1.0, extra={"pad": "x" * 500})
    monkeypatch.setattr(store_module.sqlite3, "connect", real_connect)
    kept = open_store(tmp_path / "s.db").points("r")
    assert kept[0]["step"] == 1 and len(kept) >= 1
    con = sqlite3.connect(tmp_path / "s.db")
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_run_is_refused_before_training_when_its_checkpoints_cannot_fit_on_disk(text_corpus, tmp_path,
                                                                                  monkeypatch):
    from scalinglab import resources
    from scalinglab.config import ModelSpec, RunConfig, TrainConfig
    from scalinglab.corpus import CorpusConfig, prepare_corpus
    from scalinglab.train import plan_run, train_run

    cfg = RunConfig(corpus=CorpusConfig(source=str(text_corpus)), model=ModelSpec(size="10k"),
                    train=TrainConfig(tokens=8192, seq_len=64, batch_size=4))
    corpus = prepare_corpus(cfg.corpus)
    monkeypatch.setattr(resources, "free_disk", lambda path: 1000.0)  # a nearly full filesystem
    with pytest.raises(UserError, match=r"will write ~.* but its filesystem has .* free; free space or choose another"):
        train_run(plan_run(cfg, corpus), corpus, open_store(tmp_path / "s.db"), tmp_path / "run")
    assert not (tmp_path / "run" / "train_loss.f32").exists()  # nothing trained


def test_a_full_disk_while_preparing_a_corpus_is_one_line_and_leaves_no_half_corpus(tmp_path, monkeypatch):
    import errno

    from scalinglab.corpus import CorpusConfig, prepare, prepare_corpus

    text = tmp_path / "text.txt"
    text.write_text("a line of text for the corpus\n" * 3000)

    def full(out, *args, **kwargs):
        (out / "train.bin").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(prepare, "_write_corpus", full)
    with pytest.raises(UserError, match="no space left to write .*; free space and rerun"):
        prepare_corpus(CorpusConfig(source=str(text)), tmp_path / "cache")
    assert not list((tmp_path / "cache").iterdir())  # the half-built folder is gone
