"""The open-book probe: episodes that hold (or lack) the right record among honest distractors, a
reader that learns to copy what it never stored, the stored result, and one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scalinglab.errors import UserError
from scalinglab.probes.open_book import (
    RECORD,
    OpenBookConfig,
    answers,
    closed_rows,
    context_len,
    episodes,
    fact_table,
    run_open_book,
    training_episodes,
)
from scalinglab.store import open_store

TINY = dict(facts=(64, 256), alphabet=16, models=((2, 32),), records=(1, 2), train_records=2, recall=(1.0, 0.5),
            closed_epochs=60, closed_min_steps=100, reader_steps=600, batch_size=64, eval_queries=128)


def _records(row: np.ndarray, k: int) -> list[tuple]:
    return [tuple(row[i * RECORD : i * RECORD + 6]) for i in range(k)]


def test_episodes_hold_the_right_record_exactly_when_asked():
    cfg = OpenBookConfig(**TINY)
    table = fact_table(cfg).prefix(64)
    rng = np.random.default_rng(0)
    own = np.arange(32)
    present = np.arange(32) % 2 == 0
    for hard in (0.0, 1.0):
        rows = episodes(rng, table.keys[:32], table.values[:32], 4, cfg.alphabet, hard=hard, present=present,
                        others=table, own=own).numpy()
        assert rows.shape == (32, context_len(4))
        for i, row in enumerate(rows):
            key, value = tuple(table.keys[i]), tuple(table.values[i])
            assert tuple(row[-5:-2]) == key and tuple(row[-2:]) == value  # the query and its answer
            records = _records(row, 4)
            right = [r for r in records if r[:3] == key]
            assert len(right) == int(present[i]) and all(r[3:5] == value for r in right)
            if hard:  # a near miss shares two of the key's three symbols
                assert all(sum(a == b for a, b in zip(r[:3], key)) == 2 for r in records if r[:3] != key)
    # smaller tables are prefixes of larger ones: a closed-book fit at F sees the same facts in any sweep
    larger = fact_table(OpenBookConfig(**{**TINY, "facts": (64, 1024)}))
    assert np.array_equal(larger.keys[:256], fact_table(cfg).keys)
    assert closed_rows(table, cfg.alphabet).shape == (64, 6)


def test_training_episodes_ask_records_of_the_episode():
    rows = training_episodes(np.random.default_rng(3), 64, 3, 16, hard=1.0).numpy()
    assert rows.shape == (64, 2 * 3 * RECORD)
    for row in rows:
        records = _records(row, 3)
        for j in range(3):
            query = tuple(row[(3 + j) * RECORD + 1 : (3 + j + 1) * RECORD])  # after Q: key, value
            assert query in [r[:5] for r in records]
        first = records[0][:3]  # the other records are near misses of the first key
        assert all(sum(a == b for a, b in zip(r[:3], first)) == 2 for r in records[1:])


def test_answers_are_the_predictions_of_the_two_value_tokens():
    class Oracle(torch.nn.Module):
        """Predicts the next token of fixed rows exactly, but for row 0's second value token."""

        def __init__(self, rows: torch.Tensor, vocab: int) -> None:
            super().__init__()
            self.rows, self.vocab = rows, vocab
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            nxt = self.rows[:, 1:].clone()
            nxt[0, -1] = (nxt[0, -1] + 1) % self.vocab
            return 50.0 * torch.nn.functional.one_hot(nxt, self.vocab).float()

    cfg = OpenBookConfig(**TINY)
    table = fact_table(cfg).prefix(4)
    rng = np.random.default_rng(1)
    rows = episodes(rng, table.keys, table.values, 2, cfg.alphabet, hard=0.5)
    bits, right = answers(Oracle(rows, cfg.vocab_size), rows)
    assert right.tolist() == [False, True, True, True]
    assert bits[0] > 50 and bits[1:].max() < 1e-6


def test_a_two_layer_reader_learns_to_copy_facts_it_never_stored(tmp_path):
    cfg = OpenBookConfig(**TINY)
    db = tmp_path / "s.db"
    result = run_open_book(cfg, tmp_path / "out", db=db, workers=1, figures=tmp_path / "fig")
    reader, closed = result.reader, result.closed
    present = reader[(reader.k == 1) & (reader.rho == 1.0)]
    removed = reader[reader.rho == 0.0]
    assert present.accuracy.min() > 0.5  # it copies the value of facts it has never seen
    assert removed.accuracy.max() < 0.05  # without the record it knows nothing of them
    assert list(closed.F) == [64, 256] and (closed.recalled <= closed.F).all()
    assert result.figures[0].exists()
    stored = open_store(db).get_result("probe:open-book", cfg.key())
    assert stored["crossover"][0]["model"] == "2x32" and len(stored["reader"]) == len(reader)
    again = run_open_book(cfg, tmp_path / "out", db=db, workers=1)  # finished runs are loaded
    assert again.reader.equals(reader) and again.closed.equals(closed)


@pytest.mark.parametrize("change, message", [
    ({"facts": (1,)}, "--facts must be whole numbers >= 2"),
    ({"records": (0, 2)}, "--records (k) must be whole numbers >= 1"),
    ({"recall": (1.5,)}, "--recall (ρ) must lie in (0, 1]"),
    ({"recall": (0.0,)}, "--recall (ρ) must lie in (0, 1]"),
    ({"records": (1, 4)}, "trains on contexts of up to 2 records (18 tokens) and cannot be asked with k=4"),
])
def test_bad_settings_are_refused(change, message):
    with pytest.raises(UserError) as caught:
        OpenBookConfig(**{**TINY, **change})
    assert message in str(caught.value)


def test_the_cli_refuses_bad_input_in_one_line_and_stores_nothing(run_cli, tmp_path):
    db = tmp_path / "s.db"
    code, _, err = run_cli("probe", "open-book", "--recall", "0", "--db", str(db), "--out", str(tmp_path / "o"))
    assert code == 2 and "--recall (ρ) must lie in (0, 1]" in err and len(err.strip().splitlines()) == 1
    assert not db.exists() and not (tmp_path / "o").exists()
