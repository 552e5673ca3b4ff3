"""Atomic file writes: a reader sees the old file or the new one, never a torn one.

Each write goes to a uniquely named temporary file in the same folder (so two processes never
share one), is flushed to disk, then renamed over the target in one step.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from scalinglab.errors import UserError

LOW_SPACE = 64 * 2**20  # bytes: below this, a failed write is taken for a full disk


def out_of_space(path: str | Path, exc: BaseException) -> UserError | None:
    """The one-line error for a write to `path` that failed because its filesystem is full (or
    over quota), else None. PyTorch reports a full disk as a RuntimeError ("unexpected pos"), so
    such an error counts when little space is left."""
    full = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if not full and isinstance(exc, RuntimeError):
        try:
            full = shutil.disk_usage(Path(path).parent).free < LOW_SPACE
        except OSError:
            full = False
    if not full:
        return None
    return UserError(f"no space left to write {path}; free space and rerun: a run resumes from its last checkpoint "
                     "and nothing already stored is lost")


@contextmanager
def disk_errors(path: str | Path) -> Iterator[None]:
    """Turn a full disk while writing `path` (appends, which cannot be atomic) into one line."""
    try:
        yield
    except OSError as exc:
        full = out_of_space(path, exc)
        if full is None:
            raise
        raise full from None


@contextmanager
def atomic_open(path: str | Path, suffix: str = ".tmp") -> Iterator[BinaryIO]:
    """A binary file handle whose content appears at `path` only if the block succeeds.

    The temporary file is created on entry (an unwritable folder fails before any work) and gets
    the mode a plain `open` would give (mkstemp makes it private)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        full = out_of_space(path, exc)
        if full is None:
            raise
        raise full from None
    finally:
        Path(tmp).unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path) as fh:
        fh.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, **dumps_kwargs: Any) -> None:
    atomic_write_text(path, json.dumps(obj, **dumps_kwargs))


def read_json(path: str | Path, default: Any = None) -> Any:
    """A JSON file's content, or `default` when it is missing or unreadable (e.g. empty)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return default


def publish_dir(build: Path, final: Path) -> bool:
    """Move a fully built folder into place. Returns False (and drops `build`) when another
    process published the same folder first."""
    try:
        os.rename(build, final)
        return True
    except OSError:
        if not final.exists():
            raise
        shutil.rmtree(build, ignore_errors=True)
        return False
