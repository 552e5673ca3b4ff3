"""Coding a token sequence with a language model, identically in both directions.

The sequence is cut into chunks of `chunk_size` tokens. Each chunk is its own context: it starts
from a fixed `prefix_token` (a newline for text models), so that chunks can be coded in parallel
and a chunk's first token is predicted by the model rather than sent raw. Chunks are processed
`batch_size` at a time through the model's incremental path (`GPT.forward_step` with a key/value
cache), one position per step; at every step the batch's next-token distributions are quantised
(`coder.quantize`) and the batch's symbols are range-coded into one stream: per batch, a flag per
chunk (model-coded, or stored raw when the model is worse than uniform), then the tokens.

Determinism by construction: encoder and decoder run the very same loop (`_code`), with the same
batch shapes, the same inputs (padding included) and the same float settings (fixed thread
count, deterministic algorithms, TF32 off, float32 weights, no autocast); only the object that
turns a distribution into a symbol (`_BatchEncoder` / `_BatchDecoder`) differs. The archive
stores the coding setup, and decoding uses exactly that setup.

Stated limit: floating-point results depend on the CPU/GPU kernels, so an archive is decoded
reliably by the same software on the same kind of machine. A mismatch is caught by the archive's
content hash, never returned as data.
"""

from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from scalinglab.compress import coder
from scalinglab.errors import UserError

# Memory a batch may take (key/value cache and the encoder's kept tables); the batch shrinks to fit.
BATCH_BUDGET_BYTES = 1 << 30
MAX_THREADS = 255  # the archive header stores the thread count in one byte


def check_threads(threads: int) -> None:
    """Refuse a thread count the archive cannot record (before any work is done)."""
    if not 1 <= threads <= MAX_THREADS:
        raise UserError(f"--threads must be between 1 and {MAX_THREADS} (the archive records it in one byte), "
                        f"got {threads}")


@dataclass(frozen=True)
class CodingSetup:
    """What encoder and decoder must agree on, besides the model. Stored in the archive.

    chunk_size: tokens per chunk (each chunk an independent context).
    batch_size: chunks per forward batch (part of the float computation's shape).
    threads: torch CPU threads (kernels may split work, and so rounding, by thread count).
    device: "cpu" or "cuda".
    prefix_token: the token each chunk's context starts from.
    """

    chunk_size: int
    batch_size: int
    threads: int = 1
    device: str = "cpu"
    prefix_token: int = 10

    def validate(self, model: torch.nn.Module, context: int) -> None:
        if self.chunk_size < 1:
            raise UserError(f"--chunk-size must be >= 1 token, got {self.chunk_size}")
        if self.chunk_size > context:
            raise UserError(
                f"--chunk-size {self.chunk_size} exceeds the model's training context of {context} tokens; "
                f"use {context} or less"
            )
        if self.batch_size < 1:
            raise UserError(f"--batch must be >= 1 chunk, got {self.batch_size}")
        check_threads(self.threads)
        if not 0 <= self.prefix_token < model.cfg.vocab_size:
            raise UserError(f"prefix token {self.prefix_token} is outside the vocabulary of {model.cfg.vocab_size}")


@dataclass
class CodingStats:
    """What one pass over a sequence cost, in bits and seconds.

    ideal_bits: -sum log2 p under the model's float probabilities (the ideal code length).
    quantized_bits: the same under the model's integer frequencies.
    coded_bits: what the stream codes: the quantised model's bits for model chunks, the uniform
      code's for raw chunks, and the chunk flags. A range coder gets within a few words of it.
    raw_chunks: chunks stored raw because the model coded them worse than uniform.
    """

    tokens: int
    ideal_bits: float
    quantized_bits: float
    coded_bits: float
    raw_chunks: int
    seconds: float


