"""Corpus variants whose train split has a share of its tokens replaced by junk.

The train split is cut into spans of `span` tokens (junk "documents"); a seeded random `fraction`
of the spans is overwritten. Val and test are the base corpus's own files, untouched, so every
run evaluates on the same clean text and the only difference is what it was trained on.

Junk kinds:
- "uniform": uniformly random token ids (for bytes: noise, easy to tell from text);
- "shuffled": tokens drawn from the split itself in random order: the right unigram statistics
  and no structure, so the model cannot tell junk from text by its alphabet alone.

The variant is a prepared corpus like any other (`PreparedCorpus`), cached next to its base under
a key over (base key, kind, fraction, span, seed), so the training loop needs no change.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from scalinglab.corpus.prepare import PreparedCorpus
from scalinglab.errors import UserError

JUNK_KINDS = ("uniform", "shuffled")


@dataclass(frozen=True)
class JunkSpec:
    fraction: float
    kind: str = "uniform"
    span: int = 1024
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.fraction < 1:
            raise UserError(f"a junk fraction must lie in [0, 1), got {self.fraction}")
        if self.kind not in JUNK_KINDS:
            raise UserError(f"unknown junk kind {self.kind!r}; choose {' or '.join(JUNK_KINDS)}")
        if not isinstance(self.span, int) or self.span < 1:
            raise UserError(f"the junk span must be a positive number of tokens, got {self.span!r}")

    @property
    def tag(self) -> str:
        """A readable name, unique per variant of one base corpus."""
        return f"junk-{self.kind}-{self.fraction:g}-span{self.span}-s{self.seed}"


def junk_corpus(base: PreparedCorpus, spec: JunkSpec) -> PreparedCorpus:
    """The variant of `base` with `spec.fraction` of its train spans replaced by junk (cached)."""
    if spec.fraction == 0:
        return base
    blob = json.dumps({"base": base.key, **asdict(spec)}, sort_keys=True)
    key = hashlib.sha256(blob.encode()).hexdigest()[:20]
    final = base.path.parent / f"junk-{key}"
    if (final / "meta.json").exists():
        return PreparedCorpus(final)
    # Built in a temporary directory and renamed, like prepare_corpus: never a half corpus.
    tmp = Path(tempfile.mkdtemp(prefix=f".junk-{key}-", dir=base.path.parent))
    try:
        train, spans = junk_tokens(np.asarray(base.tokens("train")), base.vocab_size, spec)
        train.tofile(tmp / "train.bin")
        np.save(tmp / "junk_spans.npy", spans)
        replaced = int(len(spans) * spec.span)
        for name in os.listdir(base.path):
            if name in ("meta.json", "train.bin") or name.startswith("."):
                continue
            shutil.copy2(base.path / name, tmp / name)
        meta = dict(base.meta)
        meta.update(key=key, source_hash=hashlib.sha256(f"{base.content_hash}:{blob}".encode()).hexdigest(),
                    junk={**asdict(spec), "base_key": base.key, "replaced_tokens": replaced,
                          "replaced_share": replaced / max(1, len(train))})
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "meta.json").exists():  # not a concurrent twin that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return PreparedCorpus(final)


def junk_tokens(tokens: np.ndarray, vocab_size: int, spec: JunkSpec) -> tuple[np.ndarray, np.ndarray]:
    """(a copy of `tokens` with a `spec.fraction` share of its spans replaced, the replaced span
    indices in order)."""
    out = np.array(tokens, copy=True)
    n_spans = len(out) // spec.span
    rng = np.random.default_rng([spec.seed, 104729])
    chosen = np.sort(rng.permutation(n_spans)[: round(spec.fraction * n_spans)])
    for s in chosen:
        start = int(s) * spec.span
        if spec.kind == "uniform":
            junk = rng.integers(0, vocab_size, spec.span)
        else:
            junk = tokens[rng.integers(0, len(tokens), spec.span)]
        out[start : start + spec.span] = junk.astype(out.dtype)
    return out, chosen


def junk_share(corpus: PreparedCorpus, prefix_tokens: int) -> float:
    """Share of junk among the first `prefix_tokens` train tokens of a junk variant (0 for a clean corpus)."""
    info = corpus.meta.get("junk")
    if not info:
        return 0.0
    spans = np.load(corpus.path / "junk_spans.npy")
    span = info["span"]
    covered = np.clip(prefix_tokens - spans * span, 0, span).sum()
    return float(covered / max(1, min(prefix_tokens, len(corpus.tokens("train")))))
