"""Default hyperparameters that work across sizes without per-size tuning.

The rules (measured on the default corpus; see docs/LOG.md):
- peak LR = 3e-3 x sqrt(128 / d_model), capped at 1e-2: wider models need smaller steps, roughly
  as 1/sqrt(width) for Adam on these scales;
- batch = 16 x sqrt(N) tokens (N non-embedding), rounded to a power-of-two number of sequences,
  at least 4 sequences: the critical batch grows with the model, and small models must keep
  enough steps at small budgets;
- warmup = 5% of the run's steps, kept between 16 and 256 steps.
"""

from __future__ import annotations

import math


def default_lr(d_model: int) -> float:
    return min(1e-2, 3e-3 * math.sqrt(128 / d_model))


def default_batch_size(n_params: int, seq_len: int) -> int:
    target_tokens = 16 * math.sqrt(max(n_params, 1))
    sequences = max(4, target_tokens / seq_len)
    return int(2 ** round(math.log2(sequences)))


def default_warmup(total_steps: int) -> int:
    return int(min(256, max(16, round(0.05 * total_steps))))
