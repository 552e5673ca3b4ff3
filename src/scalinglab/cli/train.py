"""`scalinglab train`, `scalinglab runs`, `scalinglab export`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from scalinglab.cli.app import (
    CORPUS_HELP,
    DEFAULT_DB,
    LOG_HELP,
    MAX_BYTES_HELP,
    SPLIT_HELP,
    TOKENIZER_HELP,
    app,
    console,
    err_console,
    max_bytes_option,
    parse_number,
    print_table,
    use_log_option,
)
from scalinglab.errors import UserError


@app.command()
def train(
    corpus: Optional[str] = typer.Option(None, help=CORPUS_HELP),
    field: Optional[str] = typer.Option(None, help="JSON-lines field / Parquet column / data set field with the text."),
    glob: Optional[str] = typer.Option(None, help="Files to read from a directory corpus."),
    split: Optional[str] = typer.Option(None, help=SPLIT_HELP),
    max_bytes: Optional[str] = typer.Option(None, help=MAX_BYTES_HELP),
    tokenizer: Optional[str] = typer.Option(None, help=TOKENIZER_HELP),
    vocab_size: Optional[int] = typer.Option(None, help="BPE vocabulary size."),
    size: Optional[str] = typer.Option(None, help="Model preset: 10k 30k 100k 300k 1m 3m 10m 30m gpt2."),
    params: Optional[str] = typer.Option(None, help="Any non-embedding parameter count, e.g. 2e5."),
    tokens: Optional[str] = typer.Option(None, help="Training tokens, e.g. 2e6."),
    tpp: Optional[float] = typer.Option(None, help="Training tokens per non-embedding parameter (default 20)."),
    batch_size: Optional[int] = typer.Option(None, help="Sequences per step (default: size rule)."),
    seq_len: Optional[int] = typer.Option(None, help="Tokens per sequence (default 256)."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate (default: width rule)."),
    warmup: Optional[int] = typer.Option(None, help="Warmup steps (default: 5% of the run, 16..256)."),
    schedule: Optional[str] = typer.Option(None, help="constant | cosine | wsd (default)."),
    cooldown_frac: Optional[float] = typer.Option(None, help="WSD cooldown share of the run (default 0.2)."),
    cooldown_shape: Optional[str] = typer.Option(None, help="WSD cooldown shape: 1-sqrt (default) | linear | cosine."),
    eval_points: Optional[int] = typer.Option(None, help="Evaluations, log-spaced (default 12)."),
    eval_tokens: Optional[int] = typer.Option(None, help="Tokens per evaluation set (default 65536; 0 = whole val split)."),
    seed: Optional[int] = typer.Option(None, help="Seed for init and data order."),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda | cuda:N."),
    dtype: Optional[str] = typer.Option(None, help="auto | float32 | bfloat16."),
    threads: Optional[int] = typer.Option(None, help="CPU threads (default 1)."),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile on CUDA."),
    config: Optional[Path] = typer.Option(None, help="TOML config with [corpus] [model] [optim] [train] sections."),
    set_: list[str] = typer.Option([], "--set", help="Override: section.field=value (repeatable)."),
    db: Path = typer.Option(DEFAULT_DB, "--db", help="Results store (SQLite)."),
    out: Optional[Path] = typer.Option(None, help="Run directory (default runs/<run id>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    cache_dir: Optional[Path] = typer.Option(None, help="Prepared-corpus cache (default ~/.cache/scalinglab)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    log: Optional[str] = typer.Option(None, "--log", help=LOG_HELP),
    nproc: Optional[int] = typer.Option(None, "--nproc", help="Train data-parallel over this many processes "
                                        "on this machine (through torch.distributed.run; 1: this process)."),
) -> None:
    """Train one model and record every evaluation in the results store.

    Data-parallel: `--nproc K`, or `torchrun --nproc_per_node=K -m scalinglab train ...`; the K
    ranks split each global batch, rank 0 evaluates and writes."""
    from scalinglab.config import build_run_config
    from scalinglab.corpus import prepare_corpus
    from scalinglab.device import join_ranks, launched_ranks, leave_ranks
    from scalinglab.model import count_params
    from scalinglab.progress import RichReporter
    from scalinglab.store import open_store
    from scalinglab.train import Diverged, Interrupted, plan_run, train_run
    from scalinglab.train.launch import launch_ranks, without_nproc
    from scalinglab.train.loop import check_run_memory, check_split

    use_log_option(log)
    if nproc is not None and nproc < 1:
        raise UserError(f"--nproc must be at least 1, got {nproc}")
    launched = launched_ranks()
    if nproc is not None and launched > 1 and nproc != launched:
        raise UserError(f"--nproc {nproc} given to a run torchrun started with {launched} ranks; drop --nproc")
    launch = nproc is not None and nproc > 1 and launched == 1
    if tokens is not None and tpp is not None:  # one budget, said once: which would win is not obvious
        raise UserError(f"give the budget once: --tokens {tokens} or --tpp {tpp:g}, not both")

    cfg = build_run_config(
        config, set_,
        corpus__source=corpus, corpus__field=field, corpus__glob=glob, corpus__tokenizer=tokenizer,
        corpus__vocab_size=vocab_size, corpus__split=split, corpus__max_bytes=max_bytes_option(max_bytes), model__size=size,
        model__params=parse_number(params, "--params") if params else None,
        train__tokens=parse_number(tokens, "--tokens") if tokens else None, train__tpp=tpp,
        train__batch_size=batch_size, train__seq_len=seq_len, optim__lr=lr, optim__warmup=warmup,
        optim__schedule=schedule, optim__cooldown_frac=cooldown_frac, optim__cooldown_shape=cooldown_shape,
        train__eval_points=eval_points, train__eval_tokens=eval_tokens, train__seed=seed, train__device=device,
        train__dtype=dtype, train__threads=threads, train__compile=compile,
    )
    cfg.validate()
    if launch:
        # refuse here what every rank would refuse, then start the ranks (they prepare the corpus
        # from the cache this fills, and plan the same run)
        plan = plan_run(cfg, prepare_corpus(cfg.corpus, cache_dir))
        check_split(plan.batch_size, nproc)
        check_run_memory(plan, ranks=nproc)
        raise typer.Exit(launch_ranks(nproc, without_nproc(sys.argv[1:])))
    ranks = join_ranks(cfg.train.device)
    lead = ranks is None or ranks.lead
    say = err_console.print if lead else (lambda *args, **kwargs: None)
    try:
        store = open_store(db) if lead else None  # the other ranks write nothing
        say(f"preparing corpus {cfg.corpus.source!r} ({cfg.corpus.tokenizer})...", highlight=False)

        def prepare():
            return prepare_corpus(cfg.corpus, cache_dir)

        # data-parallel, rank 0 first: the others then read its cache instead of building their own
        prepared = prepare() if ranks is None else ranks.lead_then_follow(prepare, prepare)
        plan = plan_run(cfg, prepared)
        counts = count_params(plan.model)
        out_dir = out or Path("runs") / plan.run_id
        tokens_total = plan.total_steps * plan.batch_tokens
        over = f" over {ranks.world} ranks" if ranks is not None else ""
        say(
            f"run {plan.run_id}: {plan.model.n_layer} layers x {plan.model.d_model} wide, N = {counts.non_embedding:,} "
            f"non-embedding ({counts.total:,} total), {tokens_total:,} tokens "
            f"({tokens_total / counts.non_embedding:.1f}/param), batch {plan.batch_size}x{plan.seq_len}{over}, "
            f"lr {plan.lr:.2e}, {plan.schedule.kind}, {plan.total_steps} steps",
            highlight=False,
        )
        if resume and not (out_dir / "config.json").exists():
            raise UserError(f"nothing to resume in {out_dir}; drop --resume to start this run, or pass the --out of the run")
        reporter = None if quiet or not lead else RichReporter(plan.batch_tokens, err_console)
        result = train_run(plan, prepared, store, out_dir, resume=resume, reporter=reporter, ranks=ranks)
    except Diverged as exc:
        say(f"diverged: {exc}; recorded in {db}", highlight=False)
        raise typer.Exit(1)
    except Interrupted as exc:
        say(f"stopped at step {exc.step}; continue with the same command plus --resume", highlight=False)
        raise typer.Exit(130)
    except UserError as exc:
        if lead:
            raise
        raise typer.Exit(exc.exit_code)  # rank 0 says it (a FollowerError: rank 0 already said why)
    finally:
        leave_ranks(ranks)
    if not lead:
        return
    final = result.points[-1] if result.points else None
    if final:
        console.print(
            f"done: val {final['val_loss']:.4f} nats/token, {final['val_bpb']:.4f} bits/byte, "
            f"train-val gap {final['val_loss'] - final['train_loss']:+.4f}; run {result.run_id} in {out_dir}, "
            f"points in {db}",
            highlight=False,
        )


@app.command()
def runs(db: Path = typer.Option(DEFAULT_DB, "--db", help="Results store."),
         group: Optional[str] = typer.Option(None, help="Only runs of this study/probe group.")) -> None:
    """List the runs in the results store, oldest first."""

    from scalinglab.fmt import human
    from scalinglab.store import open_store

    if not db.exists():
        raise UserError(f"no results store at {db}; train something first or pass --db")
    store = open_store(db)
    rows = []
    for run in store.runs(group=group):
        points = store.points(run["run_id"])
        last = points[-1] if points else {}
        n, tokens = run["n_nonembedding"] or 0, last.get("tokens") or 0
        rows.append((run["run_id"], run["kind"], run["status"], human(n), f"{tokens / n:,.1f}" if n else "-",
                     _num(last.get("val_loss")), run["group_name"] or ""))
    # whole run ids (what other commands take), as a table or, too narrow for one, a block per run
    print_table(["run", "kind", "status", "N", "tokens/N", "val loss", "group"], [list(r) for r in rows])


def _num(value) -> str:
    return "-" if value is None else f"{value:.4f}"


@app.command()
def export(
    output: Path = typer.Argument(..., help="File to write."),
    format: Optional[str] = typer.Option(None, "--format", help="csv or parquet (default: from the file's extension)."),
    db: Path = typer.Option(DEFAULT_DB, "--db", help="Results store."),
    all_runs: bool = typer.Option(False, "--all", help="Include runs that did not finish."),
) -> None:
    """Write every point joined with its run to CSV or Parquet."""
    from scalinglab.store import load_points

    if format is None:
        format = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}.get(output.suffix.lower())
        if format is None:
            raise UserError(f"cannot tell the format of {output.name} from its extension; name it .csv or .parquet, "
                            "or pass --format")
    if format not in ("csv", "parquet"):
        raise UserError(f"--format must be csv or parquet, got {format!r}")
    frame = load_points(db, status=None if all_runs else "done")
    try:
        if format == "csv":
            frame.to_csv(output, index=False)
        else:
            frame.to_parquet(output, index=False)
    except OSError as exc:
        raise UserError(f"cannot write {output}: {exc.strerror}; check the path") from None
    console.print(f"wrote {len(frame)} points from {frame['run_id'].nunique()} runs to {output}")
