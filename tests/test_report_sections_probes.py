"""The report's probe sections (storage, phase, knowledge) read what the probes store.

Stores are filled by tiny real probe runs where those take seconds (capacity, grokking,
facts-rules, long tail) and otherwise by the probe's own analysis code on small inputs
(memorisation, repetition, open book), so the stored dicts have exactly the probes' shape.
"""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from scalinglab.report import section_knowledge, section_phase, section_storage
from scalinglab.report.document import num
from scalinglab.store import Store

# --- stores --------------------------------------------------------------------------------------------


def _capacity(store: Store, tmp) -> None:
    from scalinglab.probes.capacity import CapacityConfig, run_capacity
    from scalinglab.probes.common import probe_optim

    cfg = CapacityConfig(models=((1, 8), (1, 16)), data_bits_per_param=(0.5, 3.0), steps=40, vocab_size=16,
                         seq_len=9, optim=probe_optim(lr=1e-2, schedule="cosine", warmup=10), eval_points=4,
                         heldout_sequences=32)
    run_capacity(cfg, tmp / "capacity", store.path, workers=1)


def _memorisation(store: Store) -> None:
    from scalinglab.probes.common import put_probe_result
    from scalinglab.probes.memorisation import PROBE, MemorisationConfig, MemorisationResult, storage_limits

    n, p, alpha, bpt = 3120, 7216, 3.6, 2.8
    rows = []
    for ratio, mem, se, gain, auc_l, auc_r in ((1.0, 900.0, 200.0, 10_000.0, 0.66, 0.61),
                                               (8.0, -400.0, 500.0, 70_000.0, 0.54, 0.51)):
        d = int(ratio * n)
        rows.append({"tokens_per_param": ratio, "D": d, "N": n, "windows_scored": 97, "windows_total": 97,
                     "train_bits_per_token": 4.7, "val_bits_per_token": 5.3, "reference_train_bits_per_token": 4.8,
                     "reference_val_bits_per_token": 5.5, "memorised_bits": mem + 100, "memorised_bits_se": se / 2,
                     "memorised_bits_calibrated": mem, "memorised_bits_calibrated_se": se,
                     "cheap_memorised_bits": 0.6 * d, "reference_offset_bits_per_token": 0.1,
                     "train_gain_bits": gain, "generalised_bits": gain - mem, "heldout_gain_bits": 0.8 * gain,
                     "sample_specific_share": mem / gain, "auc_loss": auc_l, "auc_reference": auc_r,
                     "model_run": f"m{ratio}", "reference_run": f"r{ratio}"})
    table = pd.DataFrame(rows)
    table["capacity_bits"] = alpha * p
    table["storable"] = table["D"] * bpt <= alpha * p
    limits = storage_limits([("probe model", n, p), ("preset 10k", 9492, 16660)], alpha, bpt)
    result = MemorisationResult(config=MemorisationConfig(), rows=table, study=None, limits=limits, alpha=alpha,
                                alpha_source="anchor (Morris et al. 2025, 3.6 bits/param)", bits_per_token=bpt,
                                capacity_bits=alpha * p, P=p, N=n)
    put_probe_result(store, PROBE, "mem-key", result.summary())


def _grokking(store: Store, tmp) -> None:
    from scalinglab.probes.grokking import GrokConfig, train_grokking
    from scalinglab.probes.grokking_sweeps import run_dir, sweep_fractions

    cfg = GrokConfig(p=23, max_epochs=100, eval_every=10, snapshot_every=50)
    train_grokking(cfg, run_dir(tmp / "grok", cfg.resolved()), db=store.path)
    sweep_fractions(cfg, [0.5, 0.6], tmp / "grok", db=store.path)


def _facts_rules(store: Store, tmp) -> None:
    from scalinglab.probes.common import probe_optim
    from scalinglab.probes.facts_rules import FactsRulesConfig, run_facts_rules

    cfg = FactsRulesConfig(items=(32, 128), alphabet=16, d_model=8, epochs=40, min_steps=40, batch_size=64,
                           optim=probe_optim(lr=1e-2, warmup=10))
    run_facts_rules(cfg, tmp / "fr", db=store.path)


