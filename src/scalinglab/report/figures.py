"""Shared figure plumbing: matplotlib without a display, and saving that fails cleanly."""

from __future__ import annotations

from pathlib import Path

from scalinglab.errors import UserError

DPI = 120


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
    axis.set_ticks(values, [f"{v:,.0f}" if v >= 1 else f"{v:g}" for v in values])
    axis.set_minor_formatter(NullFormatter())


def plain_log_axis(axis) -> None:
    """Log-axis ticks labelled as plain numbers (10k, 1M; 1e18 past the counts people say) instead
    of 10^x mathtext, with no minor labels. A range under two decades also gets ticks at 2 and 5
    per decade. Call it after plotting: it reads the axis range."""
    import math

    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    from scalinglab.fmt import human

    def label(v: float, _pos=None) -> str:
        if v <= 0:
            return ""
        if v >= 1e15 or v < 1e-3:
            return f"1e{round(math.log10(v))}" if math.isclose(math.log10(v), round(math.log10(v))) else f"{v:.0e}"
        return human(v) if v >= 1 else f"{v:g}"

    lo, hi = sorted(axis.get_view_interval())
    narrow = lo > 0 and hi / lo < 100
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if narrow else (1.0,)))
    axis.set_major_formatter(FuncFormatter(label))
    axis.set_minor_formatter(NullFormatter())
