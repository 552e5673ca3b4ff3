"""`scalinglab probe capacity` and `scalinglab probe memorisation`: storage vs structure."""

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
    parse_number,
    parse_numbers,
    use_log_option,
)
from scalinglab.cli.probe import probe_app
from scalinglab.errors import UserError
from scalinglab.fmt import human


def _check_db(db: Path) -> None:
    from scalinglab.store import open_store

    open_store(db)  # a bad --db fails here, before any training


@probe_app.command()
def capacity(
    models: Optional[str] = typer.Option(None, help="Model shapes LAYERSxWIDTH, comma-separated (default 1x24,1x32,1x48,1x64)."),
    vocab: Optional[int] = typer.Option(None, help="Vocabulary V of the random sequences (default 256)."),
    seq_len: Optional[int] = typer.Option(None, help="Tokens per sequence S, S-1 of them scored (default 32)."),
    bits_per_param: Optional[str] = typer.Option(None, help="Data set sizes per model, as H(data) / parameters (default 1,2,3,4,6)."),
    steps: Optional[int] = typer.Option(None, help="Training steps per run (default 4000; runs that memorise everything stop early)."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate (AdamW, β = (0.9, 0.98); default 3e-2)."),
    schedule: Optional[str] = typer.Option(None, help="constant | cosine (default) | wsd."),
    batch_tokens: Optional[int] = typer.Option(None, help="Scored tokens per step (default 2048); smaller data sets train full batch."),
    seed: Optional[int] = typer.Option(None, help="Seed of the data and the initialisation (default 0)."),
    workers: int = typer.Option(2, help="Parallel worker processes (one torch thread each)."),
    device: Optional[str] = typer.Option(None, help="cpu (default) | cuda | cuda:N."),
    config: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    backend: str = typer.Option("local", "--backend", help=BACKEND_HELP),
    log: Optional[str] = typer.Option(None, "--log", help=LOG_HELP),
    address: Optional[str] = typer.Option(None, "--address", help=ADDRESS_HELP),
    db: Path = typer.Option(DEFAULT_DB, "--db", help="Results store (SQLite)."),
    out: Path = typer.Option(Path("runs/probes/capacity"), help="Folder of the fits (resumable)."),
    figures: Optional[Path] = typer.Option(None, help="Folder for the figures (default: OUT/figures)."),
) -> None:
    """Memorisation capacity in bits per parameter on uniformly random sequences (Morris et al. 2025)."""
    use_log_option(log)
    from scalinglab.config import build_config
    from scalinglab.probes.capacity import CapacityConfig, parse_models, run_capacity

    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    cfg = build_config(CapacityConfig, config, set_, models=parse_models(models) if models is not None else None,
                       vocab_size=vocab, seq_len=seq_len, steps=steps, optim__lr=lr, optim__schedule=schedule,
                       data_bits_per_param=parse_numbers(bits_per_param, "--bits-per-param") if bits_per_param else None,
                       max_batch_tokens=batch_tokens, seed=seed, device=device)
    _check_db(db)
    result = run_capacity(cfg, out, db, workers=workers, figures=figures or out / "figures", console=err_console,
                          backend=backend_spec(backend, address))
    paths = result.figures
    _print_capacity(result)
    console.print(f"figures: {', '.join(str(p) for p in paths)}; summary stored in {db} "
                  f"(kind probe:capacity, key {cfg.key()})", highlight=False)


def _print_capacity(result) -> None:
    from rich.table import Table

    table = Table("model", "P", "capacity bits", "bits/P", "at H/P", "gain, last 2x steps", "2x to 3.6",
                  "held-out peak H/P", title="capacity per model (P: total parameters, H: data entropy)")
    for row in result.models.itertuples():
        table.add_row(row.model, f"{row.params:,}", f"{row.capacity_bits:,.0f}", f"{row.bits_per_param:.2f}",
                      f"{row.at_data_bits_per_param:.1f}", f"{row.doubling_gain:.1%}", f"{row.doublings_to_anchor:.1f}",
                      f"{row.double_descent_peak_data_bits_per_param:.1f}")
    console.print(table)
    fit = result.fit
    interval = f" (95% CI {fit.low:.2f}–{fit.high:.2f})" if fit.low is not None else ""
    r2 = f", R² {fit.r2:.3f}" if fit.r2 is not None else ""
    slope = f", log-log slope {fit.log_slope:.2f}" if fit.log_slope is not None else ""
    s = result.summary()
    console.print(
        f"α = {fit.alpha:.2f} bits/parameter{interval}{r2}{slope} over {fit.n_models} models (total parameters; "
        f"non-embedding: {result.fit_nonembedding.alpha:.2f}). Anchor: 3.6 (bf16) / 3.83 (fp32) at full convergence.",
        highlight=False)
    cpu = result.cpu_time
    console.print(f"compute: {cpu / 60:.1f} CPU-minutes in this invocation (≈ {cpu / 120:.1f} minutes on 2 idle cores; "
                  "fits finished earlier are loaded, not retrained)", highlight=False)
    verdict = "converged" if s["converged"] else "NOT converged"
    console.print(
        f"convergence: {verdict}; the capacity fits gained {s['median_doubling_gain']:.1%} (median, worst "
        f"{s['max_doubling_gain']:.1%}) of their bits from their last doubling of steps (against twin fits with "
        f"half the steps); at that log-linear rate ~{s['median_doublings_to_anchor'] or float('nan'):.1f} more "
        "doublings would reach 3.6 bits/param (optimistic: the gain per doubling shrinks).",
        highlight=False)


@probe_app.command()
def memorisation(
    corpus: Optional[str] = typer.Option(None, help="'stdlib' (default), a text file, a directory, .jsonl or .parquet."),
    tokenizer: Optional[str] = typer.Option(None, help="byte (default) or bpe."),
    size: Optional[str] = typer.Option(None, help="Model preset (fixed N; default 30k): 10k 30k 100k ..."),
    params: Optional[str] = typer.Option(None, help="Or any non-embedding parameter count, e.g. 5e4."),
    tpp: Optional[str] = typer.Option(None, help="Unique training tokens per parameter D/N, comma-separated (default 1,4,16,64,200)."),
    budget_tpp: Optional[float] = typer.Option(None, help="Training tokens per parameter of every run "
                                               "(default: the largest D/N: its data is seen once)."),
    seq_len: Optional[int] = typer.Option(None, help="Tokens per training window (default 128)."),
    eval_windows: Optional[int] = typer.Option(None, help="Training and val windows scored per D (default 1024)."),
    alpha: Optional[float] = typer.Option(None, help="Bits/parameter to use (default: the latest capacity "
                                          "probe in the store, else the 3.6 anchor)."),
    study: Optional[str] = typer.Option(None, help="Also measure this study's cooldown branches (group name)."),
    seed: Optional[int] = typer.Option(None, help="Seed of the subsets, initialisation and data order (default 0)."),
    workers: int = typer.Option(2, help="Parallel worker processes (one torch thread each)."),
    device: Optional[str] = typer.Option(None, help="cpu (default) | cuda | cuda:N."),
    config: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    backend: str = typer.Option("local", "--backend", help=BACKEND_HELP),
    log: Optional[str] = typer.Option(None, "--log", help=LOG_HELP),
    address: Optional[str] = typer.Option(None, "--address", help=ADDRESS_HELP),
    db: Path = typer.Option(DEFAULT_DB, "--db", help="Results store (SQLite)."),
    # the folder keeps the older spelling so that reruns find (and resume) the runs already there
    out: Path = typer.Option(Path("runs/probes/memorization"), help="Folder of the runs (resumable)."),
    figures: Optional[Path] = typer.Option(None, help="Folder for the figures (default: OUT/figures)."),
    cache_dir: Optional[Path] = typer.Option(None, help="Prepared-corpus cache."),
) -> None:
    """Sample-specific memorisation vs generalisation at fixed N and growing D, and membership inference."""
    use_log_option(log)
    import dataclasses

    from scalinglab.config import build_config
    from scalinglab.probes.memorisation import MemorisationConfig, run_memorisation

    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    cfg = build_config(MemorisationConfig, config, set_, corpus__source=corpus, corpus__tokenizer=tokenizer,
                       size=size, params=parse_number(params, "--params") if params else None,
                       tokens_per_param=parse_numbers(tpp, "--tpp") if tpp else None, budget_tpp=budget_tpp,
                       seq_len=seq_len, eval_windows=eval_windows, alpha=alpha, seed=seed, device=device)
    if params and not size:  # a parameter count given replaces the default preset
        cfg = dataclasses.replace(cfg, size=None)
    cfg.corpus.validate()
    _check_db(db)
    result = run_memorisation(cfg, out, db, workers=workers, cache_dir=cache_dir, study=study,
                              figures=figures or out / "figures", console=err_console,
                              backend=backend_spec(backend, address))
    paths = result.figures
    _print_memorisation(result)
    console.print(f"figures: {', '.join(str(p) for p in paths)}; summary stored in {db} "
                  f"(kind probe:memorization, key {cfg.key()})", highlight=False)


# The older spelling of the command still runs, hidden from `scalinglab probe --help`.
probe_app.command("memorization", hidden=True)(memorisation)


def _print_memorisation(result) -> None:
    from rich.table import Table

    console.print(f"model: N = {result.N:,} non-embedding ({result.P:,} total) parameters; capacity α·P = "
                  f"{result.capacity_bits:,.0f} bits with α = {result.alpha:.2f} ({result.alpha_source}); data: "
                  f"{result.bits_per_token:.3f} bits/token (xz -9 on the train split)", highlight=False)
    bits = Table("D/N", "train bpt", "val bpt", "memorised", "raw ref", "cheap", "generalised", "share",
                 title="bits of the training set: sample-specific vs generalised",
                 caption="memorised: reference estimate, calibrated on val (± s.e.); raw ref: uncalibrated; cheap: "
                         "(val − train) × D; share: memorised / training-set gain")
    for row in result.rows.itertuples():
        share = "-" if row.sample_specific_share is None else f"{row.sample_specific_share:.1%}"
        bits.add_row(f"{row.tokens_per_param:g}", f"{row.train_bits_per_token:.3f}", f"{row.val_bits_per_token:.3f}",
                     f"{human(row.memorised_bits_calibrated)}±{human(row.memorised_bits_calibrated_se)}",
                     human(row.memorised_bits), human(row.cheap_memorised_bits), human(row.generalised_bits), share)
    console.print(bits)
    mia = Table("D/N", "D (tokens)", "AUC loss", "AUC reference", "D·b > α·P", title="membership inference")
    for row in result.rows.itertuples():
        mia.add_row(f"{row.tokens_per_param:g}", f"{row.D:,}", f"{row.auc_loss:.3f}", f"{row.auc_reference:.3f}",
                    "no" if row.storable else "yes")
    console.print(mia)
    if result.study is not None and len(result.study):
        st = Table("N", "D", "D/N", "epoch", "val bpt", "cheap gap×D", "AUC loss", title="the study's runs")
        for row in result.study.itertuples():
            st.add_row(f"{row.N:,}", f"{row.D:,.0f}", f"{row.tokens_per_param:.1f}", f"{row.epoch or 0:.2f}",
                       f"{row.val_bits_per_token:.3f}", human(row.cheap_memorised_bits), f"{row.auc_loss:.3f}")
        console.print(st)
    lim = Table("model", "N", "P", "α·P bits", "storable up to D", "as D/N", title="storage limit: D·b = α·P")
    for limit in result.limits:
        lim.add_row(limit.label, f"{limit.N:,}", f"{limit.P:,}", human(limit.capacity_bits), human(limit.limit_tokens),
                    f"{limit.limit_tokens_per_param:.2f}")
    console.print(lim)
