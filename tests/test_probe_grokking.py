"""The grokking probe: the task, the Fourier measures, and the qualitative facts of grokking."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from scalinglab.errors import UserError
from scalinglab.probes.grokking import GROKKING_OPTIM, GrokConfig, _grokfast_filter, train_grokking
from scalinglab.probes.grokking_sweeps import critical_fraction
from scalinglab.probes.modular import (
    ModularTask,
    effective_frequencies,
    embedding_spectrum,
    fourier_sparsity,
    key_frequencies,
    primitive_root,
    restricted_excluded_logits,
)
from scalinglab.store import open_store

# A setting that groks in a few hundred epochs (a few seconds on one core).
FAST = dict(p=59, train_frac=0.6, optim=replace(GROKKING_OPTIM, lr=1e-2))


# --- the task ------------------------------------------------------------------------------------

@pytest.mark.parametrize("op", ["+", "-", "*", "/"])
def test_answers_are_modular_arithmetic(op):
    task = ModularTask(13, op)
    a, b, c = (t.numpy() for t in task.pairs)
    p = 13
    if op == "+":
        assert np.array_equal(c, (a + b) % p)
    elif op == "-":
        assert np.array_equal(c, (a - b) % p)
    elif op == "*":
        assert np.array_equal(c, (a * b) % p)
    else:
        assert (b != 0).all() and len(c) == p * (p - 1)
        assert np.array_equal((c * b) % p, a)  # c = a / b  <=>  c * b = a


def test_split_is_seeded_disjoint_and_sized():
    task = ModularTask(31)
    train, test = task.split(0.3, seed=1)
    assert len(train) == round(0.3 * 31 * 31) and len(train) + len(test) == 31 * 31
    assert not set(train.tolist()) & set(test.tolist())
    assert torch.equal(train, task.split(0.3, seed=1)[0])
    assert not torch.equal(train, task.split(0.3, seed=2)[0])


def test_primitive_root_generates_the_group():
    for p in (7, 13, 97, 113):
        g = primitive_root(p)
        assert sorted(pow(g, i, p) for i in range(p - 1)) == list(range(1, p))


def test_grid_index_puts_pairs_in_group_coordinates():
    for op in "+-*/":
        task = ModularTask(11, op)
        a, b, _ = task.pairs
        e = task.group_elements
        index = task.grid_index()
        assert a[index[2, 5]] == e[2] and b[index[2, 5]] == e[5]


@pytest.mark.parametrize("bad", [dict(p=20), dict(p=2), dict(op="%"), dict(train_frac=1.0), dict(optim=replace(GROKKING_OPTIM, lr=-1.0)),
                                 dict(model="cnn"), dict(max_epochs=0)])
def test_bad_settings_are_user_errors(bad):
    with pytest.raises(UserError):
        GrokConfig(**bad).resolved()


# --- Fourier measures ------------------------------------------------------------------------------

def _circuit_logits(n: int, freqs: list[int], sign: int = 1) -> np.ndarray:
    """Logits of the ideal Fourier circuit: Σ_k cos(w_k (i ± j − c))."""
    i = np.arange(n)
    return sum(np.cos(2 * np.pi * k * (i[:, None, None] + sign * i[None, :, None] - i[None, None, :]) / n)
               for k in freqs)


@pytest.mark.parametrize("op,sign", [("+", 1), ("-", -1)])
def test_key_frequencies_and_restriction_recover_a_fourier_circuit(op, sign):
    task = ModularTask(31, op)
    clean = 3 * _circuit_logits(31, [4, 11], sign)
    noise = np.random.default_rng(0).normal(0, 0.1, clean.shape)
    assert key_frequencies(task, clean + noise) == [4, 11]
    restricted, excluded = restricted_excluded_logits(task, clean, [4, 11])
    assert np.allclose(restricted, clean, atol=1e-9)  # the circuit is all key-frequency directions
    assert np.allclose(excluded, 0, atol=1e-9)  # and nothing is left without them


def test_spectrum_obeys_parseval_and_sparsity_reads_concentration():
    task = ModularTask(97)
    rng = np.random.default_rng(0)
    random = torch.tensor(rng.normal(size=(97, 16)))
    spectrum = embedding_spectrum(task, random)
    centred = random.numpy() - random.numpy().mean(axis=0)
    assert spectrum.sum() == pytest.approx((centred ** 2).sum(), rel=1e-9)
    x = np.arange(97)[:, None]
    two_freqs = torch.tensor(np.cos(2 * np.pi * 5 * x / 97 + rng.uniform(0, 6, 16))
                             + np.sin(2 * np.pi * 17 * x / 97 + rng.uniform(0, 6, 16)))
    assert fourier_sparsity(embedding_spectrum(task, two_freqs), 2) == pytest.approx(1.0)
    assert effective_frequencies(embedding_spectrum(task, two_freqs)) == pytest.approx(2.0, rel=1e-6)
    assert fourier_sparsity(spectrum, 2) < 0.15  # a random embedding spreads its energy


def test_grokfast_filter_amplifies_the_slow_gradient():
    model = torch.nn.Linear(2, 1, bias=False)
    ema: dict = {}
    for _ in range(3):
        model.weight.grad = torch.ones_like(model.weight)
        _grokfast_filter(model, ema, alpha=0.9, lamb=2.0)
    # a constant gradient is all slow component: its EMA is itself, so the step is (1 + λ) g
    assert torch.allclose(model.weight.grad, torch.full_like(model.weight, 3.0))


def test_critical_fraction_needs_every_larger_fraction_to_generalise():
    table = pd.DataFrame({"train_frac": [0.1, 0.2, 0.3, 0.4, 0.5],
                          "status": ["budget", "generalised", "budget", "generalised", "generalised"]})
    assert critical_fraction(table) == (0.4, 0.3)
    assert critical_fraction(table.assign(status="budget")) == (None, 0.5)


# --- training: the qualitative facts --------------------------------------------------------------

def test_memorisation_precedes_generalisation(tmp_path):
    run = train_grokking(GrokConfig(**FAST, max_epochs=3000), tmp_path / "run", db=tmp_path / "s.db")
    assert run.status == "generalised"
    assert run.memorised_epoch is not None and run.generalised_epoch is not None
    assert run.memorised_epoch * 2 < run.generalised_epoch  # a plateau, not simultaneous learning
    plateau = run.history[(run.history.epoch >= run.memorised_epoch)
                          & (run.history.epoch < run.generalised_epoch // 2)]
    assert plateau.test_acc.max() < 0.5  # memorised, not yet generalised
    # the progress measures move the way grokking says
    h = run.history
    assert h.fourier_sparsity.iloc[-1] > 2 * h.fourier_sparsity.iloc[0]
    m = run.measures
    assert m.restricted_loss.iloc[-1] < 0.5 < m.restricted_loss.iloc[0]
    assert m.excluded_loss.iloc[-1] > m.excluded_loss.min() * 2  # memorisation is cleaned up
    stored = open_store(tmp_path / "s.db").get_result("probe:grokking", run.run_id)
    assert stored["generalised_epoch"] == run.generalised_epoch
    assert len(open_store(tmp_path / "s.db").points(run.run_id)) == len(run.history)


def test_no_generalisation_from_a_tiny_training_fraction(tmp_path):
    run = train_grokking(GrokConfig(**{**FAST, "train_frac": 0.1}, max_epochs=1200, eval_every=50), tmp_path / "run")
    assert run.status == "budget"
    assert run.memorised_epoch is not None  # it memorises its few pairs...
    assert run.generalised_epoch is None  # ...and never generalises
    assert run.history.test_acc.max() < 0.3


def test_resume_is_bit_identical_and_a_larger_budget_continues(tmp_path):
    cfg = GrokConfig(p=23, max_epochs=120, eval_every=10, snapshot_every=20, stop_after=-1)
    straight = train_grokking(cfg, tmp_path / "a")
    first = train_grokking(cfg, tmp_path / "b", stop_at_epoch=50)
    assert first.status == "stopped" and first.epochs == 50
    resumed = train_grokking(cfg, tmp_path / "b")
    assert resumed.epochs == 120
    pd.testing.assert_frame_equal(straight.history.drop(columns="wall_time"),
                                  resumed.history.drop(columns="wall_time"), check_exact=True)
    again = train_grokking(cfg, tmp_path / "b")  # finished: loaded, not retrained
    assert again.epochs == 120 and again.wall_time == resumed.wall_time
    longer = train_grokking(GrokConfig(p=23, max_epochs=160, eval_every=10, snapshot_every=20, stop_after=-1),
                            tmp_path / "b")
    assert longer.epochs == 160 and longer.run_id == resumed.run_id


def test_a_directory_of_another_run_is_refused(tmp_path):
    train_grokking(GrokConfig(p=23, max_epochs=10), tmp_path / "run", stop_at_epoch=10)
    with pytest.raises(UserError):
        train_grokking(GrokConfig(p=29, max_epochs=10), tmp_path / "run")


def test_transformer_trains_and_its_logits_match_a_full_causal_forward(tmp_path):
    from scalinglab.probes.modular import OneLayerTransformer

    torch.manual_seed(0)
    model = OneLayerTransformer(11, d_model=16, n_heads=2, d_mlp=32)
    a, b = torch.tensor([1, 5, 7]), torch.tensor([2, 0, 10])
    # the "=" position attends to all three tokens: a causal forward's last position
    x = model.W_E[torch.stack([a, b, torch.full_like(a, 11)], 1)] + model.W_pos
    q, k, v = (x @ w for w in model.W_QKV)
    B, H, dh = 3, 2, 8
    q, k, v = (t.view(B, 3, H, dh).transpose(1, 2) for t in (q, k, v))
    y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    h = x + y.transpose(1, 2).reshape(B, 3, 16) @ model.W_O
    h = h + torch.relu(h @ model.W_in + model.b_in) @ model.W_out + model.b_out
    assert torch.allclose(model(a, b), h[:, -1] @ model.W_U, atol=1e-5)
    run = train_grokking(GrokConfig(model="transformer", p=11, train_frac=0.5, max_epochs=20, eval_every=10,
                                    snapshot_every=10), tmp_path / "t")
    assert run.epochs == 20 and math.isfinite(run.history.train_loss.iloc[-1])
    assert run.history.train_loss.iloc[-1] < run.history.train_loss.iloc[0]


# --- the command -----------------------------------------------------------------------------------

def test_cli_runs_draws_and_stores(run_cli, tmp_path):
    db, out = tmp_path / "s.db", tmp_path / "grok"
    code, stdout, stderr = run_cli("probe", "grokking", "--p", "23", "--epochs", "40", "--db", db, "--out", out,
                                   "--quiet")
    assert code == 0, stderr
    assert "run grokking-" in stdout and "figure" in stdout
    assert list((out / "figures").glob("*.png"))
    assert open_store(db).results("probe:grokking")


@pytest.mark.parametrize("args", [("--p", "20"), ("--frac", "0"), ("--op", "%"), ("--fractions", "0.2,x"),
                                  ("--fractions", "0.2", "--compare-grokfast")])
def test_cli_input_errors_are_one_line_and_exit_2(run_cli, tmp_path, args):
    code, stdout, stderr = run_cli("probe", "grokking", *args, "--db", tmp_path / "s.db", "--out", tmp_path / "g")
    assert code == 2
    assert stderr.strip().startswith("error:") and len(stderr.strip().splitlines()) == 1
