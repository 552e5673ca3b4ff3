"""Device and precision, detected without touching CUDA on machines that have none.

`torch.cuda.is_available()` initialises the driver API on CUDA builds; on a machine without an
NVIDIA driver we never call it, so a CPU run never loads CUDA libraries or waits on them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from scalinglab.errors import UserError


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype: torch.dtype  # autocast dtype for matmuls; parameters stay float32
    threads: int

    @property
    def autocast(self) -> bool:
        return self.dtype != torch.float32

    def describe(self) -> str:
        if self.device.type == "cuda":
            return f"cuda:{torch.cuda.get_device_name(self.device)}"
        return f"cpu:{self.threads}thread"


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


def place(device: str = "auto", dtype: str = "auto", threads: int = 1) -> Placement:
    """Resolve device/dtype choices. On CPU also fixes the torch thread count (one per worker)."""
    if device == "auto":
        device = "cuda" if cuda_present() else "cpu"
    if device.startswith("cuda") and not cuda_present():
        raise UserError(f"--device {device} asked for, but no CUDA GPU is available here; use --device cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise UserError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")
    dev = torch.device(device)
    asked_auto = dtype == "auto"
    _, dtype = resolved_precision(dev.type, dtype)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    if dev.type == "cpu":
        torch.set_num_threads(threads)
    elif asked_auto:
        # TF32 only when the precision is ours to choose: float32 asked for means float32
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return Placement(device=dev, dtype=torch_dtype, threads=threads)
