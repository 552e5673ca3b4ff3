"""The command line: the newcomer's path and every bad input (one clear line, exit code 2)."""

from __future__ import annotations

import json
import sqlite3

import pytest

from scalinglab.store import open_store

TINY = ["--set", "model.size='10k'", "--tokens", "8000", "--batch-size", "4", "--seq-len", "64",
        "--eval-points", "2", "--eval-tokens", "1024", "--quiet"]


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


@pytest.fixture
def trained(run_cli, text_corpus, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli("train", "--corpus", text_corpus, *TINY, "--out", "runs/a")
    assert code == 0, err
    return tmp_path


def test_train_runs_and_lists_and_exports(trained, run_cli):
    code, out, _ = run_cli("runs")
    run_id = open_store(trained / "scalinglab.db").runs()[0]["run_id"]
    assert code == 0 and "done" in out and run_id in out  # the whole id, to pass to other commands
    code, out, _ = run_cli("export", "points.csv")
    assert code == 0 and (trained / "points.csv").read_text().count("\n") == 3  # header + 2 points
    code, out, _ = run_cli("export", "points.parquet")  # the format follows the extension
    assert code == 0 and (trained / "points.parquet").read_bytes()[:4] == b"PAR1"
    code, out, _ = run_cli("export", "points.txt", "--format", "csv")
    assert code == 0 and (trained / "points.txt").read_text().startswith("run_id")
    code, _, err = run_cli("export", "points.xlsx")
    assert_one_line_error(code, err, "cannot tell the format of points.xlsx")


def test_corpus_info_prints_splits_and_baselines(run_cli, text_corpus):
    code, out, err = run_cli("corpus", "info", text_corpus)
    assert code == 0, err
    assert "train" in out and "val" in out and "test" in out
    assert "gzip-9" in out and "xz-9" in out and "bits/byte" in out
    code, again, err = run_cli("corpus", "info", "--corpus", text_corpus)  # as train and study take it
    assert code == 0 and again == out, err
    code, _, err = run_cli("corpus", "info", text_corpus, "--corpus", "other.txt")
    assert_one_line_error(code, err, "two corpora given")


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--corpus", "/no/such/corpus.txt"], "corpus not found"),
        (["--tokens", "-5"], "train.tokens must be a positive number"),
        (["--set", "train.tpp=0"], "train.tpp must be a positive number"),
        (["--tpp", "20"], "give the budget once: --tokens 8000 or --tpp 20, not both"),
        (["--set", "model.n_layer=2", "--set", "model.d_model=0"], "d_model must be a positive integer"),
        (["--schedule", "linear"], "unknown optim.schedule"),
        (["--tokens", "lots"], "cannot read 'lots' as a number"),
        (["--set", "train.lrr=1"], "unknown config field(s) train.lrr"),
        (["--set", "optim.lr=abc"], "optim.lr must be a number"),
        (["--set", "train.lr=1e-3"], "train.lr is now optim.lr"),
        (["--set", "train.seq_len=1.5"], "train.seq_len must be a whole number"),
        (["--resume", "--out", "runs/never-started"], "nothing to resume"),
    ],
)
def test_bad_numbers_and_paths(run_cli, text_corpus, tmp_path, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    base = ["train", "--corpus", text_corpus, *TINY]
    code, _, err = run_cli(*base, *args)
    assert_one_line_error(code, err, needle)


def test_bad_corpora(run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert_one_line_error(*run_cli("corpus", "info", empty)[::2], "no non-empty documents")
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("one line\n")
    assert_one_line_error(*run_cli("corpus", "info", tiny)[::2], "at least 3")
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("\n".join(json.dumps({"body": "x" * 50}) for _ in range(5)))
    assert_one_line_error(*run_cli("corpus", "info", jsonl)[::2], "field 'text'", "--field")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["x" * 50] * 5}), tmp_path / "c.parquet")
    assert_one_line_error(*run_cli("corpus", "info", tmp_path / "c.parquet")[::2], "no column 'text'")
    (tmp_path / "dir").mkdir()
    assert_one_line_error(*run_cli("corpus", "info", tmp_path / "dir", "--glob", "*.md")[::2], "no files match")


