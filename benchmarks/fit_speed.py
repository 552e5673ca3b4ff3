"""Fit speed on the Epoch data: variable projection against Hoffmann's 4,500-start L-BFGS grid.

    python benchmarks/fit_speed.py                 # the full grid once (minutes)
    python benchmarks/fit_speed.py --subset 450    # every 10th start; the grid's time is extrapolated

Both searches use the same objective (Huber δ=1e-3 on log-loss residuals, analytic gradient) and
the same local optimiser (L-BFGS-B, scalinglab.laws.objective.polish); they differ only in where
the local searches start. Both must reach the same optimum. Also timed: the default fit (variable
projection plus the 8-start multistart check) and 1,000 bootstrap resamples, against one
L-BFGS-B call per resample. Every time is printed with a ratio to a reference measured in the
same run; the machine is shared, so each short timing is the median of several repeats.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from scalinglab import laws  # noqa: E402
from scalinglab.laws.bootstrap import resample_weights  # noqa: E402
from scalinglab.laws.fitting import hoffmann_grid, same_value  # noqa: E402
from scalinglab.laws.forms import chinchilla  # noqa: E402
from scalinglab.laws.objective import Objective, polish  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "chinchilla_epoch_svg_extracted.csv"


def timed(fn, repeats: int = 1):
    """(last result, Timing): median wall-clock and CPU seconds over `repeats` calls.

    On a shared machine wall time includes waiting for a core; CPU time is this process's own
    work, the better measure of the method. Both are printed."""
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return out, Timing(statistics.median(walls), statistics.median(cpus), walls)


class Timing:
    def __init__(self, wall: float, cpu: float, walls: list[float]):
        self.wall, self.cpu, self.walls = wall, cpu, walls

    def scaled(self, factor: float) -> "Timing":
        return Timing(self.wall * factor, self.cpu * factor, [w * factor for w in self.walls])

    def __str__(self) -> str:
        return f"{self.wall:.3g} s wall, {self.cpu:.3g} s CPU"


def ratio(a: Timing, b: Timing) -> str:
    return f"{a.wall / b.wall:.0f}x wall, {a.cpu / b.cpu:.0f}x CPU" if a.wall / b.wall >= 10 else f"{a.wall / b.wall:.1f}x wall, {a.cpu / b.cpu:.1f}x CPU"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Epoch's digitised Chinchilla points (CSV)")
    parser.add_argument("--subset", type=int, default=4500, help="grid starts to run (every k-th of the 4,500); time extrapolated")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each short timing (median reported)")
    args = parser.parse_args()
    if not args.data.exists():
        print(f"no data at {args.data}; pass --data", file=sys.stderr)
        return 2

    data = laws.prepare(laws.read_table(args.data), chinchilla(), n_col="Model Size", flops_col="Training FLOP",
                        loss_col="loss", drop_top_loss=5, source=args.data.name)
    print(f"Epoch data: {len(data)} points (5 highest-loss dropped); cores: {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}")

    # 1. variable projection alone, and the default fit (with its multistart check)
    vp, t_vp = timed(lambda: laws.fit(data, multistart=0), args.repeats)
    full, t_full = timed(lambda: laws.fit(data), args.repeats)

    # 2. Hoffmann's grid: L-BFGS-B from each of the 4,500 starts, the best kept
    form = vp.form  # the same (centred) coordinates
    objective = Objective(form, data.X(form), data.loss)
    grid = hoffmann_grid(form)
    step = max(1, round(len(grid) / args.subset))
    starts = grid[::step]

    def run_grid():
        with threadpool_limits(limits=1, user_api="blas"):
            return [polish(objective, z) for z in starts]

    found, t_grid_run = timed(run_grid)
    t_grid = t_grid_run.scaled(len(grid) / len(starts))
    best = min(found, key=lambda p: p.value)
    reached = sum(same_value(p.value, best.value) for p in found)
    grid_params = form.natural(best.z)
    agree = same_value(best.value, vp.objective)
    worst_param = max(abs(float(grid_params[k]) / vp.params[k] - 1) for k in form.params)

    # 3. bootstrap: batched, against one L-BFGS-B call per resample (on a subset, extrapolated)
    boot, t_boot = timed(lambda: laws.run_bootstrap(vp, args.resamples, seed=0), 1)
    weights = resample_weights(None, len(data), 100, np.random.default_rng(1))

    def one_by_one():
        with threadpool_limits(limits=1, user_api="blas"):
            return [polish(objective.with_weights(w), vp.z) for w in weights]

    _, t_loop100 = timed(one_by_one)
    t_loop = t_loop100.scaled(args.resamples / len(weights))

    extrapolated = " (extrapolated from %d starts)" % len(starts) if len(starts) < len(grid) else ""
    print(f"variable projection fit: {t_vp} (median of {args.repeats}; wall {', '.join(f'{t:.3f}' for t in t_vp.walls)}); objective {vp.objective:.10g}")
    print(f"4,500-start L-BFGS-B grid: {t_grid}{extrapolated}; objective {best.value:.10g}; {reached}/{len(found)} starts reached it")
    print(f"same optimum: {'yes' if agree else 'NO'} (objectives equal to 1e-7; parameters within {worst_param:.1e})")
    print(f"time ratio grid / variable projection: {ratio(t_grid, t_vp)}")
    print(f"default fit (variable projection + 8-start multistart check): {t_full} = {ratio(t_full, t_vp)} variable projection alone; "
          f"under 2 s: {'yes' if t_full.wall < 2 else 'NO'}")
    print(f"{args.resamples} bootstrap resamples: {t_boot} = {ratio(t_boot, t_vp)} one fit; under 60 s: {'yes' if t_boot.wall < 60 else 'NO'}")
    print(f"  one L-BFGS-B call per resample would take {t_loop} (from 100): batched is {ratio(t_loop, t_boot)} faster")
    print(f"  resamples not converged: {int((~boot.converged).sum())}; moved to another basin by the grid check: {boot.switched}; "
          f"largest gap to L-BFGS-B on checked resamples: {boot.check_gap:.1e}")
    table = vp.with_bootstrap(boot).intervals().set_index("param")
    print("parameters and 95% intervals (Epoch 2024 in brackets):")
    for k in form.params:
        lo, hi = laws.EPOCH_2024.published_intervals[k]
        print(f"  {k:5s} {vp.params[k]:10.5g}  ({table.loc[k, 'lo']:.5g}, {table.loc[k, 'hi']:.5g})   "
              f"[{laws.EPOCH_2024.params[k]:.5g}  ({lo:.5g}, {hi:.5g})]")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
