"""Starting a data-parallel run's ranks on this machine (`scalinglab train --nproc K`): the same
command, K times, through torch.distributed.run. What the ranks then do is the engine's."""

from __future__ import annotations

import os


def without_nproc(args: list[str]) -> list[str]:
    """Command-line arguments less `--nproc K` / `--nproc=K`."""
    kept, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            kept.append(arg)
    return kept


def launch_ranks(nproc: int, args: list[str]) -> int:
    """Run `python -m scalinglab ARGS` as `nproc` ranks through torch.distributed.run on this
    machine (a free port, one torch thread per rank); returns the exit code of the first rank
    that failed (the ranks end alike: 2 refused, 1 diverged, 130 stopped), 0 when all are done."""
    import logging

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser
    from torch.distributed.run import run as torchrun

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    for name in list(logging.root.manager.loggerDict):  # the ranks say what happened
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.ERROR)
    launcher = get_args_parser().parse_args(["--standalone", f"--nproc_per_node={nproc}", "-m", "scalinglab", *args])
    try:
        torchrun(launcher)
    except ChildFailedError as exc:
        # the cause: the first rank that exited by itself (torchrun then signals the others)
        code = min(exc.failures.values(), key=lambda failure: (failure.exitcode < 0, failure.timestamp)).exitcode
        return code if code >= 0 else 128 - code
    except SignalException:  # Ctrl-C or SIGTERM: passed on to the ranks, which stop after the same step
        return 130
    return 0
