"""Run the fits' small linear algebra on one BLAS thread.

The arrays here are tiny (5-vectors, 3x3 systems) but scipy's L-BFGS-B calls OpenBLAS, and an
OpenBLAS that may use every core wakes its threads on each call. On a loaded 2-core machine that
made one bootstrap refit 13x slower (190 ms instead of 15 ms). Setting OMP/OPENBLAS_NUM_THREADS
only works before numpy is imported, so this sets the thread count of the OpenBLAS libraries
already loaded, for the duration of a block, and restores it afterwards (what threadpoolctl does,
for the one library that matters here). Where no OpenBLAS is found it does nothing.
"""

from __future__ import annotations

import ctypes
from contextlib import contextmanager
from functools import lru_cache
from typing import Iterator

_NAMES = [(f"{p}_set_num_threads{s}", f"{p}_get_num_threads{s}") for p in ("scipy_openblas", "openblas") for s in ("64_", "")]


@lru_cache(maxsize=1)
def _controls() -> tuple[tuple[object, object], ...]:
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower() and ".so" in line}
    except OSError:  # not Linux
        return ()
    found = []
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for set_name, get_name in _NAMES:
            if hasattr(lib, set_name) and hasattr(lib, get_name):
                found.append((getattr(lib, set_name), getattr(lib, get_name)))
                break
    return tuple(found)


@contextmanager
def single_thread() -> Iterator[None]:
    """Inside the block every loaded OpenBLAS uses one thread."""
    import numpy  # noqa: F401  (load numpy's and scipy's BLAS before looking for them)
    import scipy.optimize  # noqa: F401

    controls = _controls()
    saved = [get() for _, get in controls]
    for set_threads, _ in controls:
        set_threads(1)
    try:
        yield
    finally:
        for (set_threads, _), n in zip(controls, saved):
            set_threads(n)
