"""The archive format, and compressing/decompressing bytes and files with a trained model.

An archive is a header followed by the range-coded payload (uint32 words, little-endian). The
payload codes, for each batch of chunks in turn, one flag per chunk (model-coded or stored raw at
the uniform code) and then the batch's tokens position by position (see `lm`). The header:

    offset  size  field
    0       4     magic b"SLLM"
    4       1     format version (3)
    5       1     probability precision in bits (24)
    6       1     device kind the probabilities were computed on (0 cpu, 1 cuda)
    7       1     torch threads
    8       4     chunk size, tokens
    12      4     batch size, chunks per forward batch
    16      4     prefix token
    20      8     original length, bytes
    28      8     token count
    36      8     payload length, 32-bit words
    44      4     CRC-32 of the payload
    48      32    model fingerprint (SHA-256 of shape, weights and tokenizer)
    80      32    SHA-256 of the original bytes
    112     2     tokenizer name length n, then n bytes of UTF-8 ("byte", "bpe-4096")
    114+n   4     CRC-32 of every header byte before it

Decompression checks the magic, version, header CRC, payload length and payload CRC before any
work (the range coder's last word has slack bits that decoding never reads, so only a checksum
sees every change), refuses a model whose fingerprint differs, and after decoding checks the length
and the SHA-256 of the result: a damaged archive, or a machine that computes the model differently,
is an error, never wrong data.

Files are written to a temporary file in the output's folder and renamed into place only when
everything succeeded: a failed or interrupted run leaves no partial output.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import numpy as np
import torch

from scalinglab.compress import DEFAULT_BATCH
from scalinglab.compress.coder import PRECISION
from scalinglab.compress.lm import CodingSetup, CodingStats, LMCoder, fit_batch
from scalinglab.errors import UserError
from scalinglab.fsutil import atomic_open

MAGIC = b"SLLM"
# The version names the format and the model computation behind its probabilities: 2 pairs
# rotary dimensions as adjacent (complex) pairs, which changes every probability of version 1;
# 3 reads the key/value cache in blocks (`model.attend_cached`) and folds RMSNorm's gain into the
# next layer's weight (`model.RMSNorm`): sums in another order, which move the probabilities of
# version 2 by float rounding.
VERSION = 3
_FIXED = struct.Struct("<4sBBBBIIIQQQI32s32sH")
_DEVICES = {"cpu": 0, "cuda": 1}


@dataclass(frozen=True)
class ArchiveHeader:
    chunk_size: int
    batch_size: int
    threads: int
    device: str
    prefix_token: int
    original_bytes: int
    n_tokens: int
    payload_words: int
    payload_crc32: int
    model_fingerprint: bytes
    content_sha256: bytes
    tokenizer: str
    precision: int = PRECISION
    version: int = VERSION

    @property
    def setup(self) -> CodingSetup:
        return CodingSetup(chunk_size=self.chunk_size, batch_size=self.batch_size, threads=self.threads,
                           device=self.device, prefix_token=self.prefix_token)

    def pack(self) -> bytes:
        name = self.tokenizer.encode()
        body = _FIXED.pack(MAGIC, self.version, self.precision, _DEVICES[self.device], self.threads,
                           self.chunk_size, self.batch_size, self.prefix_token, self.original_bytes,
                           self.n_tokens, self.payload_words, self.payload_crc32, self.model_fingerprint,
                           self.content_sha256,
                           len(name)) + name
        return body + struct.pack("<I", zlib.crc32(body))

    @classmethod
    def unpack(cls, data: bytes) -> tuple["ArchiveHeader", int]:
        """The header at the start of `data` and its size. Raises `UserError` on anything odd."""
        if len(data) < 4 or data[:4] != MAGIC:
            raise UserError("not a scalinglab archive (wrong magic bytes); give a file written by `scalinglab compress`")
        if len(data) < _FIXED.size + 4:
            raise UserError("the archive is truncated (shorter than its header); use an intact copy")
        fields = _FIXED.unpack_from(data)
        (_, version, precision, device, threads, chunk, batch, prefix, original, n_tokens, words, payload_crc,
         fingerprint, content, name_len) = fields
        if version != VERSION:
            raise UserError(f"archive format version {version} is not readable by this scalinglab (reads {VERSION}); "
                            "use the scalinglab version that wrote it")
        end = _FIXED.size + name_len
        if len(data) < end + 4:
            raise UserError("the archive is truncated (inside its header); use an intact copy")
        (crc,) = struct.unpack_from("<I", data, end)
        if crc != zlib.crc32(data[:end]):
            raise UserError("the archive's header is corrupted (CRC mismatch); use an intact copy")
        devices = {v: k for k, v in _DEVICES.items()}
        if precision != PRECISION or device not in devices:
            raise UserError("the archive's header holds values this scalinglab does not support; it may be damaged")
        header = cls(chunk_size=chunk, batch_size=batch, threads=threads, device=devices[device], prefix_token=prefix,
                     original_bytes=original, n_tokens=n_tokens, payload_words=words, payload_crc32=payload_crc,
                     model_fingerprint=fingerprint,
                     content_sha256=content, tokenizer=data[_FIXED.size : end].decode("utf-8", "replace"),
                     precision=precision, version=version)
        return header, end + 4


# --- the model as a compressor -----------------------------------------------------------------

@dataclass
class Compressor:
    """A trained model ready to code: the model, its tokenizer and its fingerprint."""

    model: torch.nn.Module
    tokenizer: object
    tokenizer_name: str
    fingerprint: bytes
    context: int  # the sequence length it was trained on
    source: Path

    @property
    def prefix_token(self) -> int:
        """A newline: what text most often follows, and so a natural start of a context."""
        return int(self.tokenizer.encode(b"\n")[0])

    def tokenize(self, data: bytes) -> np.ndarray:
        tokens = np.asarray(self.tokenizer.encode(data), dtype=np.int64)
        if self.tokenizer_name != "byte" and self.tokenizer.decode(tokens) != data:
            raise UserError("this model's tokenizer does not reproduce the input exactly, so it cannot compress "
                            "it losslessly; use a model trained with the byte tokenizer")
        return tokens

    def detokenize(self, tokens: np.ndarray) -> bytes:
        return self.tokenizer.decode(tokens)


def load_compressor(path: str | Path) -> Compressor:
    """A run directory or `.pt` checkpoint as a `Compressor` (CPU, float32, eval mode)."""
    from scalinglab.compress.lm import BATCH_BUDGET_BYTES
    from scalinglab.resources import available_memory, gib
    from scalinglab.train.checkpoint import load_model, resolve_checkpoint, tokenizer_from_checkpoint

    # the checkpoint is read whole (weights and optimizer state), then a batch's key/value cache
    need, available = 2 * resolve_checkpoint(path).stat().st_size + BATCH_BUDGET_BYTES, available_memory("cpu")
    if need > available:
        raise UserError(f"compressing with {path} needs ~{gib(need)} of memory but {gib(available)} "
                        "is available; free memory or use a smaller model")
    try:
        model, payload = load_model(path)
        tokenizer = tokenizer_from_checkpoint(payload)
        context = int(payload["config"]["train"]["seq_len"])
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path} is not a scalinglab checkpoint ({type(exc).__name__}: {exc}); "
                        "give a run directory or its last.pt") from None
    spec = (payload.get("tokenizer") or {}).get("spec") or {"kind": "byte"}
    name = "byte" if spec["kind"] == "byte" else f"bpe-{tokenizer.vocab_size}"
    return Compressor(model=model, tokenizer=tokenizer, tokenizer_name=name,
                      fingerprint=model_fingerprint(model, payload), context=context, source=Path(path))


def model_fingerprint(model: torch.nn.Module, payload: dict) -> bytes:
    """SHA-256 over the model's shape, every weight's bytes and the tokenizer."""
    digest = hashlib.sha256()
    digest.update(json.dumps(model.cfg.to_dict(), sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{name}:{tuple(t.shape)}".encode())
        digest.update(t.numpy().tobytes())
    tokenizer = payload.get("tokenizer") or {}
    digest.update(json.dumps(tokenizer.get("spec"), sort_keys=True).encode())
    digest.update((tokenizer.get("json") or "").encode())
    return digest.digest()


# --- bytes -----------------------------------------------------------------------------------------

@dataclass
class CodingResult:
    """One compression or decompression: sizes, code lengths and time."""

    header: ArchiveHeader
    archive_bytes: int
    stats: CodingStats

    @property
    def original_bytes(self) -> int:
        return self.header.original_bytes

    @property
    def bits_per_byte(self) -> float:
        """The archive's size (header included) in bits per original byte."""
        return 8 * self.archive_bytes / self.original_bytes if self.original_bytes else float("nan")

    @property
    def ideal_bits_per_byte(self) -> float:
        return self.stats.ideal_bits / self.original_bytes if self.original_bytes else float("nan")

    @property
    def overhead(self) -> float:
        """Archive bits over the ideal code length, minus one (0.001 = 0.1%)."""
        return 8 * self.archive_bytes / self.stats.ideal_bits - 1 if self.stats.ideal_bits > 0 else float("nan")

    @property
    def bytes_per_second(self) -> float:
        return self.original_bytes / self.stats.seconds if self.stats.seconds > 0 else float("nan")


