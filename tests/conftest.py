"""Shared fixtures: a private corpus cache, small generated corpora, and an in-process CLI runner."""

from __future__ import annotations

import errno
import fnmatch
import os
import random
import sys
import tempfile
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test uses a private corpus cache (shared within the session), one torch thread, and
    the CPU even where a GPU is present (subprocesses inherit the hidden GPU too)."""
    cache = tmp_path_factory.getbasetemp() / "corpus-cache"
    monkeypatch.setenv("SCALINGLAB_CACHE", str(cache))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    # `--log` (an in-process CLI call) sends later runs of the process to its sinks: restore it
    monkeypatch.setenv("SCALINGLAB_LOG", "")
    import torch

    torch.set_num_threads(1)


def make_text(n_bytes: int, seed: int = 0) -> str:
    """Text with learnable structure: Python-like lines built from a small grammar."""
    rng = random.Random(seed)
    names = ["alpha", "beta", "gamma", "delta", "value", "count", "item", "total", "index", "result"]
    ops = ["+", "-", "*", "//"]
    lines = []
    size = 0
    while size < n_bytes:
        kind = rng.random()
        a, b = rng.choice(names), rng.choice(names)
        if kind < 0.4:
            line = f"{a} = {b} {rng.choice(ops)} {rng.randint(0, 99)}"
        elif kind < 0.7:
            line = f"for {a} in range({rng.randint(1, 20)}):\n    {b} += {a}"
        else:
            line = f"def {a}_{b}({a}, {b}):\n    return {a} {rng.choice(ops)} {b}"
        lines.append(line)
        size += len(line) + 1
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def text_corpus(tmp_path_factory) -> Path:
    """A ~120 kB structured text file (cut into ~30 documents of 4 kB by the text source)."""
    path = tmp_path_factory.mktemp("corpora") / "code.txt"
    path.write_text(make_text(120_000))
    return path


@pytest.fixture
def run_cli(monkeypatch, capsys):
    """Run `scalinglab ARGS...` in-process; returns (exit code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        from scalinglab.cli import main

        monkeypatch.setattr(sys, "argv", ["scalinglab", *map(str, args)])
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def full_disk(monkeypatch):
    """File names (glob patterns) whose atomic writes fail as on a full filesystem."""
    patterns: list[str] = []
    doomed: set[int] = set()
    real_mkstemp, real_fsync = tempfile.mkstemp, os.fsync

    def mkstemp(suffix=None, prefix=None, dir=None, text=False):
        fd, name = real_mkstemp(suffix=suffix, prefix=prefix, dir=dir, text=text)
        target = (prefix or "").strip(".")
        doomed.discard(fd)  # descriptor numbers are reused: only the file just made counts
        if any(fnmatch.fnmatch(target, p) for p in patterns):
            doomed.add(fd)
        return fd, name

    def fsync(fd: int) -> None:
        if fd in doomed:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(os, "fsync", fsync)
    return patterns
