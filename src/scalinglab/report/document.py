"""What a report is made of: sections of generated readings, figures, tables and provenance.

A section builder reads the store and returns a `Section`; `report.page` turns sections into
HTML or Markdown. Builders never print and never write files, so a notebook can call one and
look at its readings, and the numbers a reading quotes are kept in `Section.numbers` (written to
report.json) so that tests and users can check them against the store.
"""

from __future__ import annotations

import io
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

# One colour per model size, the same in every figure of a report (matplotlib's tab10 order).
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf"]


@dataclass
class Figure:
    name: str  # file stem, unique within the report: figures/<name>.svg
    caption: str
    svg: str  # the <svg> element (no XML prolog), inlined into the page


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Section:
    key: str  # the page anchor, e.g. "glance"
    title: str
    readings: list[str] = field(default_factory=list)  # sentences generated from the numbers
    figures: list[Figure] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    provenance: list[str] = field(default_factory=list)  # which command and runs made it
    missing: str | None = None  # set when there is nothing to show: which command makes it
    numbers: dict = field(default_factory=dict)  # every number the readings and tables quote

    @property
    def empty(self) -> bool:
        return not (self.readings or self.figures or self.tables)


# --- figures ---------------------------------------------------------------------------------------

def svg_figure(fig, name: str, caption: str) -> Figure:
    """Render a matplotlib figure to an inline SVG (text stays text, so the page is searchable
    and small) and close it."""
    from scalinglab.report.figures import finish, pyplot

    plt = pyplot()
    import matplotlib

    finish(fig)
    buffer = io.StringIO()
    try:
        with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": name}):
            # no metadata block: no creation date (the same numbers give the same file) and no RDF
            fig.savefig(buffer, format="svg", bbox_inches="tight",
                        metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    finally:
        plt.close(fig)
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg"):]  # drop the XML prolog and DOCTYPE: the page is HTML
    # a fixed width makes the figure shrink with a narrow window instead of overflowing
    svg = re.sub(r'<svg([^>]*?) width="[^"]*" height="[^"]*"', r'<svg\1 style="max-width:100%;height:auto"', svg, count=1)
    return Figure(name=name, caption=caption, svg=svg)


def size_colour(sizes: Iterable[int]) -> dict[int, str]:
    """A fixed colour per model size: sizes sorted, colours in palette order."""
    return {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(sorted(set(int(s) for s in sizes)))}


def size_label(n: float) -> str:
    return f"N = {n / 1e6:.3g}M" if n >= 1e6 else f"N = {n / 1e3:.3g}k"


# --- numbers in words ------------------------------------------------------------------------------

def num(x: float | None, digits: int = 3) -> str:
    """A number as a reader wants it: significant digits, thousands separators, no 1e-93 noise."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    x = float(x)
    if x == 0:
        return "0"
    if abs(x) >= 10 ** digits or (x.is_integer() and abs(x) < 1e15):
        return f"{x:,.0f}"
    if abs(x) < 1e-3:
        return f"{x:.{digits - 1}e}"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(x))))
    return f"{x:.{decimals}f}"


def interval(lo: float | None, hi: float | None, digits: int = 3) -> str:
    """'[95%: lo, hi]', or '(no interval)' when the bounds are missing or not finite."""
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return "(no interval)"
    return f"[95%: {num(lo, digits)}, {num(hi, digits)}]"


# --- provenance ------------------------------------------------------------------------------------

def date(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts)) if ts else "unknown date"


def provenance(command: str, runs: list[dict], what: str = "") -> str:
    """One line saying which command and runs produced a section: ids, corpus, sizes, dates,
    versions. `runs` are store rows (`Store.runs`)."""
    if not runs:
        return f"Made by `{command}`{(' (' + what + ')') if what else ''}."
    ids = [r["run_id"] for r in runs]
    shown = ", ".join(ids[:4]) + (f" and {len(ids) - 4} more" if len(ids) > 4 else "")
    corpora = sorted({_corpus_name(r) for r in runs if r.get("corpus_key")})
    sizes = sorted({int(r["n_nonembedding"]) for r in runs if r.get("n_nonembedding")})
    created = [r["created"] for r in runs if r.get("created")]
    versions = {}
    for r in runs:
        versions.update(r.get("versions") or {})
    parts = [f"Made by `{command}`{(' (' + what + ')') if what else ''} from {len(ids)} run(s): {shown}"]
    if corpora:
        parts.append("corpus " + ", ".join(corpora))
    if sizes:
        parts.append("N (non-embedding) " + ", ".join(f"{n:,}" for n in sizes))
    if created:
        first, last = date(min(created)), date(max(created))
        parts.append(f"trained {first}" + (f" to {last}" if last != first else ""))
    if versions:
        parts.append("versions " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())))
    return "; ".join(parts) + "."


def _corpus_name(run: dict) -> str:
    source = ((run.get("config") or {}).get("corpus") or {}).get("source")
    return f"{source} ({run['corpus_key']})" if source else run["corpus_key"]


# --- stored results ---------------------------------------------------------------------------------

def newest(store, kind: str, accept=None) -> dict | None:
    """The newest stored result of `kind` (rows are ordered by id) that `accept` takes, or None."""
    rows = [r for r in store.results(kind) if accept is None or accept(r)]
    return rows[-1] if rows else None


def finite(x: Any) -> float | None:
    """x as a float, or None when it is missing, not a number, or not finite."""
    if isinstance(x, bool) or x is None:
        return None
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def clean(value: Any) -> Any:
    """A JSON-able copy: NaN and infinities become None, numpy scalars plain numbers."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return finite(value)
    return value


def result_runs(store, result: dict, ids: Iterable[str], kind: str) -> list[dict]:
    """The store's run rows behind a result: those named in `ids`, else every run of `kind`."""
    wanted = {str(i) for i in ids if i}
    if wanted:
        rows = [r for r in store.runs() if r["run_id"] in wanted]
        if rows:
            return rows
    return store.runs(kind=kind)


def result_provenance(command: str, store, result: dict, ids: Iterable[str], kind: str, what: str = "") -> str:
    """A provenance line naming the command, the result (key and stored date) and its runs."""
    label = f"result {result['key']} of kind {kind}, stored {date(result.get('created'))}"
    return provenance(command, result_runs(store, result, ids, kind), f"{what}; {label}" if what else label)


def missing_line(probe: str, command: str, what: str) -> str:
    return f"Not measured yet: run `{command}` ({what}); the store holds no result of kind probe:{probe}."


def dropped_text(what: str, dropped: list[tuple[float, float]], x_name: str) -> str:
    """A caption sentence saying which points a log axis could not show."""
    if not dropped:
        return ""
    shown = ", ".join(f"{x_name} = {num(x)} ({num(y)})" for x, y in dropped[:4])
    more = f" and {len(dropped) - 4} more" if len(dropped) > 4 else ""
    return f" Not drawn (≤ 0 or undefined on a log axis): {what} at {shown}{more}."


def probe_section(store, key: str, title: str, parts: list[tuple]) -> Section:
    """A section made of probe parts, each `(build, probe, command, what)`: `build(store, section)`
    adds its readings and figures and says whether the store had its result. With none, the
    section is missing and names every command; otherwise each absent part says its command."""
    section = Section(key=key, title=title)
    found = [build(store, section) for build, *_ in parts]
    if not any(found):
        commands = [f"`{command}` ({what})" for _, _, command, what in parts]
        section.missing = "Not measured yet: run " + ", ".join(commands[:-1]) + " and " + commands[-1] + "."
        return section
    for ok, (_, probe, command, what) in zip(found, parts):
        if not ok:
            section.readings.append(missing_line(probe, command, what))
    return section
