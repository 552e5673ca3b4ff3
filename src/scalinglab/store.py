"""The results store: one SQLite database per workspace.

Tables
- ``runs``: one row per training run (config, parameter counts by convention, corpus, seeds,
  device, versions, status).
- ``points``: evaluation points of a run (tokens, FLOPs, losses, epoch, schedule phase, wall time).
- ``artifacts``: files a run produced (checkpoints, archives) with their SHA-256.
- ``results``: analysis outputs that are not training points (fits, probe summaries,
  compression benchmarks), as JSON keyed by (kind, key).

Every write is one transaction in WAL mode, so a process killed mid-write leaves the database
intact and every point committed before the kill readable. Several worker processes may write to
one store at once; SQLite serialises them (``busy_timeout``).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from scalinglab.errors import UserError

APP_ID = "scalinglab"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    run_id          TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    kind            TEXT NOT NULL,          -- train | trunk | branch | probe:<name> | ...
    status          TEXT NOT NULL,          -- running | done | diverged | interrupted | failed
    parent_run      TEXT,                   -- a branch's trunk
    group_name      TEXT,                   -- a study or probe this run belongs to
    created         REAL NOT NULL,
    updated         REAL NOT NULL,
    config          TEXT NOT NULL,          -- resolved config as JSON
    n_total         INTEGER,
    n_embedding     INTEGER,
    n_nonembedding  INTEGER,
    param_convention TEXT,                  -- which count "N" means in laws for this run
    flops_per_token REAL,
    corpus_key      TEXT,
    corpus_hash     TEXT,
    tokenizer       TEXT,
    unique_train_tokens INTEGER,
    seed            INTEGER,
    device          TEXT,
    dtype           TEXT,
    versions        TEXT,                   -- JSON: python, torch, scalinglab
    out_dir         TEXT,
    diverged_step   INTEGER,
    message         TEXT
);
CREATE TABLE IF NOT EXISTS points (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id      TEXT NOT NULL REFERENCES runs(run_id),
    step        INTEGER NOT NULL,
    tokens      REAL NOT NULL,              -- training tokens seen (branch: trunk tokens included)
    flops       REAL NOT NULL,              -- training FLOPs spent for this point
    train_loss  REAL,                       -- nats/token on the fixed train subset
    val_loss    REAL,                       -- nats/token on the fixed val set
    val_bpb     REAL,                       -- bits per byte of original text on the val set
    train_bpb   REAL,
    epoch       REAL,                       -- passes over the unique train tokens
    phase       TEXT,                       -- warmup | stable | decay | final
    lr          REAL,
    wall_time   REAL,                       -- seconds of training so far
    tokens_per_s REAL,
    extra       TEXT,                       -- JSON for anything else
    UNIQUE (run_id, step)
);
CREATE TABLE IF NOT EXISTS artifacts (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id   TEXT REFERENCES runs(run_id),
    kind     TEXT NOT NULL,                 -- checkpoint | archive | figure | ...
    path     TEXT NOT NULL,
    sha256   TEXT NOT NULL,
    bytes    INTEGER NOT NULL,
    step     INTEGER,
    created  REAL NOT NULL,
    UNIQUE (path)
);
CREATE TABLE IF NOT EXISTS results (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    kind     TEXT NOT NULL,
    key      TEXT NOT NULL,
    run_id   TEXT,
    created  REAL NOT NULL,
    data     TEXT NOT NULL,                 -- JSON
    UNIQUE (kind, key)
);
CREATE INDEX IF NOT EXISTS points_run ON points(run_id);
CREATE INDEX IF NOT EXISTS runs_group ON runs(group_name);
"""

_RUN_COLUMNS = (
    "run_id name kind status parent_run group_name created updated config n_total n_embedding "
    "n_nonembedding param_convention flops_per_token corpus_key corpus_hash tokenizer "
    "unique_train_tokens seed device dtype versions out_dir diverged_step message"
).split()
_POINT_COLUMNS = (
    "run_id step tokens flops train_loss val_loss val_bpb train_bpb epoch phase lr wall_time "
    "tokens_per_s extra"
).split()


