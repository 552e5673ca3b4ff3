"""Learning-rate schedules as pure functions of the step.

Every schedule is linear warmup, then a body:
- constant: hold the peak (a WSD trunk is this);
- cosine: half a cosine from the peak down to `min_lr_frac` x peak at `total_steps`;
- wsd (warmup-stable-decay): hold the peak until `decay_start`, then cool down to zero over
  `total_steps - decay_start` steps with the chosen shape. Hägele et al. 2024 found the 1-sqrt
  shape over 20% of the run matches cosine.

A cooldown branch of a trunk is a `Schedule(kind="wsd", decay_start=branch_start, ...)`: its
steps before `decay_start` are the trunk's own, so trunk and branch agree on every shared step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    kind: str  # constant | cosine | wsd
    total_steps: int
    warmup_steps: int
    decay_start: int | None = None  # wsd only
    shape: str = "1-sqrt"  # wsd cooldown shape: 1-sqrt | linear | cosine
    min_lr_frac: float = 0.1  # cosine floor

    def multiplier(self, step: int) -> float:
        """LR multiplier (0..1) for the update that takes the model from `step` to `step + 1`."""
        if self.warmup_steps > 0 and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        if self.kind == "cosine":
            span = max(1, self.total_steps - self.warmup_steps)
            progress = min(1.0, (step - self.warmup_steps) / span)
            return self.min_lr_frac + (1 - self.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress))
        if self.kind == "wsd":
            start = self.total_steps if self.decay_start is None else self.decay_start
            if step < start:
                return 1.0
            span = max(1, self.total_steps - start)
            # progress reaches 1 on the last update, so the final weights are fully cooled
            progress = min(1.0, (step - start + 1) / span)
            return cooldown_factor(progress, self.shape)
        raise ValueError(f"unknown schedule {self.kind!r}")

    def phase(self, step: int) -> str:
        if step < self.warmup_steps:
            return "warmup"
        if self.kind == "wsd" and self.decay_start is not None and step >= self.decay_start:
            return "decay"
        if self.kind == "cosine":
            return "decay"
        return "stable"


def cooldown_factor(progress: float, shape: str) -> float:
    """LR multiplier at `progress` (0..1) through a cooldown."""
    if shape == "1-sqrt":
        return 1.0 - math.sqrt(progress)
    if shape == "linear":
        return 1.0 - progress
    if shape == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    raise ValueError(f"unknown cooldown shape {shape!r}")
