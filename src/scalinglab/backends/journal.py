"""Store writes from cluster workers, as journal files the driver applies.

SQLite on a network filesystem corrupts, so on a cluster only the driver writes the results
store, on its own disk. A worker process writes what it would have stored (run rows, points,
artifacts, results) as JSON lines to a journal of its own in a folder on the shared filesystem;
the driver applies new lines in transactions as runs progress and once more when they end.

Applying a journal twice changes nothing (rows are upserts keyed by run, (run, step), path or
(kind, key)), and a line torn by a kill is skipped, so a worker that dies mid-write loses at most
its last line, which its resumed run writes again.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from pathlib import Path
from typing import Any

from scalinglab.store import Store

JOURNAL_ENV = "SCALINGLAB_JOURNAL_DIR"  # set in cluster workers: open_store() journals there
NODE_ENV = "SCALINGLAB_NODE"  # the worker's node, for journal names


class JournalStore:
    """The write side of `Store`, appending to a journal file; reads see an empty store (a
    worker never needs to read what other runs stored)."""

    def __init__(self, folder: str | Path, db: str | Path) -> None:
        # named by node (the cluster's id where the backend set it), process and a random part
        node = os.environ.get(NODE_ENV) or socket.gethostname()
        self.path = Path(folder) / f"{node}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
        self.db = str(db)

    def _write(self, op: str, **fields: Any) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"op": op, "db": self.db, **fields}, sort_keys=True, default=float)
        with open(self.path, "a") as fh:
            fh.write(line + "\n")
            fh.flush()

    def upsert_run(self, run_id: str, **fields: Any) -> None:
        self._write("upsert_run", run_id=run_id, fields=fields)

    def add_point(self, run_id: str, **fields: Any) -> None:
        self._write("add_point", run_id=run_id, fields=fields)

    def add_artifact(self, run_id: str | None, kind: str, path: Path, sha256: str, step: int | None = None) -> None:
        path = Path(path).resolve()
        self._write("add_artifact", run_id=run_id, kind=kind, path=str(path), sha256=sha256,
                    bytes=path.stat().st_size, step=step)

    def drop_artifact(self, path: Path) -> None:
        self._write("drop_artifact", path=str(Path(path).resolve()))

    def put_result(self, kind: str, key: str, data: dict, run_id: str | None = None) -> None:
        self._write("put_result", kind=kind, key=key, data=data, run_id=run_id)

    def get_run(self, run_id: str) -> None:
        return None

    def points(self, run_id: str) -> list[dict]:
        return []

    def runs(self, **_: Any) -> list[dict]:
        return []

    def results(self, kind: str) -> list[dict]:
        return []


class JournalReader:
    """Applies the new lines of every journal in a folder to the store they name (the driver's)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.offsets: dict[Path, int] = {}
        self.stores: dict[str, Store] = {}  # opened once: opening checks the schema

    def apply(self) -> int:
        """Apply what was written since the last call; returns the number of lines applied."""
        applied = 0
        for path in sorted(self.folder.glob("*.jsonl")):
            with open(path, "rb") as fh:
                fh.seek(self.offsets.get(path, 0))
                data = fh.read()
            complete = data[: data.rfind(b"\n") + 1]  # a last line still being written waits
            lines = [json.loads(line) for line in complete.decode().splitlines() if _whole(line)]
            self.offsets[path] = self.offsets.get(path, 0) + len(complete)
            by_db: dict[str, list[dict]] = {}
            for line in lines:
                by_db.setdefault(line["db"], []).append(line)
            for db, ops in by_db.items():
                apply_ops(self.stores.setdefault(db, Store(Path(db))), ops)
            applied += len(lines)
        return applied


def _whole(line: str) -> bool:
    try:
        json.loads(line)
        return True
    except json.JSONDecodeError:  # torn by a kill: the resumed run writes it again
        return False


def apply_ops(store: Store, ops: list[dict]) -> None:
    """Replay journal lines on the store, in order."""
    for op in ops:
        kind = op["op"]
        if kind == "upsert_run":
            store.upsert_run(op["run_id"], **op["fields"])
        elif kind == "add_point":
            store.add_point(op["run_id"], **op["fields"])
        elif kind == "add_artifact":
            store.add_artifact_row(op["run_id"], op["kind"], op["path"], op["sha256"], op["bytes"], op["step"])
        elif kind == "drop_artifact":
            store.drop_artifact(Path(op["path"]))
        elif kind == "put_result":
            store.put_result(op["kind"], op["key"], op["data"], run_id=op["run_id"])
