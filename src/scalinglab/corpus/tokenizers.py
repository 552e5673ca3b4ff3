"""Tokenizers that turn any bytes into tokens and back, exactly.

- `ByteTokenizer` (the default): token = byte, vocabulary 256. Bits per byte is exact and every
  file, binary included, is valid input.
- `BPETokenizer`: byte-level BPE trained on the train split with HF `tokenizers`. Its alphabet
  holds all 256 byte symbols, so valid UTF-8 goes through the trained merges and any invalid
  byte falls back to its single-byte token: every byte string round-trips. Decoding maps token
  strings back to bytes through the byte-level alphabet directly (not the library's decoder), so
  the round trip does not depend on decoder settings.
- `PretrainedTokenizer`: a byte-level BPE someone else trained (GPT-2's, Llama 3's...), from a
  saved `tokenizer.json` (`--tokenizer FILE.json`) or the Hugging Face hub (`--tokenizer hf:NAME`).
  It decodes as `BPETokenizer` does; whether it round-trips is a property of the tokenizer (a
  normaliser, say, does not), so a corpus checks it on its held-out splits and refuses one that
  does not.

`token_bytes` gives each token's length in bytes, used to turn nats/token into bits/byte.
"""

from __future__ import annotations

import hashlib
import json
import os
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
        vocab = hf_tokenizer.get_vocab()
        self.vocab_size = max(hf_tokenizer.get_vocab_size(), max(vocab.values(), default=-1) + 1)
        # token ids as stored in the shards: uint16 up to 65,536 tokens (uint32 past, e.g. Llama 3's)
        self._dtype = np.uint16 if self.vocab_size <= 2**16 else np.uint32
        to_char, _ = byte_alphabet()
        self._byte_token = np.array([hf_tokenizer.token_to_id(to_char[b]) for b in range(256)])
        if (self._byte_token == None).any():  # noqa: E711 - ids are None when a symbol is missing
            raise UserError(self._missing_bytes())
        self._id_to_token = [""] * self.vocab_size
        for token, idx in vocab.items():
            self._id_to_token[idx] = token

    def _missing_bytes(self) -> str:
        return "this BPE tokenizer lacks some byte symbols; retrain it with scalinglab"

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
            out[i] = np.asarray(enc.ids, dtype=self._dtype)
        return out  # type: ignore[return-value]

    def _encode_mixed(self, data: bytes) -> np.ndarray:
        # Valid UTF-8 runs go through BPE; each invalid byte becomes its own byte token.
        pieces: list[np.ndarray] = []
        pos = 0
        while pos < len(data):
            try:
                text = data[pos:].decode("utf-8")
                pieces.append(np.asarray(self._tok.encode(text, add_special_tokens=False).ids, dtype=self._dtype))
                break
            except UnicodeDecodeError as err:
                if err.start > 0:
                    text = data[pos : pos + err.start].decode("utf-8")
                    pieces.append(np.asarray(self._tok.encode(text, add_special_tokens=False).ids, dtype=self._dtype))
                bad = data[pos + err.start : pos + err.end]
                pieces.append(self._byte_token[np.frombuffer(bad, dtype=np.uint8)].astype(self._dtype))
                pos += err.end
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=self._dtype)

    def decode(self, tokens: Iterable[int]) -> bytes:
        _, from_char = byte_alphabet()
        try:
            chars = "".join(self._id_to_token[int(t)] for t in tokens)
        except IndexError:
            raise ValueError(f"token id out of range for a vocabulary of {self.vocab_size}") from None
        try:
            return bytes(from_char[c] for c in chars)
        except KeyError as exc:  # a token that is not a byte string (a pretrained one's special token, say)
            raise ValueError(f"token text {exc.args[0]!r} is not a byte-level symbol") from None

    def token_bytes(self) -> np.ndarray:
        return np.array([len(t) for t in self._id_to_token], dtype=np.int64)

    def spec(self) -> dict:
        return {"kind": "bpe", "vocab_size": self.vocab_size}


