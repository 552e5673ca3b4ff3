"""Prepared corpora: documents split into train/val/test, tokenized, cached as memory-mapped shards.

A prepared corpus is a directory under the cache, named by a key over (source content hash,
tokenizer spec, split seed and fractions). Preparing the same corpus twice finds the directory
and reuses it. The directory holds

    meta.json                 what was prepared and its statistics
    {split}.bin               tokens of the split, documents concatenated (uint8, uint16 or uint32)
    {split}.docs.npy          token offset where each document starts (int64), plus the end
    {split}.names.json        document names, in shard order
    tokenizer.json            the trained BPE, or the pretrained tokenizer (not for byte corpora)

Splits are by document: each document is assigned to exactly one split by a seeded random
draw, so no document's text leaks across splits. Val and test are then fixed token sets that
every run on the corpus evaluates on.

A pretrained tokenizer (`--tokenizer FILE.json` or `hf:NAME`) must give back the exact bytes of
every val and test document, or bits per byte would not be exact: one that does not is refused.
A data set on the Hugging Face hub is named in the cache by its name, config, split, field, byte
limit and the hub's commit too, so preparing it again finds the corpus without streaming it.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from scalinglab.corpus.sources import Source, SourceSpec, hf_target, hub_revision, read_source
from scalinglab.corpus.tokenizers import (
    BPETokenizer,
    ByteTokenizer,
    PretrainedTokenizer,
    Tokenizer,
    load_tokenizer,
    pretrained,
    tokenizer_spec,
)
from scalinglab.errors import UserError
from scalinglab.fsutil import disk_errors, publish_dir

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")


@dataclass
class CorpusConfig:
    """Which corpus to prepare and how.

    source: "stdlib" (the running Python's standard library source), a path, or a Hugging Face
      data set "hf:NAME[:CONFIG]" (a hub name or a local folder).
    field: JSON-lines field / Parquet column / data set field holding the text.
    glob: files to take from a directory source.
    tokenizer: "byte" (exact bits/byte, any input), "bpe" (trained on the train split), a saved
      tokenizer.json file or "hf:NAME" (a pretrained byte-level BPE; must round-trip the corpus).
    vocab_size: BPE vocabulary size.
    split, max_bytes: the data set split to read, and where to stop (Hugging Face sources).
    split_seed: seed of the document-to-split draw.
    val_frac, test_frac: target shares of bytes in val and test.
    """

    source: str = "stdlib"
    field: str = "text"
    glob: str = "**/*"
    tokenizer: str = "byte"
    vocab_size: int | None = None
    split_seed: int = 0
    val_frac: float = 0.05
    test_frac: float = 0.05
    include_tests: bool = False
    split: str = "train"
    max_bytes: int | None = None

    def source_spec(self) -> SourceSpec:
        return SourceSpec(location=self.source, field=self.field, glob=self.glob, include_tests=self.include_tests,
                          split=self.split, max_bytes=self.max_bytes)

    def validate(self) -> None:
        for name in ("val_frac", "test_frac"):
            value = getattr(self, name)
            if not (0 < value < 0.5) or not math.isfinite(value):
                raise UserError(f"{name} must lie in (0, 0.5), got {value}")
        if self.max_bytes is not None and self.max_bytes <= 0:
            raise UserError(f"max_bytes must be > 0, got {self.max_bytes}")
        tokenizer_spec(self.tokenizer, self.vocab_size)


def default_cache_dir() -> Path:
    """`$SCALINGLAB_CACHE`, else `$XDG_CACHE_HOME/scalinglab`, else `~/.cache/scalinglab`."""
    if os.environ.get("SCALINGLAB_CACHE"):
        return Path(os.environ["SCALINGLAB_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "scalinglab"


class PreparedCorpus:
    """A prepared corpus on disk. Shards are memory-mapped on first use."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.meta = json.loads((self.path / "meta.json").read_text())

    @property
    def key(self) -> str:
        return self.meta["key"]

    @property
    def content_hash(self) -> str:
        return self.meta["source_hash"]

    @property
    def vocab_size(self) -> int:
        return self.meta["tokenizer"]["vocab_size"]

    @property
    def tokenizer_name(self) -> str:
        spec = self.meta["tokenizer"]
        if spec["kind"] == "pretrained":
            return f"pretrained:{spec['name']}"
        return spec["kind"] if spec["kind"] == "byte" else f"bpe-{spec['vocab_size']}"

    @cached_property
    def tokenizer(self) -> Tokenizer:
        return load_tokenizer(self.path)

    def tokenizer_json(self) -> str | None:
        """The BPE (trained or pretrained) tokenizer as JSON text (None for the byte tokenizer)."""
        path = self.path / "tokenizer.json"
        return path.read_text() if path.exists() else None

    @cached_property
    def token_bytes(self) -> np.ndarray:
        """Bytes of original text behind each token id (for bits per byte)."""
        return self.tokenizer.token_bytes()

    def tokens(self, split: str) -> np.ndarray:
        """The split's tokens as a read-only memory map."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}")
        dtype = np.dtype(self.meta["dtype"])
        path = self.path / f"{split}.bin"
        if path.stat().st_size == 0:
            return np.zeros(0, dtype=dtype)
        return np.memmap(path, dtype=dtype, mode="r")

    def doc_offsets(self, split: str) -> np.ndarray:
        """Token offsets where each document of the split starts; the last entry is the end."""
        return np.load(self.path / f"{split}.docs.npy")

    def doc_names(self, split: str) -> list[str]:
        return json.loads((self.path / f"{split}.names.json").read_text())

    def stats(self, split: str) -> dict:
        return self.meta["splits"][split]

    @property
    def unique_train_tokens(self) -> int:
        return int(self.meta["splits"]["train"]["tokens"])

    @cached_property
    def unigram_entropy(self) -> float:
        """Entropy (nats/token) of the train split's token frequencies: the loss of a model that
        predicts every token from its count alone, the plateau a tiny model sits on before it
        learns any context. Read from meta.json (stored when the corpus is prepared); corpora
        prepared before it was stored count the train tokens now (one bincount)."""
        stored = self.meta["splits"]["train"].get("unigram_entropy")
        if stored is not None:
            return float(stored)
        return unigram_entropy(self.tokens("train"), self.vocab_size)


def unigram_entropy(tokens: np.ndarray, vocab_size: int) -> float:
    """Entropy in nats/token of the empirical token distribution of `tokens`."""
    counts = np.bincount(np.asarray(tokens), minlength=vocab_size).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def corpus_key(source_hash: str, tok_spec: dict, cfg: CorpusConfig) -> str:
    blob = json.dumps(
        {
            "format": FORMAT_VERSION,
            "source": source_hash,
            "tokenizer": tok_spec,
            "split_seed": cfg.split_seed,
            "val_frac": cfg.val_frac,
            "test_frac": cfg.test_frac,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def assign_splits(sizes: list[int], seed: int, val_frac: float, test_frac: float) -> np.ndarray:
    """Assign each document to a split: 0 train, 1 val, 2 test.

    Documents are visited in a seeded random order; val and test take documents until they hold
    their share of bytes, the rest is train. Each held-out split gets at least one document and
    train keeps at least one. Deterministic in (sizes, seed).
    """
    n = len(sizes)
    if n < 3:
        raise UserError(
            f"the corpus has {n} document(s) but train/val/test need at least 3; give a larger corpus"
        )
    order = np.random.default_rng(seed).permutation(n)
    total = float(sum(sizes))
    split = np.zeros(n, dtype=np.int8)
    cursor = 0
    for which, share in ((1, val_frac), (2, test_frac)):
        goal, filled = share * total, 0.0
        while cursor < n - 1:  # the last document always stays in train
            size = sizes[order[cursor]]
            if filled > 0 and filled + size / 2 > goal:
                break
            split[order[cursor]] = which
            filled += size
            cursor += 1
    if not (split == 0).any() or not (split == 2).any():
        raise UserError("the corpus is too small to give train, val and test each a document; give a larger corpus")
    return split


def prepare_corpus(cfg: CorpusConfig | None = None, cache_dir: Path | None = None) -> PreparedCorpus:
    """Read, split, tokenize and cache a corpus; return the cached corpus if it already exists."""
    cfg = cfg or CorpusConfig()
    cfg.validate()
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    tok_spec = tokenizer_spec(cfg.tokenizer, cfg.vocab_size)
    alias = _hub_alias(cfg, tok_spec, cache_dir)
    if alias is not None and alias.exists():
        key = json.loads(alias.read_text())["key"]
        if (cache_dir / key / "meta.json").exists():
            return PreparedCorpus(cache_dir / key)
    source = read_source(cfg.source_spec())
    key = corpus_key(source.content_hash, tok_spec, cfg)
    final = cache_dir / key
    if (final / "meta.json").exists():
        _write_alias(alias, key)
        return PreparedCorpus(final)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the corpus cache {cache_dir}: {exc.strerror}; set SCALINGLAB_CACHE") from None
    # Build in a temporary directory and rename: a killed prepare never leaves a half corpus.
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=cache_dir))
    try:
        with disk_errors(final):  # a full disk while building: one line, nothing half-built left
            _write_corpus(tmp, source, cfg, tok_spec, key)
            publish_dir(tmp, final)  # a concurrent twin may have published it first: same content
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _write_alias(alias, key)
    return PreparedCorpus(final)


def _hub_alias(cfg: CorpusConfig, tok_spec: dict, cache_dir: Path) -> Path | None:
    """Where the key of a hub data set's prepared corpus is noted (None for other sources): its
    name, config, split, field, byte limit, the hub's commit and the preparation settings."""
    spec = cfg.source_spec()
    if spec.kind != "hf" or hf_target(spec.location).local is not None:
        return None
    blob = json.dumps({"source": spec.describe(), "revision": hub_revision(hf_target(spec.location)),
                       "tokenizer": tok_spec, "split_seed": cfg.split_seed, "val_frac": cfg.val_frac,
                       "test_frac": cfg.test_frac, "format": FORMAT_VERSION}, sort_keys=True)
    return cache_dir / "hub" / f"{hashlib.sha256(blob.encode()).hexdigest()[:20]}.json"


def _write_alias(alias: Path | None, key: str) -> None:
    if alias is None:
        return
    from scalinglab.fsutil import atomic_write_json

    alias.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(alias, {"key": key})


def _write_corpus(out: Path, source: Source, cfg: CorpusConfig, tok_spec: dict, key: str) -> None:
    docs = source.documents
    split_of = assign_splits([len(d.data) for d in docs], cfg.split_seed, cfg.val_frac, cfg.test_frac)
    by_split = {name: [d for d, s in zip(docs, split_of) if s == i] for i, name in enumerate(SPLITS)}

    tokenizer: Tokenizer
    if tok_spec["kind"] == "byte":
        tokenizer = ByteTokenizer()
    elif tok_spec["kind"] == "pretrained":
        tokenizer = pretrained(cfg.tokenizer)
        tokenizer.save(out / "tokenizer.json")
    else:
        tokenizer = BPETokenizer.train((d.data for d in by_split["train"]), tok_spec["vocab_size"])
        tokenizer.save(out / "tokenizer.json")
    dtype = np.uint8 if tokenizer.vocab_size <= 256 else np.uint16 if tokenizer.vocab_size <= 2**16 else np.uint32

    split_stats = {}
    for name, split_docs in by_split.items():
        if isinstance(tokenizer, BPETokenizer):
            encoded = tokenizer.encode_batch([d.data for d in split_docs])
        else:
            encoded = [tokenizer.encode(d.data) for d in split_docs]
        if isinstance(tokenizer, PretrainedTokenizer) and name != "train":  # bits/byte rest on these two
            bad = tokenizer.first_mismatch([d.data for d in split_docs], encoded)
            if bad is not None:
                raise UserError(f"the tokenizer {tokenizer.label} does not give back the exact bytes of {name} document "
                                f"{split_docs[bad].name!r}, so bits per byte would not be exact; use --tokenizer byte "
                                "or bpe, or a byte-level tokenizer without a normaliser")
        lengths = np.array([len(e) for e in encoded], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        tokens = np.concatenate(encoded).astype(dtype) if encoded else np.zeros(0, dtype=dtype)
        if len(tokens) == 0:
            raise UserError(f"the {name} split has no tokens; give a larger corpus")
        tokens.tofile(out / f"{name}.bin")
        np.save(out / f"{name}.docs.npy", offsets)
        (out / f"{name}.names.json").write_text(json.dumps([d.name for d in split_docs]))
        split_stats[name] = {
            "documents": len(split_docs),
            "bytes": int(sum(len(d.data) for d in split_docs)),
            "tokens": int(len(tokens)),
        }
        if name == "train":
            split_stats[name]["unigram_entropy"] = unigram_entropy(tokens, tokenizer.vocab_size)

    meta = {
        "format": FORMAT_VERSION,
        "key": key,
        "source": source.spec.describe(),
        "source_hash": source.content_hash,
        "tokenizer": tokenizer.spec(),
        "dtype": np.dtype(dtype).name,
        "split_seed": cfg.split_seed,
        "val_frac": cfg.val_frac,
        "test_frac": cfg.test_frac,
        "splits": split_stats,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))


def classical_bpb(data: bytes) -> dict[str, float]:
    """gzip -9 and xz -9 bits per byte of `data` (baselines printed by `corpus info`)."""
    if not data:
        return {"gzip-9": float("nan"), "xz-9": float("nan")}
    n = len(data)
    return {
        "gzip-9": 8 * len(gzip.compress(data, compresslevel=9, mtime=0)) / n,
        "xz-9": 8 * len(lzma.compress(data, preset=9)) / n,
    }


def split_bytes(corpus: PreparedCorpus, split: str) -> bytes:
    """The original bytes of a split (decoded from its tokens)."""
    tokens = corpus.tokens(split)
    if corpus.meta["tokenizer"]["kind"] == "byte":
        return np.asarray(tokens, dtype=np.uint8).tobytes()
    return corpus.tokenizer.decode(np.asarray(tokens))
