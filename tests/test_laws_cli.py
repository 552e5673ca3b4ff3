"""`scalinglab fit` and `scalinglab plan`: tables, JSON, the store round trip, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scalinglab import laws
from scalinglab.errors import UserError
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


def test_a_fit_saved_from_python_plans_from_the_cli(run_cli, csv, tmp_path):
    data = laws.prepare(laws.read_table(csv), laws.get_form("chinchilla"), n_col="params", loss_col="val")
    result = laws.fit(data, "chinchilla", bootstrap=50)
    db = tmp_path / "notebook.db"
    assert result.save(open_store(db), "mine") == "mine"
    code, out, err = run_cli("plan", "--db", db, "--law", "store:mine", "--flops", "1e21")
    assert code == 0, err
    assert "law: fit mine" in out and "95% interval" in out and "tokens per parameter" in out
    assert laws.load_law("store:mine", db=str(db)).samples is not None

    # the record is the one `fit` stores and `fit --save` writes, so old stores and files still plan
    stored = open_store(db).get_result("fit", "mine")
    assert len(stored["samples"]["E"]) == 50 and stored["compute_convention"].startswith("C = 6·N·D")
    assert any(q.startswith("a: N_opt") for q in stored["derived"])
    saved = tmp_path / "fit.json"
    code, _, err = run_cli("fit", csv, "--n-col", "params", "--loss-col", "val", "--bootstrap", "50", "--save", saved)
    assert code == 0, err
    assert set(json.loads(saved.read_text())) == set(stored)
    with pytest.raises(UserError, match="non-empty key"):
        result.save(db, " ")


VOCAB_TERM = 64 * 256  # d_model · vocab: the output layer, counted in the store's FLOPs but not in N


@pytest.fixture
def study_db(tmp_path):
    """A store as a study and probes leave it: constant-LR trunks evaluated at every milestone,
    a cooldown branch per milestone (evaluated mid-cooldown and at its end), a `train` run with
    intermediate evaluations, probe runs, and an unfinished run."""
    db = tmp_path / "s.db"
    store = open_store(db)
    truth = laws.HOFFMANN_2022

    def run(run_id, n, kind, **fields):
        store.upsert_run(run_id, kind=kind, status=fields.pop("status", "done"), n_nonembedding=int(n), n_total=int(n * 1.2),
                         group_name="study", flops_per_token=6 * (n + VOCAB_TERM), **fields)

    def point(run_id, n, step, d, loss):
        store.add_point(run_id, step=step, tokens=float(d), flops=6 * (n + VOCAB_TERM) * float(d), val_loss=float(loss))

    for i, n in enumerate(SIZES):
        trunk = f"trunk{i}"
        run(trunk, n, "trunk")
        for j, d in enumerate(TOKENS):
            point(trunk, n, 100 * j, d, truth.predict(N=n, D=d) * 1.08)  # constant LR: never cooled down
            branch = f"{trunk}-b{j}"
            run(branch, n, "branch", parent_run=trunk)
            point(branch, n, 100 * j + 50, d * 0.9, truth.predict(N=n, D=d * 0.9) * 1.04)  # mid-cooldown
            point(branch, n, 100 * j + 99, d, truth.predict(N=n, D=d) * float(np.exp(0.004 * np.sin(7 * i + j))))
    n = 2 * SIZES[2]
    run("solo", n, "train")
    for step, d in enumerate(TOKENS[1:]):  # intermediate evaluations of one schedule, then its end
        point("solo", n, step, d, truth.predict(N=n, D=d) * (1.0 if d == TOKENS[-1] else 1.3))
    run("probe-rep", SIZES[1], "probe:repetition")
    run("probe-grok", 3e5, "probe-grokking")
    run("unfinished", SIZES[3], "branch", status="running")
    for step, d in enumerate(TOKENS):
        point("probe-rep", SIZES[1], step, d, 7.0)
        point("probe-grok", 3e5, step, d, 0.01)
        point("unfinished", SIZES[3], step, d, 5.0)
    return db


# the study's branches at and past 20 tokens/param (the study fits from there), and the train run
PAST_20 = int(sum(d / n >= 20 * 0.98 for n in SIZES for d in TOKENS)) + 1


def test_fit_from_the_store_uses_the_final_point_of_each_annealed_run(study_db):
    every = laws.store_frame(study_db, group="study", selection=laws.Selection(min_tpp=0))
    # 25 branches and the train run, one point each: no trunk, mid-cooldown, intermediate or probe point
    assert len(every) == len(SIZES) * len(TOKENS) + 1
    frame = laws.store_frame(study_db, group="study")
    # by default, as the study fits: its short branches (below 20 tokens/param) are left out
    assert len(frame) == PAST_20 < len(every) and (frame["D"] / frame["N"] >= 19.6).all()
    assert "study branch points below 20 tokens/param left out" in frame.attrs["selection"]
    ratio = frame["loss"] / laws.HOFFMANN_2022.predict(N=frame["N"], D=frame["D"])
    assert np.abs(np.log(ratio)).max() < 0.005
    assert sorted(frame["group"].unique()) == sorted([f"trunk{i}" for i in range(len(SIZES))] + ["solo"])
    assert "final point" in frame.attrs["selection"] and "trunk and probe runs left out" in frame.attrs["selection"]
    wide = laws.store_frame(study_db, group="study", selection=laws.Selection(kinds=("trunk", "branch"), all_points=True, min_tpp=0))
    assert len(wide) == len(SIZES) * len(TOKENS) * 3  # every trunk and branch point
    probes = laws.store_frame(study_db, selection=laws.Selection(kinds=("probe*",)))
    assert sorted(probes["loss"]) == [0.01, 7.0]


def test_fit_reads_the_store_and_says_which_points_and_how_it_resampled(run_cli, study_db):
    code, out, err = run_cli("fit", "--db", study_db, "--group", "study", "--bootstrap", "50")
    assert code == 0, err
    assert f"{PAST_20} points from" in out
    assert "points: the final point of each finished run of kind train, branch, cosine, wsd (trunk and probe runs left out" in out
    assert "resamples over points" in out and "only 6 runs" in out  # 5 trunks and a train run: too few to resample runs
    assert "C = 6·N·D" in out and "stored FLOPs are" in out
    saved = open_store(study_db).get_result("fit", "chinchilla:study:nonembedding")
    assert saved["n_points"] == PAST_20 and saved["bootstrap"]["by"] == "points" and len(saved["samples"]["E"]) == 50
    assert "final point" in saved["data"]["selection"]
    code, out, err = run_cli("plan", "--db", study_db, "--law", "store:chinchilla:study:nonembedding", "--params", "1e9", "--tokens", "1e11")
    assert code == 0, err
    assert "multiple of the compute-optimal D" in out and "C = 6·N·D" in out

    code, out, err = run_cli("fit", "--db", study_db, "--group", "study", "--kind", "trunk", "--kind", "branch",
                             "--all-points", "--min-tpp", "0", "--bootstrap", "30", "--by", "runs", "--json")
    assert code == 0, err
    wide = json.loads(out)
    assert wide["n_points"] == 75 and wide["bootstrap"]["by"] == "runs" and "every point" in wide["data"]["selection"]
    assert open_store(study_db).get_result("fit", "chinchilla:study:nonembedding:kinds=trunk+branch:all-points:min-tpp=0")

    code, out, err = run_cli("fit", "--db", study_db, "--kind", "cosine")
    one_line_error(code, err, "no finished points of kind cosine", "kinds present: branch, probe-grokking, probe:repetition, train, trunk", "--kind")


def test_plan_answers_the_published_questions(run_cli):
    code, out, err = run_cli("plan", "--flops", "5.76e23", "--law", "hoffmann2022")  # Chinchilla's own answer
    assert code == 0, err
    assert "58.9" in out and "hoffmann2022" in out
    code, out, err = run_cli("plan", "--flops", "5.76e23")  # Epoch's refit by default, and it says so
    assert code == 0, err
    assert "law: epoch2024" in out
    code, out, err = run_cli("plan", "--params", "8e9", "--tokens", "15T")
    assert code == 0, err
    for needle in ("1,875.0", "multiple of the compute-optimal D", "loss gained by training past it", "extra compute"):
        assert needle in out, needle
    code, out, err = run_cli("plan", "--params", "13B", "--inference-tokens", "2T", "--law", "hoffmann2022")
    assert code == 0, err
    assert "16.3%" in out and "7.12B" in out
    code, out, err = run_cli("plan", "--flops", "9.26e21", "--unique-tokens", "25B", "--json")
    assert code == 0, err
    q = json.loads(out)["quantities"]
    assert q["epochs"]["estimate"] == pytest.approx(9.1, abs=0.15) and json.loads(out)["law"] == "muennighoff2023"


@pytest.mark.parametrize(
    "content, needles",
    [
        ("[1, 2]", ["holds a JSON array, not an object"]),
        ('["form", "params"]', ["holds a JSON array"]),
        ('"chinchilla"', ["holds a JSON string"]),
        ("5", ["holds a JSON number"]),
        ("null", ["holds a JSON null"]),
        ('{"form": "chinchilla", "params": [1, 2]}', ["'params' must be an object", "not a JSON array"]),
        ('{"form": 3, "params": {}}', ["'form' must be a form name"]),
        ('{"form": "chinchilla", "params": {"E": "big", "A": 1, "alpha": 0.3, "B": 1, "beta": 0.3}}', ["parameter 'E' is 'big'"]),
        ('{"form": "chinchilla", "params": {"E": {"lo": 1}, "A": 1, "alpha": 0.3, "B": 1, "beta": 0.3}}', ["parameter 'E' is None"]),
        ('{"form": "chinchilla", "params": {"E": 1.7, "A": 400, "alpha": 0.3, "B": 400, "beta": 0.3}, "samples": {"E": [1]}}', ["'samples' must hold"]),
        ('{"form": "chinchilla", "params": {"E": 1.7, "A": 400, "alpha": 0.3, "B": 400, "beta": 0.3}, '
         '"samples": {"E": [1, "x"], "A": [1, 2], "alpha": [1, 2], "B": [1, 2], "beta": [1, 2]}}', ["'samples' are not lists of numbers"]),
        ('{"form": "chinchilla", "params": {"E": 1.7}}', ["parameters ['A', 'alpha', 'B', 'beta'] missing"]),
        ("{not json", ["cannot read", "as JSON"]),
    ],
)
def test_plan_with_a_law_file_that_is_not_a_saved_fit_is_one_line_and_exit_2(run_cli, tmp_path, content, needles):
    path = tmp_path / "law.json"
    path.write_text(content)
    code, out, err = run_cli("plan", "--law", path, "--flops", "1e21")
    one_line_error(code, err, *needles)


def test_plan_and_fit_state_the_compute_convention(run_cli, csv):
    code, out, err = run_cli("plan", "--flops", "1e21")
    assert code == 0, err
    assert "compute: C = 6·N·D training FLOPs" in out and "6(N + d_model·vocab)" in out
    code, out, err = run_cli("plan", "--flops", "1e21", "--json")
    assert json.loads(out)["compute_convention"].startswith("C = 6·N·D")
    code, out, err = run_cli("fit", csv, "--n-col", "params", "--loss-col", "val", "--flops-col", "flops", "--bootstrap", "0")
    assert code == 0, err
    assert "compute: C = 6·N·D" in out and "D was derived from --flops-col flops as C/(6N)" in out
    code, out, err = run_cli("fit", csv, "--n-col", "params", "--loss-col", "val", "--bootstrap", "0", "--form", "params", "--d-col", "D")
    assert code == 0, err
    assert "compute:" not in out  # L(N) says nothing about compute


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
        (["fit", "{csv}", "--n-col", "params", "--loss-col", "val", "--kind", "trunk"], ["--kind, --all-points, --min-tpp and --sizes choose points from the results store"]),
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


def test_a_fit_the_points_cannot_identify_is_refused_in_one_line(run_cli, tmp_path):
    # two model sizes: alpha and E trade off exactly, so any alpha fits as well as another
    path = tmp_path / "two_sizes.csv"
    grid_data(laws.HOFFMANN_2022, SIZES[:2], TOKENS, noise=0.002, seed=1).to_csv(path, index=False)
    code, _, err = run_cli("fit", path, "--bootstrap", "0")
    one_line_error(code, err, "needs at least 3 distinct N", "these points have 2", "--fix alpha=VALUE")
    code, out, err = run_cli("fit", path, "--bootstrap", "0", "--fix", "alpha=0.34")  # holding alpha identifies it
    assert code == 0, err
    with pytest.raises(UserError, match="at least 3 distinct D"):
        laws.fit(grid_data(laws.HOFFMANN_2022, [1e8, 1e8], TOKENS[:2]), "data")  # 4 points, 2 distinct D


def test_a_law_in_d_alone_refuses_points_of_several_model_sizes(run_cli, csv):
    code, _, err = run_cli("fit", csv, "--n-col", "params", "--loss-col", "val", "--form", "data", "--bootstrap", "0")
    one_line_error(code, err, "the data form fits one model size but these points hold 5", "--form chinchilla")


def test_fit_from_the_store_takes_the_sizes_asked_for(run_cli, study_db):
    code, out, err = run_cli("fit", "--db", study_db, "--group", "study", "--sizes", ",".join(f"{n:.3g}" for n in SIZES[:3]),
                             "--min-tpp", "0", "--bootstrap", "0", "--json")
    assert code == 0, err
    fitted = json.loads(out)
    assert fitted["n_points"] == 3 * len(TOKENS) and "with N in" in fitted["data"]["selection"]
    one_line_error(*run_cli("fit", "--db", study_db, "--sizes", "5e12")[::2], "--sizes", "no runs of that size")


def test_a_fit_with_its_floor_at_the_bound_prints_plain_numbers_and_says_so(run_cli, tmp_path):
    # a pure power law in N and D: the points show no floor, so E ends at its bound
    frame = grid_data(laws.Law("no-floor", laws.get_form("chinchilla"), {"E": 0.0, "A": 400.0, "alpha": 0.34, "B": 400.0,
                                                                         "beta": 0.28}), SIZES, TOKENS)
    frame.to_csv(tmp_path / "f.csv", index=False)
    code, out, err = run_cli("fit", tmp_path / "f.csv", "--bootstrap", "20")
    assert code == 0, err
    assert "E sits at its bound 0" in out and "0 (bound)" in out
    assert "e-1" not in out.split("parameter")[1].split("derived")[0]  # no 1e-12 in the parameter table


def test_plan_refuses_a_saved_fit_its_points_could_not_identify(run_cli, csv, tmp_path):
    saved = tmp_path / "fit.json"
    code, _, err = run_cli("fit", csv, "--n-col", "params", "--loss-col", "val", "--bootstrap", "20", "--save", saved)
    assert code == 0, err
    record = json.loads(saved.read_text())
    assert record["distinct"] == {"N": len(SIZES), "D": len(TOKENS)}
    # as a fit of two model sizes was saved before fits checked them: refused now
    (tmp_path / "two.json").write_text(json.dumps({**record, "distinct": {"N": 2, "D": len(TOKENS)}}))
    one_line_error(*run_cli("plan", "--law", tmp_path / "two.json", "--flops", "1e21")[::2], "2 distinct N", "too few")
    # a fit saved before the counts were kept plans, and says it could not be checked
    (tmp_path / "old.json").write_text(json.dumps({k: v for k, v in record.items() if k != "distinct"}))
    code, out, err = run_cli("plan", "--law", tmp_path / "old.json", "--flops", "1e21")
    assert code == 0, err
    assert "saved by an older scalinglab" in out


def test_a_fit_whose_profile_is_flat_along_an_exponent_is_refused(run_cli, tmp_path):
    # three model sizes within 4% of each other: A/N^alpha cannot tell alpha from E and A
    frame = grid_data(laws.EPOCH_2024, [1e8, 1.02e8, 1.04e8], TOKENS, noise=0.001, seed=1)
    frame.to_csv(tmp_path / "close.csv", index=False)
    code, _, err = run_cli("fit", tmp_path / "close.csv", "--bootstrap", "0")
    one_line_error(code, err, "cannot pin alpha down", "add N values spread wider", "--fix alpha=")
    # the same sizes spread over a decade identify it
    wide = grid_data(laws.EPOCH_2024, [1e8, 3e8, 1e9], TOKENS, noise=0.001, seed=1)
    wide.to_csv(tmp_path / "wide.csv", index=False)
    code, _, err = run_cli("fit", tmp_path / "wide.csv", "--bootstrap", "0")
    assert code == 0, err
