"""Compression analyses: classical baselines, the benchmark, prequential code length, compression vs D."""

from __future__ import annotations

import bz2
import json
import lzma
import math
import zlib
from pathlib import Path

import brotli
import numpy as np
import pytest
import zstandard

from scalinglab.compress import vsdata
from scalinglab.compress.baselines import COMPRESSORS, NAMES, baseline_sizes
from scalinglab.compress.bench import BenchSettings, compress_bench
from scalinglab.compress.prequential import prequential_code_length
from scalinglab.compress.vsdata import compression_vs_data
from scalinglab.config import ModelSpec, OptimConfig, RunConfig, TrainConfig
from scalinglab.corpus import CorpusConfig, prepare_corpus, split_bytes
from scalinglab.errors import UserError
from scalinglab.report.compress import plot_compression_vs_data, plot_prequential
from scalinglab.store import open_store
from scalinglab.train import plan_run, read_loss_log, train_run
from scalinglab.train.data import BatchSampler

GROUP = "tiny-study"


@pytest.fixture(scope="module")
def study(text_corpus, tmp_path_factory) -> tuple[Path, list[Path]]:
    """Two branch-kind runs of one N at two data budgets, recorded in a store as a study would."""
    root = tmp_path_factory.mktemp("compress-study")
    store = open_store(root / "s.db")
    dirs = []
    for tokens in (8_192, 40_960):
        cfg = RunConfig(corpus=CorpusConfig(source=str(text_corpus)),
                        model=ModelSpec(size=None, n_layer=1, d_model=32, n_head=2),
                        optim=OptimConfig(lr=3e-3),
                        train=TrainConfig(tokens=tokens, batch_size=4, seq_len=64, eval_points=2, eval_tokens=1024))
        corpus = prepare_corpus(cfg.corpus)
        plan = plan_run(cfg, corpus, kind="branch")
        plan.group = GROUP
        train_run(plan, corpus, store, root / f"d{tokens}")
        dirs.append(root / f"d{tokens}")
    return root / "s.db", dirs


def test_classical_baselines_are_real_compressions_whole_and_chunked():
    data = (b"the same words again and again; " * 200) + bytes(range(256))
    chunks = [data[i : i + 256] for i in range(0, len(data), 256)]
    sizes = {b.name: b for b in baseline_sizes(data, chunks)}
    assert list(sizes) == list(NAMES)
    for b in sizes.values():
        assert 0 < b.whole_bytes < len(data)
        assert b.whole_bytes < b.chunked_bytes  # chunks cannot share their repeats
        assert b.whole_bpb == pytest.approx(8 * b.whole_bytes / len(data))
    # each per-chunk stream decodes back, so the sizes are honest
    raw = {name: per_chunk(chunks[1]) for name, (_, per_chunk) in COMPRESSORS.items()}
    assert zlib.decompress(raw["gzip-9"], -15) == chunks[1]
    assert bz2.decompress(raw["bzip2-9"]) == chunks[1]
    assert lzma.decompress(raw["xz-9"], format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2}]) == chunks[1]
    unzstd = zstandard.ZstdDecompressor(format=zstandard.FORMAT_ZSTD1_MAGICLESS).decompressobj()
    assert unzstd.decompress(raw["zstd-19"]) == chunks[1]
    assert brotli.decompress(raw["brotli-11"]) == chunks[1]


