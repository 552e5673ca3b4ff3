"""Every kind of run the engine trains, built small, for the resume/diverge/interrupt tests.

Each kind is `run(kind, out_dir, work, **options)`; `work` is a folder the kind may keep shared
inputs in (a study branch's trunk). Also runnable as a script, so a test can `kill -9` a run:

    python engine_kinds.py KIND OUT WORK CORPUS KILL_AT_STEP
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import replace
from pathlib import Path

import torch

KINDS = ["train", "study-branch", "capacity-fit", "grokking"]


def _corpus_config(corpus: Path):
    from scalinglab.config import ModelSpec, OptimConfig, RunConfig, TrainConfig
    from scalinglab.corpus import CorpusConfig

    return RunConfig(corpus=CorpusConfig(source=str(corpus)), model=ModelSpec(size=None, n_layer=1, d_model=16, n_head=1),
                     optim=OptimConfig(lr=3e-3, warmup=4),
                     train=TrainConfig(tokens=60 * 4 * 32, batch_size=4, seq_len=32, eval_points=3, eval_tokens=1024,
                                       checkpoint_every=0.0))


def run(kind: str, out_dir: Path, work: Path, corpus: Path, **options):
    """Train (or resume) one run of `kind` in `out_dir`; returns the engine's result object."""
    from scalinglab.corpus import prepare_corpus
    from scalinglab.store import open_store
    from scalinglab.train import plan_run, train_run
    from scalinglab.train.schedules import Schedule

    store = work / "store.db"
    if kind == "train":
        cfg = _corpus_config(corpus)
        prepared = prepare_corpus(cfg.corpus)
        return train_run(plan_run(cfg, prepared), prepared, open_store(store), out_dir, resume=True, **options)
    if kind == "study-branch":
        # a constant-LR trunk with a snapshot at step 30, and the cooldown branch from it to step 60
        cfg = _corpus_config(corpus)
        prepared = prepare_corpus(cfg.corpus)
        trunk, trunk_dir = _trunk(corpus, work)
        branch = plan_run(cfg, prepared, kind="branch")
        branch.schedule = Schedule("wsd", total_steps=60, warmup_steps=4, decay_start=30)
        branch.eval_steps = [45, 60]
        branch.parent_run, branch.init_from = trunk.run_id, str(trunk_dir / "snap-30.pt")
        branch.extra = {"init_from_step": 30}
        return train_run(branch, prepared, open_store(store), out_dir, resume=True, **options)
    if kind == "capacity-fit":
        from scalinglab.model import ModelConfig
        from scalinglab.probes.common import FitRecipe, ProbeRecord, fit_sequences, probe_optim

        data = torch.randint(0, 32, (24, 10), generator=torch.Generator().manual_seed(0))
        recipe = FitRecipe(steps=60, optim=probe_optim(lr=1e-2), eval_every=10, batch_size=8, checkpoint_every=0.0)
        return fit_sequences(ModelConfig(n_layer=1, d_model=16, n_head=1, vocab_size=32), data, recipe, out_dir,
                             record=ProbeRecord(store, "capacity", name="capacity test fit"), **options)
    if kind == "grokking":
        from scalinglab.probes.grokking import GrokConfig, train_grokking

        cfg = GrokConfig(p=23, train_frac=0.5, max_epochs=60, eval_every=10, snapshot_every=20, stop_after=-1)
        return train_grokking(cfg, out_dir, db=store, on_step=options.get("on_step"))
    raise ValueError(kind)


def prepare(kind: str, work: Path, corpus: Path) -> None:
    """Train what a kind's run starts from (a branch's trunk), so that a test counts only the
    run's own updates."""
    if kind == "study-branch":
        _trunk(corpus, work)


def _trunk(corpus: Path, work: Path):
    from scalinglab.corpus import prepare_corpus
    from scalinglab.store import open_store
    from scalinglab.train import plan_run, train_run

    cfg = _corpus_config(corpus)
    prepared = prepare_corpus(cfg.corpus)
    trunk = plan_run(replace(cfg, optim=replace(cfg.optim, schedule="constant")), prepared, kind="trunk")
    trunk.snapshot_steps = [30]
    train_run(trunk, prepared, open_store(work / "store.db"), work / "trunk", resume=True)
    return trunk, work / "trunk"


def final_state(out_dir: Path) -> dict:
    from scalinglab.train.checkpoint import load_checkpoint

    return load_checkpoint(Path(out_dir) / "last.pt")


if __name__ == "__main__":
    kind, out, work, corpus, kill_at = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]), int(sys.argv[5])
    from scalinglab.train import engine

    engine.EVAL_CHECKPOINT_GAP = 0.0  # a checkpoint at every evaluation, so the kill finds one

    def kill(step: int, loss: float) -> None:
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    run(kind, out, work, corpus, on_step=kill)
