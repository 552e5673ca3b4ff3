"""The local backend: long-lived worker processes on this machine, one job each at a time.

Each worker is a spawned process (fork is unsafe once a parent has used OpenMP) with one torch
thread, fed one job at a time over its own pipe, so the parent always knows which job a worker
holds. A worker that dies, even by kill -9, is replaced and its job reported as lost, for the
caller to retry (long jobs resume from their checkpoints). Workers die with their parent.

Signals: idle workers ignore Ctrl-C; a job that trains installs its own handler, checkpoints and
stops. On Ctrl-C the parent stops dispatching, asks busy workers to stop (SIGTERM) and waits
for them before re-raising.

    results = map_jobs(fit_one, jobs, LocalBackend(2))    # fit_one: a module-level function
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Sequence

from scalinglab.errors import UserError

MAX_ATTEMPTS = 3  # a job whose worker dies this often is given up


def _die_with_parent() -> None:
    """Ask Linux to send SIGTERM when the parent dies (a training job then checkpoints and stops)."""
    try:
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def _worker_main(conn: Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    import torch

    torch.set_num_threads(1)
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        key, fn, job = message
        try:
            reply = (key, "ok", fn(job))
        except BaseException as exc:  # reported to the parent; the worker stays up for the next job
            reply = (key, "error", (type(exc).__name__, str(exc), traceback.format_exc(limit=6)))
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        conn.send(reply)


@dataclass
class _Worker:
    process: Any
    conn: Connection
    key: Any = None  # the job it holds, None when idle


class WorkerPool:
    """`workers` processes; `submit` gives an idle one a job, `poll` collects finished ones."""

    def __init__(self, workers: int) -> None:
        self._ctx = mp.get_context("spawn")
        self.workers = [self._start() for _ in range(max(1, workers))]

    def _start(self) -> _Worker:
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(target=_worker_main, args=(child,), daemon=True)
        process.start()
        child.close()
        return _Worker(process, parent)

    def idle(self) -> list[_Worker]:
        return [w for w in self.workers if w.key is None]

    def busy(self) -> list[_Worker]:
        return [w for w in self.workers if w.key is not None]

    def submit(self, worker: _Worker, key: Any, fn: Callable[[Any], Any], job: Any) -> None:
        worker.key = key
        worker.conn.send((key, fn, job))

    def poll(self, timeout: float) -> list[tuple[Any, str, Any]]:
        """Finished jobs as (key, status, value): status "ok" (value: the result), "error"
        (value: (exception type name, message, traceback)) or "lost" (the worker died)."""
        busy = self.busy()
        if not busy:
            time.sleep(timeout)
            return []
        ready = wait([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout=timeout)
        finished = []
        for i, worker in enumerate(self.workers):
            if worker.key is None:
                continue
            if worker.conn in ready:
                try:
                    _, status, value = worker.conn.recv()
                except (EOFError, OSError):
                    status, value = "lost", "the worker died"
            elif worker.process.sentinel in ready or not worker.process.is_alive():
                status, value = "lost", f"the worker died (exit code {worker.process.exitcode})"
            else:
                continue
            finished.append((worker.key, status, value))
            worker.key = None
            if status == "lost":
                worker.conn.close()
                self.workers[i] = self._start()
        return finished

    def signal_busy(self, sig: int) -> None:
        for worker in self.busy():
            if worker.process.is_alive():
                os.kill(worker.process.pid, sig)

    def close(self) -> None:
        for worker in self.workers:
            try:
                worker.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        for worker in self.workers:
            worker.process.join(timeout=10)
            if worker.process.is_alive():
                worker.process.terminate()

    def drain(self, on_result: Callable[[Any, str, Any], None], timeout: float = 120.0) -> None:
        """After a stop request: wait for the busy workers' jobs to come back."""
        deadline = time.time() + timeout
        while self.busy() and time.time() < deadline:
            for key, status, value in self.poll(timeout=1.0):
                on_result(key, status, value)


class LocalBackend:
    """The `Backend` interface (`scalinglab.backends`) over a `WorkerPool` of `workers` processes."""

    name = "local"

    def __init__(self, workers: int) -> None:
        self.pool = WorkerPool(workers)

    def free_slots(self) -> int:
        return len(self.pool.idle())

    def submit(self, key: Any, fn: Callable[[Any], Any], job: Any, resources: Any = None) -> None:
        self.pool.submit(self.pool.idle()[0], key, fn, job)

    def running(self) -> int:
        return len(self.pool.busy())

    def poll(self, timeout: float) -> list[tuple[Any, str, Any]]:
        return self.pool.poll(timeout)

    def cancel(self) -> None:
        self.pool.signal_busy(signal.SIGTERM)  # each running job checkpoints and stops

    def drain(self, on_result: Callable[[Any, str, Any], None], timeout: float = 120.0) -> None:
        self.pool.drain(on_result, timeout)

    def apply_journals(self) -> None:
        """Local workers write the store directly; nothing to apply."""

    def close(self) -> None:
        self.pool.close()


def map_jobs(fn: Callable[[Any], Any], jobs: Sequence[Any], *, workers: int,
             on_done: Callable[[int, Any], None] | None = None, backend: Any = None) -> list[Any]:
    """`[fn(job) for job in jobs]` on `workers` processes (or on `backend`, which the caller
    closes); `fn` must be a module-level function.

    A job whose worker dies is retried (up to MAX_ATTEMPTS). The first job that raises stops the
    dispatch of new jobs; once the running ones are back its error is raised here: a `UserError`
    as a `UserError`, an interrupted job as `KeyboardInterrupt`, anything else as a RuntimeError
    carrying the worker's traceback.
    """
    results: list[Any] = [None] * len(jobs)
    pending = list(range(len(jobs)))
    attempts = [0] * len(jobs)
    failure: tuple[str, str, str] | None = None
    pool = backend or LocalBackend(min(workers, len(jobs)) or 1)

    def settle(i: int, status: str, value: Any) -> None:
        nonlocal failure
        if status == "ok":
            results[i] = value
            if on_done:
                on_done(i, value)
        elif status == "lost" and attempts[i] < MAX_ATTEMPTS:
            pending.insert(0, i)
        elif failure is None:
            failure = value if status == "error" else ("RuntimeError", f"job {i}: {value}", "")

    try:
        while pending or pool.running():
            for _ in range(pool.free_slots()):
                if not pending or failure is not None:
                    break
                i = pending.pop(0)
                attempts[i] += 1
                pool.submit(i, fn, jobs[i])
            if failure is not None and not pool.running():
                break
            for i, status, value in pool.poll(timeout=0.5):
                settle(i, status, value)
            pool.apply_journals()
    except KeyboardInterrupt:
        pool.cancel()
        pool.drain(settle)
        raise
    finally:
        pool.apply_journals()
        if backend is None:
            pool.close()
    if failure is not None:
        name, message, trace = failure
        if name == "UserError":
            raise UserError(message)
        if name in ("Interrupted", "KeyboardInterrupt"):
            raise KeyboardInterrupt(message)
        raise RuntimeError(f"a job failed with {name}: {message}\n{trace}")
    return results
