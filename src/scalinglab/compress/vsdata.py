"""Compression against data: at fixed N, how small each D point's model codes the test split.

A study trains, for each model size N, cooldown branches that end at many data sizes D (store rows
with kind "branch", the study's name as group, points whose `tokens` are D, and each branch's
`out_dir/last.pt`). Each branch is a finished model; coding the held-out test split with it
measures the compressor that D tokens of training made. D is the step of the checkpoint measured
(the run's DONE marker, else its last checkpoint) times the batch's tokens. A trunk given with
`--run` is measured at its current length; it is never cooled down, so its rows are marked
(`cooled` false) and drawn apart. The ideal code length (-sum log2 p with
the compressor's chunking) comes from the plain forward; optionally the real archive is written
too, which adds the coder's overhead (about 0.1%) at the incremental path's speed.

Every (run, data, chunking) result is stored as `compress-vs-data`, and found there rather than
computed again, so an interrupted analysis resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from scalinglab.compress import DEFAULT_BATCH
from scalinglab.compress.archive import compress_bytes, load_compressor
from scalinglab.compress.baselines import baseline_sizes
from scalinglab.compress.lm import deterministic, ideal_code_length
from scalinglab.compress.runs import RunInfo, run_info
from scalinglab.corpus.prepare import split_bytes
from scalinglab.errors import UserError
from scalinglab.model import ModelConfig, count_params
from scalinglab.train.rundir import read_marker

KIND = "compress-vs-data"


@dataclass(frozen=True)
class Target:
    """One model to measure: its run and, from its checkpoint, N and D."""

    info: RunInfo
    n: int  # non-embedding parameters
    d: int  # training tokens (a branch counts its trunk's)
    step: int  # the step of the checkpoint measured
    final: bool  # the last step of a fixed-length run: its id alone names the model

    @property
    def cooled(self) -> bool:
        """Whether the learning rate was decayed before this checkpoint (a trunk's never is)."""
        schedule = self.info.train.get("schedule")
        schedule = schedule.get("kind") if isinstance(schedule, dict) else schedule
        return self.final and self.info.config.get("kind") != "trunk" and schedule != "constant"


def _checkpoint_step(info: RunInfo) -> tuple[int, bool]:
    """The step of the run's last.pt, and whether it ends a fixed-length run. Trunks record no
    total_steps (a longer study extends them), so the step comes from the DONE marker, or else
    from the checkpoint itself."""
    done = read_marker(info.out_dir, "DONE")  # None when absent or unreadable: the checkpoint says
    step = done.get("step") if isinstance(done, dict) else None
    if not isinstance(step, int):
        from scalinglab.train.checkpoint import load_checkpoint

        try:
            step = int(load_checkpoint(info.out_dir / "last.pt")["step"])
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{info.out_dir / 'last.pt'} records no training step; give a scalinglab run") from None
    total = info.train.get("total_steps")
    return step, done is not None and total is not None and step == int(total)


def nearest_size(wanted: float, sizes: Sequence[int]) -> int:
    """The size in `sizes` nearest to `wanted` on a log scale (a study's sizes are spaced by ratios)."""
    return min(sizes, key=lambda s: abs(math.log(s / wanted)))


def _targets(store, group: str | None, run_dirs: Sequence[str | Path] | None, n: int | None) -> list[Target]:
    if run_dirs:
        infos = [run_info(d) for d in run_dirs]
    else:
        if store is None or group is None:
            raise UserError("give a study group (--group) with a results store, or run directories (--run)")
        rows = [r for r in store.runs(group=group, kind="branch") if r["status"] == "done"]
        if not rows:
            raise UserError(f"no finished branch runs in group {group!r}; run the study first or pass --run DIR")
        infos = [run_info(r["out_dir"]) for r in rows]
    targets = []
    for info in infos:
        if not (info.out_dir / "last.pt").exists():
            raise UserError(f"{info.out_dir} has no last.pt; finish the run first")
        n_run = count_params(ModelConfig(**info.config["model"])).non_embedding
        step, final = _checkpoint_step(info)
        targets.append(Target(info, n_run, step * info.batch_tokens, step, final))
    if n is not None:
        sizes = sorted({t.n for t in targets})
        chosen = nearest_size(n, sizes)
        if abs(math.log(chosen / n)) > math.log(2):  # more than 2x off: the user meant a size the runs lack
            raise UserError(f"no run has N near {n:,.0f} non-embedding parameters (within 2x); the runs have "
                            f"{', '.join(f'{s:,}' for s in sizes)}")
        targets = [t for t in targets if t.n == chosen]
    return sorted(targets, key=lambda t: (t.n, t.d))


def read_input(path: Path, max_bytes: int | None) -> bytes:
    """The bytes of a user's file to code (a prefix of `max_bytes`), refusing what cannot be read."""
    if not path.is_file():
        raise UserError(f"--input {path} is not a file; give a text file to compress")
    try:
        data = path.read_bytes()[: max_bytes or None]
    except OSError as exc:
        raise UserError(f"cannot read --input {path}: {exc.strerror}") from None
    if not data:
        raise UserError(f"--input {path} is empty; nothing to compress")
    return data


OVERLAP_WINDOW = 64  # bytes: a window this long found verbatim in the training text is no coincidence


def training_overlap(data: bytes, train: bytes, windows: int = 200) -> float:
    """The share of `windows` evenly spaced 64-byte windows of `data` found verbatim in `train`:
    near 0 for text the model never saw, near 1 for a copy of its training data."""
    if len(data) < OVERLAP_WINDOW or not train:
        return 0.0
    starts = sorted({int(i) for i in np.linspace(0, len(data) - OVERLAP_WINDOW, num=min(windows, len(data)))})
    found = sum(data[i : i + OVERLAP_WINDOW] in train for i in starts)
    return found / len(starts)


def compression_vs_data(store=None, group: str | None = None, run_dirs: Sequence[str | Path] | None = None,
                        *, n: int | None = None, split: str = "test", max_bytes: int | None = None,
                        archive: bool = False, chunk_size: int | None = None, batch_size: int = DEFAULT_BATCH,
                        cache_dir: Path | None = None, input_path: str | Path | None = None,
                        progress: Callable[[str], None] | None = None) -> "pd.DataFrame":  # noqa: F821
    """One row per (N, D): the code length of the `split` (or of the user's file `input_path`)
    under the model trained on D tokens (−log2 p, and optionally the real archive's size), with
    gzip -9 and xz -9 of the same bytes.

    Runs come from a study `group` in `store` (branch runs) or from `run_dirs`; `n` keeps the
    model size nearest to it. `max_bytes` measures a prefix (quicker, for tests and previews). A
    file's rows carry `train_overlap`: the share of its 64-byte windows found verbatim in the
    model's training split (near 0 for text the model never saw).
    """
    import pandas as pd

    targets = _targets(store, group, run_dirs, n)
    given = read_input(Path(input_path), max_bytes) if input_path is not None else None
    source = f"file:{Path(input_path).name}" if input_path is not None else split
    data_cache: dict[str, tuple[bytes, dict, float | None]] = {}  # a study's runs share one corpus: read it once
    rows = []
    for target in targets:
        info = target.info
        corpus_id = json.dumps([info.config["corpus"], info.config.get("corpus_key")], sort_keys=True)
        if corpus_id not in data_cache:
            overlap = None
            if given is None:
                data = split_bytes(info.corpus(cache_dir), split)[: max_bytes or None]
            else:
                data = given
                overlap = training_overlap(data, split_bytes(info.corpus(cache_dir), "train"))
            if not data:
                raise UserError(f"the {split} split is empty; nothing to compress")
            classical = {b.name: b.whole_bpb for b in baseline_sizes(data, None, ["gzip-9", "xz-9"])}
            data_cache[corpus_id] = (data, classical, overlap)
        data, classical, overlap = data_cache[corpus_id]
        chunk = chunk_size or int(info.train["seq_len"])  # the compressor's default: the training context
        data_hash = hashlib.sha256(data).hexdigest()[:16]
        # a trunk or an unfinished run keeps its id as it trains on: the step names the model
        model_id = info.run_id if target.final else f"{info.run_id}@{target.step}"
        key = f"{model_id}:{source}:{data_hash}:c{chunk}:{'archive' if archive else 'ideal'}"
        row = store.get_result(KIND, key) if store is not None else None
        if row is None:
            if progress:
                progress(f"N={target.n:,} D={target.d:,}")
            comp = load_compressor(info.out_dir)
            tokens = comp.tokenize(data)
            with deterministic(1):
                bits = ideal_code_length(comp.model, tokens, chunk, comp.prefix_token, batch_size=16)
            row = {
                "run_id": info.run_id, "group": group, "out_dir": str(info.out_dir), "kind": info.config.get("kind"),
                "step": target.step, "cooled": target.cooled, "n": target.n, "d": target.d,
                "tokens_per_param": target.d / target.n, "split": source, "bytes": len(data), "tokens": len(tokens),
                "train_overlap": overlap,
                "chunk_size": chunk, "ideal_bits": bits, "ideal_bpb": bits / len(data),
                "gzip-9_bpb": classical["gzip-9"], "xz-9_bpb": classical["xz-9"],
                "archive_bytes": None, "archive_bpb": math.nan,
            }
            if archive:
                packed, _ = compress_bytes(comp, data, chunk_size=chunk, batch_size=batch_size)
                row["archive_bytes"] = len(packed)
                row["archive_bpb"] = 8 * len(packed) / len(data)
            if store is not None:
                store.put_result(KIND, key, row, run_id=info.run_id)
        # results stored before these columns existed
        rows.append({"kind": info.config.get("kind"), "step": target.step, "cooled": target.cooled, **row})
    return pd.DataFrame(rows)
