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


def save(fig, path: str | Path) -> Path:
    """Save `fig` to `path` (creating its folder) and close it."""
    path = Path(path)
    plt = pyplot()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI)
    except OSError as exc:
        raise UserError(f"cannot write the figure {path}: {exc.strerror}; choose another output folder") from None
    finally:
        plt.close(fig)
    return path
