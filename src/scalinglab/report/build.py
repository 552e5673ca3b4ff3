"""`scalinglab report`: every section from the store, written as one page.

    from scalinglab.report.build import build_report
    result = build_report("scalinglab.db", "report")      # report/index.html, figures/, report.json
    result.sections[0].readings                            # the answer at a glance, as sentences

Each section is optional: one with no data says which command makes it. The page quotes the
numbers that report.json holds, section by section.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from scalinglab import __version__
from scalinglab.errors import UserError
from scalinglab.report.document import Section
from scalinglab.report.section_samples import SampleSettings
from scalinglab.store import Store
from scalinglab.study.analysis import FIT_FROM_TPP

TITLE = "Does more data keep paying, and is it structure or storage?"
FORMATS = ("html", "md")


@dataclass
class ReportResult:
    page: Path
    figures: list[Path]
    numbers: Path
    sections: list[Section]
    study_id: str | None


def open_existing(db: str | Path) -> Store:
    """The store at `db`, refusing a missing or empty one (a report of nothing helps no one)."""
    path = Path(db)
    if not path.is_file():
        raise UserError(f"no results store at {path}; run `scalinglab study` first or pass the right --db")
    store = Store(path)
    with store.connect() as con:
        runs = con.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
        results = con.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    if runs == 0 and results == 0:
        raise UserError(f"the results store {path} is empty; run `scalinglab study` (or a probe) first")
    return store


def collect_sections(store: Store, study_id: str | None = None, samples: SampleSettings | None = None,
                     cache_dir: Path | None = None, progress: Callable[[str], None] | None = None,
                     fit_from_tpp: float = FIT_FROM_TPP) -> tuple[list[Section], str | None]:
    """All sections in page order, and the study they describe (None when the store has none)."""
    from scalinglab.probes.facts_rules import capacity_alpha
    from scalinglab.report import (
        section_compress,
        section_knowledge,
        section_laws,
        section_phase,
        section_samples,
        section_storage,
    )
    from scalinglab.report.section_study import glance_section, load_study, scaling_section

    say = progress or (lambda _: None)
    say("study: points and fits")
    study = load_study(store, study_id, fit_from_tpp=fit_from_tpp)
    sid = study.study_id if study else None
    say("data scaling")
    scaling = scaling_section(study)
    say("laws")
    laws = section_laws.build(store, study)
    say("compression")
    compression = section_compress.build(store, sid)
    say("probes")
    storage = section_storage.build(store)
    phase = section_phase.build(store)
    knowledge = section_knowledge.build(store)
    say("samples")
    samples_section = section_samples.build(study, samples, cache_dir)
    alpha, alpha_source, _ = capacity_alpha(store)
    glance = glance_section(study, alpha, f"measured: {alpha_source}" if alpha_source else "",
                            compression.numbers.get("vs_data"))
    return [glance, scaling, laws, compression, storage, phase, knowledge, samples_section], sid


def build_report(db: str | Path, out: str | Path = "report", study: str | None = None, fmt: str = "html",
                 samples: SampleSettings | None = None, cache_dir: Path | None = None,
                 progress: Callable[[str], None] | None = None, fit_from_tpp: float = FIT_FROM_TPP) -> ReportResult:
    """Write the report for the store `db` into the folder `out`: index.html (or report.md with
    `fmt="md"`), figures/*.svg and report.json (the numbers each section quotes)."""
    from scalinglab.fsutil import atomic_write_json
    from scalinglab.report.page import to_html, to_markdown

    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: choose html or md")
    store = open_existing(db)
    sections, sid = collect_sections(store, study, samples, cache_dir, progress, fit_from_tpp)
    out = Path(out)
    try:
        (out / "figures").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the report folder {out}: {exc.strerror}; choose another --out") from None
    figures = []
    for section in sections:
        for figure in section.figures:
            path = out / "figures" / f"{figure.name}.svg"
            _write_text(path, figure.svg)
            figures.append(path)
    meta = [f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `scalinglab report` "
            f"(scalinglab {__version__}) from the store {Path(db).resolve()}"
            + (f", study {sid}." if sid else "; the store holds no study.")]
    page = out / ("index.html" if fmt == "html" else "report.md")
    render = to_html if fmt == "html" else to_markdown
    _write_text(page, render(TITLE, meta, sections))
    numbers = out / "report.json"
    atomic_write_json(numbers, {"study": sid, "db": str(Path(db).resolve()),
                                "sections": {s.key: {"title": s.title, "missing": s.missing, "readings": s.readings,
                                                     "numbers": s.numbers} for s in sections}})
    return ReportResult(page=page, figures=figures, numbers=numbers, sections=sections, study_id=sid)


def _write_text(path: Path, text: str) -> None:
    from scalinglab.fsutil import atomic_open

    try:
        with atomic_open(path, suffix=path.suffix) as fh:
            fh.write(text.encode("utf-8"))
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror}; choose another --out") from None


def load_numbers(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())
