"""probes.common, the trainer the probes share: resume, masks, scoring, parallel runs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scalinglab.errors import UserError
from scalinglab.model import GPT, ModelConfig
from scalinglab.probes.common import (
    FitRecipe,
    ProbeRecord,
    fit_sequences,
    probe_optim,
    probe_results,
    put_probe_result,
    run_parallel,
    sequence_bits,
)
from scalinglab.store import open_store

CFG = ModelConfig(n_layer=1, d_model=16, n_head=1, vocab_size=32)


def data(n: int = 24, length: int = 10, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 32, (n, length), generator=torch.Generator().manual_seed(seed))


def test_sequence_bits_of_an_untrained_model_are_about_uniform():
    torch.manual_seed(0)
    bits = sequence_bits(GPT(CFG), data())
    assert bits.shape == (24,)
    # 9 scored tokens per sequence (the first has no context) at ~log2(32) = 5 bits each
    assert np.allclose(bits / 9, 5.0, atol=0.2)


def test_a_fit_memorises_and_records_itself(tmp_path):
    recipe = FitRecipe(steps=150, optim=probe_optim(lr=1e-2), eval_every=50)
    record = ProbeRecord(tmp_path / "p.db", "demo", name="demo fit", meta={"what": "test"})
    result = fit_sequences(CFG, data(), recipe, tmp_path / "fit", record=record)
    assert [p["step"] for p in result.points] == [50, 100, 150]
    assert result.points[-1]["train_bits"] < 0.2 * result.points[0]["train_bits"]
    assert result.seq_bits.sum() == pytest.approx(result.points[-1]["train_bits"])
    store = open_store(tmp_path / "p.db")
    (run,) = store.runs(group="demo")
    assert run["kind"] == "probe:demo" and run["status"] == "done"
    assert run["config"]["meta"] == {"what": "test"}
    assert [p["step"] for p in store.points(run["run_id"])] == [50, 100, 150]
    put_probe_result(store, "demo", "k", {"x": 1})
    assert probe_results(store, "demo")[0]["x"] == 1


def test_a_finished_fit_is_loaded_not_retrained(tmp_path):
    recipe = FitRecipe(steps=30, optim=probe_optim(lr=1e-2), eval_every=10)
    first = fit_sequences(CFG, data(), recipe, tmp_path / "fit", stop_when=lambda pts: pts[-1]["step"] >= 20)
    assert first.stopped_early and first.steps == 20
    stamp = (tmp_path / "fit" / "last.pt").stat().st_mtime_ns
    again = fit_sequences(CFG, data(), recipe, tmp_path / "fit", stop_when=lambda pts: pts[-1]["step"] >= 20)
    assert (tmp_path / "fit" / "last.pt").stat().st_mtime_ns == stamp
    assert again.stopped_early and again.steps == 20
    assert np.array_equal(again.seq_bits, first.seq_bits)
    # the same folder with other data is refused
    with pytest.raises(UserError):
        fit_sequences(CFG, data(seed=1), recipe, tmp_path / "fit")


def test_loss_mask_trains_and_scores_only_the_chosen_positions(tmp_path):
    mask = torch.zeros(9)
    mask[-1] = 1.0  # only the last token of each sequence counts
    result = fit_sequences(CFG, data(), FitRecipe(steps=150, optim=probe_optim(lr=1e-2), eval_every=150), tmp_path / "fit",
                           loss_mask=mask)
    masked = sequence_bits(result.model, data(), mask)
    full = sequence_bits(result.model, data())
    assert np.allclose(masked, result.seq_bits)
    assert masked.sum() < 0.2 * 24 * math.log2(32)  # the answer positions are learned...
    assert full.sum() > 5 * masked.sum()  # ...and the unscored ones are not


@pytest.mark.parametrize("bad", [torch.zeros(5, dtype=torch.int64), torch.full((3, 4), 99), torch.rand(3, 4)])
def test_bad_sequences_are_user_errors(tmp_path, bad):
    with pytest.raises(UserError):
        fit_sequences(CFG, bad, FitRecipe(steps=5), tmp_path / "fit")


def test_bad_recipes_are_user_errors():
    for bad in (dict(steps=0), dict(steps=5, optim=probe_optim(lr=-1.0)),
                dict(steps=5, optim=probe_optim(schedule="sometimes")), dict(steps=5, batch_size=0)):
        with pytest.raises(UserError):
            FitRecipe(**bad)


def _square(x: int) -> int:
    return x * x


def test_run_parallel_keeps_job_order():
    assert run_parallel(_square, [3, 1, 2], workers=2) == [9, 1, 4]
    assert run_parallel(_square, [3, 1, 2], workers=1) == [9, 1, 4]


def test_a_diverged_fit_is_one_line_through_the_worker_pool(tmp_path):
    # (marking and refusing a diverged run is the engine's, tested over every kind in test_engine)
    with pytest.raises(UserError, match="diverged.*lower the learning rate"):
        run_parallel(_fit_hot, [str(tmp_path / "fit2")], workers=1)


def _fit_hot(out_dir: str):
    recipe = FitRecipe(steps=50, optim=probe_optim(lr=1e30, warmup=0, grad_clip=0.0), eval_every=10)
    return fit_sequences(CFG, data(), recipe, out_dir)