def test_resume_with_a_different_config_is_refused(trained, run_cli, text_corpus):
    args = ["train", "--corpus", text_corpus, *TINY, "--out", "runs/a", "--resume"]
    code, _, err = run_cli(*args[:-1], "--lr", "1e-2", "--resume")
    assert_one_line_error(code, err, "different config", "you changed --lr")
    # the option the user changed is named, and the fields derived from it only follow it
    tokens = TINY[TINY.index("--tokens") + 1]
    code, _, err = run_cli(*args[:-1], "--tokens", str(2 * int(float(tokens))), "--resume")
    assert_one_line_error(code, err, "you changed --tokens")
    assert "eval_steps" not in err and "total steps" in err
    code, _, err = run_cli(*args)  # the same config resumes (here: finds it done)
    assert code == 0, err


def test_an_unfinished_run_needs_resume(run_cli, text_corpus, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "runs" / "b"
    run_dir.mkdir(parents=True)
    (run_dir / "notes.txt").write_text("mine")
    code, _, err = run_cli("train", "--corpus", text_corpus, *TINY, "--out", run_dir)
    assert_one_line_error(code, err, "not empty")
    assert (run_dir / "notes.txt").read_text() == "mine"


def test_a_foreign_database_is_refused_and_nothing_stored_is_lost(trained, run_cli, text_corpus):
    foreign = trained / "shop.db"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE orders (id INTEGER)")
    con.commit()
    con.close()
    code, _, err = run_cli("train", "--corpus", text_corpus, *TINY, "--db", foreign)
    assert_one_line_error(code, err, "not a scalinglab results store")
    code, _, err = run_cli("runs", "--db", foreign)
    assert_one_line_error(code, err, "not a scalinglab results store")
    # the workspace's own store still holds its run after all those failures
    code, out, _ = run_cli("runs")
    run_id = open_store(trained / "scalinglab.db").runs()[0]["run_id"]
    assert code == 0 and "done" in out and run_id in out  # the whole id, to pass to other commands


def test_the_study_table_reports_the_gain_as_the_drop_its_footnote_names(capsys):
    from types import SimpleNamespace

    import pandas as pd

    from scalinglab.cli.study import print_results

    points = pd.DataFrame({"N": [12384], "D": [2.5e5], "tokens_per_param": [20.0], "val_loss": [3.1], "val_bpb": [4.4],
                           "gap": [0.01], "epoch": [0.5]})
    summary = pd.DataFrame([{"N": 12384, "beta": (0.3, 0.2, 0.4), "E": (1.5, 1.2, 1.7), "loss_at_20": 3.1,
                             "loss_at_max": 2.25, "max_tokens_per_param": 640.0, "improvement_past_20": 0.85,
                             "next_doubling_gain": 0.07}])
    print_results(SimpleNamespace(points=points, summary=summary, fit_from_tpp=20.0))
    out = capsys.readouterr().out
    assert "0.8500" in out and "-0.8500" not in out and "0.0700" in out and "-0.0700" not in out
    assert "how much the loss fell between them (positive: it improved)" in " ".join(out.split())


@pytest.mark.parametrize("width", [60, 80, 200])
def test_tables_never_cut_a_cell_at_any_width(width, capsys):
    import importlib

    from rich.console import Console

    cli_app = importlib.import_module("scalinglab.cli.app")  # the module, not the typer app it defines

    headers = ["N", "β [95%]", "E [95%]", "L at 20", "milestones (tokens/param)", "run"]
    rows = [["12,384", "0.422 [0.154, 0.786]", "1.301 (no interval)", "2.4509", "5 7.07 10 14.1 20 28.3 40 56.6 80",
             "branch-06875969f500"]] * 3
    cli_app.console = Console(width=width, markup=False, highlight=False, soft_wrap=True)
    try:
        cli_app.print_table(headers, rows, title="per N")
    finally:
        cli_app.console = Console(markup=False, highlight=False, soft_wrap=True)
    out = capsys.readouterr().out
    assert "…" not in out
    # every word of every cell is there whole, whatever the layout
    for word in {w for row in rows for cell in row for w in cell.split()}:
        assert word in out, word
    assert ("┃" in out) == (width >= 80)  # a table where it fits, one block per row where it does not
