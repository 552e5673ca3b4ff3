"""The Ray backend: runs as Ray Core tasks on a cluster (or on a private one on this machine).

Ray Core, not Ray Tune: a study's branches wait for their trunk's snapshot, a dependency
independent trials cannot express, so scheduling stays with the caller and Ray only places tasks.
Each task asks for one CPU (or a 1/k share of a GPU); Ray retries nothing (`max_retries=0`):
the caller resubmits a lost run, which resumes from its checkpoint. Workers write no SQLite:
their store writes go to journals under the work folder, which the driver applies.

Before the first job a task on every node checks that the node sees the work folder and runs
the same scalinglab, torch and Python as the driver; otherwise the command ends in one line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from scalinglab.backends import BackendSpec, Resources
from scalinglab.backends.journal import JOURNAL_ENV, JournalReader
from scalinglab.errors import UserError
from scalinglab.train.sinks import LOG_ENV

OBJECT_STORE_BYTES = 100 * 2**20  # a private cluster moves small job descriptions only


class RayBackend:
    name = "ray"

    def __init__(self, spec: BackendSpec, *, workers: int, work_dir: Path, device: str = "cpu") -> None:
        try:
            import ray
        except ImportError:
            raise UserError("--backend ray needs Ray; install it with: pip install 'scalinglab[ray]'") from None
        self.ray = ray
        work_dir = Path(work_dir).resolve()
        work_dir.mkdir(parents=True, exist_ok=True)
        self.journals = work_dir / "journal"
        self.reader = JournalReader(self.journals)
        env = {JOURNAL_ENV: str(self.journals), "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
        if os.environ.get(LOG_ENV):  # `--log`: the sinks go with the runs to every node
            env[LOG_ENV] = os.environ[LOG_ENV]
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        address = spec.address or os.environ.get("RAY_ADDRESS")
        self.owns_cluster = False
        if not ray.is_initialized():
            options = dict(runtime_env={"env_vars": env}, log_to_driver=False, configure_logging=False)
            try:
                if address:
                    _reachable(address)
                    ray.init(address=address, **options)
                else:
                    # a private cluster, on the loopback interface only; "local" starts a new one even
                    # where Ray would join the newest cluster started on this machine
                    ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False,
                             _node_ip_address="127.0.0.1", object_store_memory=OBJECT_STORE_BYTES, **options)
                    self.owns_cluster = True
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = address or "this machine"
                raise UserError(f"cannot reach a Ray cluster at {where} ({str(exc).splitlines()[0]}); start one "
                                "with `ray start --head`, or drop --address for a private one") from None
        self.remote = ray.remote(max_retries=0, runtime_env={"env_vars": env})(_run)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.capacity = max(1, min(workers, cpus) if device == "cpu" else workers)
        self.refs: dict[Any, Any] = {}
        check_nodes(ray, work_dir)

    def free_slots(self) -> int:
        return max(0, self.capacity - len(self.refs))

    def submit(self, key: Any, fn: Callable[[Any], Any], job: Any, resources: Resources | None = None) -> None:
        resources = resources or Resources()
        ref = self.remote.options(num_cpus=resources.cpus, num_gpus=resources.gpus).remote(fn, job)
        self.refs[ref] = key

    def running(self) -> int:
        return len(self.refs)

    def poll(self, timeout: float) -> list[tuple[Any, str, Any]]:
        if not self.refs:
            return []
        ready, _ = self.ray.wait(list(self.refs), num_returns=len(self.refs), timeout=timeout)
        finished = []
        for ref in ready:
            key = self.refs.pop(ref)
            finished.append((key, *self._outcome(ref)))
        return finished

    def _outcome(self, ref: Any) -> tuple[str, Any]:
        exceptions = self.ray.exceptions
        try:
            return "ok", self.ray.get(ref)
        except exceptions.RayTaskError as exc:
            cause = exc.cause if exc.cause is not None else exc
            if isinstance(cause, (exceptions.TaskCancelledError, KeyboardInterrupt)):
                return "lost", "cancelled"
            return "error", (type(cause).__name__, str(cause), str(exc))
        except exceptions.RayError as exc:  # the worker, its node or the object died
            return "lost", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"

    def cancel(self) -> None:
        for ref in self.refs:
            self.ray.cancel(ref, force=False)  # a KeyboardInterrupt in the task: it checkpoints and stops

    def drain(self, on_result: Callable[[Any, str, Any], None], timeout: float = 120.0) -> None:
        import time

        deadline = time.time() + timeout
        while self.refs and time.time() < deadline:
            for key, status, value in self.poll(timeout=1.0):
                on_result(key, status, value)

    def apply_journals(self) -> None:
        self.reader.apply()

    def close(self) -> None:
        self.apply_journals()
        if self.owns_cluster:
            self.ray.shutdown()


def _reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast on HOST:PORT with nothing listening (Ray itself waits minutes)."""
    import socket

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return  # "auto" and friends: Ray finds the cluster itself
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ConnectionError(f"nothing answers at {address}: {exc.strerror or exc}") from None


def _run(fn: Callable[[Any], Any], job: Any) -> Any:
    """A job in a Ray worker: one torch thread, as every worker of the local backend has."""
    import ray
    import torch

    from scalinglab.backends.journal import NODE_ENV

    os.environ[NODE_ENV] = ray.get_runtime_context().get_node_id()[:12]
    torch.set_num_threads(1)
    return fn(job)


def _node_facts(work_dir: str) -> dict:
    import platform
    import socket

    import torch

    from scalinglab import __version__

    path = Path(work_dir)
    return {"host": socket.gethostname(), "sees_work_dir": path.is_dir() and os.access(path, os.W_OK),
            "versions": {"scalinglab": __version__, "torch": torch.__version__, "python": platform.python_version()}}


def check_nodes(ray: Any, work_dir: Path) -> None:
    """Every alive node must see the work folder and run the driver's versions."""
    import platform

    import torch
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from scalinglab import __version__

    mine = {"scalinglab": __version__, "torch": torch.__version__, "python": platform.python_version()}
    probe = ray.remote(num_cpus=0, max_retries=0)(_node_facts)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(str(work_dir))
            for n in nodes]
    for facts in ray.get(refs):
        if not facts["sees_work_dir"]:
            raise UserError(f"node {facts['host']} cannot see {work_dir}; put --out on a filesystem every node "
                            "mounts at the same path")
        if facts["versions"] != mine:
            raise UserError(f"node {facts['host']} runs {facts['versions']} but this machine runs {mine}; install "
                            "the same versions on every node")
