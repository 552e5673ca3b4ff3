"""A run directory's mechanics, shared by every trainer (the main loop and the probes' fits).

- `claim_directory`: make a folder one run's home, refusing to mix runs (config.json compares);
- `exclusive`: a lock, so two processes never train the same run at once;
- `stop_requests`: SIGINT/SIGTERM become a flag checked between steps (a step is never torn);
- `write_marker` / `read_marker`: DONE and DIVERGED files, written atomically;
- `versions`: what to record about the software.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from scalinglab import __version__
from scalinglab.config import describe_changes
from scalinglab.errors import UserError
from scalinglab.fsutil import atomic_write_json, read_json


class RunBusy(UserError):
    """Another process holds the run directory."""


def claim_directory(out_dir: Path, config: dict, *, resume: bool = True, what: str = "run",
                    fix: str = "pass another --out") -> None:
    """Make `out_dir` the home of the run described by `config`.

    A folder holding the same config is this run's (continuing it needs `resume` unless it is
    finished); one holding another config, or anything that is not a run, is refused.
    """
    out_dir = Path(out_dir)
    config_path = out_dir / "config.json"
    wanted = json.loads(json.dumps(config, sort_keys=True))
    if config_path.exists():
        old = read_json(config_path)
        if old != wanted:
            raise UserError(f"{out_dir} holds a {what} with a different config: {describe_changes(old or {}, wanted)}; "
                            f"give the options it was started with to continue it, or {fix}")
        if not resume and not (out_dir / "DONE").exists():
            raise UserError(f"{out_dir} already holds this {what}; pass --resume to continue it, or {fix}")
        return
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {out_dir}: {exc.strerror}; {fix}") from None
    if any(p.name != ".lock" for p in out_dir.iterdir()):
        raise UserError(f"{out_dir} is not empty and holds no scalinglab {what}; {fix}")
    atomic_write_json(config_path, wanted, indent=2, sort_keys=True)


@contextmanager
def exclusive(out_dir: Path) -> Iterator[None]:
    """Hold the run directory's lock for the duration of the block (an orphaned worker of a
    killed job may still be finishing the same run)."""
    import fcntl

    with open(Path(out_dir) / ".lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunBusy(f"{out_dir} is being trained by another process; wait for it or stop it") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextmanager
def stop_requests() -> Iterator[dict]:
    """Turn SIGINT/SIGTERM into `flag["stop"]`, checked by the loop between steps. A second
    Ctrl-C stops at once."""
    flag = {"stop": False}

    def handler(signum, frame):
        if flag["stop"] and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag["stop"] = True

    previous = {}
    if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def write_marker(out_dir: Path, name: str, info: dict[str, Any]) -> None:
    atomic_write_json(Path(out_dir) / name, info)


def read_marker(out_dir: Path, name: str) -> dict | None:
    """A marker's content; None when absent. A marker left empty by an old crash counts as absent."""
    return read_json(Path(out_dir) / name)


def versions() -> dict:
    import numpy as np
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "scalinglab": __version__,
            "numpy": np.__version__}
