"""`scalinglab corpus info|prepare`: prepare corpora and describe them."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from scalinglab.cli.app import CORPUS_HELP, MAX_BYTES_HELP, SPLIT_HELP, TOKENIZER_HELP, app, console, max_bytes_option
from scalinglab.errors import UserError

corpus_app = typer.Typer(help="Prepare corpora and describe them.", no_args_is_help=True)
app.add_typer(corpus_app, name="corpus")


def _config(source: str, field: str, glob: str, tokenizer: str, vocab_size: Optional[int], split_seed: int,
            corpus: Optional[str] = None, split: str = "train", max_bytes: Optional[str] = None):
    from scalinglab.corpus import CorpusConfig

    if corpus is not None:  # --corpus, as `train` and `study` take it, in place of the argument
        if source not in ("stdlib", corpus):
            raise UserError(f"two corpora given ({source!r} and --corpus {corpus!r}); give one")
        source = corpus
    return CorpusConfig(source=source, field=field, glob=glob, tokenizer=tokenizer, vocab_size=vocab_size,
                        split_seed=split_seed, split=split, max_bytes=max_bytes_option(max_bytes))


SourceArg = typer.Argument("stdlib", help=CORPUS_HELP)
FieldOpt = typer.Option("text", help="JSON-lines field / Parquet column / data set field.")
GlobOpt = typer.Option("**/*", help="Files to read from a directory.")
TokOpt = typer.Option("byte", help=TOKENIZER_HELP)
SplitOpt = typer.Option("train", help=SPLIT_HELP)
MaxBytesOpt = typer.Option(None, help=MAX_BYTES_HELP)
VocabOpt = typer.Option(None, help="BPE vocabulary size (default 4096).")
SeedOpt = typer.Option(0, help="Seed of the document split.")
CacheOpt = typer.Option(None, help="Prepared-corpus cache directory.")
CorpusOpt = typer.Option(None, "--corpus", help="The corpus, as train and study take it (instead of SOURCE).")


@corpus_app.command("prepare")
def prepare(source: str = SourceArg, field: str = FieldOpt, glob: str = GlobOpt, tokenizer: str = TokOpt,
            vocab_size: Optional[int] = VocabOpt, split_seed: int = SeedOpt, cache_dir: Optional[Path] = CacheOpt,
            corpus: Optional[str] = CorpusOpt, split: str = SplitOpt, max_bytes: Optional[str] = MaxBytesOpt) -> None:
    """Split, tokenize and cache a corpus (reused when prepared again)."""
    from scalinglab.corpus import prepare_corpus

    prepared = prepare_corpus(_config(source, field, glob, tokenizer, vocab_size, split_seed, corpus, split, max_bytes), cache_dir)
    console.print(f"prepared {prepared.key} at {prepared.path}")


@corpus_app.command("info")
def info(source: str = SourceArg, field: str = FieldOpt, glob: str = GlobOpt, tokenizer: str = TokOpt,
         vocab_size: Optional[int] = VocabOpt, split_seed: int = SeedOpt, cache_dir: Optional[Path] = CacheOpt,
         corpus: Optional[str] = CorpusOpt, split: str = SplitOpt, max_bytes: Optional[str] = MaxBytesOpt) -> None:
    """Documents, bytes and tokens per split, and gzip -9 / xz -9 bits per byte of the val split."""
    from rich.table import Table

    from scalinglab.corpus import classical_bpb, prepare_corpus, split_bytes

    prepared = prepare_corpus(_config(source, field, glob, tokenizer, vocab_size, split_seed, corpus, split, max_bytes), cache_dir)
    meta = prepared.meta
    source_desc = meta["source"]
    console.print(f"corpus {source_desc['location']} ({source_desc['kind']}"
                  + (f", Python {source_desc['python']}" if "python" in source_desc else "") + ")")
    console.print(f"content hash {meta['source_hash'][:16]}  key {prepared.key}  tokenizer {prepared.tokenizer_name}")
    table = Table("split", "documents", "bytes", "tokens", "bytes/token")
    for split in ("train", "val", "test"):
        s = prepared.stats(split)
        table.add_row(split, f"{s['documents']:,}", f"{s['bytes']:,}", f"{s['tokens']:,}", f"{s['bytes'] / s['tokens']:.3f}")
    console.print(table)
    baselines = classical_bpb(split_bytes(prepared, "val"))
    console.print("val split: " + ", ".join(f"{k} {v:.3f} bits/byte" for k, v in baselines.items()))
    console.print(f"cached at {prepared.path}")
