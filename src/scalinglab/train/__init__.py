"""Training: schedules, the batch sampler, checkpoints and the resumable loop."""

from scalinglab.train.loop import (
    Diverged,
    Interrupted,
    Reporter,
    RunPlan,
    RunResult,
    evaluate,
    plan_run,
    read_loss_log,
    train_run,
)
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
