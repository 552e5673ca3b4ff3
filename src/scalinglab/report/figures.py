"""Shared figure plumbing: matplotlib without a display, and saving that fails cleanly."""

from __future__ import annotations

import math
from pathlib import Path

from scalinglab.errors import UserError

DPI = 120
FIGSIZE = (6.4, 4.0)  # the probe sections' figures: one column of a page


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: str | Path, dpi: int = DPI) -> Path:
    """Save `fig` to `path` (creating its folder) and close it; written whole or not at all."""
    from scalinglab.fsutil import atomic_open

    path = Path(path)
    plt = pyplot()
    finish(fig)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path, suffix=path.suffix) as fh:
            fig.savefig(fh, dpi=dpi, format=path.suffix.lstrip(".") or "png")
    except OSError as exc:
        raise UserError(f"cannot write the figure {path}: {exc.strerror}; choose another output folder") from None
    finally:
        plt.close(fig)
    return path


def record(paths: list[Path], db: str | Path | None, run_id: str | None = None) -> list[Path]:
    """Keep drawn figures in the results store (artifacts of kind "figure", with their SHA-256),
    so that a report finds them; returns the paths."""
    if db is not None:
        from scalinglab.store import open_store
        from scalinglab.train.checkpoint import file_sha256

        store = open_store(db)
        for path in paths:
            store.add_artifact(run_id, "figure", path, file_sha256(path))
    return paths


def label_log_axis(axis, values) -> None:
    """Label a log axis at the data's own values, without matplotlib's crowded minor labels."""
    from matplotlib.ticker import NullFormatter

    values = sorted({float(v) for v in values})
    axis.set_ticks(values, [f"{v:,.0f}" if 1 <= v < 1e15 else _plain(v) for v in values])
    axis.set_minor_formatter(NullFormatter())


def plain_log_axis(axis, values=None) -> None:
    """A log axis with plain tick labels (10k, 1M; 1e18 past the counts people say) instead of
    10^x mathtext, and no minor labels: at the data's own `values` when there are a few of them,
    else at 1-2-5 steps (or decades) within the axis's range. Call it after plotting."""
    from matplotlib.ticker import NullFormatter

    values = sorted({float(v) for v in values or [] if math.isfinite(float(v)) and v > 0})
    if values and len(values) <= 6:
        label_log_axis(axis, values)
        return
    lo, hi = sorted(axis.get_view_interval())
    if not (lo > 0 and hi > lo):
        return
    ticks: list[float] = []
    for steps in ((1.0,), (1.0, 3.0), (1.0, 2.0, 5.0), (1.0, 1.5, 2.0, 3.0, 5.0, 7.0), tuple(range(1, 10))):
        ticks = [m * 10.0 ** k for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
                 for m in steps if lo <= m * 10.0 ** k <= hi]
        if len(ticks) >= 3:
            break
    if len(ticks) > 8:
        ticks = [t for t in ticks if math.isclose(math.log10(t), round(math.log10(t)))] or ticks[:: len(ticks) // 6]
    axis.set_ticks(ticks, [_plain(t) for t in ticks])
    axis.set_minor_formatter(NullFormatter())


def _plain(v: float) -> str:
    from scalinglab.fmt import human

    if v >= 1e15 or v < 1e-3:
        exponent = math.log10(v)
        return f"1e{round(exponent)}" if math.isclose(exponent, round(exponent)) else f"{v:.0e}"
    return human(v) if v >= 1 else f"{v:g}"


def positive(xs, ys) -> tuple["np.ndarray", "np.ndarray", list[tuple[float, float]]]:  # noqa: F821
    """(x, y) of the points drawable on log axes (both finite and > 0), and the (x, y) left out."""
    import numpy as np

    xs, ys = np.asarray(list(xs), dtype=float), np.asarray(list(ys), dtype=float)
    ok = np.isfinite(xs) & np.isfinite(ys) & (xs > 0) & (ys > 0)
    dropped = [(float(x), float(y)) for x, y in zip(xs[~ok], ys[~ok])]
    return xs[ok], ys[ok], dropped


def finish(fig) -> None:
    """What every saved figure gets: plain tick labels on each log axis left with matplotlib's
    10^x labels, and a note on each axes that a log scale hid points from (values <= 0 cannot be
    drawn there; matplotlib drops them without a word)."""
    from matplotlib.ticker import LogFormatterSciNotation

    for ax in fig.axes:
        hidden = 0
        for axis, index in ((ax.xaxis, 0), (ax.yaxis, 1)):
            if axis.get_scale() != "log":
                continue
            if type(axis.get_major_formatter()) is LogFormatterSciNotation:  # the default: not chosen by the figure
                plain_log_axis(axis)
            for line in ax.get_lines():
                data = line.get_xydata()[:, index] if len(line.get_xdata()) else []
                hidden += int(sum(1 for v in data if v == v and v <= 0))
        if hidden:
            ax.text(0.99, 0.01, f"{hidden} point(s) <= 0 not drawn on the log axis", transform=ax.transAxes,
                    ha="right", va="bottom", fontsize=7, color="0.35")
