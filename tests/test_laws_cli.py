"""`scalinglab fit` and `scalinglab plan`: tables, JSON, the store round trip, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scalinglab import laws
from scalinglab.laws.synthetic import grid_data
from scalinglab.store import open_store

SIZES = np.geomspace(1e7, 3e9, 5)
TOKENS = np.geomspace(2e8, 2e11, 5)


def one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


@pytest.fixture
def csv(tmp_path):
    path = tmp_path / "runs.csv"
    frame = grid_data(laws.HOFFMANN_2022, SIZES, TOKENS, noise=0.005, seed=0)
    frame.rename(columns={"N": "params", "loss": "val"}).assign(flops=lambda f: 6 * f["params"] * f["D"]).to_csv(path, index=False)
    return path


def test_fit_prints_estimates_intervals_and_derived_quantities(run_cli, csv, tmp_path):
    code, out, err = run_cli("fit", csv, "--n-col", "params", "--loss-col", "val", "--bootstrap", "100",
                             "--at-flops", "1e21", "--predict", "1e9,2e10", "--plot", tmp_path / "figs")
    assert code == 0, err
    assert "95% interval (100 bootstrap resamples over points)" in out
    for needle in ("alpha", "beta", "a: N_opt ∝ C^a", "tokens/param at C=1e+21", "loss at N=1e+09, D=2e+10",
                   "variable projection", "multistart check"):
        assert needle in out, needle
    assert {p.name for p in (tmp_path / "figs").iterdir()} == {"fit.png", "residuals.png", "isoflop.png"}


def test_fit_json_is_one_machine_readable_object(run_cli, csv):
    code, out, err = run_cli("fit", csv, "--n-col", "params", "--loss-col", "val", "--flops-col", "flops",
                             "--bootstrap", "50", "--json", "--compare")
    assert code == 0, err
    result = json.loads(out)
    assert result["n_points"] == 25 and result["converged"] and "Huber" in result["method"]
    alpha = result["params"]["alpha"]
    assert alpha["lo"] < alpha["estimate"] < alpha["hi"]
    assert result["data"]["columns"]["D"] == "flops / (6 N)"
    assert "Approach 2 is biased" in " ".join(result["approaches"]["approach 2"]["notes"])


def test_a_saved_fit_plans_with_intervals(run_cli, csv, tmp_path):
    saved = tmp_path / "fit.json"
    code, _, err = run_cli("fit", csv, "--n-col", "params", "--loss-col", "val", "--bootstrap", "100", "--save", saved)
    assert code == 0, err
    code, out, err = run_cli("plan", "--law", saved, "--flops", "1e21")
    assert code == 0, err
    assert "95% interval" in out and "tokens per parameter" in out


def test_fit_reads_the_store_and_resamples_trunks(run_cli, tmp_path):
    db = tmp_path / "s.db"
    store = open_store(db)
    for i, n in enumerate(SIZES):
        trunk = f"trunk{i}"
        store.upsert_run(trunk, kind="trunk", status="done", n_nonembedding=int(n), n_total=int(n * 1.2), group_name="study")
        for j, d in enumerate(TOKENS):  # one cooldown branch per D milestone, all from the same trunk
            branch = f"{trunk}-b{j}"
            store.upsert_run(branch, kind="branch", status="done", parent_run=trunk, n_nonembedding=int(n),
                             n_total=int(n * 1.2), group_name="study")
            loss = float(laws.HOFFMANN_2022.predict(N=n, D=d)) * float(np.exp(0.004 * np.sin(7 * i + j)))
            store.add_point(branch, step=j, tokens=float(d), flops=6 * n * d, val_loss=loss)
    code, out, err = run_cli("fit", "--db", db, "--group", "study", "--bootstrap", "50")
    assert code == 0, err
    assert "resamples over runs" in out
    saved = open_store(db).get_result("fit", "chinchilla:study:nonembedding")
    assert saved["n_groups"] == len(SIZES) and saved["bootstrap"]["by"] == "runs" and len(saved["samples"]["E"]) == 50
    code, out, err = run_cli("plan", "--db", db, "--law", "store:chinchilla:study:nonembedding", "--params", "1e9", "--tokens", "1e11")
    assert code == 0, err
    assert "multiple of the compute-optimal D" in out


def test_plan_answers_the_anchor_questions(run_cli):
    code, out, err = run_cli("plan", "--flops", "5.76e23")
    assert code == 0, err
    assert "58.9" in out and "hoffmann2022" in out
    code, out, err = run_cli("plan", "--params", "8e9", "--tokens", "15T")
    assert code == 0, err
    for needle in ("1,875.0", "multiple of the compute-optimal D", "loss gained by training past it", "extra compute"):
        assert needle in out, needle
    code, out, err = run_cli("plan", "--params", "13B", "--inference-tokens", "2T")
    assert code == 0, err
    assert "16.3%" in out and "7.12B" in out
    code, out, err = run_cli("plan", "--flops", "9.26e21", "--unique-tokens", "25B", "--json")
    assert code == 0, err
    q = json.loads(out)["quantities"]
    assert q["epochs"]["estimate"] == pytest.approx(9.1, abs=0.15) and json.loads(out)["law"] == "muennighoff2023"


def test_fixed_parameters_are_held_and_shown(run_cli, csv):
    code, out, err = run_cli("fit", csv, "--n-col", "params", "--loss-col", "val", "--fix", "alpha=0.34", "--multistart", "8", "--bootstrap", "30", "--json")
    assert code == 0, err
    alpha = json.loads(out)["params"]["alpha"]
    assert alpha["estimate"] == 0.34 and alpha["fixed"] and "lo" not in alpha


def test_a_fit_that_does_not_converge_is_flagged(run_cli, csv, monkeypatch):
    from scalinglab.laws import fitting, objective

    monkeypatch.setattr(fitting, "polish", lambda obj, z0: objective.polish(obj, z0, maxiter=2))
    code, out, err = run_cli("fit", csv, "--n-col", "params", "--loss-col", "val", "--bootstrap", "0")
    assert code == 0, err
    assert "warning: the fit did not converge" in out and "showing the best found" in out


@pytest.mark.parametrize(
    "args, needles",
    [
        (["fit", "{tmp}/absent.csv"], ["no such file"]),
        (["fit", "{csv}"], ["columns 'N', 'loss' not found", "--n-col, --loss-col"]),
        (["fit", "{csv}", "--n-col", "params"], ["column 'loss' not found", "--loss-col"]),
        (["fit", "{few}"], ["3 points", "5 free parameters"]),
        (["fit", "{one_n}"], ["same N", "--form data"]),
        (["fit", "{negative}"], ["non-positive or non-finite", "row 1"]),
        (["fit", "--db", "{tmp}/none.db"], ["no results store"]),
        (["fit", "{csv}", "--n-col", "params", "--loss-col", "val", "--fix", "alpha"], ["NAME=VALUE"]),
        (["fit", "{csv}", "--n-col", "params", "--loss-col", "val", "--fix", "gamma=1"], ["cannot fix ['gamma']"]),
        (["plan"], ["nothing to plan"]),
        (["plan", "--law", "gopher", "--flops", "1e21"], ["unknown law"]),
        (["plan", "--flops", "lots"], ["cannot read 'lots'"]),
        (["plan", "--params", "8e9"], ["--tokens"]),
        (["plan", "--law", "store:nope", "--db", "{tmp}/none.db", "--flops", "1e21"], ["reads the results store", "pass --db"]),
    ],
)
def test_bad_input_is_one_line_and_exit_2(run_cli, csv, tmp_path, args, needles):
    grid_data(laws.HOFFMANN_2022, [1e8, 1e9, 1e10], [1e10]).to_csv(tmp_path / "few.csv", index=False)
    grid_data(laws.HOFFMANN_2022, [1e8], TOKENS).to_csv(tmp_path / "one_n.csv", index=False)
    bad = grid_data(laws.HOFFMANN_2022, SIZES, TOKENS)
    bad.loc[1, "D"] = -5
    bad.to_csv(tmp_path / "negative.csv", index=False)
    paths = {"tmp": tmp_path, "csv": csv, "few": tmp_path / "few.csv", "one_n": tmp_path / "one_n.csv", "negative": tmp_path / "negative.csv"}
    code, out, err = run_cli(*[a.format(**paths) for a in args])
    one_line_error(code, err, *needles)
