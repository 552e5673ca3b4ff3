"""`compress-bench`: the model as a compressor against the classical ones, file by file.

For each file: the ideal code length (-sum log2 p, bits/byte), the real archive's bits/byte and
its overhead, an exact round trip, throughput each way, the same model's plain full-sequence
forward over the same chunks as a reference measured alongside (its ideal code length must agree
with the coder's: the incremental path computes what the full forward computes), the classical
compressors whole-file and with the same chunking, and a two-part ("adjusted") rate that also pays
for the model's weights, as in Delétang et al. 2023.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from scalinglab.compress import DEFAULT_BATCH
from scalinglab.compress.archive import Compressor, compress_bytes, decompress_bytes, load_compressor, read_input
from scalinglab.compress.baselines import NAMES, baseline_sizes, byte_chunks
from scalinglab.compress.lm import check_threads, chunk_lengths, deterministic, ideal_code_length
from scalinglab.errors import UserError
from scalinglab.model import count_params


class BenchProgress:
    """Receives progress; `phase` starts a stage and returns a callback for tokens done."""

    def phase(self, label: str, total: int) -> Callable[[int], None]:
        return lambda n: None


@dataclass
class BenchSettings:
    chunk_size: int | None = None  # None: the model's training context
    batch_size: int = DEFAULT_BATCH
    threads: int = 1
    device: str = "cpu"
    baselines: Sequence[str] = NAMES
    chunked_baselines: bool = True


def bench_file(comp: Compressor, path: Path, settings: BenchSettings, progress: BenchProgress) -> dict:
    """One file's row (see `compress_bench`)."""
    data = read_input(path)
    tokens = comp.tokenize(data)
    label = path.name
    archive, enc = compress_bytes(comp, data, chunk_size=settings.chunk_size, batch_size=settings.batch_size,
                                  threads=settings.threads, device=settings.device,
                                  progress=progress.phase(f"{label}: encode", len(tokens)))
    restored, dec = decompress_bytes(comp, archive, progress=progress.phase(f"{label}: decode", len(tokens)))
    header = enc.header

    # the reference: the plain forward over the same chunks, same threads
    start = time.perf_counter()
    with deterministic(settings.threads):
        forward_bits = ideal_code_length(comp.model, tokens, header.chunk_size, header.prefix_token,
                                         batch_size=header.batch_size)
    forward_seconds = time.perf_counter() - start

    # the classical compressors, whole and on the same chunks (in bytes of original text)
    token_bytes = np.asarray(comp.tokenizer.token_bytes())
    lengths = chunk_lengths(len(tokens), header.chunk_size)
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    per_chunk = [int(token_bytes[tokens[a:b]].sum()) for a, b in zip(bounds[:-1], bounds[1:])]
    chunks = byte_chunks(data, per_chunk) if settings.chunked_baselines else None
    baselines = baseline_sizes(data, chunks, settings.baselines)
    start = time.perf_counter()  # gzip -9 alone, whole file: the classical speed reference
    baseline_sizes(data, None, ["gzip-9"])
    gzip_seconds = time.perf_counter() - start

    n = len(data)
    params = count_params(comp.model.cfg).total
    row = {
        "file": str(path),
        "bytes": n,
        "tokens": len(tokens),
        "sha256": hashlib.sha256(data).hexdigest(),
        "chunk_size": header.chunk_size,
        "batch_size": header.batch_size,
        "threads": header.threads,
        "ideal_bpb": enc.ideal_bits_per_byte,
        "quantized_bpb": enc.stats.quantized_bits / n if n else math.nan,
        "coded_bpb": enc.stats.coded_bits / n if n else math.nan,  # raw chunks at the uniform code
        "raw_chunks": enc.stats.raw_chunks,
        "chunks": math.ceil(len(tokens) / header.chunk_size),
        "actual_bpb": enc.bits_per_byte,
        "archive_bytes": enc.archive_bytes,
        "overhead": enc.overhead,  # archive bits / ideal bits - 1, header included
        "coder_overhead": (32 * header.payload_words / enc.stats.coded_bits - 1) if enc.stats.coded_bits else math.nan,
        "round_trip": restored == data,
        "encode_Bps": enc.bytes_per_second,
        "decode_Bps": dec.bytes_per_second,
        "forward_bpb": forward_bits / n if n else math.nan,
        "forward_Bps": n / forward_seconds if forward_seconds > 0 else math.nan,
        "gzip_Bps": n / gzip_seconds if gzip_seconds > 0 else math.nan,
        "adjusted_bpb": 8 * (enc.archive_bytes + 4 * params) / n if n else math.nan,
        "model_params": params,
    }
    for b in baselines:
        row[f"{b.name}_bpb"] = b.whole_bpb
        row[f"{b.name}_chunked_bpb"] = b.chunked_bpb
    return row


def compress_bench(model: str | Path | Compressor, files: Sequence[str | Path], settings: BenchSettings | None = None,
                   progress: BenchProgress | None = None, store=None) -> "pd.DataFrame":  # noqa: F821
    """One row per file: ideal/quantised/actual bits per byte, overhead, round trip, throughput
    (`encode_Bps`, `decode_Bps`, and the plain forward `forward_Bps` and `gzip_Bps` measured
    alongside), the classical compressors (`<name>_bpb`, `<name>_chunked_bpb`) and the two-part
    `adjusted_bpb` (archive + float32 weights). With a `store`, each row is recorded as a
    `compress-bench` result."""
    import pandas as pd

    settings = settings or BenchSettings()
    progress = progress or BenchProgress()
    paths = [Path(f) for f in files]
    if not paths:
        raise UserError("give at least one file to compress")
    check_threads(settings.threads)
    for path in paths:
        if not path.is_file():
            raise UserError(f"input not found: {path}; give existing files")
    comp = model if isinstance(model, Compressor) else load_compressor(model)
    rows = []
    for path in paths:
        row = bench_file(comp, path, settings, progress)
        row["model"] = str(comp.source)
        row["model_fingerprint"] = comp.fingerprint.hex()
        rows.append(row)
        if store is not None:
            key = f"{comp.fingerprint.hex()[:16]}:{row['sha256'][:16]}:c{row['chunk_size']}:b{row['batch_size']}:t{row['threads']}"
            store.put_result("compress-bench", key, row)
    return pd.DataFrame(rows)

