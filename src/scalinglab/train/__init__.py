"""Training: the one engine (`engine`), runs on a corpus (`loop`), schedules, the batch sampler,
checkpoints and run directories."""

from scalinglab.train.engine import Diverged, Interrupted, Reporter, read_loss_log
from scalinglab.train.loop import RunPlan, RunResult, evaluate, plan_run, train_run
from scalinglab.train.schedules import Schedule

__all__ = [
    "Diverged",
    "Interrupted",
    "Reporter",
    "RunPlan",
    "RunResult",
    "Schedule",
    "evaluate",
    "plan_run",
    "read_loss_log",
    "train_run",
]
