"""The repetition probe: junk corpora, Muennighoff's effective data, and the qualitative facts."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import make_text
from scalinglab.config import ModelSpec, OptimConfig, RunConfig, TrainConfig
from scalinglab.corpus import CorpusConfig, prepare_corpus
from scalinglab.errors import UserError
from scalinglab.probes.junk import JunkSpec, junk_corpus, junk_share, junk_tokens
from scalinglab.probes.repetition import RepetitionConfig, effective_data, run_repetition
from scalinglab.store import open_store


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The structured test text, prepared in a cache of this module's own."""
    path = tmp_path_factory.mktemp("rep") / "code.txt"
    path.write_text(make_text(120_000))
    return prepare_corpus(CorpusConfig(source=str(path)), tmp_path_factory.mktemp("rep-cache"))


def _base(corpus_path: str, tokens: float) -> RunConfig:
    # Small batches of short sequences: enough updates for a tiny model to overfit a tiny subset.
    return RunConfig(corpus=CorpusConfig(source=corpus_path), model=ModelSpec(size="10k"),
                     optim=OptimConfig(lr=1e-2),
                     train=TrainConfig(tokens=tokens, seq_len=64, batch_size=2, eval_points=2,
                                       eval_tokens=8192))


# --- junk ------------------------------------------------------------------------------------------

def test_junk_tokens_replace_the_asked_share_deterministically():
    tokens = np.arange(100_000, dtype=np.uint16) % 200
    junk, spans = junk_tokens(tokens, 256, JunkSpec(0.3, "uniform", span=100, seed=1))
    changed = (junk != tokens).reshape(-1, 100).any(axis=1)
    assert len(spans) == 300 and set(np.flatnonzero(changed)) <= set(spans.tolist())
    assert changed.sum() > 290  # a random span equal to the original is vanishingly rare
    again, _ = junk_tokens(tokens, 256, JunkSpec(0.3, "uniform", span=100, seed=1))
    assert np.array_equal(junk, again)
    shuffled, _ = junk_tokens(tokens, 256, JunkSpec(0.3, "shuffled", span=100, seed=1))
    assert set(np.unique(shuffled)) <= set(np.unique(tokens))  # real tokens, random order


def test_junk_corpus_keeps_val_and_test_clean(corpus):
    variant = junk_corpus(corpus, JunkSpec(0.5, span=256))
    assert variant.key != corpus.key and variant.content_hash != corpus.content_hash
    for split in ("val", "test"):
        assert np.array_equal(np.asarray(variant.tokens(split)), np.asarray(corpus.tokens(split)))
    train, clean = np.asarray(variant.tokens("train")), np.asarray(corpus.tokens("train"))
    assert len(train) == len(clean) and not np.array_equal(train, clean)
    assert junk_share(variant, len(train)) == pytest.approx(0.5, abs=0.01)
    assert junk_share(corpus, len(train)) == 0.0
    assert junk_corpus(corpus, JunkSpec(0.5, span=256)).path == variant.path  # cached


@pytest.mark.parametrize("bad", [dict(fraction=1.0), dict(fraction=-0.1), dict(fraction=0.2, kind="zeros"),
                                 dict(fraction=0.2, span=0)])
def test_bad_junk_settings_are_user_errors(bad):
    with pytest.raises(UserError):
        JunkSpec(**bad)


# --- Muennighoff's effective data -------------------------------------------------------------------

def test_effective_data_matches_the_law_limits():
    U = np.full(5, 1000.0)
    D = U * np.array([1, 2, 5, 41, 1000])
    d_eff = effective_data(U, D, 15.39)
    assert d_eff[0] == 1000.0  # one epoch is fresh data
    assert np.all(np.diff(d_eff) > 0) and np.all(d_eff <= D)  # repeats help, less than fresh data
    assert d_eff[1] == pytest.approx(2000, rel=0.04)  # a second epoch is nearly as good as new
    assert d_eff[-1] == pytest.approx(1000 * (1 + 15.39), rel=1e-6)  # the value saturates at U (1 + R*)
    assert np.allclose(effective_data(U, D, 1e9), D)  # R* -> infinity: every repeat as good as new


def test_a_budget_larger_than_the_train_split_is_a_user_error(corpus, tmp_path):
    cfg = RepetitionConfig(base=_base(str(corpus.path), 1e9), epochs=(1, 2), junk=())
    with pytest.raises(UserError, match="train split"):
        run_repetition(cfg, corpus, db=tmp_path / "s.db", out_root=tmp_path / "rep")


# --- the experiment ----------------------------------------------------------------------------------

def test_repeated_data_hurts_more_as_epochs_grow_and_junk_hurts(corpus, tmp_path):
    cfg = RepetitionConfig(base=_base(str(corpus.path), 100_000), epochs=(1, 8, 64), junk=(0.5,))
    db = tmp_path / "s.db"
    result = run_repetition(cfg, corpus, db=db, out_root=tmp_path / "rep")
    rep = result.rows("repeated").set_index("epochs")
    assert (result.table.status == "done").all()
    assert rep.realised_epochs[64] == pytest.approx(64, rel=0.1)
    # at a fixed budget, the fewer unique tokens, the worse the held-out loss...
    assert rep.val_loss[64] > rep.val_loss[8] + 0.1
    assert rep.val_loss[64] > rep.val_loss[1] + 0.1
    # ...and the harm grows with the epochs: 8 epochs cost far less than 64
    assert rep.val_loss[8] - rep.val_loss[1] < 0.5 * (rep.val_loss[64] - rep.val_loss[1])
    # ...because the model memorises what it repeats
    assert rep.train_loss[64] < rep.val_loss[64] - 0.2
    # fresh runs on each subset, and the predictions made from them
    assert len(result.rows("fresh")) == 2 and result.fresh_fit is not None
    assert rep.predicted_loss.notna().all() and result.rd_star_fitted is not None
    # junk in the training data hurts the clean val loss
    junk = result.rows("junk").iloc[0]
    assert junk.junk_share == pytest.approx(0.5, abs=0.05)
    assert junk.val_loss > rep.val_loss[1] + 0.05
    stored = open_store(db).results("probe:repetition")
    assert stored and stored[-1]["rd_star_fitted"] == pytest.approx(result.rd_star_fitted)
    # a second call finds every run done and trains nothing
    runs_before = len(open_store(db).runs(group="repetition"))
    again = run_repetition(cfg, corpus, db=db, out_root=tmp_path / "rep")
    assert len(open_store(db).runs(group="repetition")) == runs_before
    assert np.allclose(again.table.val_loss, result.table.val_loss)


def test_cli_errors_are_one_line_and_exit_2(run_cli, tmp_path):
    for args in (("--epochs", "1,x"), ("--junk", "1.5"), ("--junk-kind", "zeros"), ("--tokens", "lots")):
        code, _, stderr = run_cli("probe", "repetition", *args, "--db", tmp_path / "s.db", "--out", tmp_path / "r")
        assert code == 2, args
        assert stderr.strip().startswith("error:") and len(stderr.strip().splitlines()) == 1