@dataclass
class Store:
    """A handle on one results database. Cheap to create; opens a connection per operation."""

    path: Path

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self._init()

    # -- connection ------------------------------------------------------------------------
    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        """A connection whose block is one transaction: committed on success, rolled back on error."""
        try:
            con = sqlite3.connect(self.path, timeout=60.0)
        except sqlite3.Error as exc:
            raise UserError(f"cannot open the results store {self.path}: {exc}; check the --db path") from None
        try:
            con.row_factory = sqlite3.Row
            con.execute("PRAGMA busy_timeout = 60000")
            with con:
                yield con
        except sqlite3.DatabaseError as exc:
            if "not a database" in str(exc) or "malformed" in str(exc):
                raise UserError(
                    f"{self.path} is not a scalinglab results store ({exc}); pass another --db"
                ) from None
            if "disk is full" in str(exc) or "disk I/O error" in str(exc):
                # the transaction was rolled back: the store holds what it held before
                raise UserError(f"no space left to write the results store {self.path}; free space and rerun "
                                "(nothing already stored is lost)") from None
            raise
        finally:
            con.close()

    def _init(self) -> None:
        if self.path.exists() and self.path.is_dir():
            raise UserError(f"--db {self.path} is a directory; give a file path such as scalinglab.db")
        parent = self.path.parent
        if not parent.exists():
            raise UserError(f"the folder for the results store does not exist: {parent}; create it or pass another --db")
        existed = self.path.exists() and self.path.stat().st_size > 0
        with self.connect() as con:
            con.execute("PRAGMA journal_mode = WAL")
            # One write transaction from the first look to the last meta row, so a process that
            # opens the store meanwhile waits and then sees a complete one.
            con.execute("BEGIN IMMEDIATE")
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if existed and tables and "meta" not in tables:
                raise UserError(
                    f"{self.path} is an SQLite database but not a scalinglab results store; pass another --db"
                )
            if "meta" in tables:
                row = con.execute("SELECT value FROM meta WHERE key='app'").fetchone()
                if row is None or row[0] != APP_ID:
                    raise UserError(f"{self.path} is not a scalinglab results store; pass another --db")
                row = con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
                version = int(row[0]) if row else 0
                if version > SCHEMA_VERSION:
                    raise UserError(
                        f"{self.path} was written by a newer scalinglab (schema {version}); upgrade scalinglab"
                    )
            if "meta" not in tables:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        con.execute(statement)
            con.execute("INSERT OR IGNORE INTO meta VALUES ('app', ?)", (APP_ID,))
            con.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    # -- runs ------------------------------------------------------------------------------
    def upsert_run(self, run_id: str, **fields: Any) -> None:
        """Create the run or update the given fields. JSON-able dicts are stored as JSON."""
        unknown = set(fields) - set(_RUN_COLUMNS)
        if unknown:
            raise ValueError(f"unknown run fields: {sorted(unknown)}")
        now = time.time()
        fields = {k: (json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v) for k, v in fields.items()}
        fields["updated"] = now
        # One statement: two processes creating the same run at once cannot both insert.
        updates = ", ".join(f"{k}=excluded.{k}" for k in fields)
        row = {"created": now, "config": "{}", "status": "running", "name": run_id, "kind": "train", **fields}
        cols = ["run_id", *row]
        marks = ", ".join("?" for _ in cols)
        with self.connect() as con:
            con.execute(
                f"INSERT INTO runs ({', '.join(cols)}) VALUES ({marks}) ON CONFLICT(run_id) DO UPDATE SET {updates}",
                (run_id, *row.values()),
            )

    def get_run(self, run_id: str) -> dict | None:
        with self.connect() as con:
            row = con.execute("SELECT * FROM runs WHERE run_id=?", (run_id,)).fetchone()
        return _decode_run(dict(row)) if row else None

    def runs(self, group: str | None = None, kind: str | None = None) -> list[dict]:
        query, args = "SELECT * FROM runs WHERE 1=1", []
        if group is not None:
            query += " AND group_name=?"
            args.append(group)
        if kind is not None:
            query += " AND kind=?"
            args.append(kind)
        with self.connect() as con:
            rows = con.execute(query + " ORDER BY created", args).fetchall()
        return [_decode_run(dict(r)) for r in rows]

    # -- points ----------------------------------------------------------------------------
    def add_point(self, run_id: str, **fields: Any) -> None:
        """Record one evaluation point. Re-recording the same (run, step) replaces it, so a
        resumed run that re-evaluates a step never duplicates it."""
        unknown = set(fields) - set(_POINT_COLUMNS)
        if unknown:
            raise ValueError(f"unknown point fields: {sorted(unknown)}")
        if "extra" in fields and not isinstance(fields["extra"], (str, type(None))):
            fields["extra"] = json.dumps(fields["extra"], sort_keys=True)
        cols = ["run_id", *fields]
        marks = ", ".join("?" for _ in cols)
        with self.connect() as con:
            con.execute(
                f"INSERT OR REPLACE INTO points ({', '.join(cols)}) VALUES ({marks})",
                (run_id, *fields.values()),
            )

    def points(self, run_id: str) -> list[dict]:
        with self.connect() as con:
            rows = con.execute("SELECT * FROM points WHERE run_id=? ORDER BY step", (run_id,)).fetchall()
        return [dict(r) for r in rows]

    # -- artifacts -------------------------------------------------------------------------
    def add_artifact(self, run_id: str | None, kind: str, path: Path, sha256: str, step: int | None = None) -> None:
        path = Path(path)
        with self.connect() as con:
            con.execute(
                "INSERT OR REPLACE INTO artifacts (run_id, kind, path, sha256, bytes, step, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (run_id, kind, str(path.resolve()), sha256, path.stat().st_size, step, time.time()),
            )

    def add_artifact_row(self, run_id: str | None, kind: str, path: str, sha256: str, size: int,
                         step: int | None) -> None:
        """An artifact as a worker recorded it (its file may be on another node's view of the disk)."""
        with self.connect() as con:
            con.execute(
                "INSERT OR REPLACE INTO artifacts (run_id, kind, path, sha256, bytes, step, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (run_id, kind, path, sha256, size, step, time.time()),
            )

    def drop_artifact(self, path: Path) -> None:
        """Forget an artifact whose file was deleted (e.g. a snapshot no branch needs any more)."""
        with self.connect() as con:
            con.execute("DELETE FROM artifacts WHERE path = ?", (str(Path(path).resolve()),))

    def artifacts(self, run_id: str | None = None) -> list[dict]:
        with self.connect() as con:
            if run_id is None:
                rows = con.execute("SELECT * FROM artifacts ORDER BY id").fetchall()
            else:
                rows = con.execute("SELECT * FROM artifacts WHERE run_id=? ORDER BY id", (run_id,)).fetchall()
        return [dict(r) for r in rows]

    # -- results ---------------------------------------------------------------------------
    def put_result(self, kind: str, key: str, data: dict, run_id: str | None = None) -> None:
        """Store an analysis result (replacing an earlier one with the same kind and key)."""
        with self.connect() as con:
            con.execute(
                "INSERT OR REPLACE INTO results (kind, key, run_id, created, data) VALUES (?, ?, ?, ?, ?)",
                (kind, key, run_id, time.time(), json.dumps(data, sort_keys=True, default=_json_default)),
            )

    def get_result(self, kind: str, key: str) -> dict | None:
        with self.connect() as con:
            row = con.execute("SELECT data FROM results WHERE kind=? AND key=?", (kind, key)).fetchone()
        return json.loads(row[0]) if row else None

    def results(self, kind: str) -> list[dict]:
        with self.connect() as con:
            rows = con.execute("SELECT key, run_id, created, data FROM results WHERE kind=? ORDER BY id", (kind,)).fetchall()
        return [{"key": r["key"], "run_id": r["run_id"], "created": r["created"], **json.loads(r["data"])} for r in rows]


