"""Default hyperparameters that work across sizes without per-size tuning.

The rules, fitted to LR x batch sweeps at 20 tokens/param on the default corpus (docs/LOG.md):
- peak LR = 1e-2 x sqrt(32 / d_model), capped at 2e-2: wider models need smaller steps, roughly
  as 1/sqrt(width) for Adam at these scales (best measured: ~1e-2 at d_model 32, ~6e-3 at 64);
- batch = 8 x sqrt(N) tokens (N non-embedding), rounded to a power-of-two number of sequences,
  at least 4: at small budgets the number of steps matters more than the batch (every sweep
  preferred the smallest batch tried), while larger models tolerate larger batches;
- warmup = 5% of the run's steps, kept between 64 and 256 steps and below a third of the run:
  at a 1M-parameter model's default LR a 16-step warmup cost 0.4 nats at 183 steps (2.17 vs
  1.76 with 64 steps), more than halving the LR did (1.83 at 2.8e-3).
"""

from __future__ import annotations

import math


def default_lr(d_model: int) -> float:
    return min(2e-2, 1e-2 * math.sqrt(32 / d_model))


def default_batch_size(n_params: int, seq_len: int) -> int:
    target_tokens = 8 * math.sqrt(max(n_params, 1))
    sequences = max(4, target_tokens / seq_len)
    return int(2 ** round(math.log2(sequences)))


def default_warmup(total_steps: int) -> int:
    return int(min(256, max(64, round(0.05 * total_steps)), max(1, total_steps // 3)))
