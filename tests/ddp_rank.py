"""`scalinglab train` as one rank of a data-parallel run, with a fault at a given step, for the
data-parallel tests. Run under torchrun:

    python -m torch.distributed.run --nproc_per_node=2 ddp_rank.py kill STEP -- TRAIN ARGS...
    python -m torch.distributed.run --nproc_per_node=2 ddp_rank.py nan STEP RANK -- TRAIN ARGS...

kill: after update STEP (its checkpoint not yet written) rank 0 SIGKILLs the other ranks,
torchrun and itself: the whole run dies at once, as under `kill -9`.
nan: rank RANK's loss of update STEP is NaN.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import torch
import torch.distributed as dist

from scalinglab.cli import main
from scalinglab.train import engine, loop

mode, at = sys.argv[1], int(sys.argv[2])
args = sys.argv[sys.argv.index("--") + 1 :]

if mode == "kill":
    real_train = engine.train

    def kill_at(step: int, loss: float) -> None:
        if step == at:
            pids = [0] * dist.get_world_size()
            dist.all_gather_object(pids, os.getpid())
            if dist.get_rank() == 0:
                for pid in [*pids[1:], os.getppid(), os.getpid()]:
                    os.kill(pid, signal.SIGKILL)
            time.sleep(60)

    def train(task, spec, out_dir, **options):
        return real_train(task, spec, out_dir, **{**options, "on_step": kill_at})

    engine.train = train
elif mode == "nan":
    rank = int(sys.argv[3])
    real_loss = loop.CorpusTask.loss

    def loss(self, model, step):
        value = real_loss(self, model, step)
        return value * float("nan") if step == at and dist.get_rank() == rank else value

    loop.CorpusTask.loss = loss
else:
    raise SystemExit(f"unknown mode {mode}")

torch.set_num_threads(1)
sys.argv = ["scalinglab", *args]
main()
