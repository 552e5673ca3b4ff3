"""Corpora: sources of documents, tokenizers, and prepared (split, tokenized, cached) corpora."""

from scalinglab.corpus.prepare import CorpusConfig, PreparedCorpus, classical_bpb, prepare_corpus, split_bytes
from scalinglab.corpus.sources import Document, Source, SourceSpec, read_source
from scalinglab.corpus.tokenizers import BPETokenizer, ByteTokenizer

__all__ = [
    "BPETokenizer",
    "ByteTokenizer",
    "CorpusConfig",
    "Document",
    "PreparedCorpus",
    "Source",
    "SourceSpec",
    "classical_bpb",
    "prepare_corpus",
    "read_source",
    "split_bytes",
]
