"""Planning with published laws: the numbers the papers report (Hoffmann et al. 2022; Besiroglu et al.
2024; Sardana et al. 2023; Muennighoff et al. 2023; Meta's Llama 3 release, 2024)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scalinglab import laws
from scalinglab.errors import UserError
from scalinglab.laws.forms import CustomForm
from scalinglab.laws.law import Law
from scalinglab.laws.planning import optimal_split, optimal_tokens_for_size

HOFFMANN, ROUNDED, EPOCH, MUENNIGHOFF = laws.HOFFMANN_2022, laws.HOFFMANN_2022_ROUNDED, laws.EPOCH_2024, laws.MUENNIGHOFF_2023


def test_reference_laws_are_stored_unrounded_with_sources():
    assert HOFFMANN.params == {"E": 1.6934, "A": 406.4, "alpha": 0.33917, "B": 410.7, "beta": 0.28491}
    assert MUENNIGHOFF.params["E"] == pytest.approx(np.exp(0.6254804), rel=1e-12)
    assert MUENNIGHOFF.params["RD_star"] == 15.387756
    for law in laws.REFERENCE_LAWS.values():
        assert "arXiv" in law.source


def test_rounding_hoffmann_moves_the_optimum_from_59_to_93_tokens_per_param():
    assert laws.compute_optimal(HOFFMANN, 5.76e23)["tokens_per_param"].value == pytest.approx(59, abs=0.5)
    assert laws.compute_optimal(ROUNDED, 5.76e23)["tokens_per_param"].value == pytest.approx(93, abs=0.5)


def test_compute_optimal_split_spends_the_budget_at_the_minimum_loss():
    plan = laws.compute_optimal(HOFFMANN, 1e22)
    n, d = plan["n_params"].value, plan["tokens"].value
    assert 6 * n * d == pytest.approx(1e22, rel=1e-9)
    for factor in (0.9, 1.1):  # moving along the iso-FLOP line in either direction costs loss
        assert HOFFMANN.predict(N=n * factor, D=d / factor) > plan["loss"].value


def test_the_numeric_optimum_matches_the_closed_form():
    def same_law(N, D, E, A, alpha, B, beta):
        return E + A / N**alpha + B / D**beta

    numeric = Law("numeric", CustomForm(same_law, positive=("E", "A", "B")), HOFFMANN.params)
    for flops in (1e19, 5.76e23):
        assert optimal_split(numeric, numeric.params, flops)[0] == pytest.approx(optimal_split(HOFFMANN, HOFFMANN.params, flops)[0], rel=1e-5)
    assert optimal_tokens_for_size(numeric, numeric.params, 8e9) == pytest.approx(optimal_tokens_for_size(HOFFMANN, HOFFMANN.params, 8e9), rel=1e-5)


def test_sardana_13b_quality_for_2t_inference_tokens_is_a_7b_model_with_17_percent_less_compute():
    plan = laws.inference_optimal(HOFFMANN, 2e12, n_params=13e9)
    assert 6.5e9 < plan["n_params"].value < 7.5e9
    assert plan["tokens"].value > plan["ref_tokens"].value  # trained longer
    assert 0.15 < plan["saving"].value < 0.19
    n, d = plan["n_params"].value, plan["tokens"].value
    assert HOFFMANN.predict(N=n, D=d) == pytest.approx(plan["target_loss"].value, rel=1e-9)  # same quality
    assert laws.inference_optimal(HOFFMANN, 0.0, n_params=13e9)["saving"].value == pytest.approx(0, abs=1e-6)


def test_llama3_8b_on_15t_tokens():
    plan = laws.assess_run(EPOCH, 8e9, 15e12)
    d_star = plan["optimal_tokens"].value
    assert plan["tokens_per_param"].value == pytest.approx(1875)
    # Chinchilla-optimal D for 8B: 160B at Hoffmann et al.'s ~20 tokens/param, ~200B in Meta's Llama 3 release (2024)
    assert 160e9 < d_star < 200e9
    assert plan["multiple"].value == pytest.approx(15e12 / d_star)
    assert plan["rule_multiple"].value == pytest.approx(15e12 / 160e9)
    assert plan["loss_gain"].value == pytest.approx(EPOCH.predict(N=8e9, D=d_star) - EPOCH.predict(N=8e9, D=15e12))
    assert plan["loss_gain"].value > 0.1
    assert plan["extra_flops"].value == pytest.approx(6 * 8e9 * (15e12 - d_star))
    # the same compute split compute-optimally reaches a lower loss with a bigger model...
    assert plan["same_flops_loss"].value < plan["loss"].value and plan["same_flops_n_params"].value > 8e9
    # ...and reaching the 8B model's loss compute-optimally takes several times less compute
    assert plan["flops_overhead"].value > 2
    hoffmann = laws.assess_run(HOFFMANN, 8e9, 15e12)
    assert hoffmann["tokens_per_param"].value == pytest.approx(1875) and hoffmann["multiple"].value > 30


def test_muennighoff_matches_the_authors_examples():
    # the authors' README: the two models of their Figure 1 (right), and their grid-search allocation
    assert MUENNIGHOFF.predict(N=6.34e9, D=242e9, U=25e9) == pytest.approx(2.2256440889984477, rel=1e-9)
    assert MUENNIGHOFF.predict(N=8.67e9, D=178e9, U=25e9) == pytest.approx(2.2269634075087867, rel=1e-9)
    plan = laws.data_constrained(MUENNIGHOFF, 25e9, flops=6 * 8.67e9 * 178e9)
    assert plan["n_params"].value == pytest.approx(6.8e9, rel=0.02)
    assert plan["tokens"].value == pytest.approx(227e9, rel=0.02)
    assert plan["epochs"].value == pytest.approx(9.1, abs=0.15)
    assert plan["loss"].value < MUENNIGHOFF.predict(N=8.67e9, D=178e9, U=25e9)


def test_repeated_data_is_nearly_as_good_up_to_4_epochs_and_little_use_at_40():
    def value_of_repeats(epochs):
        plan = laws.data_constrained(MUENNIGHOFF, 1e10, n_params=1e9, tokens=epochs * 1e10)
        return plan["effective_tokens"].value / (epochs * 1e10)

    assert value_of_repeats(1) == pytest.approx(1.0)
    assert value_of_repeats(4) > 0.9
    assert value_of_repeats(40) < 0.4
    plan = laws.data_constrained(MUENNIGHOFF, 1e10, n_params=1e9, tokens=4e10)
    assert 0 < plan["loss_penalty"].value < 0.01 * plan["loss"].value


def test_a_chinchilla_law_gains_muennighoffs_decay_for_data_constrained_planning():
    plan = laws.data_constrained(HOFFMANN, 1e11, flops=1e23)
    assert plan["epochs"].value > 1 and plan["loss_penalty"].value > 0
    assert plan["free_tokens"].value == pytest.approx(laws.compute_optimal(HOFFMANN, 1e23)["tokens"].value, rel=1e-6)


def test_intervals_follow_the_bootstrap_draws():
    rng = np.random.default_rng(0)
    samples = pd.DataFrame({k: v * np.exp(rng.normal(0, 0.01, 400)) for k, v in HOFFMANN.params.items()})
    law = Law("fit", HOFFMANN.form, HOFFMANN.params, samples=samples)
    plan = laws.compute_optimal(law, 1e21)
    est = plan["n_params"]
    assert est.lo < est.value < est.hi
    assert not plan["flops"].has_interval  # an input, not an estimate
    run = laws.inference_optimal(law, 1e12, flops=1e21)
    assert run["saving"].lo < run["saving"].value < run["saving"].hi


def test_bad_plans():
    with pytest.raises(UserError, match="unknown law"):
        laws.reference_law("gopher")
    with pytest.raises(UserError, match="--flops C or --params N"):
        laws.inference_optimal(HOFFMANN, 1e12)
    with pytest.raises(UserError, match="flops must be a finite number > 0"):
        laws.compute_optimal(HOFFMANN, -1.0)
    with pytest.raises(UserError, match="Chinchilla family"):
        laws.assess_run(Law("k", laws.get_form("kaplan"), {"Nc": 1e13, "alpha_N": 0.08, "Dc": 1e13, "alpha_D": 0.1}), 1e9, 1e10)


def test_approach2_is_biased_on_noise_free_data_only_when_the_exponents_differ():
    bias = laws.approach2_bias(ROUNDED, width=8)
    assert bias.n_opt_error == pytest.approx(0.030, abs=0.003)
    assert bias.d_opt_error == pytest.approx(-0.029, abs=0.003)
    assert bias.a_fit == pytest.approx(bias.a_true, abs=1e-6)  # centred sampling: exponents survive
    wider = laws.approach2_bias(ROUNDED, width=16)
    assert wider.d_opt_error < bias.d_opt_error < 0
    symmetric = laws.approach2_bias(ROUNDED.with_params(beta=0.34), width=16)
    assert abs(symmetric.n_opt_error) < 1e-3
    off_centre = laws.approach2_bias(ROUNDED, width=8, center=0.25)  # sampled around N_opt/4
    assert off_centre.n_opt_error < -0.05 < 0.05 < off_centre.d_opt_error
    drifting = laws.approach2_bias(ROUNDED, width=8, drift=0.1)  # the offset grows with compute
    assert abs(drifting.a_fit - drifting.a_true) > 1e-3


def test_approaches_1_and_2_recover_the_allocation_exponent_from_isoflop_data():
    rows = []
    for c in np.geomspace(1e18, 1e21, 6):
        n_opt = optimal_split(HOFFMANN, HOFFMANN.params, c)[0]
        for n in n_opt * np.geomspace(1 / 4, 4, 9):
            rows.append({"N": n, "D": c / (6 * n)})
    frame = pd.DataFrame(rows)
    frame["loss"] = HOFFMANN.predict(N=frame["N"], D=frame["D"])
    data = laws.prepare(frame, laws.get_form("chinchilla"))
    a_true = HOFFMANN.params["beta"] / (HOFFMANN.params["alpha"] + HOFFMANN.params["beta"])
    assert laws.approach2(data).a == pytest.approx(a_true, abs=0.005)
    assert laws.approach1(data).a == pytest.approx(a_true, abs=0.1)  # coarse: sizes come in steps


def test_an_inference_plan_says_when_it_trains_past_the_budget_given():
    from scalinglab.laws.planning import inference_optimal
    from scalinglab.laws.reference import load_law

    plan = inference_optimal(load_law("epoch2024"), 2e12, flops=1e22)
    assert plan["train_flops"].value > 1e22
    ratio = plan["train_flops"].value / 1e22
    assert any(f"{ratio:.2f}x the 1e+22 given" in note for note in plan.notes)
    assert not any("x the" in note for note in inference_optimal(load_law("epoch2024"), 0.0, flops=1e22).notes)
