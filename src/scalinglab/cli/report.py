"""`scalinglab report`: one self-contained page that answers the two questions from the store."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from scalinglab.cli.app import DEFAULT_DB, app, console, err_console


@app.command()
def report(
    db: Path = typer.Option(DEFAULT_DB, "--db", help="Results store to read (it must exist)."),
    out: Path = typer.Option(Path("report"), "--out", help="Folder for index.html (or report.md), figures/ and report.json."),
    study: Optional[str] = typer.Option(None, "--study", help="Study id (default: the newest study in the store)."),
    format_: str = typer.Option("html", "--format", help="html (self-contained page) or md (Markdown twin, SVG files beside it)."),
    fit_from: float = typer.Option(20.0, "--fit-from", help="Fit each N over its points at and past this many tokens/param (as the study did)."),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="Prompt for the samples (default: a line of the corpus's test split)."),
    sample_tokens: int = typer.Option(160, "--sample-tokens", help="Tokens generated per sample."),
    sample_n: Optional[int] = typer.Option(None, "--sample-n", help="Model size N (non-embedding) to sample (default: the largest)."),
    cache_dir: Optional[Path] = typer.Option(None, help="Prepared-corpus cache."),
) -> None:
    """Write one page (figures inline as SVG, no scripts, no network) with every section the
    store has data for: the answer at a glance, data scaling, laws, compression, storage vs
    structure, phase transitions, knowledge and samples."""
    from scalinglab.errors import UserError
    from scalinglab.report.build import build_report
    from scalinglab.report.section_samples import SampleSettings

    if sample_tokens < 1:
        raise UserError(f"--sample-tokens must be at least 1, got {sample_tokens}")
    settings = SampleSettings(prompt=prompt, tokens=sample_tokens, n=sample_n)
    with err_console.status("report: reading the store") as status:
        result = build_report(db, out, study=study, fmt=format_, samples=settings, cache_dir=cache_dir,
                              progress=lambda what: status.update(f"report: {what}"), fit_from_tpp=fit_from)
    for section in result.sections:
        state = "no data yet" if section.missing else f"{len(section.figures)} figure(s)"
        console.print(f"  {section.title}: {state}")
    console.print(f"report: {result.page}  (figures in {result.page.parent / 'figures'}, numbers in {result.numbers})")