def compress_bytes(comp: Compressor, data: bytes, *, chunk_size: int | None = None, batch_size: int = DEFAULT_BATCH,
                   threads: int = 1, device: str = "cpu",
                   progress: Callable[[int], None] | None = None) -> tuple[bytes, CodingResult]:
    """Compress `data` into an archive. `progress` receives the number of tokens coded per step."""
    chunk = chunk_size or comp.context
    if device not in _DEVICES:
        raise UserError(f"unknown device {device!r}; use cpu or cuda")
    setup = CodingSetup(chunk_size=chunk, batch_size=fit_batch(comp.model, chunk, batch_size), threads=threads,
                        device=device, prefix_token=comp.prefix_token)
    setup.validate(comp.model, comp.context)
    tokens = comp.tokenize(data)
    words, stats = LMCoder(comp.model, setup).encode(tokens, progress)
    payload = np.asarray(words, dtype="<u4").tobytes()
    header = ArchiveHeader(chunk_size=setup.chunk_size, batch_size=setup.batch_size, threads=setup.threads,
                           device=setup.device, prefix_token=setup.prefix_token, original_bytes=len(data),
                           n_tokens=len(tokens), payload_words=len(words), payload_crc32=zlib.crc32(payload),
                           model_fingerprint=comp.fingerprint,
                           content_sha256=hashlib.sha256(data).digest(), tokenizer=comp.tokenizer_name)
    archive = header.pack() + payload
    return archive, CodingResult(header, len(archive), stats)


