"""The prequential (online) code length of a training run: compression = area under the loss curve.

A sender and a receiver who share the training recipe (init seed, optimizer, data order) can
transmit the training stream with the model being trained: each batch is coded with the model as
it stands before its update, after which both sides take the same update. The cost is each batch's
loss before its update, summed over the run: the training log (`train_loss.f32`, nats/token per
step) times the batch's tokens, in bits. The model is never sent; its description is the recipe.

The comparison is gzip -9 and xz -9 of the same stream: the target tokens of every training batch
in the order the run saw them, rebuilt from the deterministic sampler (`BatchSampler.batch`). A
run within one epoch sees each window once, so the stream is distinct text; a multi-epoch run
repeats windows, and the classical compressors may find the repeats within their windows too.

Each window's first token is an input only and never a target, so the loss does not cover it;
`window_start_bits` prices those tokens at log2(V) bits each, for a complete code.
"""

from __future__ import annotations

import lzma
import math
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from scalinglab.compress.runs import RunInfo, run_info
from scalinglab.errors import UserError
from scalinglab.train import read_loss_log
from scalinglab.train.data import BatchSampler

CURVE_POINTS = 256


@dataclass
class PrequentialResult:
    run_id: str
    out_dir: str
    first_step: int  # first step counted (0 unless a branch's trunk log was unavailable)
    steps: int
    batch_tokens: int
    tokens: int  # target tokens coded
    bytes: int  # original bytes behind them
    bits: float  # sum over steps of loss x batch tokens / ln 2
    window_start_bits: float  # each window's first token at log2 V bits
    gzip_bits: float
    xz_bits: float
    epochs: float  # passes over the unique training tokens by the end
    partial: bool = False  # a branch whose trunk's log could not be found: the branch part only
    curve_tokens: list[int] = field(default_factory=list)  # cumulative code length, downsampled
    curve_bits: list[float] = field(default_factory=list)
    loss_bpb: list[float] = field(default_factory=list)  # training loss in bits/byte per curve bin

    @property
    def bits_per_byte(self) -> float:
        return self.bits / self.bytes

    @property
    def gzip_bpb(self) -> float:
        return self.gzip_bits / self.bytes

    @property
    def xz_bpb(self) -> float:
        return self.xz_bits / self.bytes

    def to_dict(self) -> dict:
        return {**asdict(self), "bits_per_byte": self.bits_per_byte, "gzip_bpb": self.gzip_bpb, "xz_bpb": self.xz_bpb}


def _loss_segments(info: RunInfo, store) -> tuple[list[tuple[int, np.ndarray]], bool]:
    """(first step, losses) pieces covering the run from step 0 where possible, and whether partial."""
    losses = read_loss_log(info.out_dir)
    first = info.first_logged_step
    if first == 0:
        return [(0, losses)], False
    parent = info.config.get("parent_run")
    trunk = store.get_run(parent) if (store is not None and parent) else None
    if trunk and trunk.get("out_dir") and Path(trunk["out_dir"]).exists():
        trunk_losses = read_loss_log(trunk["out_dir"])
        if len(trunk_losses) >= first:
            return [(0, trunk_losses[:first]), (first, losses)], False
    return [(first, losses)], True


def prequential_code_length(out_dir: str | Path, *, store=None, cache_dir: Path | None = None,
                            progress: Callable[[int], None] | None = None) -> PrequentialResult:
    """The prequential code length of the run in `out_dir` against gzip -9 and xz -9 of its stream.

    With a `store`, a branch's trunk is looked up to count the run from step 0, and the result is
    recorded as a `prequential` result keyed by run id.
    """
    info = run_info(out_dir)
    segments, partial = _loss_segments(info, store)
    n_steps = sum(len(losses) for _, losses in segments)
    if n_steps == 0:
        raise UserError(f"{out_dir} has no training-loss log yet (train_loss.f32); train the run first")
    corpus = info.corpus(cache_dir)
    t = info.train
    sampler = BatchSampler(corpus.tokens("train"), int(t["seq_len"]), int(t["batch_size"]), int(t["seed"]),
                           info.config.get("max_unique_tokens"))
    token_bytes = np.asarray(corpus.token_bytes)
    byte_tokens = corpus.meta["tokenizer"]["kind"] == "byte"

    gz = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: the gzip container, as `gzip -9`
    xz = lzma.LZMACompressor(preset=9)
    gzip_bytes = xz_bytes = n_bytes = 0
    step_bits, step_bytes, step_tokens = [], [], []
    for first, losses in segments:
        for offset, loss in enumerate(losses):
            _, targets = sampler.batch(first + offset)  # (B, T): the tokens this step's loss coded
            flat = targets.numpy().reshape(-1)
            data = flat.astype(np.uint8).tobytes() if byte_tokens else corpus.tokenizer.decode(flat)
            gzip_bytes += len(gz.compress(data))
            xz_bytes += len(xz.compress(data))
            n_bytes += len(data)
            step_bits.append(float(loss) * flat.size / math.log(2))
            step_bytes.append(int(token_bytes[flat].sum()))
            step_tokens.append(flat.size)
            if progress:
                progress(1)
    gzip_bytes += len(gz.flush())
    xz_bytes += len(xz.flush())

    bits = np.cumsum(step_bits)
    tokens = np.cumsum(step_tokens)
    keep = np.unique(np.round(np.geomspace(1, len(bits), min(CURVE_POINTS, len(bits)))).astype(int) - 1)
    # the loss curve per bin between kept steps: bits over bytes of the bin (not one noisy step)
    starts = np.concatenate([[0], keep[:-1] + 1])
    bin_bpb = np.add.reduceat(np.asarray(step_bits), starts) / np.add.reduceat(np.asarray(step_bytes, float), starts)
    windows = len(step_bits) * sampler.batch_size
    last_step = segments[-1][0] + len(segments[-1][1])
    result = PrequentialResult(
        run_id=info.run_id, out_dir=str(info.out_dir), first_step=segments[0][0], steps=len(step_bits),
        batch_tokens=info.batch_tokens, tokens=int(tokens[-1]), bytes=n_bytes, bits=float(bits[-1]),
        window_start_bits=windows * math.log2(corpus.vocab_size), gzip_bits=8.0 * gzip_bytes, xz_bits=8.0 * xz_bytes,
        epochs=sampler.epochs_at(last_step), partial=partial,
        curve_tokens=[int(tokens[i]) for i in keep], curve_bits=[float(bits[i]) for i in keep],
        loss_bpb=[float(b) for b in bin_bpb],
    )
    if store is not None:
        store.put_result("prequential", info.run_id, result.to_dict(), run_id=info.run_id)
    return result

