"""Device and precision, detected without touching CUDA on machines that have none, and the
ranks of a data-parallel run.

`torch.cuda.is_available()` initialises the driver API on CUDA builds; on a machine without an
NVIDIA driver we never call it, so a CPU run never loads CUDA libraries or waits on them.

A data-parallel run is K processes started by torchrun (`join_ranks` turns its environment into
a `Ranks`, with gloo on CPU and NCCL on CUDA, one GPU per rank). The ranks train one model: each
computes the gradient of its share of the same global batch, `Ranks.average` averages the
gradients (with the loss and the stop requests) in one all-reduce, and rank 0 alone writes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

import torch

from scalinglab.errors import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype: torch.dtype  # autocast dtype for matmuls; parameters stay float32
    threads: int
    rank: int = 0  # this process's rank among `world` data-parallel ranks (0 of 1: one process)
    world: int = 1

    @property
    def autocast(self) -> bool:
        return self.dtype != torch.float32

    def describe(self) -> str:
        ranks = f" x{self.world} ranks" if self.world > 1 else ""
        if self.device.type == "cuda":
            return f"cuda:{torch.cuda.get_device_name(self.device)}{ranks}"
        return f"cpu:{self.threads}thread{ranks}"


def cuda_present() -> bool:
    """True only when this torch was built with CUDA and an NVIDIA driver is visible."""
    if not torch.backends.cuda.is_built():
        return False
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    if not (Path("/proc/driver/nvidia").exists() or Path("/dev/nvidiactl").exists()):
        return False
    return torch.cuda.is_available()


def default_workers() -> int:
    """CPU cores this process may run on (respects affinity and container limits)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def resolved_precision(device: str = "auto", dtype: str = "auto") -> tuple[str, str]:
    """(device type, dtype) that `place` would choose, without touching the device."""
    device_type = ("cuda" if cuda_present() else "cpu") if device == "auto" else device.split(":")[0]
    if dtype == "auto":
        dtype = "bfloat16" if device_type == "cuda" else "float32"
    return device_type, dtype


def place(device: str = "auto", dtype: str = "auto", threads: int = 1, ranks: Ranks | None = None) -> Placement:
    """Resolve device/dtype choices. On CPU also fixes the torch thread count (one per worker).
    A data-parallel rank trains on its own GPU, cuda:LOCAL_RANK."""
    if device == "auto":
        device = "cuda" if cuda_present() else "cpu"
    if device.startswith("cuda") and not cuda_present():
        raise UserError(f"--device {device} asked for, but no CUDA GPU is available here; use --device cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise UserError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")
    if ranks is not None and device.startswith("cuda"):
        if device != "cuda":
            raise UserError(f"--device {device}: data-parallel ranks each train on their own GPU; pass --device cuda")
        device = f"cuda:{ranks.local_rank}"
    dev = torch.device(device)
    asked_auto = dtype == "auto"
    _, dtype = resolved_precision(dev.type, dtype)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    if dev.type == "cpu":
        torch.set_num_threads(threads)
        keep_freed_memory()
    elif asked_auto:
        # TF32 only when the precision is ours to choose: float32 asked for means float32
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    rank, world = (ranks.rank, ranks.world) if ranks is not None else (0, 1)
    return Placement(device=dev, dtype=torch_dtype, threads=threads, rank=rank, world=world)


_allocator_tuned = False  # set once `keep_freed_memory` has applied its settings


def keep_freed_memory() -> bool:
    """Ask glibc's allocator to keep the memory a training step frees for the next step.

    By default glibc hands blocks of a few MB (a small model's logits and their gradient) back to
    the kernel when they are freed and maps them afresh at the next step, paying a page fault
    per 4 kB each time. With a fixed mmap threshold and a high trim threshold such blocks are
    reused instead: +12-19% tokens/s at the 10k and 30k presets (docs/LOG.md); a process's peak
    memory is unchanged. The setting is process-wide and lasts; a no-op without glibc. Returns
    whether it was applied."""
    global _allocator_tuned
    if not _allocator_tuned:
        try:
            import ctypes

            libc = ctypes.CDLL("libc.so.6")
            M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
            # 32 MB is the largest mmap threshold glibc accepts on 64-bit machines
            _allocator_tuned = bool(libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(
                libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))
        except (OSError, AttributeError):
            pass
    return _allocator_tuned


