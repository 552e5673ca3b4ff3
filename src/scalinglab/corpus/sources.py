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
- a Parquet file: each row's ``column`` is one document;
- a Hugging Face data set (``hf:NAME[:CONFIG]``): each record's ``field`` in ``split`` is one
  document, up to ``max_bytes``. NAME is a hub name (streamed, never downloaded whole), a folder
  written by ``save_to_disk``, or a folder of parquet/json shards in the hub layout; a
  ``save_to_disk`` folder is recognised without the ``hf:`` prefix too. Reading one needs the
  ``datasets`` package (``pip install 'scalinglab[hf]'``).
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
HF_PREFIX = "hf:"
HF_TIMEOUT = 10.0  # seconds to wait for the hub before saying it cannot be reached
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
    split: str = "train"  # Hugging Face data sets: the split to read
    max_bytes: int | None = None  # Hugging Face data sets: stop after the document that reaches this size

    @property
    def kind(self) -> str:
        if self.location == STDLIB:
            return "stdlib"
        if self.location.startswith(HF_PREFIX):
            return "hf"
        path = Path(self.location)
        if path.is_dir():
            return "hf" if _saved_dataset(path) else "directory"
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
        elif kind == "hf":
            desc |= {"field": self.field, "split": self.split, "max_bytes": self.max_bytes}
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
    if spec.kind == "hf":
        pass  # checked as it is opened
    elif spec.location != STDLIB:
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
        "hf": _read_hf,
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


# --- Hugging Face data sets ---------------------------------------------------------------------

def _saved_dataset(path: Path) -> bool:
    """A folder written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`."""
    return (path / "dataset_dict.json").is_file() or ((path / "state.json").is_file()
                                                      and (path / "dataset_info.json").is_file())


@dataclass(frozen=True)
class HFTarget:
    """Where an ``hf:`` source points: a local folder (saved or shards) or a hub name."""

    name: str
    config: str | None
    local: Path | None

    @property
    def label(self) -> str:
        return self.name + (f":{self.config}" if self.config else "")


def hf_target(location: str) -> HFTarget:
    """Parse ``hf:NAME[:CONFIG]`` (or a saved folder's path)."""
    rest = location.removeprefix(HF_PREFIX)
    if not rest:
        raise UserError("--corpus hf: needs a data set, e.g. hf:HuggingFaceFW/fineweb-edu:sample-10BT or hf:./my_dataset")
    if Path(rest).exists():
        return HFTarget(rest, None, Path(rest))
    name, _, config = rest.partition(":")
    if Path(name).exists():
        return HFTarget(name, config or None, Path(name))
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise UserError(f"no data set folder at {name}; give an existing folder or a hub name (OWNER/NAME)")
    return HFTarget(name, config or None, None)


def _datasets():
    try:
        import datasets
    except ImportError:
        raise UserError("reading a Hugging Face data set needs the datasets package, which is not installed; "
                        "install it with: pip install 'scalinglab[hf]'") from None
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    return datasets


def hub_revision(target: HFTarget) -> str:
    """The hub's current commit of a remote data set (a short timeout; one line when the hub cannot
    be reached or does not know the name)."""
    import os

    _datasets()
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        raise UserError(f"cannot reach the Hugging Face hub for {target.label}: HF_HUB_OFFLINE is set; "
                        "save the data set to a folder with save_to_disk and give that folder")
    try:
        info = HfApi().dataset_info(target.name, timeout=HF_TIMEOUT)
    except GatedRepoError:
        raise UserError(f"the data set {target.name} is gated; accept its terms on the hub and log in "
                        "(huggingface-cli login), or give a local copy") from None
    except RepositoryNotFoundError:
        raise UserError(f"no data set {target.name!r} on the Hugging Face hub; check the name "
                        "(OWNER/NAME), or give a local folder") from None
    except Exception as exc:  # requests/httpx raise many types for a network that is down
        raise UserError(f"cannot reach the Hugging Face hub for {target.label} ({type(exc).__name__}); check the "
                        "network, or give a local folder saved with save_to_disk") from None
    return info.sha or "unknown"


def _open_hf(spec: SourceSpec):
    """The records of the split, as an iterable of dicts, and the column names."""
    datasets = _datasets()
    target = hf_target(spec.location)
    try:
        if target.local is not None and _saved_dataset(target.local):
            data = datasets.load_from_disk(str(target.local))
            if isinstance(data, datasets.DatasetDict):
                if spec.split not in data:
                    raise UserError(f"{target.name} has no split {spec.split!r} (splits: {', '.join(data)}); pass --split")
                data = data[spec.split]
            elif spec.split != "train" and data.split is not None and str(data.split) != spec.split:
                raise UserError(f"{target.name} holds the split {data.split!r} only; pass --split {data.split}")
        elif target.local is not None:
            data = datasets.load_dataset(str(target.local), target.config, split=spec.split, streaming=True)
        else:
            revision = hub_revision(target)
            data = datasets.load_dataset(target.name, target.config, split=spec.split, streaming=True,
                                         revision=revision)
    except UserError:
        raise
    except (ValueError, KeyError) as exc:  # unknown split or config, or files datasets cannot read
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot read {target.label} split {spec.split!r}: {first[:300]}; check --split and the "
                        "config (hf:NAME:CONFIG)") from None
    except Exception as exc:  # datasets and the hub client raise many types
        raise UserError(f"cannot read the data set {target.label} ({type(exc).__name__}); check the name, or give a "
                        "folder saved with save_to_disk") from None
    columns = list(data.column_names or (data.features or {}).keys())
    return data, columns, target


def _read_hf(spec: SourceSpec) -> Iterator[Document]:
    if spec.max_bytes is not None and spec.max_bytes <= 0:
        raise UserError(f"--max-bytes must be > 0, got {spec.max_bytes}")
    data, columns, target = _open_hf(spec)
    if columns and spec.field not in columns:
        raise UserError(f"{target.label} has no field {spec.field!r} (fields: {', '.join(columns)}); pass --field")
    total = 0
    if hasattr(data, "select_columns"):
        data = data.select_columns([spec.field])
    for index, record in enumerate(data):
        if spec.field not in record:
            raise UserError(f"{target.label} has no field {spec.field!r}; pass --field")
        value = record[spec.field]
        if value is None:
            continue
        text = value if isinstance(value, (str, bytes)) else json.dumps(value)
        blob = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
        yield Document(f"{spec.split}:{index}", blob)
        total += len(blob)
        if spec.max_bytes is not None and total >= spec.max_bytes:
            break
