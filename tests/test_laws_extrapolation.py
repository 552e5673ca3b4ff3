"""Laws that extrapolate: the over-training form, ties, held-out-largest validation, form selection,
prediction intervals and the beyond-the-data warnings."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scalinglab import laws
from scalinglab.errors import UserError
from scalinglab.laws.forms import chinchilla, overtrain, tie
from scalinglab.laws.synthetic import GADRE_SIZES, grid_data, multiplier_data, tied_law

TRUTH = tied_law()  # α = β = 2η = 0.34


@pytest.fixture(scope="module")
def runs():
    return multiplier_data(TRUTH, noise=0.005, seed=3)


@pytest.fixture
def csv(tmp_path, runs):
    path = tmp_path / "runs.csv"
    runs.to_csv(path, index=False)
    return path


def one_line_error(code: int, err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:"), err
    for needle in needles:
        assert needle in err, err


# -- the over-training form -------------------------------------------------------------------
def test_the_overtrain_form_recovers_eta_and_e_within_two_percent(runs):
    result = laws.fit(runs, "overtrain")
    assert result.converged and result.diagnostics["multistart_check"]["agrees"]
    assert result.params["eta"] == pytest.approx(TRUTH.params["eta"], rel=0.02)
    assert result.params["E"] == pytest.approx(TRUTH.params["E"], rel=0.02)


def test_overtrain_is_chinchilla_with_tied_exponents():
    N, D = np.array([1e8, 3e9]), np.array([2e9, 1e12])
    implied = TRUTH.implied()
    assert implied.form.name == "chinchilla" and implied.params["alpha"] == implied.params["beta"] == pytest.approx(0.34)
    assert np.allclose(implied.predict(N=N, D=D), TRUTH.predict(N=N, D=D), rtol=1e-12)
    # Gadre et al.'s own parametrisation: E + (a M^η + b M^-η) C^-η
    p, C, M = TRUTH.params, 6 * N * D, D / N
    assert np.allclose(TRUTH.predict(N=N, D=D), p["E"] + (p["a"] * M ** p["eta"] + p["b"] * M ** -p["eta"]) * C ** -p["eta"], rtol=1e-12)


def test_tie_alpha_beta_reaches_the_same_optimum_as_the_overtrain_form(runs):
    tied = laws.fit(runs, "chinchilla", ties={"beta": "alpha"})
    ot = laws.fit(runs, "overtrain")
    assert tied.form.params == ("E", "A", "alpha", "B") and "variable projection" in tied.method
    assert tied.objective == pytest.approx(ot.objective, rel=1e-6)
    assert tied.params["alpha"] == pytest.approx(2 * ot.params["eta"], rel=1e-5)
    assert tied.law().params["beta"] == tied.params["alpha"]


def test_a_tie_on_a_form_without_shared_exponents_is_fitted_by_multistart():
    frame = grid_data(laws.HOFFMANN_2022.with_params(B=laws.HOFFMANN_2022.params["A"]), np.geomspace(1e7, 3e9, 5), np.geomspace(2e8, 2e11, 5))
    result = laws.fit(frame, "chinchilla", ties={"B": "A"}, multistart=16)
    assert result.params["A"] == pytest.approx(laws.HOFFMANN_2022.params["A"], rel=0.01)


def test_the_overtrain_fit_reports_the_implied_chinchilla_law_and_plans_with_it(runs, tmp_path):
    result = laws.fit(runs, "overtrain", bootstrap=50)
    derived = result.derived(flops=[1e21]).set_index("quantity")
    alpha = derived.loc["alpha (implied Chinchilla)"]
    assert alpha["estimate"] == pytest.approx(2 * result.params["eta"]) and alpha["lo"] < alpha["estimate"] < alpha["hi"]
    saved = tmp_path / "fit.json"
    saved.write_text(json.dumps(result.record(), default=float))
    plan = laws.compute_optimal(laws.load_law(str(saved)), 1e21)
    assert plan["n_params"].value == pytest.approx(derived.loc["N_opt at C=1e+21", "estimate"], rel=1e-9)
    assert plan["n_params"].has_interval


# -- held-out-largest validation and prediction intervals ------------------------------------
def test_holding_out_the_largest_size_predicts_it_and_says_whether_the_interval_covers_it(runs):
    held = laws.validate(runs, "overtrain", "largest-n:1", bootstrap=100)
    assert held.fit.n_points == 40 and len(held.table) == 8
    assert (held.table["N"] == max(GADRE_SIZES)).all() and held.fit.data.N.max() < max(GADRE_SIZES)
    assert held.error < 0.01
    assert held.coverage >= 0.75  # 8 points, 95% intervals


def test_prediction_intervals_widen_with_the_distance_and_hold_the_residual_scatter(runs):
    result = laws.fit(runs, "overtrain", bootstrap=100)
    N = np.array([1e8, 1e9, 1e10, 1e11])
    lo, hi = result.prediction_interval(N=N, D=20 * N)
    width = np.log(hi / lo)
    assert np.all(np.diff(width) > 0)
    law_lo, law_hi = (np.array([result.law().estimate(lambda p, n=n: laws.get_form("chinchilla").predict(p, N=n, D=20 * n)).__getattribute__(k)
                                for n in N]) for k in ("lo", "hi"))
    assert np.all(lo < law_lo) and np.all(hi > law_hi)  # a run scatters about the law: wider than the law's own interval
    assert np.log(hi[0] / lo[0]) > 2 * 1.5 * 0.005  # at least the noise's ±1.96σ


def test_form_auto_states_each_candidates_held_out_error_and_refits_the_choice(runs):
    choice = laws.select_form(runs, "largest-n:1", bootstrap=50, held_out_bootstrap=50)
    assert set(choice.candidates) == {"chinchilla", "overtrain", "kaplan"}
    errors = {k: c.error for k, c in choice.candidates.items()}
    assert choice.chosen == min(errors, key=errors.get)
    assert choice.chosen != "kaplan"  # no irreducible loss: it extrapolates worst on data that has one
    assert choice.result.n_points == len(runs) and choice.result.form.name == choice.chosen
    assert choice.held_out.fit.bootstrap is not None


def test_holdout_largest_c_holds_out_the_largest_budgets(runs):
    held = laws.validate(runs, "chinchilla", "largest-c:2", bootstrap=0)
    C = 6 * runs["N"] * runs["D"]
    assert sorted(held.table["C"]) == pytest.approx(sorted(C.nlargest(2)))
    assert held.table["covered"].isna().all()  # no bootstrap, no interval


def test_points_beyond_the_fitted_range_are_named_with_their_distance(runs):
    result = laws.fit(runs, "overtrain")
    assert laws.beyond_range(result, [(1e8, 1e10)]) == []
    [line] = laws.beyond_range(result, [(4.11e9, 4.11e11)])
    assert "N 10x" in line and "lies beyond the fitted points" in line


# -- the CLI ----------------------------------------------------------------------------------
def test_fit_with_holdout_and_form_auto_prints_the_candidates_the_held_out_points_and_the_fit(run_cli, csv):
    code, out, err = run_cli("fit", csv, "--form", "auto", "--holdout", "largest-n:1", "--bootstrap", "50",
                             "--predict", "C=1e21,M=640")
    assert code == 0, err
    for needle in ("form auto", "chinchilla", "overtrain", "kaplan", "(chosen)", "held out the largest model size (8 points)",
                   "95% prediction interval", "held-out mean |error|", "inside their 95% prediction interval",
                   "lies beyond the fitted points", "(prediction)"):
        assert needle in out, needle


def test_fit_holdout_json_has_every_held_out_point(run_cli, csv):
    code, out, err = run_cli("fit", csv, "--form", "overtrain", "--holdout", "largest-n:2", "--bootstrap", "50", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["form"] == "overtrain" and set(result["params"]) == {"E", "a", "eta", "b"}
    assert result["holdout"]["held_out_points"] == 16 and result["holdout"]["fitted_points"] == 32
    point = result["holdout"]["points"][0]
    assert {"N", "D", "C", "loss", "predicted", "error", "lo", "hi", "covered"} <= set(point)


def test_compute_and_multiplier_columns_give_the_same_fit(run_cli, tmp_path, runs):
    path = tmp_path / "cm.csv"
    runs.assign(C=6 * runs["N"] * runs["D"], M=runs["D"] / runs["N"])[["C", "M", "loss"]].to_csv(path, index=False)
    code, out, err = run_cli("fit", path, "--form", "overtrain", "--flops-col", "C", "--m-col", "M", "--bootstrap", "0", "--json")
    assert code == 0, err
    assert json.loads(out)["params"]["eta"]["estimate"] == pytest.approx(laws.fit(runs, "overtrain").params["eta"], rel=1e-6)


def test_tie_from_the_cli(run_cli, csv):
    code, out, err = run_cli("fit", csv, "--tie", "alpha=beta", "--bootstrap", "0", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert set(result["params"]) == {"E", "A", "alpha", "B"} and result["ties"] == {"beta": "alpha"}


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--tie", "alpha=gamma"], ["cannot tie 'gamma'", "chinchilla form's parameters"]),
        (["--tie", "alpha"], ["NAME=NAME"]),
        (["--tie", "alpha=beta", "--fix", "beta=0.3"], ["both fixed and tied"]),
        (["--holdout", "largest-n:4"], ["leaves 2 of 6 model sizes", "K <= 3"]),
        (["--holdout", "biggest"], ["largest-n[:K] or largest-c[:K]"]),
        (["--form", "auto", "--fix", "alpha=0.3"], ["--form auto"]),
        (["--form", "overtrain", "--m-col", "M"], ["--flops-col"]),
        (["--form", "data-constrained"], ["column 'U' not found", "--unique-col"]),
        (["--predict", "C=1e21"], ["C=..,M=.."]),
    ],
)
def test_bad_input_is_one_line_and_exit_2(run_cli, csv, args, needles):
    code, _, err = run_cli("fit", csv, "--bootstrap", "0", *args)
    one_line_error(code, err, *needles)


def test_a_tie_naming_an_unknown_parameter_from_python():
    with pytest.raises(UserError, match="cannot tie 'gamma'"):
        tie(chinchilla(), {"gamma": "alpha"})
    assert overtrain().params == ("E", "a", "eta", "b")
