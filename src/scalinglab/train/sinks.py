"""Live curves: every evaluation of a run also goes to TensorBoard and/or W&B (offline).

The store stays the source of truth; a sink mirrors the points the engine records, at the moment
it records them (with each checkpoint), so a sink never holds a point that a resume would redo.
Each run writes its own event directory inside its run directory:

    <run dir>/tb/        TensorBoard events (`tensorboard --logdir study/<name>` shows every run)
    <run dir>/wandb/     a W&B offline run (`wandb sync` uploads it later, if ever)

Which sinks a run uses is `RunSpec.log`; left unset, it is `$SCALINGLAB_LOG` (comma-separated),
which the CLI's `--log` sets so that every worker process a command starts inherits it.

Values are the numbers of the store point (the metrics line when the run stores none): val loss,
bits per byte, train loss, LR, tokens, FLOPs, tokens/s..., with the entries of "extra" under
`extra/`. TensorBoard scalars are written in double precision, so they read back equal to the
store's values.
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path
from typing import Sequence

from scalinglab.errors import UserError

LOG_ENV = "SCALINGLAB_LOG"
SINKS = ("tensorboard", "wandb")
_NEEDS = {"tensorboard": ("tensorboard", "TensorBoard"), "wandb": ("wandb", "W&B")}


def parse_log(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """The sinks named by `--log` ('tensorboard', 'tensorboard,wandb', 'none'); refuses an unknown
    name or one whose package is not installed, in one line naming the extra."""
    if text is None:
        return ()
    parts = text.split(",") if isinstance(text, str) else list(text)
    names: list[str] = []
    for part in parts:
        name = part.strip().lower()
        if name in ("", "none"):
            continue
        if name not in SINKS:
            raise UserError(f"--log: unknown sink {part.strip()!r}; use tensorboard, wandb or both (tensorboard,wandb)")
        module, label = _NEEDS[name]
        if importlib.util.find_spec(module) is None:
            raise UserError(f"--log {name} needs {label}, which is not installed; install it with: "
                            f"pip install 'scalinglab[{name}]'")
        if name not in names:
            names.append(name)
    return tuple(names)


def use_log(names: Sequence[str]) -> None:
    """Send the runs of this process, and of the worker processes it starts, to these sinks."""
    if names:
        os.environ[LOG_ENV] = ",".join(names)
    else:
        os.environ.pop(LOG_ENV, None)


def requested() -> tuple[str, ...]:
    """The sinks `$SCALINGLAB_LOG` names."""
    return parse_log(os.environ.get(LOG_ENV))


def scalars(point: dict) -> dict[str, float]:
    """The finite numbers of a point, by tag (nested dicts as `key/inner`), without the step."""
    out: dict[str, float] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}{key}/", inner)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[prefix[:-1]] = float(value)

    for key, value in point.items():
        if key not in ("step", "run_id"):
            walk(f"{key}/", value)
    return out


class Sinks:
    """The open sinks of one run: `write(step, values)` after each recorded evaluation."""

    def __init__(self, names: Sequence[str], out_dir: Path, *, run_id: str, name: str | None = None,
                 group: str | None = None, config: dict | None = None) -> None:
        self.sinks: list = []
        try:
            for sink in names:
                if sink == "tensorboard":
                    self.sinks.append(_TensorBoard(Path(out_dir) / "tb"))
                elif sink == "wandb":
                    self.sinks.append(_Wandb(Path(out_dir), run_id=run_id, name=name, group=group, config=config))
        except BaseException:
            self.close()
            raise

    def write(self, step: int, values: dict[str, float]) -> None:
        for sink in self.sinks:
            sink.write(step, values)

    def flush(self) -> None:
        for sink in self.sinks:
            sink.flush()

    def close(self) -> None:
        while self.sinks:
            self.sinks.pop().close()


class _TensorBoard:
    def __init__(self, log_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("--log tensorboard needs TensorBoard, which is not installed; install it with: "
                            "pip install 'scalinglab[tensorboard]'") from None
        self.writer = SummaryWriter(log_dir=str(log_dir), max_queue=1000, flush_secs=3600)

    def write(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, global_step=step, new_style=True, double_precision=True)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _Wandb:
    """A W&B run in offline mode: never the network; `wandb sync <run dir>/wandb/offline-run-*`
    uploads it when the user chooses to."""

    def __init__(self, out_dir: Path, *, run_id: str, name: str | None, group: str | None, config: dict | None) -> None:
        os.environ["WANDB_MODE"] = "offline"  # also for any W&B code the run's process starts later
        os.environ.setdefault("WANDB_SILENT", "true")
        try:
            import wandb
        except ImportError:
            raise UserError("--log wandb needs W&B, which is not installed; install it with: "
                            "pip install 'scalinglab[wandb]'") from None
        # No fixed W&B id: a run killed with -9 can leave W&B's service holding its id, and the
        # resumed process would be refused. Each process of a run is its own W&B run, named after it.
        try:
            self.run = wandb.init(mode="offline", dir=str(out_dir), project="scalinglab", name=name or run_id,
                                  group=group, config=config or {}, reinit="create_new",
                                  settings=wandb.Settings(console="off", silent=True))
        except Exception as exc:  # the store is the record: a sink that cannot start must not stop the run
            import sys

            print(f"warning: W&B could not start for {run_id} ({type(exc).__name__}: {exc}); "
                  "training goes on, the results store has every point", file=sys.stderr)
            self.run = None

    def write(self, step: int, values: dict[str, float]) -> None:
        if self.run is not None:
            self.run.log(values, step=step)

    def flush(self) -> None: ...

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()

