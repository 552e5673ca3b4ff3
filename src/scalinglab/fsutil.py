"""Atomic file writes: a reader sees the old file or the new one, never a torn one.

Each write goes to a uniquely named temporary file in the same folder (so two processes never
share one), is flushed to disk, then renamed over the target in one step.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