def _json_default(obj: Any) -> Any:
    # numpy scalars and arrays sneak into results; store them as plain numbers and lists.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"cannot store {type(obj).__name__} as JSON")


def _decode_run(row: dict) -> dict:
    for key in ("config", "versions"):
        if row.get(key):
            row[key] = json.loads(row[key])
    return row


def open_store(path: str | Path) -> Store:
    """Open (or create) the results store at `path`. In a cluster worker (where the backend sets
    `SCALINGLAB_JOURNAL_DIR`) writes go to a journal that the driver applies instead
    (`scalinglab.backends.journal`): only the driver writes SQLite, on its own disk."""
    journal_dir = os.environ.get("SCALINGLAB_JOURNAL_DIR")
    if journal_dir:
        from scalinglab.backends.journal import JournalStore

        return JournalStore(journal_dir, Path(path).resolve())  # type: ignore[return-value]
    return Store(Path(path))


def load_points(db: str | Path, group: str | None = None, status: str | None = "done") -> "pd.DataFrame":  # noqa: F821
    """All points joined with their runs, one row per point, as a pandas DataFrame.

    Columns include ``run_id, name, kind, status, group_name, parent_run, n_total, n_embedding,
    n_nonembedding, param_convention, flops_per_token, corpus_hash, tokenizer, step, tokens, flops,
    train_loss, val_loss, val_bpb, epoch, phase, wall_time``. `status` filters runs (None: all).
    """
    import pandas as pd

    path = Path(db)
    if not path.exists():
        raise UserError(f"no results store at {path}; train something first or pass the right --db")
    store = Store(path)
    query = (
        "SELECT p.*, r.name, r.kind, r.status, r.group_name, r.parent_run, r.n_total, r.n_embedding, "
        "r.n_nonembedding, r.param_convention, r.flops_per_token, r.corpus_key, r.corpus_hash, r.tokenizer, "
        "r.unique_train_tokens, r.seed, r.device, r.out_dir "
        "FROM points p JOIN runs r ON p.run_id = r.run_id WHERE 1=1"
    )
    args: list[Any] = []
    if group is not None:
        query += " AND r.group_name=?"
        args.append(group)
    if status is not None:
        query += " AND r.status=?"
        args.append(status)
    with store.connect() as con:
        frame = pd.read_sql_query(query + " ORDER BY r.created, p.step", con, params=args)
    return frame.drop(columns=["id"])


def load_runs(db: str | Path) -> "pd.DataFrame":  # noqa: F821
    """All runs as a DataFrame (config left as JSON text)."""
    import pandas as pd

    path = Path(db)
    if not path.exists():
        raise UserError(f"no results store at {path}; train something first or pass the right --db")
    store = Store(path)
    with store.connect() as con:
        return pd.read_sql_query("SELECT * FROM runs ORDER BY created", con)
