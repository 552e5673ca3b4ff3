"""The capacity probe: memorised bits of random sequences, capacity vs size, α, resume, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scalinglab.errors import UserError
from scalinglab.model import count_params
from scalinglab.probes.capacity import (
    CapacityConfig,
    capacity_jobs,
    fit_alpha,
    memorised_bits,
    model_config,
    parse_models,
    run_capacity,
)
from scalinglab.probes.common import probe_optim
from scalinglab.store import open_store

# Tiny random data: V = 16, S = 9, so a sequence carries 8 x 4 = 32 bits.
TINY = dict(vocab_size=16, seq_len=9, optim=probe_optim(lr=1e-2, schedule="cosine", warmup=10), eval_points=4,
            heldout_sequences=32)


def test_memorised_bits_clip_each_sequence_at_zero():
    h = 32.0
    # a perfectly predicted sequence stores h bits; a badly predicted one stores 0, not a negative amount
    assert memorised_bits(np.array([0.0, 70.0, 16.0]), h) == pytest.approx(32.0 + 0.0 + 16.0)


def test_memorised_bits_never_exceed_the_data_entropy(tmp_path):
    cfg = CapacityConfig(models=((1, 8), (1, 16)), data_bits_per_param=(0.5, 3.0), steps=300, **TINY)
    result = run_capacity(cfg, tmp_path / "out", workers=1)
    runs = result.runs
    assert len(runs) == 4
    assert (runs["memorised_bits"] <= runs["data_bits"] * (1 + 1e-9)).all()
    assert (runs["memorised_bits"] >= 0).all()
    # H(data) follows the convention: the first token of each sequence is not scored
    assert (runs["data_bits"] == runs["n_sequences"] * 8 * math.log2(16)).all()
    # and every run says how far from convergence it is
    assert runs["second_half_gain"].between(-1, 1).all()


def test_small_random_data_sets_are_fully_memorised_with_spare_parameters(tmp_path):
    # data entropy = 1/3 bit per parameter: 3x more parameters than the anchor's 1 bit/param
    # would need even for a weak memoriser
    # (V = 64: with V = 16 a sequence often starts with a repeated token, which a model without
    # absolute positions cannot tell from a single one; see the capacity module's doc)
    cfg = CapacityConfig(models=((1, 16),), data_bits_per_param=(1 / 3,), steps=1500, **{**TINY, "vocab_size": 64})
    result = run_capacity(cfg, tmp_path / "out", workers=1)
    row = result.runs.iloc[0]
    assert row["memorised_fraction"] > 0.99
    assert row["stopped_early"]  # the early stop fires once everything is stored
    assert result.models.iloc[0]["doubling_gain"] == 0.0  # converged: no half-length twin needed
    assert not list((tmp_path / "out").glob("*-steps*"))


def test_capacity_grows_with_model_size(tmp_path):
    # both models get data far beyond what they can store, so each plateaus at its capacity
    cfg = CapacityConfig(models=((1, 8), (1, 24)), data_bits_per_param=(6.0,), steps=400, **TINY)
    result = run_capacity(cfg, tmp_path / "out", workers=1)
    small, large = result.models.sort_values("params")["capacity_bits"].to_list()
    assert large > 2 * small
    assert result.models["saturated"].all()
    # neither stored everything, so each capacity fit has a half-length twin measuring convergence
    assert len(list((tmp_path / "out").glob("*-steps200/DONE"))) == 2
    models = result.models
    assert np.allclose(models["doubling_gain"], 1 - models["memorised_bits_half_steps"] / models["capacity_bits"])
    assert (models["doubling_gain"] > 0).all()  # 200 steps is far from converged
    assert result.summary()["converged"] == bool((models["doubling_gain"] < 0.02).all())


def test_alpha_fit_recovers_a_proportional_law():
    params = np.array([1e4, 2e4, 4e4, 8e4])
    fit = fit_alpha(params, 2.5 * params * np.array([1.0, 1.02, 0.98, 1.0]))
    assert fit.alpha == pytest.approx(2.5, rel=0.02)
    assert fit.low < 2.5 < fit.high
    assert fit.r2 > 0.99
    assert fit.log_slope == pytest.approx(1.0, abs=0.05)


def test_finished_runs_are_never_redone(tmp_path):
    cfg = CapacityConfig(models=((1, 8),), data_bits_per_param=(0.5, 2.0), steps=60, **TINY)
    db = tmp_path / "probe.db"
    first = run_capacity(cfg, tmp_path / "out", db, workers=1)
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("*/last.pt")}
    assert len(stamps) == 3  # two data sizes and the capacity fit's half-length twin
    second = run_capacity(cfg, tmp_path / "out", db, workers=1)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("*/last.pt")} == stamps
    assert second.runs["memorised_bits"].to_list() == first.runs["memorised_bits"].to_list()
    # the runs and the summary are in the store
    store = open_store(db)
    assert len(store.runs(group="capacity", kind="probe:capacity")) == 3
    stored = store.get_result("probe:capacity", cfg.key())
    assert stored["alpha"] == pytest.approx(first.fit.alpha)


def test_data_set_sizes_follow_bits_per_parameter():
    cfg = CapacityConfig(models=((1, 16),), data_bits_per_param=(1.0, 4.0), steps=10, **TINY)
    params = count_params(model_config(1, 16, 16)).total
    sizes = [job.n_sequences for job in capacity_jobs(cfg, "unused", None)]
    assert sizes == [round(params / 32), round(4 * params / 32)]


@pytest.mark.parametrize("bad", [
    dict(models=()), dict(vocab_size=1), dict(seq_len=1), dict(data_bits_per_param=(0.0,)),
    dict(data_bits_per_param=(float("nan"),)), dict(steps=2), dict(models=((1, 17),)),
])
def test_bad_configs_are_user_errors(bad):
    with pytest.raises(UserError):
        CapacityConfig(**{**dict(models=((1, 8),)), **bad})


def test_parse_models():
    assert parse_models("1x16, 2x32") == ((1, 16), (2, 32))
    with pytest.raises(UserError):
        parse_models("16")


@pytest.mark.parametrize("args", [
    ["--models", "1y16"], ["--bits-per-param", "0,1"], ["--steps", "0"], ["--vocab", "1"], ["--workers", "0"],
    ["--schedule", "sometimes"],
])
def test_cli_bad_input_exits_2(run_cli, tmp_path, args):
    code, out, err = run_cli("probe", "capacity", *args, "--db", tmp_path / "x.db", "--out", tmp_path / "out")
    assert code == 2
    assert "error" in err.lower()
    assert not (tmp_path / "out").exists()  # nothing trained


def test_cli_bad_db_exits_2(run_cli, tmp_path):
    code, _, err = run_cli("probe", "capacity", "--db", tmp_path, "--out", tmp_path / "out")
    assert code == 2 and "directory" in err


def test_cli_prints_alpha_and_convergence(run_cli, tmp_path):
    code, out, err = run_cli("probe", "capacity", "--models", "1x8,1x16", "--vocab", "16", "--seq-len", "9",
                             "--bits-per-param", "0.5,4", "--steps", "40", "--workers", "1",
                             "--db", tmp_path / "x.db", "--out", tmp_path / "out")
    assert code == 0, err
    assert "bits/parameter" in out and "convergence" in out
    assert sorted(p.name for p in (tmp_path / "out" / "figures").glob("*.png")) == [
        "capacity_heldout_double_descent.png", "capacity_memorised_vs_data.png", "capacity_vs_params.png"]


def test_ctrl_c_stops_the_pool_and_a_rerun_keeps_finished_runs(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    # Fits start largest first: the two 6 bits/param fits run all 3,000 steps side by side (the
    # wider one slower), so the Ctrl-C sent once the first of them is done lands mid-training.
    cmd = [sys.executable, "-m", "scalinglab", "probe", "capacity", "--models", "1x8,1x16", "--vocab", "16",
           "--seq-len", "9", "--bits-per-param", "0.25,6", "--steps", "3000", "--workers", "2",
           "--db", str(tmp_path / "x.db"), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 240
    while not list(out.glob("*/DONE")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    finished = {p.parent: p.parent.joinpath("last.pt").stat().st_mtime_ns for p in out.glob("*/DONE")}
    assert finished and len(finished) < 4  # stopped before the end, with the finished runs kept
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert len([p for p in out.glob("*/DONE") if "-steps" not in p.parent.name]) == 4
    for run_dir, stamp in finished.items():  # finished runs were loaded, not retrained
        assert run_dir.joinpath("last.pt").stat().st_mtime_ns == stamp


def test_smaller_data_sets_are_prefixes_of_larger_ones():
    from scalinglab.probes.capacity import random_sequences

    cfg = CapacityConfig(models=((1, 8),), steps=10, **TINY)
    assert random_sequences(5, cfg).equal(random_sequences(50, cfg)[:5])
    assert not random_sequences(5, cfg, "heldout").equal(random_sequences(5, cfg))


def test_knowable_bits_discount_sequences_that_share_a_first_token():
    import torch

    from scalinglab.probes.capacity import knowable_bits

    data = torch.tensor([[1, 2, 3], [1, 4, 5], [2, 0, 0]])
    # two sequences start with 1: the best model pays log2(2) = 1 bit for each of them
    assert knowable_bits(data, 10.0) == pytest.approx(30.0 - 2.0)
