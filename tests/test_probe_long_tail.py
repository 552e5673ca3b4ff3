"""The long-tail probe: the stream and its exact exposure counts, trunk and branches that resume,
the recall curve's fit, the stored result, and one-line errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from scalinglab.errors import UserError
from scalinglab.probes.long_tail import (
    FactStream,
    LongTailConfig,
    fact_table,
    logistic_fit,
    milestones,
    run_long_tail,
    stream_probs,
)
from scalinglab.store import open_store

TINY = dict(facts=512, alphabet=16, models=((1, 8),), presented=(640, 1280, 2560), batch_size=64, head=50)


def test_the_stream_follows_zipf_and_its_exposure_counts_are_exact():
    cfg = LongTailConfig(**TINY)
    stream = FactStream(stream_probs(cfg, "zipf"), cfg.batch_size, cfg.seed)
    assert np.array_equal(stream.ids(7), stream.ids(7))  # a pure function of the step
    counts = stream.exposures(40)
    by_hand = np.bincount(np.concatenate([stream.ids(s) for s in range(40)]), minlength=cfg.facts)
    assert np.array_equal(counts, by_hand) and counts.sum() == 40 * cfg.batch_size
    assert counts[0] > 10 * np.median(counts)  # the head is seen far more often than a typical fact
    head = FactStream(stream_probs(cfg, "head"), cfg.batch_size, cfg.seed).exposures(40)
    assert head[cfg.head:].sum() == 0 and head.sum() == 40 * cfg.batch_size
    uniform = stream_probs(cfg, "uniform")
    assert np.allclose(uniform, 1 / cfg.facts)
    table = fact_table(cfg).numpy()
    assert table.shape == (cfg.facts, 7) and len({tuple(k) for k in table[:, 1:4]}) == cfg.facts


def test_branches_cool_down_over_the_end_of_each_d_and_the_head_gets_its_share():
    cfg = LongTailConfig(**TINY)
    assert milestones(cfg, "zipf") == [(640, 10, 8), (1280, 20, 16), (2560, 40, 32)]
    head_share = stream_probs(cfg, "zipf")[: cfg.head].sum()
    assert [end for _, end, _ in milestones(cfg, "head")] == [round(d * head_share / 64) for d in cfg.presented]


def test_logistic_fit_recovers_the_exposures_for_half_recall():
    rng = np.random.default_rng(0)
    exposures = rng.integers(1, 2000, size=20000)
    p = 1 / (1 + np.exp(-3.0 * (np.log10(exposures) - np.log10(50))))
    c50, slope = logistic_fit(exposures, rng.random(len(p)) < p)
    assert c50 == pytest.approx(50, rel=0.1) and slope == pytest.approx(3.0, rel=0.1)
    assert np.isnan(logistic_fit(exposures, np.zeros(len(p), bool))[0])  # nothing recalled: no curve
    rare = rng.random(len(p)) < 0.01 * np.log10(exposures)  # rises, but far from 50% within the data
    c50, slope = logistic_fit(exposures, rare)
    assert np.isnan(c50) and slope > 0


def test_a_run_measures_every_branch_resumes_and_stores_its_result(tmp_path):
    cfg = LongTailConfig(**TINY)
    db = tmp_path / "s.db"
    result = run_long_tail(cfg, tmp_path / "out", db=db, workers=1, figures=tmp_path / "fig")
    t = result.table
    assert len(t) == 3 * 3 and set(t.stream) == {"zipf", "uniform", "head"}
    for row in t.itertuples():
        facts = np.load(row.facts_path)
        assert facts["exposures"].sum() == row.steps * cfg.batch_size == row.presented
        assert int(facts["correct"].sum()) == row.facts_recalled
    zipf = t[t.stream == "zipf"]
    assert zipf.facts_recalled.iloc[-1] > zipf.facts_recalled.iloc[0]  # more data, more facts
    assert result.figures[0].exists()
    stored = open_store(db)
    assert stored.get_result("probe:long-tail", cfg.key())["table"][0]["stream"] == t.stream.iloc[0]
    assert {r["status"] for r in stored.runs()} == {"done"} and len(stored.runs()) == 3 * (1 + 3)
    # a rerun loads every finished run and gives the same numbers; a branch lost (its folder
    # deleted) is trained again from the trunk's snapshot to the same bits
    lost = t.facts_path.iloc[-1]
    before = np.load(lost)["bits"]
    shutil.rmtree(Path(lost).parent)
    again = run_long_tail(cfg, tmp_path / "out", db=db, workers=1)
    assert again.table.drop(columns=["facts_path"]).equals(t.drop(columns=["facts_path"]))
    assert np.array_equal(np.load(lost)["bits"], before)


@pytest.mark.parametrize("field, value, message", [
    ("zipf", 0.0, "--zipf must be a number > 0"),
    ("facts", 1, "--facts must be a whole number >= 2"),
    ("presented", (100,), "at least 5 batches"),
    ("head", 512, "--head must lie in [1, facts)"),
])
def test_bad_settings_are_refused(field, value, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace(")", r"\)")):
        LongTailConfig(**{**TINY, field: value})


def test_the_cli_refuses_bad_input_in_one_line_and_stores_nothing(run_cli, tmp_path):
    db = tmp_path / "s.db"
    code, _, err = run_cli("probe", "long-tail", "--zipf", "-1", "--db", str(db), "--out", str(tmp_path / "o"))
    assert code == 2 and "--zipf must be a number > 0" in err and len(err.strip().splitlines()) == 1
    assert not db.exists() and not (tmp_path / "o").exists()
