"""Where runs execute: this machine's worker processes, or a Ray cluster.

A backend runs jobs (a module-level function and its picklable argument) with the resources
they ask for, and reports how each ended; it knows nothing of what a job computes. Scheduling
order (a study's trunks first, a branch once its trunk's snapshot exists) and retries stay with
the caller, the same for every backend:

    backend.free_slots()                     jobs it can start now
    backend.submit(key, fn, job, resources)  start one
    backend.poll(timeout)                    finished jobs: (key, "ok" | "error" | "lost", value)
    backend.cancel()                         ask running jobs to stop (they checkpoint, then stop)
    backend.apply_journals()                 apply cluster workers' store writes (see journal.py)
    backend.close()

"lost" means the job's process, worker or node died: the caller resubmits it and the run
resumes from its last checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scalinglab.errors import UserError

BACKENDS = ("local", "ray")


@dataclass(frozen=True)
class Resources:
    """What one job asks for: CPUs, and a share of one GPU (0.25: four runs per device)."""

    cpus: float = 1.0
    gpus: float = 0.0


@dataclass(frozen=True)
class BackendSpec:
    """Which backend, as a user chose it.

    name: "local" (worker processes on this machine) or "ray".
    address: a Ray cluster to join ("auto", "HOST:PORT"; None: $RAY_ADDRESS, else a private
      cluster on this machine).
    runs_per_gpu: on GPUs, how many runs share one device.
    """

    name: str = "local"
    address: str | None = None
    runs_per_gpu: int = 4

    def __post_init__(self) -> None:
        if self.name not in BACKENDS:
            raise UserError(f"unknown backend {self.name!r}; choose {' or '.join(BACKENDS)}")
        if self.name == "local" and self.address:
            raise UserError("--address joins a Ray cluster; use it with --backend ray")


def open_backend(spec: BackendSpec | None, *, workers: int, work_dir: Path | str, device: str = "cpu") -> Any:
    """A backend for `workers` parallel jobs. `work_dir` is the run folders' root (on a cluster it
    must be on a filesystem every node mounts at the same path; the workers' journals go there)."""
    spec = spec or BackendSpec()
    if spec.name == "local":
        from scalinglab.backends.local import LocalBackend

        return LocalBackend(workers)
    from scalinglab.backends.ray import RayBackend

    return RayBackend(spec, workers=workers, work_dir=Path(work_dir), device=device)


def job_resources(spec: BackendSpec | None, device: str) -> Resources:
    """One CPU per run; on GPUs a 1/k share of a device, k runs per GPU."""
    if device.startswith("cuda") and spec is not None:
        return Resources(cpus=1.0, gpus=1.0 / spec.runs_per_gpu)
    return Resources()