class PretrainedTokenizer(BPETokenizer):
    """A byte-level BPE trained elsewhere, as a `tokenizers` tokenizer.json. `label` names it (the
    file's name or hf:NAME); the spec keys it by the JSON's SHA-256, so the same tokenizer under
    another name or path prepares the same corpus."""

    name = "pretrained"

    def __init__(self, hf_tokenizer, label: str, sha256: str) -> None:
        self.label, self.sha256 = label, sha256
        super().__init__(hf_tokenizer)

    def _missing_bytes(self) -> str:
        return (f"the tokenizer {self.label} is not byte-level (it has no token for every byte), so bits per byte "
                "would not be exact; use a byte-level BPE (GPT-2's, Llama 3's), or --tokenizer byte or bpe")

    @classmethod
    def from_json(cls, text: str, label: str) -> "PretrainedTokenizer":
        from tokenizers import Tokenizer as HFTokenizer

        try:
            tok = HFTokenizer.from_str(text)
        except Exception as exc:  # tokenizers raises a plain Exception for a JSON it cannot read
            first = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
            raise UserError(f"{label} is not a tokenizers tokenizer.json ({first}); give a file saved with "
                            "Tokenizer.save, e.g. a model's tokenizer.json") from None
        return cls(tok, label, hashlib.sha256(text.encode()).hexdigest())

    def spec(self) -> dict:
        return {"kind": "pretrained", "name": self.label, "sha256": self.sha256, "vocab_size": self.vocab_size}

    def first_mismatch(self, docs: list[bytes], encoded: list[np.ndarray]) -> int | None:
        """The index of the first document whose tokens do not decode to its bytes; None if all do."""
        for i, (data, tokens) in enumerate(zip(docs, encoded)):
            try:
                if self.decode(tokens) != data:
                    return i
            except ValueError:
                return i
        return None


def pretrained(kind: str) -> PretrainedTokenizer:
    """The tokenizer that `--tokenizer FILE.json` or `--tokenizer hf:NAME` names."""
    if kind.startswith("hf:"):
        return _hub_tokenizer(kind[3:])
    path = Path(kind).expanduser()
    if not path.is_file():
        raise UserError(f"unknown tokenizer {kind!r}; use byte, bpe, a tokenizer.json file or hf:NAME")
    stat = path.stat()
    return _pretrained_file(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=4)
def _pretrained_file(path: str, mtime_ns: int, size: int) -> PretrainedTokenizer:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read the tokenizer {path} ({type(exc).__name__}); give a tokenizer.json file") from None
    return PretrainedTokenizer.from_json(text, Path(path).name)


@lru_cache(maxsize=4)
def _hub_tokenizer(name: str) -> PretrainedTokenizer:
    """A hub model's tokenizer.json (from the local Hugging Face cache when there; a short timeout)."""
    if not name:
        raise UserError("--tokenizer hf: needs a model name, e.g. hf:openai-community/gpt2")
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, GatedRepoError, RepositoryNotFoundError
    except ImportError:
        raise UserError("--tokenizer hf:NAME needs huggingface_hub, which is not installed; install it with: "
                        "pip install 'scalinglab[hf]'") from None
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "10")
    try:
        path = hf_hub_download(name, "tokenizer.json")
    except GatedRepoError:
        raise UserError(f"the model {name} is gated; accept its terms on the hub and log in, or give its "
                        "tokenizer.json as a file") from None
    except RepositoryNotFoundError:
        raise UserError(f"no model {name!r} on the Hugging Face hub; check the name (OWNER/NAME)") from None
    except EntryNotFoundError:
        raise UserError(f"the model {name} has no tokenizer.json; give a tokenizer.json file instead") from None
    except Exception as exc:  # network errors come in many types
        raise UserError(f"cannot fetch the tokenizer of {name} from the Hugging Face hub ({type(exc).__name__}); "
                        "check the network, or give its tokenizer.json as a file") from None
    return PretrainedTokenizer.from_json(Path(path).read_text(encoding="utf-8"), f"hf:{name}")


def tokenizer_spec(kind: str, vocab_size: int | None) -> dict:
    """The canonical description of a requested tokenizer (part of the corpus cache key)."""
    if kind == "byte":
        return {"kind": "byte", "vocab_size": 256}
    if kind == "bpe":
        if vocab_size is None:
            vocab_size = 4096
        return {"kind": "bpe", "vocab_size": int(vocab_size)}
    # by content: the same tokenizer under another name or path prepares the same corpus
    return {k: v for k, v in pretrained(kind).spec().items() if k != "name"}


def load_tokenizer(corpus_dir: Path) -> Tokenizer:
    """The tokenizer saved with a prepared corpus."""
    meta = json.loads((corpus_dir / "meta.json").read_text())
    spec = meta["tokenizer"]
    if spec["kind"] == "byte":
        return ByteTokenizer()
    if spec["kind"] == "pretrained":
        return PretrainedTokenizer.from_json((corpus_dir / "tokenizer.json").read_text(), spec["name"])
    return BPETokenizer.load(corpus_dir / "tokenizer.json")