def test_compress_bench_reports_every_file_and_records_it(study, tmp_path):
    db, dirs = study
    text = tmp_path / "text.txt"
    text.write_bytes(split_bytes(prepare_corpus(CorpusConfig(source=str(_corpus_of(dirs[1])))), "val")[:3000])
    noise = tmp_path / "noise.bin"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    store = open_store(tmp_path / "bench.db")
    frame = compress_bench(dirs[1], [text, noise], BenchSettings(batch_size=8), store=store)
    assert list(frame["bytes"]) == [3000, 2000]
    assert frame["round_trip"].all()
    for _, row in frame.iterrows():
        # the incremental path and the plain forward agree on the ideal code length
        assert row["forward_bpb"] == pytest.approx(row["ideal_bpb"], rel=1e-5)
        # what is coded never costs more than the model, nor more than 8 bits/byte (+ the chunk flags)
        assert row["coded_bpb"] <= row["quantized_bpb"] + 0.01
        assert row["coded_bpb"] <= 8.0 + 6 * row["chunks"] / row["bytes"] + 1e-9  # a raw flag costs 6 bits
        assert row["actual_bpb"] > row["coded_bpb"]
        assert 0 < row["coder_overhead"] < 0.01
        assert row["encode_Bps"] > 0 and row["decode_Bps"] > 0 and row["forward_Bps"] > 0
        assert row["adjusted_bpb"] > row["actual_bpb"]
        for name in NAMES:
            assert row[f"{name}_bpb"] > 0 and row[f"{name}_chunked_bpb"] > 0
    text_row, noise_row = frame.iloc[0], frame.iloc[1]
    assert text_row["ideal_bpb"] < 5.0 < noise_row["ideal_bpb"]  # it learned text, not noise
    assert text_row["raw_chunks"] == 0 and text_row["coded_bpb"] == pytest.approx(text_row["quantized_bpb"], abs=0.01)
    assert noise_row["raw_chunks"] == noise_row["chunks"]  # noise is stored, not expanded
    assert noise_row["xz-9_bpb"] > 8.0  # random bytes do not compress
    assert len(store.results("compress-bench")) == 2


def test_prequential_code_length_is_the_area_under_the_loss_curve(study, tmp_path):
    db, dirs = study
    run = dirs[1]
    store = open_store(db)
    result = prequential_code_length(run, store=store)
    losses = read_loss_log(run).astype(np.float64)
    batch_tokens = 4 * 64
    assert result.steps == len(losses) and result.tokens == len(losses) * batch_tokens == result.bytes
    assert result.bits == pytest.approx(losses.sum() * batch_tokens / math.log(2), rel=1e-9)
    assert result.curve_bits[-1] == pytest.approx(result.bits)
    # the baselines compress exactly the stream the run trained on, in its order
    corpus = prepare_corpus(CorpusConfig(source=str(_corpus_of(run))))
    sampler = BatchSampler(corpus.tokens("train"), 64, 4, 0)
    stream = b"".join(sampler.batch(s)[1].numpy().astype(np.uint8).tobytes() for s in range(len(losses)))
    assert result.xz_bits == 8 * len(lzma.compress(stream, preset=9))
    assert result.gzip_bpb > result.xz_bpb > 0
    assert result.epochs < 1 and not result.partial
    assert store.get_result("prequential", result.run_id)["bits"] == pytest.approx(result.bits)
    assert plot_prequential(result, tmp_path / "p.png").stat().st_size > 10_000


def test_compression_vs_data_improves_with_d_and_is_stored_once(study, tmp_path, monkeypatch):
    db, dirs = study
    store = open_store(db)
    frame = compression_vs_data(store, GROUP, max_bytes=4096)
    assert len(frame) == 2 and frame["n"].nunique() == 1
    assert list(frame["d"]) == [8_192, 40_960]
    small, large = frame.iloc[0], frame.iloc[1]
    assert large["ideal_bpb"] < small["ideal_bpb"] - 0.3  # more data, better compressor
    assert small["bytes"] == 4096 and small["gzip-9_bpb"] > 0
    assert len(store.results("compress-vs-data")) == 2
    # finished pieces are found in the store, not computed again
    monkeypatch.setattr(vsdata, "ideal_code_length", lambda *a, **k: pytest.fail("recomputed a stored result"))
    again = compression_vs_data(store, GROUP, max_bytes=4096)
    assert list(again["ideal_bits"]) == list(frame["ideal_bits"])
    assert plot_compression_vs_data(frame, tmp_path / "f.png").stat().st_size > 10_000


