"""Rich progress bars for long work (training runs, studies, probes)."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from scalinglab.fmt import human
from scalinglab.train.engine import Reporter


class RichReporter(Reporter):
    """A progress bar over a corpus run's tokens with the smoothed loss and tokens/s, and a line
    per evaluation. `batch_tokens`: tokens per step."""

    def __init__(self, batch_tokens: int, console: Console | None = None, label: str = "train") -> None:
        self.console = console or Console(stderr=True)
        self.label = label
        self.batch_tokens = batch_tokens
        self._progress: Progress | None = None
        self._task = None
        self._loss: float | None = None
        self._rate: float | None = None
        self._last_refresh = 0.0

    def start(self, total_steps: int, step: int) -> None:
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[tokens]}/{task.fields[total_tokens]} tok"),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[rate]} tok/s"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self._progress.start()
        total = total_steps * self.batch_tokens
        self._task = self._progress.add_task(
            self.label, total=total_steps, completed=step, tokens=human(step * self.batch_tokens),
            total_tokens=human(total), loss="-", rate="-",
        )

    def step(self, step: int, loss: float, seconds: float) -> None:
        tokens, tokens_per_s = step * self.batch_tokens, self.batch_tokens / max(seconds, 1e-9)
        # exponential moving averages: single steps are noisy
        self._loss = loss if self._loss is None else 0.9 * self._loss + 0.1 * loss
        self._rate = tokens_per_s if self._rate is None else 0.95 * self._rate + 0.05 * tokens_per_s
        now = time.monotonic()
        if self._progress is not None and (now - self._last_refresh > 0.2):
            self._last_refresh = now
            self._progress.update(self._task, completed=step, tokens=human(tokens), loss=f"{self._loss:.3f}",
                                  rate=human(self._rate))

    def point(self, record: dict) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=record["step"], tokens=human(record["tokens"]))
            self._progress.console.print(
                f"  step {record['step']:>7}  tokens {human(record['tokens']):>6}  val {record['val_loss']:.4f} nats"
                f"  {record['val_bpb']:.4f} bpb  train {record['train_loss']:.4f}  gap {record['val_loss'] - record['train_loss']:+.4f}",
                highlight=False,
            )

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
