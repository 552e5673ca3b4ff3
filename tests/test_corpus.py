"""Corpus sources, splitting, caching and tokenizers."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from scalinglab.corpus import BPETokenizer, ByteTokenizer, CorpusConfig, prepare_corpus, read_source
from scalinglab.corpus.prepare import assign_splits
from scalinglab.corpus.sources import SourceSpec
from scalinglab.errors import UserError


def _doc_sets(prepared):
    return {split: set(prepared.doc_names(split)) for split in ("train", "val", "test")}


def test_split_is_by_document_and_deterministic(text_corpus):
    a = prepare_corpus(CorpusConfig(source=str(text_corpus)))
    docs = _doc_sets(a)
    assert not docs["train"] & docs["val"] and not docs["train"] & docs["test"] and not docs["val"] & docs["test"]
    n_docs = len(read_source(str(text_corpus)).documents)
    assert sum(len(d) for d in docs.values()) == n_docs
    # every document's tokens are in exactly one split, so the splits add up to the source
    assert sum(a.stats(s)["bytes"] for s in ("train", "val", "test")) == text_corpus.stat().st_size
    split_a = assign_splits([100] * 50, seed=3, val_frac=0.1, test_frac=0.1)
    split_b = assign_splits([100] * 50, seed=3, val_frac=0.1, test_frac=0.1)
    split_c = assign_splits([100] * 50, seed=4, val_frac=0.1, test_frac=0.1)
    assert (split_a == split_b).all() and (split_a != split_c).any()
    assert (split_a == 1).sum() == 5 and (split_a == 2).sum() == 5


def test_doc_offsets_locate_each_document(text_corpus):
    prepared = prepare_corpus(CorpusConfig(source=str(text_corpus)))
    source = {d.name: d.data for d in read_source(str(text_corpus)).documents}
    tokens = np.asarray(prepared.tokens("val"))
    offsets = prepared.doc_offsets("val")
    for i, name in enumerate(prepared.doc_names("val")):
        assert tokens[offsets[i] : offsets[i + 1]].astype(np.uint8).tobytes() == source[name]


def test_prepare_twice_reuses_the_cache(text_corpus, tmp_path):
    first = prepare_corpus(CorpusConfig(source=str(text_corpus)), tmp_path)
    stamp = (first.path / "train.bin").stat().st_mtime_ns
    second = prepare_corpus(CorpusConfig(source=str(text_corpus)), tmp_path)
    assert second.path == first.path and (second.path / "train.bin").stat().st_mtime_ns == stamp
    other_seed = prepare_corpus(CorpusConfig(source=str(text_corpus), split_seed=1), tmp_path)
    assert other_seed.path != first.path
    # a changed source is a new corpus
    with open(text_corpus, "a") as fh:
        fh.write("x = 1\n")
    try:
        changed = prepare_corpus(CorpusConfig(source=str(text_corpus)), tmp_path)
        assert changed.key != first.key
    finally:
        with open(text_corpus, "rb+") as fh:
            fh.truncate(os.path.getsize(text_corpus) - len("x = 1\n"))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp dirs left


def test_stdlib_source_is_deterministic_and_leaves_tests_out():
    source = read_source(SourceSpec())
    names = [d.name for d in source.documents]
    assert names == sorted(names) and "os.py" in names
    assert not any("/test/" in f"/{n}" or "/tests/" in f"/{n}" or "site-packages" in n for n in names)
    assert read_source(SourceSpec()).content_hash == source.content_hash
    with_tests = read_source(SourceSpec(include_tests=True))
    assert len(with_tests.documents) > len(source.documents)


def test_directory_jsonl_and_parquet_sources(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    for i in range(4):
        (folder / "sub" / f"{i}.txt").write_text(f"document {i}\n" * 20)
    (folder / "skip.bin").write_bytes(b"\x00" * 10)
    src = read_source(SourceSpec(location=str(folder), glob="**/*.txt"))
    assert [d.name for d in src.documents] == [f"sub/{i}.txt" for i in range(4)]

    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("\n".join(json.dumps({"body": f"record {i} " * 10, "id": i}) for i in range(5)))
    assert len(read_source(SourceSpec(location=str(jsonl), field="body")).documents) == 5
    with pytest.raises(UserError, match="field 'text'"):
        read_source(SourceSpec(location=str(jsonl)))

    table = pa.table({"content": [f"row {i} " * 10 for i in range(6)]})
    parquet = tmp_path / "c.parquet"
    pq.write_table(table, parquet)
    assert len(read_source(SourceSpec(location=str(parquet), field="content")).documents) == 6
    with pytest.raises(UserError, match="no column 'text'"):
        read_source(SourceSpec(location=str(parquet)))


@pytest.mark.parametrize("payload", [b"", b"\x00\xff\x80abc", bytes(range(256)) * 3, "héllo ☃ wörld\n".encode()])
def test_byte_tokenizer_round_trips(payload):
    tok = ByteTokenizer()
    assert tok.decode(tok.encode(payload)) == payload
    assert len(tok.encode(payload)) == len(payload)


def test_bpe_round_trips_arbitrary_bytes(text_corpus):
    prepared = prepare_corpus(CorpusConfig(source=str(text_corpus), tokenizer="bpe", vocab_size=400))
    tok = prepared.tokenizer
    assert isinstance(tok, BPETokenizer) and tok.vocab_size == 400
    rng = np.random.default_rng(0)
    samples = [b"", rng.bytes(2000), b"\xff\xfe" + "déjà vu ☃".encode() + b"\x80\x81 tail", text_corpus.read_bytes()[:3000]]
    for data in samples:
        ids = tok.encode(data)
        assert tok.decode(ids) == data
        # token byte lengths add up to the input, so bits/byte is exact
        assert int(prepared.token_bytes[ids].sum()) == len(data)
    # it compresses text into fewer tokens than bytes
    assert len(tok.encode(samples[3])) < 0.7 * len(samples[3])
    # the saved tokenizer reloads to the same encoding
    again = prepare_corpus(CorpusConfig(source=str(text_corpus), tokenizer="bpe", vocab_size=400))
    assert (again.tokenizer.encode(samples[3]) == tok.encode(samples[3])).all()


def test_empty_and_tiny_corpora_are_refused(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(UserError, match="no non-empty documents"):
        prepare_corpus(CorpusConfig(source=str(empty)))
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("just one line\n")
    with pytest.raises(UserError, match="at least 3"):
        prepare_corpus(CorpusConfig(source=str(tiny)))
    with pytest.raises(UserError, match="not found"):
        prepare_corpus(CorpusConfig(source=str(tmp_path / "missing.txt")))