def decompress_bytes(comp: Compressor, archive: bytes,
                     progress: Callable[[int], None] | None = None) -> tuple[bytes, CodingResult]:
    """The original bytes of an archive, checked against its length and SHA-256."""
    header, offset = ArchiveHeader.unpack(archive)
    payload = archive[offset:]
    if len(payload) != 4 * header.payload_words:
        state = "truncated" if len(payload) < 4 * header.payload_words else "longer than its header says"
        raise UserError(f"the archive is {state} ({len(payload)} payload bytes, expected {4 * header.payload_words}); "
                        "use an intact copy")
    if zlib.crc32(payload) != header.payload_crc32:
        raise UserError("the archive's payload is corrupted (CRC mismatch); use an intact copy")
    if header.model_fingerprint != comp.fingerprint:
        raise UserError(f"the archive was made with another model (fingerprint {header.model_fingerprint.hex()[:12]}, "
                        f"{comp.source} is {comp.fingerprint.hex()[:12]}); pass the model it was compressed with")
    if header.tokenizer != comp.tokenizer_name:
        raise UserError(f"the archive needs tokenizer {header.tokenizer}, the model has {comp.tokenizer_name}")
    words = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
    try:
        tokens, stats = LMCoder(comp.model, header.setup).decode(words, header.n_tokens, progress)
        data = comp.detokenize(tokens)
    except UserError:
        raise
    except Exception as exc:  # the range decoder and the tokenizer reject some damaged streams outright
        raise UserError(f"the archive's payload is corrupted ({type(exc).__name__}); use an intact copy") from None
    if len(data) != header.original_bytes or hashlib.sha256(data).digest() != header.content_sha256:
        raise UserError("the decoded data fails the archive's SHA-256 check: the archive is corrupted, or this "
                        "machine computes the model differently from the one that compressed it "
                        "(decompress with the same software and kind of machine)")
    return data, CodingResult(header, len(archive), stats)


# --- files -------------------------------------------------------------------------------------------

def read_input(path: str | Path) -> bytes:
    path = Path(path)
    if not path.exists():
        raise UserError(f"input not found: {path}; give an existing file")
    if path.is_dir():
        raise UserError(f"{path} is a directory; give a file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}; check its permissions") from None


@contextmanager
def atomic_output(path: str | Path, *, force: bool = False, source: Path | None = None) -> Iterator[BinaryIO]:
    """A file handle whose content appears at `path` only if the block succeeds.

    The temporary file is created up front, so an unwritable output fails before any work.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"output {path} is a directory; give a file name")
    if source is not None and path.exists() and path.resolve() == Path(source).resolve():
        raise UserError(f"output {path} is the input file; give another output name")
    if path.exists() and not force:
        raise UserError(f"output {path} already exists; remove it or pass --force")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"cannot write {path}: the folder {parent} does not exist; create it or choose another output")
    created = False  # atomic_open makes its temporary file on entry, before any coding
    try:
        with atomic_open(path, suffix=".partial") as fh:
            created = True
            yield fh
    except OSError as exc:
        if not created:
            raise UserError(f"cannot write to {parent}: {exc.strerror}; choose another output") from None
        raise UserError(f"cannot write {path}: {exc.strerror}; check the space and permissions there") from None


def compress_file(model: str | Path | Compressor, input: str | Path, output: str | Path, *, force: bool = False,
                  **options) -> CodingResult:
    """Compress file `input` into archive `output` (options as `compress_bytes`)."""
    data = read_input(input)
    with atomic_output(output, force=force, source=Path(input)) as fh:
        comp = model if isinstance(model, Compressor) else load_compressor(model)
        archive, result = compress_bytes(comp, data, **options)
        fh.write(archive)
    return result


def decompress_file(model: str | Path | Compressor, input: str | Path, output: str | Path, *, force: bool = False,
                    progress: Callable[[int], None] | None = None) -> CodingResult:
    """Decompress archive `input` into `output`, checked before it is renamed into place."""
    archive = read_input(input)
    ArchiveHeader.unpack(archive)  # a bad archive fails before the model is loaded
    with atomic_output(output, force=force, source=Path(input)) as fh:
        comp = model if isinstance(model, Compressor) else load_compressor(model)
        data, result = decompress_bytes(comp, archive, progress)
        fh.write(data)
    return result


def read_header(path: str | Path) -> ArchiveHeader:
    """The header of an archive file."""
    return ArchiveHeader.unpack(read_input(path))[0]
