"""`scalinglab probe grokking | facts-rules | repetition`: phase transitions and data quality."""

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
    use_log_option,
)
from scalinglab.cli.probe import probe_app
from scalinglab.errors import UserError


def _fractions(text: str, name: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{name}: cannot read {text!r} as comma-separated numbers (example: 0.2,0.3,0.5)") from None
    if not values or any(not 0 < v < 1 for v in values):
        raise UserError(f"{name}: give fractions strictly between 0 and 1, e.g. 0.2,0.3,0.5; got {text!r}")
    return values


def _fmt_epoch(value) -> str:
    return "-" if value is None or value != value else f"{int(value):,}"


# --- grokking ----------------------------------------------------------------------------------------

@probe_app.command("grokking")
def grokking(
    p: Optional[int] = typer.Option(None, "--p", help="Prime modulus (default 97; 113 for the transformer)."),
    op: Optional[str] = typer.Option(None, "--op", help="Operation: + - * / (or add, sub, mul, div; default +)."),
    frac: Optional[float] = typer.Option(None, "--frac", help="Training share of all pairs (default 0.5; 0.3 for the transformer)."),
    model: Optional[str] = typer.Option(None, "--model", help="mlp (fast, default) or transformer (Nanda et al. 2023; ~30-45 min on a CPU)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Epoch budget (default 5000; 40000 for the transformer)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="AdamW learning rate (default 3e-3; 1e-3 for the transformer)."),
    wd: Optional[float] = typer.Option(None, "--wd", help="AdamW weight decay (default 1; grokking needs it, 0 memorises only)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the split and the initialisation (default 0)."),
    grokfast: Optional[bool] = typer.Option(None, "--grokfast/--no-grokfast", help="Add the Grokfast gradient-EMA filter."),
    grokfast_alpha: Optional[float] = typer.Option(None, "--grokfast-alpha", help="Grokfast EMA decay (default 0.98)."),
    grokfast_lambda: Optional[float] = typer.Option(None, "--grokfast-lambda", help="Grokfast amplification (default 2)."),
    stop_after: Optional[float] = typer.Option(None, "--stop-after", help="After generalising at epoch G, stop at G x (1 + this) (default 0.25); negative: use the whole budget."),
    eval_every: Optional[int] = typer.Option(None, "--eval-every", help="Epochs between evaluations (default 10; 100 for the transformer)."),
    fractions: Optional[str] = typer.Option(None, "--fractions", help="Sweep the training fraction, e.g. 0.2,0.3,0.4,0.5,0.6."),
    compare_grokfast: bool = typer.Option(False, "--compare-grokfast", help="Run with and without Grokfast and compare."),
    workers: int = typer.Option(1, "--workers", help="Runs in parallel for sweeps and comparisons (one core each)."),
    out: Path = typer.Option(Path("runs/probes/grokking"), "--out", help="Folder of the run directories."),
    figures: Optional[Path] = typer.Option(None, "--figures", help="Folder for the figures (default OUT/figures)."),
    db: Path = typer.Option(DEFAULT_DB, "--db", help="Results store (SQLite)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu (default) | cuda | auto."),
    config: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    backend: str = typer.Option("local", "--backend", help=BACKEND_HELP),
    log: Optional[str] = typer.Option(None, "--log", help=LOG_HELP),
    address: Optional[str] = typer.Option(None, "--address", help=ADDRESS_HELP),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Grokking on modular arithmetic: epochs to memorise and to generalise, progress measures."""
    use_log_option(log)

    from scalinglab.config import build_config
    from scalinglab.probes import grokking as grok
    from scalinglab.probes import grokking_sweeps as sweeps
    from scalinglab.store import open_store
    from scalinglab.train import Diverged, Interrupted

    if fractions is not None and compare_grokfast:
        raise UserError("--fractions and --compare-grokfast each start several runs; use one at a time")
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    cfg = build_config(grok.GrokConfig, config, set_, p=p, op=op, train_frac=frac, model=model, max_epochs=epochs,
                       optim__lr=lr, optim__weight_decay=wd, seed=seed, grokfast=grokfast, grokfast_alpha=grokfast_alpha,
                       grokfast_lamb=grokfast_lambda, stop_after=stop_after, eval_every=eval_every,
                       device=device).resolved()
    sweep_values = _fractions(fractions, "--fractions") if fractions is not None else None
    spec = backend_spec(backend, address)
    open_store(db)  # fail early on a bad --db
    fig_dir = figures or out / "figures"
    try:
        if sweep_values is not None:
            sweep, runs = sweeps.sweep_fractions(cfg, sweep_values, out, db=db, workers=workers, figures=fig_dir,
                                                 console=err_console, backend=spec)
            lines, paths = sweeps.sweep_lines(sweep), sweep.figures
        elif compare_grokfast:
            result, runs = sweeps.compare_grokfast(cfg, out, db=db, workers=workers, figures=fig_dir,
                                                   console=err_console, backend=spec)
            lines, paths = sweeps.grokfast_lines(result, runs), result["figures"]
        else:
            runs = [_train_one(cfg, out / cfg.run_id, db, fig_dir, quiet)]
            lines, paths = grok.run_lines(runs[0]), runs[0].figures
    except Interrupted as exc:
        err_console.print(f"stopped at epoch {exc.step}; run the same command again to continue", highlight=False)
        raise typer.Exit(130)
    except Diverged as exc:
        err_console.print(f"diverged: {exc}; recorded in {db}; lower --lr (a rerun stops here again)", highlight=False)
        raise typer.Exit(1)
    except KeyboardInterrupt:  # a sweep or comparison: finished runs are kept
        err_console.print("stopped; run the same command again to continue (finished runs are kept)")
        raise typer.Exit(130)
    _print_runs(runs)
    for line in lines:
        console.print(line, highlight=False)
    where = f"run {runs[0].run_id} in {runs[0].out_dir}; " if len(runs) == 1 else ""
    console.print(f"{where}figure {', '.join(map(str, paths))}; results in {db}")


def _train_one(cfg, out_dir: Path, db: Path, figures: Path, quiet: bool):
    """One run with a progress bar over epochs showing train/test accuracy."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from scalinglab.probes.grokking import train_grokking

    if quiet:
        return train_grokking(cfg, out_dir, db=db, figures=figures)
    progress = Progress(TextColumn("[bold]grokking"), BarColumn(), TextColumn("epoch {task.completed:,.0f}/{task.total:,.0f}"),
                        TextColumn("train {task.fields[train]} test {task.fields[test]}"), TimeElapsedColumn(),
                        console=err_console)
    with progress:
        task = progress.add_task("grokking", total=cfg.max_epochs, train="-", test="-")

        def update(record: dict) -> None:
            progress.update(task, completed=record["epoch"], train=f"{record['train_acc']:.3f}",
                            test=f"{record['test_acc']:.3f}")

        return train_grokking(cfg, out_dir, db=db, progress=update, figures=figures)


def _print_runs(runs) -> None:
    from rich.table import Table

    tasks = {f"{r.config.model} a{r.config.op}b mod {r.config.p}" for r in runs}
    table = Table("frac", "grokfast", "memorised", "generalised", "epochs", "train s", "test acc", "status",
                  title=", ".join(sorted(tasks)))
    for r in runs:
        c = r.config
        table.add_row(f"{c.train_frac:g}", "yes" if c.grokfast else "no", _fmt_epoch(r.memorised_epoch),
                      _fmt_epoch(r.generalised_epoch), f"{r.epochs:,}", f"{r.wall_time:.1f}",
                      f"{r.history.test_acc.iloc[-1]:.3f}", r.status)
    console.print(table)


# --- repetition --------------------------------------------------------------------------------------

@probe_app.command("repetition")
def repetition(
    corpus: Optional[str] = typer.Option(None, help="'stdlib' (default), a text file, a directory, .jsonl or .parquet."),
    tokenizer: Optional[str] = typer.Option(None, help="byte (default) or bpe."),
    size: Optional[str] = typer.Option(None, help="Model preset (default 30k)."),
    params: Optional[str] = typer.Option(None, help="Any non-embedding parameter count instead of --size."),
    tokens: str = typer.Option("1M", "--tokens", help="Training tokens D of every repeated and junk run."),
    epochs: str = typer.Option("1,2,4,8,16,32,64", "--epochs", help="Repetition counts e (U = D/e unique tokens)."),
    junk: str = typer.Option("0.25,0.5,0.75", "--junk", help="Junk shares of the training tokens ('none' for none)."),
    junk_kind: str = typer.Option("uniform", "--junk-kind", help="uniform (random tokens) or shuffled (real tokens, random order)."),
    junk_span: int = typer.Option(1024, "--junk-span", help="Tokens per junk document."),
    fresh: bool = typer.Option(True, "--fresh/--no-fresh", help="Also train one epoch of each unique subset (needed for the predictions)."),
    seq_len: Optional[int] = typer.Option(None, help="Tokens per sequence (default 256)."),
    batch_size: Optional[int] = typer.Option(None, help="Sequences per step (default: size rule)."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate (default: width rule)."),
    eval_tokens: Optional[int] = typer.Option(None, help="Tokens of the fixed val set (default 65536)."),
    seed: Optional[int] = typer.Option(None, help="Seed for init, data order and junk."),
    config: Optional[Path] = typer.Option(None, help="TOML config with [corpus] [model] [optim] [train] sections."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    workers: int = typer.Option(1, "--workers", help="Runs in parallel (one core each)."),
    backend: str = typer.Option("local", "--backend", help=BACKEND_HELP),
    log: Optional[str] = typer.Option(None, "--log", help=LOG_HELP),
    address: Optional[str] = typer.Option(None, "--address", help=ADDRESS_HELP),
    out: Path = typer.Option(Path("runs/probes/repetition"), "--out", help="Folder of the run directories."),
    figures: Optional[Path] = typer.Option(None, "--figures", help="Folder for the figures (default OUT/figures)."),
    db: Path = typer.Option(DEFAULT_DB, "--db", help="Results store (SQLite)."),
    cache_dir: Optional[Path] = typer.Option(None, help="Prepared-corpus cache (default ~/.cache/scalinglab)."),
) -> None:
    """Repeated epochs and junk data at fixed N and D, against Muennighoff et al. 2023's law."""
    use_log_option(log)
    from scalinglab.cli.app import parse_number
    from scalinglab.config import build_run_config
    from scalinglab.corpus import prepare_corpus
    from scalinglab.probes.repetition import RepetitionConfig, parse_epochs, parse_junk, run_repetition, summary_lines
    from scalinglab.store import open_store
    from scalinglab.train import Interrupted

    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    base = build_run_config(
        config, set_, corpus__source=corpus, corpus__tokenizer=tokenizer,
        model__size=size if (size or params) else (None if config or set_ else "30k"),
        model__params=parse_number(params, "--params") if params else None,
        train__tokens=parse_number(tokens, "--tokens"), train__seq_len=seq_len, train__batch_size=batch_size,
        optim__lr=lr, train__eval_tokens=eval_tokens, train__seed=seed,
        train__eval_points=None if config or set_ else 4,
    )
    base.validate()
    cfg = RepetitionConfig(base=base, epochs=parse_epochs(epochs), junk=parse_junk(junk), junk_kind=junk_kind,
                           junk_span=junk_span, fresh=fresh)
    open_store(db)
    err_console.print(f"preparing corpus {base.corpus.source!r} ({base.corpus.tokenizer})...", highlight=False)
    prepared = prepare_corpus(base.corpus, cache_dir)
    try:
        result = run_repetition(cfg, prepared, db=db, out_root=out, workers=workers,
                                figures=figures or out / "figures", console=err_console,
                                backend=backend_spec(backend, address))
    except (KeyboardInterrupt, Interrupted):
        err_console.print("stopped; run the same command again to continue (finished runs are kept)")
        raise typer.Exit(130)
    _print_repetition(result)
    for line in summary_lines(result):
        console.print(line, highlight=False)
    console.print(f"figure {result.figures[0]}; results in {db} (probe:repetition {result.key})")


def _print_repetition(result) -> None:
    from rich.table import Table

    from scalinglab.fmt import human as si

    table = Table("role", "epochs", "U", "D", "junk", "val nats", "val bpb", "train nats", "predicted", "D eff")
    num = lambda v, f: "-" if v is None or v != v else format(v, f)  # noqa: E731
    for r in result.table.itertuples():
        table.add_row(r.role, f"{r.epochs}", si(r.unique_tokens), si(r.tokens), num(r.junk_share, ".2f"),
                      num(r.val_loss, ".3f"), num(r.val_bpb, ".3f"), num(r.train_loss, ".3f"),
                      num(r.predicted_loss, ".3f"), "-" if r.effective_tokens != r.effective_tokens else si(r.effective_tokens))
    console.print(table)


# --- facts vs rules ----------------------------------------------------------------------------------

@probe_app.command("facts-rules")
def facts_rules(
    items: Optional[str] = typer.Option(None, "--items", help="Dataset sizes D (facts + rule items), one fit each (default 128,256,...,4096)."),
    rule_share: Optional[float] = typer.Option(None, "--rule-share", help="Share of rule items in each dataset (default 0.5)."),
    alphabet: Optional[int] = typer.Option(None, "--alphabet", help="Symbols per key/value position (a fact holds 2 log2 of it in bits; default 64)."),
    d_model: Optional[int] = typer.Option(None, "--d-model", help="Width of the GPT (fixed N; default 16)."),
    n_layer: Optional[int] = typer.Option(None, "--n-layer", help="Layers of the GPT (default 1)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Passes over each dataset (exposures per item; default 400)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="AdamW learning rate (default 1e-2)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Sequences per update (default 256)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the data, the rule and the initialisation (default 0)."),
    config: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    backend: str = typer.Option("local", "--backend", help=BACKEND_HELP),
    log: Optional[str] = typer.Option(None, "--log", help=LOG_HELP),
    address: Optional[str] = typer.Option(None, "--address", help=ADDRESS_HELP),
    workers: int = typer.Option(1, "--workers", help="Fits in parallel (one core each)."),
    out: Path = typer.Option(Path("runs/probes/facts-rules"), "--out", help="Folder of the fit directories."),
    figures: Optional[Path] = typer.Option(None, "--figures", help="Folder for the figures (default OUT/figures)."),
    db: Path = typer.Option(DEFAULT_DB, "--db", help="Results store (SQLite)."),
) -> None:
    """Facts vs rules at fixed N and growing D: fact recall saturates, the rule keeps improving."""
    use_log_option(log)
    from rich.table import Table

    from scalinglab.config import build_config
    from scalinglab.probes.facts_rules import FactsRulesConfig, parse_items, run_facts_rules, summary_lines
    from scalinglab.store import open_store
    from scalinglab.train import Interrupted

    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    cfg = build_config(FactsRulesConfig, config, set_, items=parse_items(items) if items is not None else None,
                       rule_share=rule_share, alphabet=alphabet, d_model=d_model, n_layer=n_layer, epochs=epochs, optim__lr=lr,
                       batch_size=batch_size, seed=seed)
    open_store(db)
    try:
        result = run_facts_rules(cfg, out, db=db, workers=workers, figures=figures or out / "figures",
                                 console=err_console, backend=backend_spec(backend, address))
    except (KeyboardInterrupt, Interrupted):
        err_console.print("stopped; run the same command again to continue (finished fits are kept)")
        raise typer.Exit(130)
    table = Table("D", "facts", "recalled", "bits stored", "rule acc (unseen)", "rule acc (train)", "exposures",
                  "train s")
    for r in result.table.itertuples():
        table.add_row(f"{r.n_items:,}", f"{r.n_facts:,}", f"{r.facts_recalled:,.0f}", f"{r.fact_bits_stored:,.0f}",
                      f"{r.rule_test_acc:.3f}", f"{r.rule_train_acc:.3f}", f"{r.exposures:.0f}", f"{r.wall_time:.0f}")
    console.print(table)
    for line in summary_lines(result):
        console.print(line, highlight=False)
    console.print(f"figure {result.figures[0]}; results in {db} (probe:facts-rules {cfg.key()})")
