"""Classical compressors on the same bytes: gzip -9, bzip2 -9, xz -9, zstd -19, brotli -q 11.

Two settings:
- whole file, in each tool's usual container (what `gzip -9 FILE` etc. write);
- with the LM compressor's chunking: every chunk compressed on its own, as the model codes it,
  with the framing stripped where the library allows (raw deflate, raw LZMA2, magic-less zstd
  without checksum or size) so that the per-chunk cost is compression, not headers. bzip2 and
  brotli have no leaner framing. xz's dictionary is sized to the chunk: for an input no longer than
  the dictionary the output is the same as with the preset's 64 MiB, and far quicker to produce.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import zlib
from dataclasses import dataclass
from typing import Callable, Iterable

import brotli
import zstandard

NAMES = ("gzip-9", "bzip2-9", "xz-9", "zstd-19", "brotli-11")


def _raw_deflate(data: bytes) -> bytes:
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    return z.compress(data) + z.flush()


def _raw_lzma2(data: bytes) -> bytes:
    dict_size = max(4096, 1 << max(len(data) - 1, 1).bit_length())
    filters = [{"id": lzma.FILTER_LZMA2, "preset": 9, "dict_size": dict_size}]
    return lzma.compress(data, format=lzma.FORMAT_RAW, filters=filters)


_ZSTD_WHOLE = zstandard.ZstdCompressor(level=19)
_ZSTD_LEAN = zstandard.ZstdCompressor(compression_params=zstandard.ZstdCompressionParameters.from_level(
    19, format=zstandard.FORMAT_ZSTD1_MAGICLESS, write_checksum=0, write_content_size=0, write_dict_id=0))

# name -> (whole-file compressor, per-chunk compressor)
COMPRESSORS: dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]] = {
    "gzip-9": (lambda d: gzip.compress(d, compresslevel=9, mtime=0), _raw_deflate),
    "bzip2-9": (lambda d: bz2.compress(d, 9), lambda d: bz2.compress(d, 9)),
    "xz-9": (lambda d: lzma.compress(d, preset=9), _raw_lzma2),
    "zstd-19": (_ZSTD_WHOLE.compress, _ZSTD_LEAN.compress),
    "brotli-11": (lambda d: brotli.compress(d, quality=11), lambda d: brotli.compress(d, quality=11)),
}


@dataclass(frozen=True)
class BaselineSize:
    """A compressor's output size on one input, whole and chunked (bytes; None: not measured)."""

    name: str
    original_bytes: int
    whole_bytes: int
    chunked_bytes: int | None

    @property
    def whole_bpb(self) -> float:
        return 8 * self.whole_bytes / self.original_bytes if self.original_bytes else float("nan")

    @property
    def chunked_bpb(self) -> float:
        if self.chunked_bytes is None or not self.original_bytes:
            return float("nan")
        return 8 * self.chunked_bytes / self.original_bytes


def baseline_sizes(data: bytes, chunks: Iterable[bytes] | None = None,
                   names: Iterable[str] = NAMES) -> list[BaselineSize]:
    """Each compressor's size on `data` whole and, when `chunks` is given, summed over chunks."""
    chunk_list = list(chunks) if chunks is not None else None
    out = []
    for name in names:
        whole, per_chunk = COMPRESSORS[name]
        chunked = sum(len(per_chunk(c)) for c in chunk_list) if chunk_list is not None else None
        out.append(BaselineSize(name, len(data), len(whole(data)), chunked))
    return out


def byte_chunks(data: bytes, token_bytes_per_chunk: list[int]) -> list[bytes]:
    """Cut `data` into consecutive pieces of the given byte lengths (one per LM chunk)."""
    pieces, start = [], 0
    for length in token_bytes_per_chunk:
        pieces.append(data[start : start + length])
        start += length
    return pieces
