"""Tokenizers that turn any bytes into tokens and back, exactly.

- `ByteTokenizer` (the default): token = byte, vocabulary 256. Bits per byte is exact and every
  file, binary included, is valid input.
- `BPETokenizer`: byte-level BPE trained on the train split with HF `tokenizers`. Its alphabet
  holds all 256 byte symbols, so valid UTF-8 goes through the trained merges and any invalid
  byte falls back to its single-byte token: every byte string round-trips. Decoding maps token
  strings back to bytes through the byte-level alphabet directly (not the library's decoder), so
  the round trip does not depend on decoder settings.

`token_bytes` gives each token's length in bytes, used to turn nats/token into bits/byte.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Protocol

import numpy as np

from scalinglab.errors import UserError


class Tokenizer(Protocol):
    name: str
    vocab_size: int

    def encode(self, data: bytes) -> np.ndarray: ...
    def decode(self, tokens: Iterable[int]) -> bytes: ...
    def token_bytes(self) -> np.ndarray: ...
    def spec(self) -> dict: ...


class ByteTokenizer:
    name = "byte"
    vocab_size = 256

    def encode(self, data: bytes) -> np.ndarray:
        return np.frombuffer(data, dtype=np.uint8).astype(np.uint16)

    def decode(self, tokens: Iterable[int]) -> bytes:
        arr = np.asarray(list(tokens) if not isinstance(tokens, np.ndarray) else tokens)
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ValueError("byte tokens must lie in 0..255")
        return arr.astype(np.uint8).tobytes()

    def token_bytes(self) -> np.ndarray:
        return np.ones(256, dtype=np.int64)

    def spec(self) -> dict:
        return {"kind": "byte", "vocab_size": 256}


@lru_cache(maxsize=1)
def byte_alphabet() -> tuple[dict[int, str], dict[str, int]]:
    """The byte-level BPE alphabet: a printable character for each byte value.

    Printable Latin-1 bytes stand for themselves; the other 68 bytes are moved to code points
    from 256 up, so that no byte maps to whitespace or a control character.
    """
    kept = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    to_char: dict[int, str] = {b: chr(b) for b in kept}
    extra = 0
    for b in range(256):
        if b not in to_char:
            to_char[b] = chr(256 + extra)
            extra += 1
    return to_char, {c: b for b, c in to_char.items()}


class BPETokenizer:
    """Byte-level BPE backed by an HF `tokenizers.Tokenizer`."""

    name = "bpe"

    def __init__(self, hf_tokenizer) -> None:
        self._tok = hf_tokenizer
        self.vocab_size = hf_tokenizer.get_vocab_size()
        to_char, _ = byte_alphabet()
        self._byte_token = np.array([hf_tokenizer.token_to_id(to_char[b]) for b in range(256)])
        if (self._byte_token == None).any():  # noqa: E711 - ids are None when a symbol is missing
            raise UserError("this BPE tokenizer lacks some byte symbols; retrain it with scalinglab")
        vocab = hf_tokenizer.get_vocab()
        self._id_to_token = [""] * self.vocab_size
        for token, idx in vocab.items():
            self._id_to_token[idx] = token

    @classmethod
    def train(cls, texts: Iterable[bytes], vocab_size: int) -> "BPETokenizer":
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        if vocab_size < 257:
            raise UserError(f"BPE vocab size must exceed 256 (the byte alphabet), got {vocab_size}")
        if vocab_size > 65535:
            raise UserError(f"BPE vocab size must be at most 65535 (tokens are stored as uint16), got {vocab_size}")
        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
            special_tokens=[],
        )
        tok.train_from_iterator((t.decode("utf-8", "replace") for t in texts), trainer=trainer)
        return cls(tok)

    @classmethod
    def load(cls, path: Path) -> "BPETokenizer":
        from tokenizers import Tokenizer as HFTokenizer

        return cls(HFTokenizer.from_file(str(path)))

    def save(self, path: Path) -> None:
        self._tok.save(str(path))

    def encode(self, data: bytes) -> np.ndarray:
        return self.encode_batch([data])[0]

    def encode_batch(self, docs: list[bytes]) -> list[np.ndarray]:
        """Encode many documents; valid UTF-8 goes through BPE in one parallel batch."""
        out: list[np.ndarray | None] = [None] * len(docs)
        texts, where = [], []
        for i, data in enumerate(docs):
            try:
                texts.append(data.decode("utf-8"))
                where.append(i)
            except UnicodeDecodeError:
                out[i] = self._encode_mixed(data)
        for i, enc in zip(where, self._tok.encode_batch(texts, add_special_tokens=False)):
            out[i] = np.asarray(enc.ids, dtype=np.uint16)
        return out  # type: ignore[return-value]

    def _encode_mixed(self, data: bytes) -> np.ndarray:
        # Valid UTF-8 runs go through BPE; each invalid byte becomes its own byte token.
        pieces: list[np.ndarray] = []
        pos = 0
        while pos < len(data):
            try:
                text = data[pos:].decode("utf-8")
                pieces.append(np.asarray(self._tok.encode(text, add_special_tokens=False).ids, dtype=np.uint16))
                break
            except UnicodeDecodeError as err:
                if err.start > 0:
                    text = data[pos : pos + err.start].decode("utf-8")
                    pieces.append(np.asarray(self._tok.encode(text, add_special_tokens=False).ids, dtype=np.uint16))
                bad = data[pos + err.start : pos + err.end]
                pieces.append(self._byte_token[np.frombuffer(bad, dtype=np.uint8)].astype(np.uint16))
                pos += err.end
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.uint16)

    def decode(self, tokens: Iterable[int]) -> bytes:
        _, from_char = byte_alphabet()
        try:
            chars = "".join(self._id_to_token[int(t)] for t in tokens)
        except IndexError:
            raise ValueError(f"token id out of range for a vocabulary of {self.vocab_size}") from None
        return bytes(from_char[c] for c in chars)

    def token_bytes(self) -> np.ndarray:
        return np.array([len(t) for t in self._id_to_token], dtype=np.int64)

    def spec(self) -> dict:
        return {"kind": "bpe", "vocab_size": self.vocab_size}


def tokenizer_spec(kind: str, vocab_size: int | None) -> dict:
    """The canonical description of a requested tokenizer (part of the corpus cache key)."""
    if kind == "byte":
        return {"kind": "byte", "vocab_size": 256}
    if kind == "bpe":
        if vocab_size is None:
            vocab_size = 4096
        return {"kind": "bpe", "vocab_size": int(vocab_size)}
    raise UserError(f"unknown tokenizer {kind!r}; use 'byte' or 'bpe'")


def load_tokenizer(corpus_dir: Path) -> Tokenizer:
    """The tokenizer saved with a prepared corpus."""
    meta = json.loads((corpus_dir / "meta.json").read_text())
    if meta["tokenizer"]["kind"] == "byte":
        return ByteTokenizer()
    return BPETokenizer.load(corpus_dir / "tokenizer.json")