def fit_batch(model: torch.nn.Module, chunk_size: int, batch_size: int) -> int:
    """The batch size, shrunk until a batch's key/value cache and the encoder's kept tables fit
    `BATCH_BUDGET_BYTES`."""
    cfg = model.cfg
    per_chunk = chunk_size * (cfg.d_model * 2 * cfg.n_layer + cfg.vocab_size) * 4  # float32 keys, values, tables
    return max(1, min(batch_size, BATCH_BUDGET_BYTES // per_chunk))


@contextmanager
def deterministic(threads: int) -> Iterator[None]:
    """Fixed thread count, deterministic algorithms, TF32 off; restored afterwards."""
    saved = (
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
    )
    # cuBLAS is deterministic only with a fixed workspace; it reads this when it initialises.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1])
        torch.backends.cuda.matmul.allow_tf32 = saved[2]
        torch.backends.cudnn.allow_tf32 = saved[3]


def chunk_lengths(n_tokens: int, chunk_size: int) -> np.ndarray:
    """Length of every chunk: all full but the last."""
    n_chunks = math.ceil(n_tokens / chunk_size)
    lengths = np.full(n_chunks, chunk_size, dtype=np.int64)
    if n_chunks:
        lengths[-1] = n_tokens - (n_chunks - 1) * chunk_size
    return lengths


class _BatchEncoder:
    """Encodes one batch of chunks. The stream holds, per batch, the chunks' raw flags, then the
    symbols step by step; a flag can only be chosen once the whole chunk is seen, so the batch's
    quantised tables are kept until `finish`."""

    def __init__(self, encoder: coder.Encoder, tokens: np.ndarray, first_chunk: int, chunk_size: int) -> None:
        self.encoder, self.tokens, self.first, self.C = encoder, tokens, first_chunk, chunk_size
        self.steps: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (rows, symbols, tables)

    def step(self, s: int, spare: np.ndarray, rows: np.ndarray) -> np.ndarray:
        symbols = self.tokens[(self.first + rows) * self.C + s]
        self.steps.append((rows, symbols, spare.astype(np.float32)))  # integers < 2^24: exact in float32
        return symbols

    def finish(self, raw: np.ndarray) -> None:
        self.encoder.encode(raw.astype(np.int64), np.broadcast_to(coder.FLAGS, (len(raw), 2)).copy())
        for rows, symbols, tables in self.steps:
            tables[raw[rows]] = coder.uniform(tables.shape[1])
            self.encoder.encode(symbols, tables)


class _BatchDecoder:
    """Decodes one batch: its raw flags first, then the symbols step by step."""

    def __init__(self, decoder: coder.Decoder, n_rows: int) -> None:
        self.decoder = decoder
        self.raw = decoder.decode(np.broadcast_to(coder.FLAGS, (n_rows, 2)).copy()).astype(bool)

    def step(self, s: int, spare: np.ndarray, rows: np.ndarray) -> np.ndarray:
        spare[self.raw[rows]] = coder.uniform(spare.shape[1])
        return self.decoder.decode(spare)

    def finish(self, raw: np.ndarray) -> None:
        if not np.array_equal(raw, self.raw):
            raise ValueError("decoded chunk flags disagree with the decoded chunks")


class LMCoder:
    """A model and a coding setup: encodes token sequences to range-coded words and back.

    A chunk the model codes worse than the uniform distribution (log2 V bits a token: 8 for
    bytes) is stored raw instead, at the uniform code's cost: like deflate's stored blocks, it
    bounds the archive near the input's size on data the model has never seen (binary files,
    noise). Whether a chunk is raw is a flag in the stream, so the decoder needs no float decision.
    """

    def __init__(self, model: torch.nn.Module, setup: CodingSetup) -> None:
        self.model = model
        self.setup = setup
        self.device = torch.device(setup.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise UserError("this archive was coded on a CUDA GPU and needs one to decode; none is available here")
        self.model.to(self.device).float().eval()

    # -- the two directions ------------------------------------------------------------------
    def encode(self, tokens: np.ndarray, progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, CodingStats]:
        """Range-code `tokens`; returns the uint32 words and what it cost."""
        tokens = np.asarray(tokens, dtype=np.int64)
        if len(tokens) and (tokens.min() < 0 or tokens.max() >= self.model.cfg.vocab_size):
            raise UserError("a token lies outside the model's vocabulary; the tokenizer does not match the model")
        encoder = coder.Encoder()
        _, stats = self._code(len(tokens), lambda first, rows: _BatchEncoder(encoder, tokens, first,
                                                                              self.setup.chunk_size), progress)
        return encoder.finish(), stats

    def decode(self, words: np.ndarray, n_tokens: int,
               progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, CodingStats]:
        """Decode `n_tokens` tokens from range-coded `words`."""
        decoder = coder.Decoder(words)
        return self._code(n_tokens, lambda first, rows: _BatchDecoder(decoder, rows), progress)

    # -- the shared loop ---------------------------------------------------------------------
    @torch.inference_mode()
    def _code(self, n_tokens: int, batch_coder: Callable[[int, int], "_BatchEncoder | _BatchDecoder"],
              progress: Callable[[int], None] | None) -> tuple[np.ndarray, CodingStats]:
        C, B = self.setup.chunk_size, self.setup.batch_size
        V = self.model.cfg.vocab_size
        uniform_bits = coder.PRECISION - np.log2(coder.uniform(V) + 1)  # (V,)
        lengths = chunk_lengths(n_tokens, C)
        out = np.zeros(n_tokens, dtype=np.int64)
        stats = CodingStats(n_tokens, 0.0, 0.0, 0.0, 0, 0.0)
        cache = self.model.new_cache(capacity=C)  # its blocks are reused batch after batch
        with deterministic(self.setup.threads):
            start = time.perf_counter()  # after the one-time import that deterministic mode triggers
            for first in range(0, len(lengths), B):
                batch_lengths = lengths[first : first + B]  # (rows,)
                n_rows = len(batch_lengths)
                chunk_coder = batch_coder(first, n_rows)
                model_bits, raw_bits = np.zeros(n_rows), np.zeros(n_rows)  # each chunk's cost both ways
                self.model.reset_cache(cache)
                inputs = torch.full((n_rows, 1), self.setup.prefix_token, dtype=torch.long)
                for s in range(int(batch_lengths.max())):
                    logits = self.model.forward_step(inputs.to(self.device), cache, s)[:, 0].float().cpu()  # (rows, V)
                    log_probs = torch.log_softmax(logits.double(), dim=-1)
                    rows = np.flatnonzero(batch_lengths > s)  # chunks still coding at this position
                    active = torch.from_numpy(rows)
                    spare = coder.quantize(log_probs[active].exp()).numpy()
                    symbols = chunk_coder.step(s, spare.copy(), rows)
                    sym = torch.from_numpy(symbols)
                    stats.ideal_bits += coder.ideal_bits(log_probs[active], sym)
                    model_bits[rows] += coder.code_lengths(spare, symbols)
                    raw_bits[rows] += uniform_bits[symbols]
                    out[(first + rows) * C + s] = symbols
                    # finished rows are fed the prefix token: same padding in both directions
                    inputs = torch.full_like(inputs, self.setup.prefix_token)
                    inputs[active, 0] = sym
                    if progress:
                        progress(len(rows))
                raw = model_bits > raw_bits  # stored raw: the model would cost more than uniform
                chunk_coder.finish(raw)
                stats.quantized_bits += float(model_bits.sum())
                stats.coded_bits += float(np.where(raw, raw_bits, model_bits).sum())
                stats.coded_bits += float(coder.code_lengths(np.broadcast_to(coder.FLAGS, (n_rows, 2)), raw.astype(int)).sum())
                stats.raw_chunks += int(raw.sum())
        stats.seconds = time.perf_counter() - start
        return out, stats


@torch.inference_mode()
def ideal_code_length(model: torch.nn.Module, tokens: np.ndarray, chunk_size: int, prefix_token: int,
                      batch_size: int = 16) -> float:
    """-sum log2 p of `tokens` with the compressor's chunking, by the plain full-sequence forward.

    The fast way to the ideal code length (no coder, no incremental path); it agrees with an
    archive's ideal bits up to float rounding.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    lengths = chunk_lengths(len(tokens), chunk_size)
    device = next(model.parameters()).device
    total = 0.0
    for first in range(0, len(lengths), batch_size):
        batch_lengths = lengths[first : first + batch_size]
        T = int(batch_lengths.max())
        targets = np.full((len(batch_lengths), T), -100, dtype=np.int64)  # -100: ignored
        for row, length in enumerate(batch_lengths):
            begin = (first + row) * chunk_size
            targets[row, :length] = tokens[begin : begin + length]
        inputs = np.where(targets[:, :-1] < 0, prefix_token, targets[:, :-1])
        inputs = np.concatenate([np.full((len(batch_lengths), 1), prefix_token), inputs], axis=1)
        logits = model(torch.from_numpy(inputs).to(device)).float()
        nats = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 torch.from_numpy(targets).to(device).reshape(-1),
                                                 ignore_index=-100, reduction="sum")
        total += float(nats)
    return total / math.log(2)