def test_compression_vs_data_with_the_real_archive_from_run_directories(study):
    _, dirs = study
    frame = compression_vs_data(None, run_dirs=[dirs[1]], max_bytes=2048, archive=True, batch_size=8)
    row = frame.iloc[0]
    assert row["archive_bpb"] > row["ideal_bpb"]
    assert row["archive_bytes"] * 8 - row["ideal_bits"] < 8 * 128 + 64  # the header and a few words


def _tiny_run(source: Path, out: Path, store, *, tokens: int = 2048, kind: str = "train",
              schedule: str = "wsd"):
    cfg = RunConfig(corpus=CorpusConfig(source=str(source)), model=ModelSpec(size=None, n_layer=1, d_model=16, n_head=1),
                    optim=OptimConfig(lr=3e-3, schedule=schedule, warmup=1),
                    train=TrainConfig(tokens=tokens, batch_size=4, seq_len=64, eval_points=1, eval_tokens=512))
    corpus = prepare_corpus(cfg.corpus)
    plan = plan_run(cfg, corpus, kind=kind)
    train_run(plan, corpus, store, out)
    return plan


def test_analyses_refuse_a_corpus_other_than_the_one_the_run_trained_on(text_corpus, tmp_path, run_cli):
    source = tmp_path / "corpus.txt"
    source.write_bytes(Path(text_corpus).read_bytes())
    store = open_store(tmp_path / "s.db")
    _tiny_run(source, tmp_path / "run", store)
    assert prequential_code_length(tmp_path / "run").steps == 8  # the untouched source is accepted
    source.write_bytes(source.read_bytes().replace(b"alpha", b"omega"))  # the source changes after training
    with pytest.raises(UserError, match="trained on corpus .* the source changed since training"):
        prequential_code_length(tmp_path / "run", store=store)
    with pytest.raises(UserError, match="trained on corpus"):
        compression_vs_data(None, run_dirs=[tmp_path / "run"], max_bytes=1024)
    code, out, err = run_cli("prequential", tmp_path / "run", "--db", tmp_path / "s.db")
    assert code == 2 and "trained on corpus" in err and len(err.strip().splitlines()) == 1, err
    assert store.results("prequential") == []  # nothing measured on the wrong data


def test_compression_vs_data_measures_a_trunk_at_its_current_length(text_corpus, tmp_path, run_cli):
    """A trunk records no total_steps (a longer study extends it): D is the step of its checkpoint,
    and an extended trunk is measured again rather than read from the store."""
    store = open_store(tmp_path / "s.db")
    trunk = tmp_path / "trunk"
    plan = _tiny_run(text_corpus, trunk, store, tokens=2048, kind="trunk", schedule="constant")
    assert plan.extendable and "total_steps" not in json.loads((trunk / "config.json").read_text())["train"]
    first = compression_vs_data(store, run_dirs=[trunk], max_bytes=1024).iloc[0]
    assert first["d"] == 8 * 256 and first["step"] == 8 and first["kind"] == "trunk" and not first["cooled"]
    _tiny_run(text_corpus, trunk, store, tokens=4096, kind="trunk", schedule="constant")  # the study grows
    second = compression_vs_data(store, run_dirs=[trunk], max_bytes=1024).iloc[0]
    assert second["d"] == 16 * 256 and second["ideal_bits"] != first["ideal_bits"]
    assert len(store.results("compress-vs-data")) == 2
    code, out, err = run_cli("compress-vs-data", "--run", trunk, "--db", tmp_path / "s.db", "--max-bytes", "1k",
                             "--figure", tmp_path / "t.png")
    assert code == 0, err
    assert "not cooled down" in out and (tmp_path / "t.png").exists()


