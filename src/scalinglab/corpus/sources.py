"""Corpus sources: where documents come from.

A source yields documents (a name and raw bytes) in a deterministic order, and a content hash
that changes whenever any document's bytes or name change. Splitting, tokenizing and caching all
key off that hash, so a prepared corpus is reused exactly when the data is the same.

Sources
- ``stdlib`` (the default): the running Python's standard library source, ``.py`` files, with
  site-packages and test folders left out unless asked.
- a text file: one file cut into documents of about ``doc_bytes`` at line boundaries (a single
  file has no natural documents, and splits need several);
- a directory: every file matching a glob is one document;
- a JSON-lines file: each record's ``field`` is one document;
- a Parquet file: each row's ``column`` is one document.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from scalinglab.errors import UserError

STDLIB = "stdlib"
TEST_DIRS = {"test", "tests", "idle_test"}


@dataclass(frozen=True)
class Document:
    name: str
    data: bytes


@dataclass
class SourceSpec:
    """What to read. `location` is "stdlib" or a path; the rest apply to some kinds only."""

    location: str = STDLIB
    field: str = "text"  # JSON-lines field or Parquet column
    glob: str = "**/*"  # directory sources
    doc_bytes: int = 8192  # text files are cut into documents of about this size
    include_tests: bool = False  # stdlib: keep test folders
    include_site_packages: bool = False  # stdlib: keep site-packages

    @property
    def kind(self) -> str:
        if self.location == STDLIB:
            return "stdlib"
        path = Path(self.location)
        if path.is_dir():
            return "directory"
        suffix = path.suffix.lower()
        if suffix in {".jsonl", ".ndjson"}:
            return "jsonl"
        if suffix in {".parquet", ".pq"}:
            return "parquet"
        return "text"

    def describe(self) -> dict:
        """The fields that define the documents (and so belong in the cache key)."""
        kind = self.kind
        desc: dict = {"kind": kind, "location": self.location}
        if kind == "stdlib":
            desc |= {"include_tests": self.include_tests, "include_site_packages": self.include_site_packages}
            desc["python"] = platform.python_version()
        elif kind == "directory":
            desc["glob"] = self.glob
        elif kind in {"jsonl", "parquet"}:
            desc["field"] = self.field
        else:
            desc["doc_bytes"] = self.doc_bytes
        return desc


@dataclass
class Source:
    """Documents read from a spec, with their content hash."""

    spec: SourceSpec
    documents: list[Document] = field(repr=False)
    content_hash: str = ""

    @property
    def total_bytes(self) -> int:
        return sum(len(d.data) for d in self.documents)


def read_source(spec: SourceSpec | str) -> Source:
    """Read every document of a source. Raises `UserError` for missing paths or empty corpora."""
    if isinstance(spec, str):
        spec = SourceSpec(location=spec)
    if spec.location != STDLIB:
        path = Path(spec.location)
        if not path.exists():
            raise UserError(f"corpus not found: {path}; give an existing file or directory, or 'stdlib'")
        if path.is_file():
            try:
                with open(path, "rb"):
                    pass
            except OSError as exc:
                raise UserError(f"cannot read corpus {path}: {exc.strerror}; check its permissions") from None
    readers = {
        "stdlib": _read_stdlib,
        "directory": _read_directory,
        "jsonl": _read_jsonl,
        "parquet": _read_parquet,
        "text": _read_text,
    }
    docs = [d for d in readers[spec.kind](spec) if d.data]
    if not docs:
        raise UserError(f"the corpus {spec.location!r} has no non-empty documents; point --corpus at some text")
    digest = hashlib.sha256()
    digest.update(json.dumps(spec.describe(), sort_keys=True).encode())
    for doc in docs:
        digest.update(len(doc.name.encode()).to_bytes(8, "little") + doc.name.encode())
        digest.update(len(doc.data).to_bytes(8, "little") + doc.data)
    return Source(spec=spec, documents=docs, content_hash=digest.hexdigest())


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _read_stdlib(spec: SourceSpec) -> Iterator[Document]:
    root = stdlib_root()
    # sorted(): the file system's order is not deterministic across machines.
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        parts = set(rel.parts[:-1])
        if not spec.include_site_packages and ("site-packages" in parts or "dist-packages" in parts):
            continue
        if not spec.include_tests and parts & TEST_DIRS:
            continue
        try:
            yield Document(rel.as_posix(), path.read_bytes())
        except OSError:
            continue  # an unreadable file in the installation is not the user's corpus problem


def _read_directory(spec: SourceSpec) -> Iterator[Document]:
    root = Path(spec.location)
    paths = sorted(p for p in root.glob(spec.glob) if p.is_file())
    if not paths:
        raise UserError(f"no files match {spec.glob!r} under {root}; pass --glob (e.g. '**/*.txt')")
    for path in paths:
        try:
            yield Document(path.relative_to(root).as_posix(), path.read_bytes())
        except OSError as exc:
            raise UserError(f"cannot read {path}: {exc.strerror}; check its permissions") from None


def _read_text(spec: SourceSpec) -> Iterator[Document]:
    data = Path(spec.location).read_bytes()
    if spec.doc_bytes <= 0:
        raise UserError(f"doc_bytes must be > 0, got {spec.doc_bytes}")
    start, index = 0, 0
    while start < len(data):
        end = min(start + spec.doc_bytes, len(data))
        if end < len(data):
            newline = data.rfind(b"\n", start, end)
            if newline > start:
                end = newline + 1  # cut after a newline when one falls inside the window
        yield Document(f"{Path(spec.location).name}#{index}", data[start:end])
        start, index = end, index + 1


def _read_jsonl(spec: SourceSpec) -> Iterator[Document]:
    path = Path(spec.location)
    seen_field = False
    with open(path, "rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise UserError(f"{path}:{lineno} is not valid JSON; a JSON-lines corpus needs one object per line") from None
            if not isinstance(record, dict) or spec.field not in record:
                continue
            seen_field = True
            value = record[spec.field]
            text = value if isinstance(value, str) else json.dumps(value)
            yield Document(f"{path.name}:{lineno}", text.encode("utf-8", "surrogatepass"))
    if not seen_field:
        raise UserError(f"no record in {path} has the field {spec.field!r}; pass --field with the right name")


def _read_parquet(spec: SourceSpec) -> Iterator[Document]:
    import pyarrow.parquet as pq

    path = Path(spec.location)
    try:
        table = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise UserError(f"cannot read {path} as Parquet ({exc}); check the file") from None
    names = table.schema_arrow.names
    if spec.field not in names:
        raise UserError(f"{path} has no column {spec.field!r} (columns: {', '.join(names)}); pass --field")
    row = 0
    for batch in table.iter_batches(columns=[spec.field]):
        for value in batch.column(0).to_pylist():
            if value is not None:
                data = value if isinstance(value, bytes) else str(value).encode("utf-8")
                yield Document(f"{path.name}:{row}", data)
            row += 1