def _repetition(store: Store) -> None:
    from scalinglab.config import ModelSpec, OptimConfig, RunConfig, TrainConfig
    from scalinglab.corpus import CorpusConfig
    from scalinglab.probes.common import put_probe_result
    from scalinglab.probes.repetition import PROBE, RepetitionConfig, analyse

    d = 64_000
    base = RunConfig(corpus=CorpusConfig(source="text"), model=ModelSpec(size="10k"), optim=OptimConfig(lr=1e-2),
                     train=TrainConfig(tokens=d, seq_len=32, batch_size=2, eval_points=2))
    cfg = RepetitionConfig(base=base, epochs=(1, 4, 16), junk=(0.5,))
    rows = [("repeated", 1, d, 0.0, 0.0, 3.40), ("repeated", 4, d // 4, 0.0, 0.0, 3.57),
            ("repeated", 16, d // 16, 0.0, 0.0, 3.95), ("fresh", 1, d // 4, 0.0, 0.0, 3.80),
            ("fresh", 1, d // 16, 0.0, 0.0, 4.30), ("junk", 1, d, 0.5, 0.504, 3.50)]
    table = pd.DataFrame([{"role": role, "epochs": e, "unique_tokens": u, "tokens": d if role != "fresh" else u,
                           "junk_fraction": jf, "junk_share": js, "realised_epochs": float(e), "val_loss": loss,
                           "val_bpb": loss * 1.4, "train_loss": loss - 0.3, "run_id": f"rep-{i}", "status": "done"}
                          for i, (role, e, u, jf, js, loss) in enumerate(rows)])
    result = analyse(cfg, table)
    result.key = "rep-key"
    put_probe_result(store, PROBE, result.key, result.to_dict())


def _long_tail(store: Store, tmp) -> None:
    from scalinglab.probes.long_tail import LongTailConfig, run_long_tail

    cfg = LongTailConfig(facts=512, alphabet=16, models=((1, 8),), presented=(640, 1280, 2560), batch_size=64, head=50)
    run_long_tail(cfg, tmp / "lt", db=store.path, workers=1)


def _open_book(store: Store) -> None:
    from scalinglab.probes.common import put_probe_result
    from scalinglab.probes.open_book import PROBE, OpenBookConfig, analyse, notes

    cfg = OpenBookConfig(facts=(64, 256), alphabet=16, models=((2, 32),), records=(1, 2), train_records=2,
                         recall=(1.0, 0.5))
    rows = [{"role": "closed", "model": "2x32", "F": 64, "recalled": 63, "bits_stored": 500.0, "steps": 100,
             "run_id": "c64"},
            {"role": "closed", "model": "2x32", "F": 256, "recalled": 40, "bits_stored": 900.0, "steps": 100,
             "run_id": "c256"}]
    for f in cfg.facts:
        for k in cfg.records:
            for kind in ("random", "hard"):
                for rho in (1.0, 0.5, 0.0):
                    if rho == 0.0 and k != max(cfg.records):
                        continue
                    acc = 0.002 if rho == 0.0 else 0.8 * rho - 0.05 * k
                    rows.append({"role": "reader", "model": "2x32", "steps": 600, "run_id": "reader", "copy_acc": 0.9,
                                 "F": f, "k": k, "distractors": kind, "rho": rho, "asked": f, "accuracy": acc,
                                 "value_bits": 1.0})
    result = analyse(cfg, rows, 3.6, "anchor (Morris et al. 2025)")
    result.notes = notes(result)
    put_probe_result(store, PROBE, "ob-key", result.to_dict())


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sections")
    empty = Store(tmp / "empty.db")
    storage = Store(tmp / "storage.db")
    _capacity(storage, tmp)
    _memorisation(storage)
    only_capacity = Store(tmp / "only-capacity.db")
    _capacity(only_capacity, tmp)
    phase = Store(tmp / "phase.db")
    _grokking(phase, tmp)
    _facts_rules(phase, tmp)
    _repetition(phase)
    knowledge = Store(tmp / "knowledge.db")
    _long_tail(knowledge, tmp)
    _open_book(knowledge)
    return {"empty": empty, "storage": storage, "only_capacity": only_capacity, "phase": phase,
            "knowledge": knowledge}


def _newest(store: Store, kind: str, accept=lambda r: True) -> dict:
    return [r for r in store.results(kind) if accept(r)][-1]


def _check_common(section, key: str, title: str) -> None:
    assert section.key == key and section.title == title and section.missing is None
    assert section.readings and section.figures and section.provenance
    for figure in section.figures:
        assert figure.caption and figure.svg.startswith("<svg")
        assert "<path" in figure.svg or "<line" in figure.svg
        assert "nan" not in figure.svg.lower().replace("nanum", "")  # no "[nan, nan]" legends
    for text in section.readings + [f.caption for f in section.figures]:
        assert "nan" not in text.split() and "[nan" not in text and "None" not in text
    json.dumps(section.numbers, allow_nan=False)  # JSON-able, no NaN


# --- missing -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("module, commands", [
    (section_storage, ["scalinglab probe capacity", "scalinglab probe memorisation"]),
    (section_phase, ["scalinglab probe grokking", "scalinglab probe facts-rules", "scalinglab probe repetition"]),
    (section_knowledge, ["scalinglab probe long-tail", "scalinglab probe open-book"]),
])
def test_an_empty_store_gives_a_missing_section_naming_the_commands(stores, module, commands):
    section = module.build(stores["empty"])
    assert section.missing and section.missing.startswith("Not measured yet")
    for command in commands:
        assert f"`{command}`" in section.missing
    assert section.empty and not section.figures


def test_a_probe_not_run_is_named_while_the_others_are_shown(stores):
    section = section_storage.build(stores["only_capacity"])
    assert section.missing is None and "capacity" in section.numbers and "memorisation" not in section.numbers
    assert any("`scalinglab probe memorisation`" in r and r.startswith("Not measured yet") for r in section.readings)
    assert len(section.figures) == 1


# --- storage -------------------------------------------------------------------------------------------

def test_storage_section_quotes_the_stored_capacity_and_memorisation_numbers(stores):
    store = stores["storage"]
    section = section_storage.build(store)
    _check_common(section, "storage", "Storage vs structure")
    cap = _newest(store, "probe:capacity")
    n = section.numbers["capacity"]
    assert n["alpha"] == cap["alpha"] and n["alpha_low"] == cap["alpha_low"] and n["n_models"] == 2
    assert n["median_doubling_gain"] == cap["median_doubling_gain"] and n["converged"] == cap["converged"]
    reading = section.readings[0]
    assert f"α = {num(cap['alpha'])} bits/param [95%: {num(cap['alpha_low'])}, {num(cap['alpha_high'])}]" in reading
    assert "over 2 model(s)" in reading and "anchor: 3.60" in reading
    convergence = next(r for r in section.readings if r.startswith("Convergence"))
    assert f"{num(100 * cap['median_doubling_gain'])}%" in convergence

    mem = _newest(store, "probe:memorization")
    m = section.numbers["memorisation"]
    own = next(lim for lim in mem["limits"] if lim["label"] == "probe model")
    assert m["storage_limit_tokens_per_param"] == own["limit_tokens_per_param"]
    assert m["storage_limit_tokens_per_param"] == pytest.approx(3.6 * 7216 / 2.8 / 3120)
    limit = next(r for r in section.readings if r.startswith("Storage limit"))
    assert f"D/N = {num(own['limit_tokens_per_param'])} tokens/param" in limit
    # the memorisation result used the anchor; the measured α rescales the limit
    rescaled = next(r for r in section.readings if r.startswith("With the α"))
    assert num(own["limit_tokens_per_param"] * cap["alpha"] / 3.6) in rescaled
    assert m["storage_limit_at_measured_alpha"] == pytest.approx(own["limit_tokens_per_param"] * cap["alpha"] / 3.6)
    auc = next(r for r in section.readings if r.startswith("Membership"))
    first, last = mem["rows"][0], mem["rows"][-1]
    for value in (first["auc_loss"], last["auc_loss"], first["auc_reference"], last["auc_reference"]):
        assert num(value) in auc
    assert [r["auc_loss"] for r in m["rows"]] == [r["auc_loss"] for r in mem["rows"]]
    bits = next(r for r in section.readings if r.startswith("Memorised vs generalised"))
    assert num(first["memorised_bits_calibrated"]) in bits and num(last["generalised_bits"]) in bits
    assert "within two standard errors of zero" in bits  # -400 ± 500
    # the negative memorised estimate cannot be drawn on a log axis: the caption says so
    figure = next(f for f in section.figures if f.name == "storage-memorised-vs-generalised")
    assert "Not drawn" in figure.caption and "D/N = 8" in figure.caption
    assert [f.name for f in section.figures] == ["storage-capacity-vs-params", "storage-memorised-vs-generalised",
                                                 "storage-membership-auc"]
    assert any("`scalinglab probe capacity`" in p and cap["key"] in p for p in section.provenance)
    assert any("`scalinglab probe memorisation`" in p and "mem-key" in p for p in section.provenance)
    assert len(section.tables) == 2


def test_the_newest_result_of_a_kind_is_used(stores, tmp_path):
    store = Store(tmp_path / "s.db")
    older = _newest(stores["storage"], "probe:capacity")
    data = {k: v for k, v in older.items() if k not in ("key", "run_id", "created")}
    store.put_result("probe:capacity", "older", data)
    store.put_result("probe:capacity", "newer", {**data, "alpha": 1.234, "alpha_low": None, "alpha_high": None})
    section = section_storage.build(store)
    assert section.numbers["capacity"]["key"] == "newer" and section.numbers["capacity"]["alpha"] == 1.234
    assert "α = 1.23 bits/param (no interval)" in section.readings[0]
    assert any("result newer" in p for p in section.provenance)


# --- phase ---------------------------------------------------------------------------------------------

def test_phase_section_quotes_grokking_facts_rules_and_repetition(stores):
    store = stores["phase"]
    section = section_phase.build(store)
    _check_common(section, "phase", "Phase transitions and data quality")
    run = _newest(store, "probe:grokking", lambda r: "measures" in r)
    g = section.numbers["grokking"]["run"]
    assert g["key"] == run["key"] and g["memorised_epoch"] == run["memorised_epoch"]
    assert g["generalised_epoch"] == run["generalised_epoch"] and g["final_test_acc"] == run["final_test_acc"]
    first = section.readings[0]
    assert f"{run['n_train']:,} training / {run['n_test']:,} test pairs" in first
    if run["memorised_epoch"]:
        assert f"epoch {run['memorised_epoch']:,}" in first
    points = store.points(run["run_id"])
    assert g["initial_weight_norm"] == json.loads(points[0]["extra"])["weight_norm"]
    sweep = _newest(store, "probe:grokking", lambda r: "critical_frac" in r)
    assert section.numbers["grokking"]["sweep"]["largest_failed_frac"] == sweep["largest_failed_frac"]
    assert any(r.startswith("Sweeping the training fraction") for r in section.readings)
    names = [f.name for f in section.figures]
    assert names[:3] == ["phase-grokking-accuracy", "phase-grokking-measures", "phase-grokking-sweep"]

    fr = _newest(store, "probe:facts-rules")
    f = section.numbers["facts_rules"]
    assert f["max_fact_bits"] == fr["max_fact_bits"] and f["bits_per_fact"] == 8.0
    facts = next(r for r in section.readings if r.startswith("Facts vs rules"))
    assert f"{num(fr['max_fact_bits'])} bits ({num(fr['bits_per_param'])} bits/param)" in facts
    rule = next(r for r in section.readings if r.startswith("The rule"))
    assert num(fr["table"][0]["rule_test_acc"]) in rule and num(fr["table"][-1]["rule_test_acc"]) in rule
    assert {"phase-facts-rules-bits", "phase-facts-rules-accuracy"} <= set(names)

    rep = _newest(store, "probe:repetition")
    r = section.numbers["repetition"]
    assert r["rd_star_fitted"] == rep["rd_star_fitted"] and r["rd_star_reference"] == rep["rd_star_reference"]
    repeated = next(x for x in section.readings if x.startswith("Repeated data"))
    assert "D = 64,000" in repeated and "3.40 nats/token at e = 1" in repeated and "3.95 at e = 16" in repeated
    last = max((row for row in rep["table"] if row["role"] == "repeated"), key=lambda row: row["epochs"])
    assert f"predicted {num(last['predicted_loss'])}" in repeated
    assert any(f"R* = {num(rep['rd_star_fitted'])}" in x for x in section.readings)
    junk = next(row for row in rep["table"] if row["role"] == "junk")
    junk_reading = next(x for x in section.readings if x.startswith("Junk"))
    assert num(junk["val_loss"]) in junk_reading and num(junk["predicted_loss"]) in junk_reading
    assert {"phase-repetition", "phase-repetition-junk"} <= set(names)
    assert any("`scalinglab probe repetition`" in p and "rep-key" in p for p in section.provenance)
    assert any("`scalinglab probe facts-rules`" in p and fr["key"] in p for p in section.provenance)


# --- knowledge -----------------------------------------------------------------------------------------

def test_knowledge_section_quotes_long_tail_and_open_book(stores):
    from scalinglab.probes.long_tail import growth_exponent

    store = stores["knowledge"]
    section = section_knowledge.build(store)
    _check_common(section, "knowledge", "Knowledge")
    lt = _newest(store, "probe:long-tail")
    zipf = sorted((r for r in lt["table"] if r["stream"] == "zipf"), key=lambda r: r["D"])
    m = section.numbers["long_tail"]["models"]["1x8"]
    assert m["recalled_first"] == zipf[0]["facts_recalled"] and m["recalled_last"] == zipf[-1]["facts_recalled"]
    expected = growth_exponent(pd.Series([r["D"] for r in zipf]), pd.Series([r["facts_recalled"] for r in zipf]))
    if math.isfinite(expected):
        assert m["growth_exponent"] == pytest.approx(expected)
    reading = next(r for r in section.readings if r.startswith("1x8 (P"))
    assert f"{num(zipf[0]['facts_recalled'])} at D = {zipf[0]['D']:,}" in reading
    assert f"{num(zipf[-1]['facts_recalled'])} at D = {zipf[-1]['D']:,}" in reading
    assert section.numbers["long_tail"]["alpha"] == lt["alpha"]

    ob = _newest(store, "probe:open-book")
    o = section.numbers["open_book"]["models"]["2x32"]
    cross = ob["crossover"][0]
    assert o["predicted_F"] == cross["predicted_F"] and o["measured_F"] == cross["measured_F"]
    closed = sorted(ob["closed"], key=lambda r: r["F"])
    assert o["recall_first"] == closed[0]["recall"] and o["recall_last"] == closed[-1]["recall"]
    book = next(r for r in section.readings if r.startswith("2x32 (P"))
    assert f"{num(cross['predicted_F'])} facts" in book and num(closed[-1]["recall"]) in book
    removed = next(r for r in section.readings if "right record removed" in r)
    assert num(0.002) in removed and num(16 ** -2) in removed
    assert [f.name for f in section.figures] == ["knowledge-long-tail-recall", "knowledge-long-tail-facts",
                                                 "knowledge-open-book"]
    assert any("`scalinglab probe long-tail`" in p and lt["key"] in p for p in section.provenance)


def test_builders_neither_print_nor_write_files(stores, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for module, name in ((section_storage, "storage"), (section_phase, "phase"), (section_knowledge, "knowledge")):
        module.build(stores[name])
    assert capsys.readouterr().out == "" and list(tmp_path.iterdir()) == []