def test_analysis_commands(run_cli, study, tmp_path):
    db, dirs = study
    code, out, err = run_cli("prequential", dirs[0], "--db", db, "--figure", tmp_path / "p.png")
    assert code == 0, err
    assert "prequential" in out and "xz -9" in out and (tmp_path / "p.png").exists()
    code, out, err = run_cli("compress-vs-data", "--group", GROUP, "--db", db, "--max-bytes", "2k",
                             "--figure", tmp_path / "v.png")
    assert code == 0, err
    assert out.count("bits/byte") >= 2 and (tmp_path / "v.png").exists()
    code, out, err = run_cli("compress-vs-data", "--group", "nothing-here", "--db", db)
    assert code == 2 and "no finished branch runs" in err
    sample = tmp_path / "sample.txt"
    sample.write_bytes(b"for item in range(3):\n    total += item\n" * 12)
    table = tmp_path / "tables" / "bench.csv"
    args = ("compress-bench", dirs[0], sample, "--batch", "4", "--no-chunked", "--quiet", "--db", tmp_path / "b.db")
    code, out, err = run_cli(*args, "--csv", table)
    assert code == 2 and "cannot write" in err and len(err.strip().splitlines()) == 1, err
    table.parent.mkdir()
    code, out, err = run_cli(*args, "--csv", table)
    assert code == 0, err
    assert [p.name for p in table.parent.iterdir()] == ["bench.csv"]  # written whole, no temporary file left
    assert table.read_text().splitlines()[0].startswith("file,bytes,")


def _corpus_of(run: Path) -> str:
    import json

    return json.loads((run / "config.json").read_text())["corpus"]["source"]


def test_compression_vs_data_codes_a_users_file_and_says_whether_the_models_saw_it(study, text_corpus, tmp_path, run_cli):
    db, dirs = study
    unseen = tmp_path / "unseen.txt"
    unseen.write_text("Il était une fois, dans un pays lointain, une bibliothèque où personne n'écrivait de code.\n" * 30)
    frame = compression_vs_data(None, run_dirs=dirs, input_path=unseen, max_bytes=2048)
    assert list(frame["split"]) == ["file:unseen.txt"] * 2 and (frame["bytes"] == 2048).all()
    assert frame["train_overlap"].max() < 0.05  # never trained on
    # a copy of the training split is recognised as such, and the command warns
    copy = tmp_path / "copy.txt"
    copy.write_bytes(split_bytes(prepare_corpus(CorpusConfig(source=str(text_corpus))), "train")[:4096])
    code, out, err = run_cli("compress-vs-data", "--group", GROUP, "--db", db, "--input", copy,
                             "--figure", tmp_path / "c.png")
    assert code == 0, err
    assert "occur verbatim in the models' training split" in out and "file:copy.txt" in out
    code, _, err = run_cli("compress-vs-data", "--group", GROUP, "--db", db, "--input", tmp_path / "absent.txt")
    assert code == 2 and "--input" in err and len(err.strip().splitlines()) == 1


def test_compression_vs_data_takes_the_nearest_size_and_refuses_a_far_one(study):
    db, _ = study
    store = open_store(db)
    n = int(compression_vs_data(store, GROUP, max_bytes=1024)["n"].iloc[0])
    assert set(compression_vs_data(store, GROUP, n=int(n * 1.3), max_bytes=1024)["n"]) == {n}
    with pytest.raises(UserError, match="no run has N near"):
        compression_vs_data(store, GROUP, n=n * 10, max_bytes=1024)


def test_archives_shorter_than_the_float_code_length_are_explained():
    import pandas as pd

    from scalinglab.cli.compress import coding_notes

    frame = pd.DataFrame({"ideal_bpb": [2.0, 1.5], "archive_bpb": [2.01, 1.49], "train_overlap": [None, None]})
    notes = coding_notes(frame)
    assert len(notes) == 1 and "one count in 2^24" in notes[0]
    assert coding_notes(frame.assign(archive_bpb=[2.01, 1.51])) == []
