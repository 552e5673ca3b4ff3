"""Training batches as a pure function of the step.

The train split is cut into windows of `seq_len + 1` tokens (inputs and shifted targets). Each
epoch visits every window once in an order drawn from (seed, epoch), after shifting all window
boundaries by a per-epoch offset so that repeated epochs do not see identical windows. Batch `s`
is windows `s*B .. s*B+B-1` of that endless sequence of epochs.

Because a batch depends only on the step, resuming needs no sampler state beyond the step,
cooldown branches continue the trunk's data stream exactly, and any run can say how many epochs
it has made over the unique tokens. `max_unique_tokens` restricts training to a prefix of the
split (for repeated-data experiments).
"""

from __future__ import annotations

import numpy as np
import torch

from scalinglab.errors import UserError


class BatchSampler:
    def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, seed: int, max_unique_tokens: int | None = None) -> None:
        if max_unique_tokens is not None:
            tokens = tokens[: int(max_unique_tokens)]
        self.tokens = tokens
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        # One window fewer than fits, so that every epoch offset keeps all windows in range.
        self.windows_per_epoch = (len(tokens) - 1) // seq_len - 1
        if self.windows_per_epoch < 1:
            raise UserError(
                f"the train split has {len(tokens)} tokens, too few for sequences of {seq_len}; "
                "lower --seq-len or give a larger corpus"
            )
        self._epoch_cache: tuple[int, int, np.ndarray] | None = None

    @property
    def unique_tokens(self) -> int:
        return len(self.tokens)

    def epochs_at(self, step: int) -> float:
        """Passes over the train windows completed after `step` updates."""
        return step * self.batch_size / self.windows_per_epoch

    def _epoch(self, epoch: int) -> tuple[int, np.ndarray]:
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            offset = int(rng.integers(0, self.seq_len))
            order = rng.permutation(self.windows_per_epoch)
            self._epoch_cache = (epoch, offset, order)
        return self._epoch_cache[1], self._epoch_cache[2]

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets), each (B, T) int64, for update number `step`."""
        rows = self.rows(step)
        return rows[:, :-1], rows[:, 1:]

    def rows(self, step: int) -> torch.Tensor:
        """The windows of update `step` as (B, T+1) int64 rows."""
        T = self.seq_len
        rows = np.empty((self.batch_size, T + 1), dtype=np.int64)
        first = step * self.batch_size
        for i in range(self.batch_size):
            epoch, index = divmod(first + i, self.windows_per_epoch)
            offset, order = self._epoch(epoch)
            start = offset + int(order[index]) * T
            rows[i] = self.tokens[start : start + T + 1]
        return torch.from_numpy(rows)

    def first_windows(self, count: int) -> torch.Tensor:
        """The first `count` windows of the training stream (n, T+1): a fixed train subset that
        a run has trained on once it is past step ceil(count / B)."""
        steps = -(-count // self.batch_size)
        return torch.cat([self.rows(s) for s in range(steps)])[:count]


def fixed_windows(tokens: np.ndarray, seq_len: int, max_tokens: int) -> torch.Tensor:
    """A fixed evaluation set: non-overlapping windows of `seq_len + 1`, spread evenly over the
    split, holding about `max_tokens` predicted tokens (0: all of them). Returns (n, T+1) int64."""
    n_all = (len(tokens) - 1) // seq_len
    if n_all < 1:
        raise UserError(f"a split of {len(tokens)} tokens is too short for sequences of {seq_len}; lower --seq-len")
    n = n_all if max_tokens <= 0 else max(1, min(n_all, max_tokens // seq_len))
    starts = (np.linspace(0, n_all - 1, n).round().astype(np.int64)) * seq_len
    rows = np.stack([np.asarray(tokens[s : s + seq_len + 1], dtype=np.int64) for s in starts])
    return torch.from_numpy(rows)
