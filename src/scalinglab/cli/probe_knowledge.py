"""`scalinglab probe long-tail | open-book`: where knowledge comes from, and where it is kept."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from scalinglab.cli.app import (
    ADDRESS_HELP,
    BACKEND_HELP,
    CONFIG_HELP,
    DEFAULT_DB,
    LOG_HELP,
    SET_HELP,
    backend_spec,
    console,
    err_console,
    parse_numbers,
    use_log_option,
)
from scalinglab.cli.probe import probe_app
from scalinglab.errors import UserError
from scalinglab.fmt import human


def _numbers(text: str | None, name: str) -> tuple[float, ...] | None:
    return None if text is None else parse_numbers(text, name)


def _count(value: float) -> str:
    return f"{value:,.0f}" if value == value else "n/a"  # nan != nan


@probe_app.command("long-tail")
def long_tail(
    facts: Optional[int] = typer.Option(None, "--facts", help="Facts in the table (default 16384, far more than the models store)."),
    zipf: Optional[float] = typer.Option(None, "--zipf", help="Zipf exponent s of the fact stream, > 0 (default 1; try 0.7 or 1.2)."),
    models: Optional[str] = typer.Option(None, "--models", help="Model shapes LAYERSxWIDTH, comma-separated (default 1x16,1x32)."),
    presented: Optional[str] = typer.Option(None, "--presented", help="Facts presented D, one cooldown branch each (default 2^14,...,2^20: 16384,...,1M)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Facts per update (default 256)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Trunk learning rate, constant after warmup (default 1e-2)."),
    controls: Optional[bool] = typer.Option(None, "--controls/--no-controls", help="Also train a uniform stream and the head alone (default on)."),
    head: Optional[int] = typer.Option(None, "--head", help="Most frequent facts counted as the head (default 1000)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the facts, the stream and the initialisation (default 0)."),
    device: Optional[str] = typer.Option(None, help="cpu (default) | cuda | cuda:N."),
    config: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    backend: str = typer.Option("local", "--backend", help=BACKEND_HELP),
    log: Optional[str] = typer.Option(None, "--log", help=LOG_HELP),
    address: Optional[str] = typer.Option(None, "--address", help=ADDRESS_HELP),
    workers: int = typer.Option(2, "--workers", help="Trunks in parallel (one core each)."),
    out: Path = typer.Option(Path("runs/probes/long-tail"), "--out", help="Folder of the runs (resumable)."),
    figures: Optional[Path] = typer.Option(None, "--figures", help="Folder for the figures (default OUT/figures)."),
    db: Path = typer.Option(DEFAULT_DB, "--db", help="Results store (SQLite)."),
) -> None:
    """Rare facts need exposures: recall of Zipf-distributed facts as a fixed model sees more data."""
    use_log_option(log)
    from rich.table import Table

    from scalinglab.config import build_config
    from scalinglab.probes.capacity import parse_models
    from scalinglab.probes.long_tail import LongTailConfig, run_long_tail, summary_lines
    from scalinglab.store import open_store
    from scalinglab.train import Interrupted

    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    d_values = _numbers(presented, "--presented")
    cfg = build_config(LongTailConfig, config, set_, facts=facts, zipf=zipf,
                       models=parse_models(models) if models is not None else None,
                       presented=tuple(int(d) for d in d_values) if d_values else None, batch_size=batch_size,
                       optim__lr=lr, controls=controls, head=head, seed=seed, device=device)
    open_store(db)
    try:
        result = run_long_tail(cfg, out, db=db, workers=workers, figures=figures or out / "figures",
                               console=err_console, backend=backend_spec(backend, address))
    except (KeyboardInterrupt, Interrupted):
        err_console.print("stopped; run the same command again to continue (finished runs are kept)")
        raise typer.Exit(130)
    # eight short columns: readable at 80 characters and in logs
    table = Table("model", "stream", "D", "K", "S/αN", "c50", "slope", "tail", "wacc", caption=(
        "K facts recalled, S/αN bits stored over capacity, c50 exposures for 50% recall, slope per decade "
        "of exposures, tail recall beyond the head, wacc recall weighted by the Zipf stream"))
    for r in result.table.itertuples():
        table.add_row(r.model, r.stream, human(r.D), f"{r.facts_recalled:,}", f"{r.capacity_share:.2f}",
                      _count(r.c50), f"{r.slope:.1f}", f"{r.tail_recall:.3f}", f"{r.weighted_accuracy:.3f}")
    console.print(table)
    for line in summary_lines(result):
        console.print(line, highlight=False)
    console.print(f"figure {result.figures[0]}; results in {db} (probe:long-tail {cfg.key()})", highlight=False)


@probe_app.command("open-book")
def open_book(
    facts: Optional[str] = typer.Option(None, "--facts", help="Table sizes F, comma-separated (default 512,2048,8192)."),
    models: Optional[str] = typer.Option(None, "--models", help="Model shapes LAYERSxWIDTH, comma-separated (default 1x32,2x32)."),
    records: Optional[str] = typer.Option(None, "--records", help="Records k in the reader's context at test time (default 1,4,8)."),
    train_records: Optional[int] = typer.Option(None, "--train-records", help="Most records the reader trains with (default 8)."),
    recall: Optional[str] = typer.Option(None, "--recall", help="Retriever recall ρ in (0, 1], comma-separated (default 1,0.9,0.5)."),
    reader_steps: Optional[int] = typer.Option(None, "--reader-steps", help="Updates of each reader on fresh facts (default 4000)."),
    closed_epochs: Optional[int] = typer.Option(None, "--closed-epochs", help="Passes over the table of each closed-book fit (default 200)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the facts, the episodes and the initialisation (default 0)."),
    device: Optional[str] = typer.Option(None, help="cpu (default) | cuda | cuda:N."),
    config: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    backend: str = typer.Option("local", "--backend", help=BACKEND_HELP),
    log: Optional[str] = typer.Option(None, "--log", help=LOG_HELP),
    address: Optional[str] = typer.Option(None, "--address", help=ADDRESS_HELP),
    workers: int = typer.Option(2, "--workers", help="Fits in parallel (one core each)."),
    out: Path = typer.Option(Path("runs/probes/open-book"), "--out", help="Folder of the runs (resumable)."),
    figures: Optional[Path] = typer.Option(None, "--figures", help="Folder for the figures (default OUT/figures)."),
    db: Path = typer.Option(DEFAULT_DB, "--db", help="Results store (SQLite)."),
) -> None:
    """Facts in the weights vs in the context: closed-book recall against a reader given retrieved records."""
    use_log_option(log)
    from rich.table import Table

    from scalinglab.config import build_config
    from scalinglab.probes.capacity import parse_models
    from scalinglab.probes.open_book import OpenBookConfig, run_open_book, summary_lines
    from scalinglab.store import open_store
    from scalinglab.train import Interrupted

    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    f_values, k_values = _numbers(facts, "--facts"), _numbers(records, "--records")
    rho = None if recall is None else tuple(_float(x, "--recall") for x in recall.split(",") if x.strip())
    cfg = build_config(OpenBookConfig, config, set_, facts=tuple(int(f) for f in f_values) if f_values else None,
                       models=parse_models(models) if models is not None else None,
                       records=tuple(int(k) for k in k_values) if k_values else None, train_records=train_records,
                       recall=rho, reader_steps=reader_steps, closed_epochs=closed_epochs, seed=seed, device=device)
    open_store(db)
    try:
        result = run_open_book(cfg, out, db=db, workers=workers, figures=figures or out / "figures",
                               console=err_console, backend=backend_spec(backend, address))
    except (KeyboardInterrupt, Interrupted):
        err_console.print("stopped; run the same command again to continue (finished runs are kept)")
        raise typer.Exit(130)
    k = result.k_compare
    table = Table("model", "F", "closed K", "recall", "S/αN", "open", "removed", caption=(
        f"closed K facts recalled closed-book, S/αN bits stored over capacity; open: open-book accuracy "
        f"(k={k}, hard distractors, ρ=1); removed: the same without the right record"))
    for c in result.closed.itertuples():
        r = result.reader[(result.reader.model == c.model) & (result.reader.F == c.F)]
        best = r[(r.k == k) & (r.distractors == "hard") & (r.rho == 1.0)].accuracy
        removed = r[r.rho == 0.0].accuracy
        table.add_row(c.model, f"{c.F:,}", f"{c.recalled:,}", f"{c.recall:.3f}", f"{c.capacity_share:.2f}",
                      f"{best.iloc[0]:.3f}" if len(best) else "n/a", f"{removed.max():.4f}" if len(removed) else "n/a")
    console.print(table)
    for line in summary_lines(result):
        console.print(line, highlight=False)
    console.print(f"figure {result.figures[0]}; results in {db} (probe:open-book {cfg.key()})", highlight=False)


def _float(text: str, name: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise UserError(f"{name}: cannot read {text!r} as a number") from None
