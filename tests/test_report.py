"""`scalinglab report`: the smoke study's page, its numbers against the store and study.csv, the
page in a real browser (headless Chromium), the Markdown twin, and the errors a user can cause."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from scalinglab.report.document import num
from scalinglab.store import Store, load_points

TITLES = ["The answer at a glance", "Data scaling at fixed N", "The laws", "Compression", "Storage vs structure",
          "Phase transitions and data quality", "Knowledge", "Samples"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The smoke study on the embedded default corpus with its repeated-data control, run as a
    user runs it; it writes its report."""
    root = tmp_path_factory.mktemp("report")
    env = {**os.environ, "SCALINGLAB_CACHE": str(tmp_path_factory.getbasetemp() / "corpus-cache"),
           "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-m", "scalinglab", "study", "--preset", "smoke", "--workers", "2",
                           "--control", "repeat"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    study_dir = next((root / "study").glob("smoke-*"))
    return {"root": root, "out": done.stdout, "dir": study_dir, "db": root / "scalinglab.db",
            "page": study_dir / "report" / "index.html", "env": env}


def _numbers(smoke) -> dict:
    return json.loads((smoke["page"].parent / "report.json").read_text())


def test_the_study_writes_its_report_and_says_where(smoke):
    assert f"report: {Path('study') / smoke['dir'].name / 'report' / 'index.html'}" in smoke["out"]
    page = smoke["page"].read_text()
    for title in TITLES:
        assert f"{title}</h2>" in page
    # self-contained: figures inline, nothing to fetch, no scripts
    assert "<script" not in page and "@import" not in page and re.search(r"url\((?!#)", page) is None
    assert re.search(r'(src|href)\s*=\s*"(?!#|data:)', page) is None  # links only within the page
    assert page.count("<svg") >= 5
    figures = sorted(p.name for p in (smoke["page"].parent / "figures").glob("*.svg"))
    assert {"loss_vs_data.svg", "loss_vs_tokens_per_param.svg", "loss_vs_compute.svg", "train_val_gap.svg",
            "laws_compute_optimal.svg"} <= set(figures)
    assert "[nan" not in page and "nan]" not in page


def test_the_reports_numbers_are_the_stores_and_study_csvs(smoke):
    csv = pd.read_csv(smoke["dir"] / "study.csv")
    stored = load_points(smoke["db"], group=smoke["dir"].name)
    stored = stored[stored["kind"] == "branch"]
    sizes = _numbers(smoke)["sections"]["glance"]["numbers"]["sizes"]
    page = smoke["page"].read_text()
    assert sorted(int(n) for n in sizes) == sorted(csv["N"].unique())
    for n, group in csv.groupby("N"):
        group = group.sort_values("D")
        at20 = group.iloc[(group["tokens_per_param"] - 20).abs().argmin()]
        last = group.iloc[-1]
        row = sizes[str(n)]
        assert row["loss_at_20"] == at20["val_loss"] and row["loss_at_max"] == last["val_loss"]
        assert row["max_D"] == last["D"]
        # the store holds the same value as study.csv for that branch's final point
        final = stored[stored["run_id"] == last["branch_run"]].sort_values("step").iloc[-1]
        assert final["val_loss"] == last["val_loss"]
        # and the page prints it, and the drop it reads off
        assert f"{last['val_loss']:.4f}" in page and f"{at20['val_loss']:.4f}" in page
        assert f"fell {num(at20['val_loss'] - last['val_loss'])} nats" in page


def test_the_report_in_a_browser(smoke, tmp_path):
    """What a reader sees: headless Chromium loads the page with no console errors and no network
    requests; every section heading is there; every figure is a drawn SVG; the reading quotes
    study.csv."""
    chromium = Path("/usr/bin/chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if sync_playwright is None or not chromium.exists():
        reason = "headless Chromium (Debian package chromium) and playwright are needed for the browser test"
        if os.environ.get("SCALINGLAB_REQUIRE_BROWSER"):
            pytest.fail(reason + "; .ci/run installs them")
        pytest.skip(reason)
    artifacts = Path(os.environ.get("SCALINGLAB_TEST_ARTIFACTS") or tmp_path)
    artifacts.mkdir(parents=True, exist_ok=True)
    url = smoke["page"].resolve().as_uri()
    errors, requests = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=[
            "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(url, wait_until="load")
            headings = page.locator("h2").all_inner_texts()
            figures = page.locator("figure svg")
            sizes = [figures.nth(i).bounding_box() for i in range(figures.count())]
            drawn = [figures.nth(i).locator("path").count() for i in range(figures.count())]
            glance = page.locator("#glance").inner_text()
            page.screenshot(path=str(artifacts / "report.png"), full_page=True)
        finally:
            browser.close()
    assert errors == []
    assert requests == [url]  # the page itself, nothing else
    assert [re.sub(r"^\d+\.\s*", "", h) for h in headings] == TITLES
    assert len(sizes) >= 5 and all(box and box["width"] > 200 and box["height"] > 100 for box in sizes)
    assert all(count > 10 for count in drawn)
    csv = pd.read_csv(smoke["dir"] / "study.csv")
    for _, group in csv.groupby("N"):
        assert f"{group.sort_values('D')['val_loss'].iloc[-1]:.4f}" in glance
    assert (artifacts / "report.png").stat().st_size > 50_000


def test_samples_show_every_milestone_of_one_size_from_one_prompt(smoke):
    samples = _numbers(smoke)["sections"]["samples"]["numbers"]
    csv = pd.read_csv(smoke["dir"] / "study.csv")
    largest = csv[csv["N"] == csv["N"].max()]
    assert samples["N"] == csv["N"].max()
    assert [s["D"] for s in samples["samples"]] == sorted(largest["D"])
    assert all(s["text"] for s in samples["samples"]) and samples["prompt"].strip()
    # the same prompt, seed and checkpoint give the same text through `scalinglab sample`
    run = largest.sort_values("D")["branch_run"].iloc[-1]
    from scalinglab.sampling import sample

    again = sample(run, samples["prompt"], 160, temperature=0.8, top_k=40, seed=0, db=smoke["db"])
    assert again.text == samples["samples"][-1]["text"]


def test_markdown_twin(smoke, run_cli, tmp_path):
    code, out, err = run_cli("report", "--db", smoke["db"], "--out", tmp_path / "md", "--format", "md")
    assert code == 0, err
    text = (tmp_path / "md" / "report.md").read_text()
    for number, title in enumerate(TITLES, 1):
        assert f"## {number}. {title}" in text
    linked = re.findall(r"\]\((figures/[^)]+\.svg)\)", text)
    assert len(linked) >= 5 and all((tmp_path / "md" / link).stat().st_size > 1000 for link in linked)
    assert "report.md" in out


def test_sections_without_data_say_which_command_makes_them(smoke):
    sections = _numbers(smoke)["sections"]
    assert "compress-vs-data" in sections["compression"]["missing"]
    assert "scalinglab probe capacity" in sections["storage"]["missing"]
    assert sections["glance"]["missing"] is None and sections["scaling"]["missing"] is None


def test_a_store_without_a_study_still_reports(run_cli, tmp_path):
    store = Store(tmp_path / "s.db")
    store.upsert_run("train-x", kind="train", status="done")
    code, out, err = run_cli("report", "--db", tmp_path / "s.db", "--out", tmp_path / "r")
    assert code == 0, err
    sections = json.loads((tmp_path / "r" / "report.json").read_text())["sections"]
    assert "scalinglab study" in sections["glance"]["missing"]
    assert "scalinglab study" in sections["samples"]["missing"]
    assert sections["laws"]["missing"] is None  # the published laws need no data of the user's


@pytest.mark.parametrize("case, needle", [
    ("missing", "no results store at"),
    ("empty", "is empty"),
    ("unknown-study", "no study 'nope'"),
    ("bad-format", "--format 'pdf'"),
])
def test_report_errors_are_one_line(run_cli, tmp_path, case, needle):
    db = tmp_path / "s.db"
    args = ["report", "--db", db, "--out", tmp_path / "r"]
    if case != "missing":
        Store(db)
    if case in ("unknown-study", "bad-format"):
        Store(db).upsert_run("train-x", kind="train", status="done")
    if case == "unknown-study":
        args += ["--study", "nope"]
    if case == "bad-format":
        args += ["--format", "pdf"]
    code, out, err = run_cli(*args)
    assert code == 2 and needle in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    if case == "missing":
        assert not db.exists()  # asking for a report creates no store


def test_the_compression_section_quotes_what_compress_vs_data_stored(smoke, run_cli, tmp_path):
    import shutil

    db = tmp_path / "s.db"
    shutil.copy(smoke["db"], db)
    n = str(int(pd.read_csv(smoke["dir"] / "study.csv")["N"].max()))
    code, _, err = run_cli("compress-vs-data", "--group", smoke["dir"].name, "--n", n, "--max-bytes", "4k",
                           "--db", db, "--figure", tmp_path / "c.png")
    assert code == 0, err
    code, _, err = run_cli("report", "--db", db, "--out", tmp_path / "r")
    assert code == 0, err
    section = json.loads((tmp_path / "r" / "report.json").read_text())["sections"]["compression"]
    stored = pd.DataFrame(Store(db).results("compress-vs-data")).sort_values("d")
    assert section["missing"] is None
    numbers = section["numbers"]["vs_data"]
    assert numbers["sizes"][n]["bpb_last"] == stored["ideal_bpb"].iloc[-1]
    assert numbers["model_bpb"] == stored["ideal_bpb"].min()
    assert numbers["baseline_bpb"] == min(stored["gzip-9_bpb"].iloc[0], stored["xz-9_bpb"].iloc[0])
    page = (tmp_path / "r" / "index.html").read_text()
    assert f"{num(stored['ideal_bpb'].iloc[-1])} after D = {num(stored['d'].iloc[-1])}" in page
    assert 'id="fig-compression_vs_data"' in page
    # the glance's second answer now compares with the classical coder instead of "not measured yet"
    glance = json.loads((tmp_path / "r" / "report.json").read_text())["sections"]["glance"]["readings"][1]
    assert numbers["baseline"] in glance and "not measured yet" not in glance


def test_the_report_splits_each_gain_into_new_data_and_more_steps_as_the_study_does(smoke):
    csv = pd.read_csv(smoke["dir"] / "study.csv")
    sizes = _numbers(smoke)["sections"]["scaling"]["numbers"]["sizes"]
    page = smoke["page"].read_text()
    for n, group in csv.groupby("N"):
        row = sizes[str(n)]
        group = group.sort_values("D").set_index("tokens_per_param", drop=False)
        anchor, last = group.loc[row["control_anchor_tpp"]], group.iloc[-1]
        # from new data = the unique-data gain (control - main, in study.csv) at the largest D minus at the anchor
        assert row["gain_from_new_data"] == pytest.approx(last["unique_data_gain"] - anchor["unique_data_gain"], abs=1e-12)
        assert row["gain_from_steps"] == pytest.approx(anchor["control_val_loss"] - last["control_val_loss"], abs=1e-12)
        assert f"{num(row['gain_from_new_data'])} ({num(100 * row['gain_from_new_data'] / row['control_gain'])}%) from new data" in page
    assert "credits" in _numbers(smoke)["sections"]["glance"]["readings"][0]