# --- data-parallel ranks ----------------------------------------------------------------------

def launched_ranks() -> int:
    """How many ranks torchrun started this process among (1 when not started by it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


@dataclass(frozen=True)
class Ranks:
    """This process's place among the ranks of one data-parallel run (see the module doc)."""

    rank: int
    world: int
    local_rank: int

    @property
    def lead(self) -> bool:
        """Rank 0: the one that evaluates and writes (checkpoints, metrics, markers, the store)."""
        return self.rank == 0

    def lead_then_follow(self, work: Callable[[], T], follow: Callable[[], T] | None = None) -> T | None:
        """Run `work` on rank 0, then `follow` (if any) on the others once rank 0 has succeeded.
        When rank 0 fails, it raises its error and the others raise `FollowerError` with the
        same message, instead of waiting for a rank that will never come."""
        import torch.distributed as dist

        failure: list[str | None] = [None]
        if self.lead:
            try:
                result = work()
            except BaseException as exc:
                failure[0] = str(exc) or type(exc).__name__
                dist.broadcast_object_list(failure, src=0)
                raise
            dist.broadcast_object_list(failure, src=0)
            return result
        dist.broadcast_object_list(failure, src=0)
        if failure[0] is not None:
            raise FollowerError(failure[0])
        return follow() if follow is not None else None

    def from_lead(self, flag: bool) -> bool:
        """Rank 0's `flag`, on every rank (a decision only rank 0 can take, e.g. a stop rule
        over the evaluations it alone makes)."""
        import torch.distributed as dist

        value = [flag]
        dist.broadcast_object_list(value, src=0)
        return bool(value[0])

    def sync(self) -> None:
        """Wait until every rank gets here."""
        import torch.distributed as dist

        dist.barrier()

    def average(self, model: torch.nn.Module, loss: torch.Tensor, stop: bool) -> tuple[float, bool]:
        """Average the gradients of `model` over the ranks, in place, and return the mean of
        the ranks' losses and whether any rank was asked to stop. One all-reduce of one flat
        buffer: every rank gets the same bits, and a resumed run reduces exactly as one never
        stopped."""
        import torch.distributed as dist

        params = [p for p in model.parameters() if p.requires_grad]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flag = torch.ones(1, device=loss.device) if stop else torch.zeros(1, device=loss.device)
        flat = torch.cat([g.reshape(-1).float() for g in grads] + [loss.detach().float().reshape(1), flag])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for p, g in zip(params, grads):
            p.grad = flat[offset : offset + g.numel()].view_as(g).to(g.dtype)
            offset += g.numel()
        return float(flat[-2]), bool(flat[-1] > 0)


class FollowerError(UserError):
    """Rank 0 failed (its error says why); a follower stops with it and says nothing more."""


def join_ranks(device: str = "auto") -> Ranks | None:
    """Join the process group of a run started by torchrun (None when this process is alone):
    gloo on CPU, NCCL on CUDA, where each rank takes GPU LOCAL_RANK."""
    world = launched_ranks()
    if world <= 1:
        return None
    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device_type, _ = resolved_precision(device)
    if device_type == "cuda":
        per_node, gpus = int(os.environ.get("LOCAL_WORLD_SIZE", world)), torch.cuda.device_count()
        if per_node > gpus:  # every rank refuses alike
            raise UserError(f"{per_node} ranks on this machine but {gpus} GPU(s): one rank per GPU; "
                            f"start at most {gpus}, or pass --device cpu")
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return Ranks(rank=rank, world=world, local_rank=local_rank)


def leave_ranks(ranks: Ranks | None) -> None:
    """Leave the process group `join_ranks` joined."""
    if ranks is not None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
