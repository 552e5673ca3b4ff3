"""What a run needs (memory, disk) and what the machine has, checked before anything is built.

A run that cannot fit must be refused in one line before a model is allocated: a model of 10^12
parameters asked for by mistake should cost a second, not the machine. The estimates are
deliberately simple and on the generous side:

- weights, gradients and AdamW's two moments: 4 x 4 bytes per parameter (fp32 master weights;
  bf16 autocast keeps them in fp32 too);
- activations kept for the backward pass, per layer and token: 34 x d_model + 5 x heads x seq_len
  bytes at 16-bit precision (Korthikanti et al. 2022), twice that in float32, and the logits with
  their softmax and gradient, 3 x vocab x 4 bytes;
- a fixed runtime overhead per process (the PyTorch runtime, the corpus windows).

What is available: on CPU the smaller of MemAvailable and the cgroup's limit less its usage;
on a GPU the free device memory (asked only when the run is on CUDA, so machines without one
never touch CUDA).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from scalinglab.errors import UserError
from scalinglab.fmt import human
from scalinglab.model import ModelConfig, count_params

PROCESS_OVERHEAD = 400 * 2**20  # bytes: the PyTorch runtime and a run's fixed data, per process
ACTIVATION_BYTES_PER_TOKEN_LAYER = 34  # x d_model, at 16-bit (Korthikanti et al. 2022)


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak bytes of one training process, by part."""

    params: int
    weights: float  # weights + gradients + optimizer state
    activations: float
    overhead: float = PROCESS_OVERHEAD

    @property
    def total(self) -> float:
        return self.weights + self.activations + self.overhead

    def describe(self) -> str:
        return (f"~{gib(self.total)} (weights, gradients and AdamW state {gib(self.weights)}, activations "
                f"{gib(self.activations)})")


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n < 2**40 else f"{n / 2**40:.1f} TiB"


def training_memory(model: ModelConfig, batch_size: int, seq_len: int, *, bf16: bool = False) -> MemoryEstimate:
    """Peak memory of training `model` on batches of `batch_size` x `seq_len` tokens."""
    params = count_params(model).total
    tokens = batch_size * seq_len
    scale = 1 if bf16 else 2  # the 16-bit byte counts, doubled for float32
    per_layer = tokens * (ACTIVATION_BYTES_PER_TOKEN_LAYER * model.d_model + 5 * model.n_head * seq_len)
    activations = model.n_layer * per_layer * scale + 3 * tokens * model.vocab_size * 4
    return MemoryEstimate(params=params, weights=16.0 * params, activations=float(activations))


def available_memory(device: str = "cpu") -> float:
    """Bytes a new process may use now: free device memory on CUDA, else the smaller of
    MemAvailable and the cgroup's remaining limit."""
    if device.startswith("cuda"):
        import torch

        return float(torch.cuda.mem_get_info(torch.device(device))[0])
    limits = [_meminfo_available(), _cgroup_remaining()]
    known = [x for x in limits if x is not None]
    return float(min(known)) if known else float("inf")


def _meminfo_available() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _cgroup_remaining() -> float | None:
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = float(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or float(limit) >= 2**60:  # no limit set
            return None
        return float(limit) - usage
    return None


def check_memory(estimates: dict[str, MemoryEstimate], *, processes: int = 1, device: str = "cpu",
                 available: float | None = None, fix: str = "") -> None:
    """Refuse in one line when the largest run, times the processes sharing the machine (or the
    GPU), does not fit in what is available. `estimates`: a label ("N = 12,384") per run kind."""
    available = available_memory(device) if available is None else available
    label, worst = max(estimates.items(), key=lambda item: item[1].total)
    need = worst.total * processes
    if need <= available:
        return
    sharing = f" x {processes} processes" if processes > 1 else ""
    fits = [k for k, e in estimates.items() if e.total * processes <= available]
    hint = fix or (f"the sizes that fit: {', '.join(fits)}" if fits else "choose a smaller model, batch or sequence length")
    if processes > 1 and worst.total <= available:
        hint += f"; or run with {int(available // worst.total)} worker(s)"
    raise UserError(f"{label} needs {worst.describe()}{sharing} but {gib(available)} is available "
                    f"({'device' if device.startswith('cuda') else 'memory'}); {hint}")


def largest_that_fits(vocab_size: int, seq_len: int, available: float, *, batch_size: int | None = None,
                      bf16: bool = False) -> str:
    """The largest model (non-embedding parameters, in steps of ~sqrt 2) that trains within
    `available`, at `batch_size` or, when None, at the batch the size rule gives it."""
    from scalinglab.model import shape_for_params
    from scalinglab.train.hparams import default_batch_size

    best = None
    for exponent in range(20, 90):  # 2^(k/2) from 1e3 to ~3e13
        shape = shape_for_params(2 ** (exponent / 2), vocab_size=vocab_size)
        n = count_params(shape).non_embedding
        batch = batch_size or default_batch_size(n, seq_len)
        if training_memory(shape, batch, seq_len, bf16=bf16).total > available:
            break
        best = n
    return f"--params {human(best)}" if best else "a smaller batch or sequence length"


# --- disk ----------------------------------------------------------------------------------------------

def checkpoint_bytes(model: ModelConfig) -> float:
    """A checkpoint: fp32 weights and AdamW's two moments (12 bytes per parameter) plus a little."""
    return 12.0 * count_params(model).total + 64 * 1024


def free_disk(path: str | Path) -> float:
    """Free bytes on the filesystem that holds `path` (or its nearest existing parent)."""
    path = Path(path).resolve()
    while not path.exists():
        path = path.parent
    return float(shutil.disk_usage(path).free)


def check_disk(need: float, path: str | Path, what: str) -> None:
    """Refuse in one line when `path`'s filesystem has less free space than `need` bytes."""
    free = free_disk(path)
    if need > free:
        raise UserError(f"{what} will write ~{gib(need)} to {path} but its filesystem has {gib(free)} free; "
                        "free space or choose another --out")

