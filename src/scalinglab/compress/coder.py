"""Entropy coding: integer CDFs from model probabilities, and the range coder that uses them.

The coder is `constriction`'s range coder (32-bit words, 64-bit state, 24-bit probabilities).
We quantise every distribution to integer frequencies ourselves, so that what is coded is
exactly known and the code length under the quantised model can be computed:

    freq_i = 1 + floor(p_i x (2^24 - V)),  the rounding remainder added to the most likely symbol.

Every symbol keeps a frequency of at least 1 (any token can be coded, however unlikely the model
thinks it), and the frequencies sum to 2^24 exactly. They are handed to constriction's lazy
categorical model as `freq - 1`, summing to 2^24 - V: with that normalisation its fixed-point
conversion (`floor(cumsum x scale) + index`, scale = 1 exactly) reproduces our integers bit for bit,
so the coded probability of symbol i is exactly freq_i / 2^24.

Quantisation costs little: a symbol of probability p loses at most 1 / (p 2^24) of its mass to
rounding, and the leak of one count per symbol takes V / 2^24 (1.5e-5 at V = 256) from the rest.
"""

from __future__ import annotations

import math

import constriction
import numpy as np
import torch

PRECISION = 24
TOTAL = 1 << PRECISION


def quantize(probs: torch.Tensor) -> torch.Tensor:
    """Integer frequencies minus one, (B, V) float64, from probabilities (B, V) float64.

    The result holds integers (exactly representable) that sum to 2^24 - V in every row.
    """
    B, V = probs.shape
    if V >= TOTAL // 2:
        raise ValueError(f"a vocabulary of {V} symbols does not fit {PRECISION}-bit probabilities")
    free = float(TOTAL - V)
    spare = torch.floor(probs * free)  # (B, V); row sums <= free since sum(p) = 1 within 1e-15
    remainder = free - spare.sum(dim=1)  # integers in [0, V)
    rows = torch.arange(B)
    spare[rows, spare.argmax(dim=1)] += remainder
    return spare


def code_lengths(spare: np.ndarray, symbols: np.ndarray) -> np.ndarray:
    """Bits the quantised distributions spend on each symbol (-log2 (freq / 2^24)), (rows,)."""
    freq = spare[np.arange(len(symbols)), symbols] + 1.0
    return PRECISION - np.log2(freq)


def uniform(vocab_size: int) -> np.ndarray:
    """The uniform distribution over `vocab_size` symbols in `quantize`'s form, (V,) float64.

    Exactly log2(V) bits a symbol when V is a power of two (8 bits for bytes)."""
    freq = np.full(vocab_size, TOTAL // vocab_size, dtype=np.float64)
    freq[: TOTAL % vocab_size] += 1
    return freq - 1


# A chunk's "stored raw" flag: 1 in 64 is the prior, so a flag costs 0.02 bits when clear.
FLAG_RAW_SHARE = 1 << (PRECISION - 6)
FLAGS = np.array([TOTAL - FLAG_RAW_SHARE - 1, FLAG_RAW_SHARE - 1], dtype=np.float64)


class Encoder:
    """A range encoder fed one batch of symbols at a time."""

    def __init__(self) -> None:
        self._coder = constriction.stream.queue.RangeEncoder()
        self._family = constriction.stream.model.Categorical(perfect=False)

    def encode(self, symbols: np.ndarray, spare: np.ndarray) -> None:
        """Encode symbols[i] under the integer distribution spare[i] (rows of `quantize`)."""
        if len(symbols):
            self._coder.encode(symbols.astype(np.int32, copy=False), self._family, spare)

    def finish(self) -> np.ndarray:
        """The compressed stream as uint32 words."""
        return self._coder.get_compressed()


class Decoder:
    """The range decoder matching `Encoder`."""

    def __init__(self, words: np.ndarray) -> None:
        self._coder = constriction.stream.queue.RangeDecoder(np.ascontiguousarray(words, dtype=np.uint32))
        self._family = constriction.stream.model.Categorical(perfect=False)

    def decode(self, spare: np.ndarray) -> np.ndarray:
        """One symbol for each row of `spare` (int64)."""
        if len(spare) == 0:
            return np.zeros(0, dtype=np.int64)
        return np.asarray(self._coder.decode(self._family, spare), dtype=np.int64)


def ideal_bits(log_probs: torch.Tensor, symbols: torch.Tensor) -> float:
    """-sum log2 p(symbol) from natural-log probabilities (B, V)."""
    return float(-log_probs.gather(1, symbols.view(-1, 1)).sum()) / math.log(2)
