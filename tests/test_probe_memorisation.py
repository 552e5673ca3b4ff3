"""The memorisation probe: disjoint subsets, the AUC falling towards 0.5 as D/N grows, the two
memorised-bits estimates, resume, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import make_text
from scalinglab.corpus.prepare import CorpusConfig, prepare_corpus
from scalinglab.errors import UserError
from scalinglab.probes.memorisation import (
    MemorisationConfig,
    auc,
    run_memorisation,
    storage_limits,
    subset_pools,
    take_tokens,
)
from scalinglab.store import open_store


@pytest.fixture(scope="module")
def docs_corpus(tmp_path_factory) -> Path:
    """~300 kB of structured text in 150 documents: the random names and numbers of each
    document are what a model can memorise, the grammar is what it can learn."""
    root = tmp_path_factory.mktemp("memo-corpus")
    for i in range(150):
        (root / f"doc{i:03d}.txt").write_text(make_text(2000, seed=i))
    return root


def tiny_config(corpus: Path, **changes) -> MemorisationConfig:
    base = dict(corpus=CorpusConfig(source=str(corpus)), size=None, params=2000, tokens_per_param=(1.0, 32.0),
                seq_len=32, batch_size=16, lr=1e-2, doc_tokens=256, eval_windows=128)
    return MemorisationConfig(**{**base, **changes})


@pytest.fixture(scope="module")
def probe_run(docs_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("memo-run")
    cfg = tiny_config(docs_corpus)
    result = run_memorisation(cfg, out / "out", out / "probe.db", workers=1)
    return cfg, result, out


def test_model_and_reference_subsets_are_disjoint_and_nested(docs_corpus):
    cfg = tiny_config(docs_corpus)
    corpus = prepare_corpus(cfg.corpus)
    members, references = subset_pools(corpus, cfg)
    covered = lambda pieces: {t for s, e in pieces for t in range(int(s), int(e))}  # noqa: E731
    assert not covered(members) & covered(references)
    small, large = take_tokens(members, 1000), take_tokens(members, 5000)
    assert int((small[:, 1] - small[:, 0]).sum()) == 1000
    assert covered(small) <= covered(large)
    with pytest.raises(UserError):
        take_tokens(members, 10**9)


def test_auc_falls_towards_one_half_as_d_over_n_grows(probe_run):
    _, result, _ = probe_run
    rows = result.rows.sort_values("tokens_per_param")
    small, large = rows.iloc[0], rows.iloc[-1]
    # at D/N = 1 the data is repeated 32 times: the model knows its training windows
    assert small["auc_reference"] > 0.62
    assert small["auc_loss"] > large["auc_loss"]
    # at D/N = 32 every window was seen once: membership is close to a coin flip
    assert abs(large["auc_reference"] - 0.5) < 0.08
    assert small["auc_reference"] - 0.5 > 2 * abs(large["auc_reference"] - 0.5)
    assert abs(large["auc_loss"] - 0.5) < 0.1


def test_memorised_bits_estimates_and_shares(probe_run):
    _, result, _ = probe_run
    rows = result.rows.sort_values("tokens_per_param")
    small, large = rows.iloc[0], rows.iloc[-1]
    # repeated small data: the estimates see sample-specific bits, and they are a far larger
    # share of the training-set gain than for data seen once
    assert small["cheap_memorised_bits"] > 0
    assert small["memorised_bits_calibrated"] > 2 * small["memorised_bits_calibrated_se"]
    assert small["sample_specific_share"] > large["sample_specific_share"]
    assert (rows["train_gain_bits"] - rows["memorised_bits_calibrated"] - rows["generalised_bits"]).abs().max() < 1e-6
    # the summary is in the store, with the α it used
    stored = open_store(probe_run[2] / "probe.db").get_result("probe:memorization", probe_run[0].key())
    assert stored["alpha"] == pytest.approx(3.6) and "anchor" in stored["alpha_source"]
    assert len(stored["rows"]) == 2


def test_a_rerun_does_not_retrain_or_rescore(probe_run):
    cfg, first, out = probe_run
    runs = sorted((out / "out" / "runs").glob("*/last.pt"))
    assert len(runs) == 4  # a model and a reference per D
    stamps = [p.stat().st_mtime_ns for p in runs]
    second = run_memorisation(cfg, out / "out", out / "probe.db", workers=1)
    assert [p.stat().st_mtime_ns for p in runs] == stamps
    assert second.rows["memorised_bits"].to_list() == first.rows["memorised_bits"].to_list()


def test_auc_definition():
    assert auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert auc(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 0.0
    assert auc(np.array([1.0, 1.0]), np.array([1.0, 1.0])) == 0.5


def test_storage_limit_is_capacity_over_data_bits():
    (limit,) = storage_limits([("m", 1000, 1500)], alpha=2.0, bits_per_token=1.5)
    assert limit.capacity_bits == 3000
    assert limit.limit_tokens == pytest.approx(2000)
    assert limit.limit_tokens_per_param == pytest.approx(2.0)


@pytest.mark.parametrize("args, message", [
    (["--tpp", "0,4"], "positive"),
    (["--tpp", "abc"], "cannot read"),
    (["--seq-len", "1"], "seq-len"),
    (["--corpus", "/nonexistent/place"], ""),
    (["--tpp", "100000"], "train split"),
    (["--alpha", "-1"], "alpha"),
])
def test_cli_bad_input_exits_2(run_cli, tmp_path, docs_corpus, args, message):
    base = ["probe", "memorisation", "--corpus", docs_corpus, "--params", "2000", "--db", tmp_path / "x.db",
            "--out", tmp_path / "out"]
    code, _, err = run_cli(*base, *args)
    assert code == 2, err
    assert message in err
    assert not (tmp_path / "out" / "runs").exists() or not any((tmp_path / "out" / "runs").iterdir())


def test_the_older_command_name_still_runs_but_is_hidden(run_cli, tmp_path, docs_corpus):
    code, listing, err = run_cli("probe", "--help")
    assert code == 0, err
    assert "memorisation" in listing and "memorization" not in listing
    for name in ("memorisation", "memorization"):
        code, out, err = run_cli("probe", name, "--help")
        assert code == 0, err
        assert "membership inference" in out and "--tpp" in out
    # the alias is the same command: same checks, same one-line error
    code, _, err = run_cli("probe", "memorization", "--corpus", docs_corpus, "--params", "2000", "--tpp", "0,4",
                           "--db", tmp_path / "x.db", "--out", tmp_path / "out")
    assert code == 2 and "positive" in err, err


def test_the_study_runs_are_measured_when_asked(docs_corpus, tmp_path):
    from scalinglab.config import ModelSpec, RunConfig, TrainConfig
    from scalinglab.probes.memorisation import measure_study
    from scalinglab.train import plan_run, train_run

    corpus_cfg = CorpusConfig(source=str(docs_corpus))
    run_cfg = RunConfig(corpus=corpus_cfg, model=ModelSpec(size=None, params=2000),
                        train=TrainConfig(tokens=20_000, tpp=None, seq_len=32, batch_size=16, eval_points=2))
    corpus = prepare_corpus(corpus_cfg)
    plan = plan_run(run_cfg, corpus, kind="branch")
    plan.group = "toy-study"
    store = open_store(tmp_path / "s.db")
    train_run(plan, corpus, store, tmp_path / "branch")
    with pytest.raises(UserError):
        measure_study(store, tmp_path / "s.db", "no-such-study", tiny_config(docs_corpus))
    (row,) = measure_study(store, tmp_path / "s.db", "toy-study", tiny_config(docs_corpus)).itertuples()
    assert row.D == plan.total_steps * plan.batch_tokens
    assert row.N == store.get_run(plan.run_id)["n_nonembedding"]
    assert 0.0 <= row.auc_loss <= 1.0
    assert np.isfinite(row.cheap_memorised_bits)
