"""`scalinglab study`: the fixed-capacity data-scaling study, the main job."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from scalinglab.cli.app import (
    ADDRESS_HELP,
    BACKEND_HELP,
    CONFIG_HELP,
    CORPUS_HELP,
    DEFAULT_DB,
    LOG_HELP,
    MAX_BYTES_HELP,
    SET_HELP,
    SPLIT_HELP,
    TOKENIZER_HELP,
    app,
    backend_spec,
    console,
    err_console,
    max_bytes_option,
    print_table,
    use_log_option,
)
from scalinglab.errors import UserError
from scalinglab.fmt import human


def print_grid(study) -> None:
    from scalinglab.study.grid import peak_memory

    grid = study.grid
    rows = []
    for s in grid.sizes:
        largest = max(m.end_step for m in s.milestones) * s.batch_tokens
        rows.append([
            f"{s.n:,}", f"{s.model.n_layer}x{s.model.d_model}", f"{s.batch_size}x{s.seq_len}", f"{s.lr:.2e}",
            str(s.warmup), " ".join(f"{m.tpp:.3g}" for m in s.milestones), human(largest),
            human(s.tokens_per_s) if s.tokens_per_s else "-", f"{peak_memory(study.config, s).total / 2**20:,.0f} MiB",
        ])
    print_table(["N (non-emb)", "shape", "batch", "lr", "warmup", "milestones (tokens/param)", "largest D", "est. tok/s",
                 "memory/run"], rows, title=f"study {study.study_id}: budget {grid.budget.describe()}, "
                f"{study.config.workers} workers, cooldown {study.config.cooldown_frac:.0%} {study.config.cooldown_shape}")
    estimate = grid.estimate_seconds()
    saving = grid.total_flops / grid.separate_runs_flops
    console.print(
        f"total {grid.total_flops:.3g} FLOPs ({saving:.2f}x of separate cosine runs for the same points)"
        + (f", estimated {estimate / 60:.1f} min" if estimate else "")
        + ("" if study.replanned else " (plan reused from the last invocation)")
    )
    console.print(f"writes up to {study.disk_bytes / 2**20:,.0f} MiB of checkpoints and snapshots to {study.study_dir} "
                  "(a trunk's snapshots are deleted as their branches finish; --keep-snapshots keeps them)")
    if grid.max_epochs > 1:
        console.print(f"the largest D needs {grid.max_epochs:.2f} epochs over {grid.unique_train_tokens:,} unique "
                      "train tokens: data will repeat, and each point records its epoch count")
    cfg = study.config
    if cfg.control:
        from scalinglab.study.grid import control_tokens

        epochs = ", ".join(
            f"N = {s.n:,}: {max(m.end_step for m in s.milestones) * s.batch_tokens / control_tokens(cfg, s):.1f}"
            for s in grid.sizes)
        console.print(f"control ({cfg.control}): a second trunk per N with the same steps and milestones on only the "
                      f"first {cfg.control_unique:g} tokens/param of the train split, repeated (epochs at the largest "
                      f"D: {epochs}); it doubles the work above")


class StudyProgress:
    """One bar over all training steps of the study, and the runs in flight."""

    def __init__(self, tasks) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        from scalinglab.study.runner import steps_done

        self._steps_done = steps_done
        self.total = sum(t.steps for t in tasks)
        self.progress = Progress(TextColumn("[bold]study"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                                 TextColumn("{task.fields[state]}"), TimeElapsedColumn(), TextColumn("eta"),
                                 TimeRemainingColumn(), console=err_console)
        self.task = self.progress.add_task("study", total=self.total, state="")
        self._reported: set[str] | None = None  # runs already announced (None: before the first tick)

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def tick(self, tasks) -> None:
        done = sum(self._steps_done(t) for t in tasks)
        running = [t for t in tasks if t.status == "running"]
        finished = sum(t.status == "done" for t in tasks)
        # a line per run finished in this invocation: the only progress a log file (no live bar) gets
        first_tick = self._reported is None
        self._reported = self._reported or set()
        for t in tasks:
            if t.status == "done" and t.plan.name not in self._reported:
                self._reported.add(t.plan.name)
                if not first_tick:
                    self.progress.console.print(f"  done: {t.plan.name.split('/', 1)[1]}", highlight=False)
        state = f"{finished}/{len(tasks)} runs done; running: " + ", ".join(
            t.plan.name.split("/", 1)[1] for t in running)
        self.progress.update(self.task, completed=done, state=state)


@app.command()
def study(
    preset: str = typer.Option("default", help="smoke (<1 min) | default (~10 min on 2 cores) | gpu (~1 h on one GPU)."),
    corpus: Optional[str] = typer.Option(None, help=CORPUS_HELP),
    field: Optional[str] = typer.Option(None, help="JSON-lines field / Parquet column / data set field with the text."),
    glob: Optional[str] = typer.Option(None, help="Files to read from a directory corpus."),
    split: Optional[str] = typer.Option(None, help=SPLIT_HELP),
    max_bytes: Optional[str] = typer.Option(None, help=MAX_BYTES_HELP),
    tokenizer: Optional[str] = typer.Option(None, help=TOKENIZER_HELP),
    vocab_size: Optional[int] = typer.Option(None, help="BPE vocabulary size."),
    sizes: Optional[str] = typer.Option(None, help="Comma-separated model sizes: presets or counts (1e4,3e4,1e5)."),
    budget: Optional[str] = typer.Option(None, help="Wall clock (10m, 2h) or compute (1e15flops); 'none' = no limit."),
    max_doublings: Optional[int] = typer.Option(None, help="Largest milestone allowed: 20 x 2^k tokens/param."),
    cooldown_frac: Optional[float] = typer.Option(None, help="Cooldown share of each milestone (default 0.2)."),
    cooldown_shape: Optional[str] = typer.Option(None, help="1-sqrt (default) | linear | cosine."),
    workers: Optional[int] = typer.Option(None, min=1, help="Parallel training processes (default: one per CPU core)."),
    seq_len: Optional[int] = typer.Option(None, help="Tokens per sequence."),
    seed: Optional[int] = typer.Option(None, help="Seed of every run."),
    device: Optional[str] = typer.Option(None, help="cpu | cuda."),
    name: Optional[str] = typer.Option(None, help="Study name (default: the preset's)."),
    no_repeat: bool = typer.Option(False, "--no-repeat", help="Stop if the largest D would repeat data."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the planned grid and stop."),
    keep_snapshots: bool = typer.Option(False, "--keep-snapshots", help="Keep each trunk snapshot after its branches finish."),
    report: bool = typer.Option(True, "--report/--no-report", help="Write the study's report (report/index.html in the study folder) at the end."),
    backend: str = typer.Option("local", "--backend", help=BACKEND_HELP),
    address: Optional[str] = typer.Option(None, "--address", help=ADDRESS_HELP),
    log: Optional[str] = typer.Option(None, "--log", help=LOG_HELP),
    fit_from: float = typer.Option(20.0, "--fit-from", help="Fit L(D) per N over the points at and past this many tokens/param."),
    fit_plateau: bool = typer.Option(False, "--fit-plateau", help="Keep points on the unigram plateau (val loss within 0.1 nats of the train split's unigram entropy) in the fits."),
    control: Optional[str] = typer.Option(None, "--control", help="repeat: per N, a control trunk with the same steps on a fixed unique subset, repeated (separates new data from more steps); none: no control. Default: the preset's (on in gpu)."),
    control_unique: Optional[float] = typer.Option(None, "--control-unique", help="The control's unique tokens in tokens/param (default 20)."),
    config: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP + " Applied over the preset."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    db: Path = typer.Option(DEFAULT_DB, "--db", help="Results store (SQLite)."),
    out: Path = typer.Option(Path("study"), "--out", help="Where study folders go."),
    cache_dir: Optional[Path] = typer.Option(None, help="Prepared-corpus cache."),
) -> None:
    """Train models of fixed size N on ever more data D (far past 20 tokens/param), one WSD trunk
    per N with a cooldown branch per D, and fit how fast the loss keeps falling."""
    use_log_option(log)
    from scalinglab.config import build_config
    from scalinglab.device import default_workers
    from scalinglab.study import StudyConfig, analyse, execute, prepare_study, study_preset

    cfg = build_config(
        StudyConfig, config, set_, base=study_preset(preset),
        sizes=[s.strip() for s in sizes.split(",") if s.strip()] if sizes else None,
        budget=None if budget is None else ("" if budget.lower() == "none" else budget),
        max_doublings=max_doublings, cooldown_frac=cooldown_frac, cooldown_shape=cooldown_shape,
        workers=workers, seq_len=seq_len, seed=seed, device=device, name=name, no_repeat=no_repeat or None,
        corpus__source=corpus, corpus__field=field, corpus__glob=glob, corpus__tokenizer=tokenizer,
        corpus__vocab_size=vocab_size, corpus__split=split, corpus__max_bytes=max_bytes_option(max_bytes),
        control=control, control_unique=control_unique,
    )
    if cfg.budget == "":
        cfg.budget = None
    cfg.check_control()
    if control_unique is not None and not cfg.control:
        raise UserError("--control-unique applies only to a study with a control; add --control repeat")
    if workers is None and cfg.device == "cpu" and "workers" not in _given(config, set_):
        cfg.workers = default_workers()

    if not (fit_from >= 0 and fit_from == fit_from and fit_from != float("inf")):
        raise UserError(f"--fit-from must be a number of tokens/param >= 0, got {fit_from}")
    spec = backend_spec(backend, address)
    err_console.print(f"preparing corpus {cfg.corpus.source!r} and planning the grid...")
    prepared = prepare_study(cfg, db, out, cache_dir=cache_dir)
    print_grid(prepared)
    if dry_run:
        return
    try:
        with StudyProgress(prepared.runs.tasks) as bar:
            tasks = execute(prepared, on_tick=bar.tick, keep_snapshots=keep_snapshots, backend=spec)
    except KeyboardInterrupt:
        err_console.print("study interrupted; the running runs saved checkpoints. Rerun the same command to resume.")
        raise typer.Exit(130)
    for task in tasks:
        if task.status in ("diverged", "failed", "skipped"):
            err_console.print(f"{task.plan.name}: {task.status} {task.message.splitlines()[0] if task.message else ''}")
    result = analyse(prepared, fit_from_tpp=fit_from, fit_plateau=fit_plateau)
    print_results(result)
    console.print(f"results: {result.csv}  figures: {', '.join(str(p) for p in result.figures)}  store: {db} "
                  f"(group {prepared.study_id})")
    if report and len(result.points):
        from scalinglab.report.build import build_report

        with err_console.status("writing the report") as status:
            page = build_report(db, prepared.study_dir / "report", study=prepared.study_id, cache_dir=cache_dir,
                                progress=lambda what: status.update(f"report: {what}"), fit_from_tpp=fit_from).page
        console.print(f"report: {page}")
    if any(t.status == "failed" for t in tasks):
        err_console.print("some runs failed (above); rerun the same command to retry them")
        raise typer.Exit(1)


def _given(config: Path | None, sets: list[str]) -> set[str]:
    """The top-level fields a config file or --set gave (they win over a command's own rules)."""
    from scalinglab.config import apply_sets, read_toml

    return set(apply_sets(read_toml(config), sets))


def print_results(result) -> None:

    points = result.points
    control = "control_val_loss" in points.columns
    plateau = "plateau" in points.columns and bool(points["plateau"].any())
    headers = ["N", "D", "tokens/param", "val loss", "val bpb", "train-val gap", "epochs"]
    if control:
        headers += ["control loss", "control epochs", "unique-data gain"]
    table = []
    for row in points.itertuples():
        mark = " *" if plateau and row.plateau else ""
        cells = [f"{row.N:,}", human(row.D), f"{row.tokens_per_param:.3g}", f"{row.val_loss:.4f}{mark}",
                 f"{row.val_bpb:.4f}", f"{row.gap:+.4f}", f"{row.epoch:.2f}"]
        if control:
            done = row.control_val_loss == row.control_val_loss  # NaN: the control's branch has not finished
            cells += [f"{row.control_val_loss:.4f}" if done else "-", f"{row.control_epoch:.2f}" if done else "-",
                      f"{row.unique_data_gain:+.4f}" if done else "-"]
        table.append(cells)
    print_table(headers, table)
    if plateau:
        how = ("kept in the fits (--fit-plateau)" if result.fit_plateau
               else "left out of the fits (--fit-plateau keeps them)")
        console.print(f"* on the unigram plateau: val loss within {result.plateau_nats:g} nats of "
                      f"{result.unigram_entropy:.4f} nats/token, the unigram entropy of the train split's token counts "
                      f"(a model that has learnt token frequencies and no context yet); {how}")
    if control:
        console.print(f"control loss: the same steps and milestones on only the first {result.control_unique:g} "
                      "tokens/param of the train split, repeated; unique-data gain = control loss - val loss (positive: "
                      "the new data helped at equal steps)")
    if not len(result.summary):
        return
    fits = []
    floorless = []
    for row in result.summary.itertuples():
        beta = _with_interval(row.beta) if row.beta else "no fit (< 4 points)"
        e = _with_interval(row.E) if row.E else "-"
        if row.E and row.E[0] < 1e-6:  # the fit put the floor at its bound: the curve shows none yet
            e, floorless = "0 (bound)", floorless + [f"{row.N:,}"]
        nxt = "-" if row.next_doubling_gain is None or row.next_doubling_gain != row.next_doubling_gain else \
            f"{row.next_doubling_gain:.4f}"  # None or NaN: no fit
        fits.append([f"{row.N:,}", beta, e, f"{row.loss_at_20:.4f}", f"{row.loss_at_max:.4f}",
                     f"{row.max_tokens_per_param:.0f}", f"{row.improvement_past_20:.4f}", nxt])
    print_table(["N", "β [95%]", "E [95%]", "L at 20", "L at max", "max D/N", "gain", "next 2x"], fits,
                title="does the loss keep improving at fixed N? L(D) = E + B/D^β per N")
    console.print("L at 20 / L at max: val loss (nats/token) at 20 tokens/param and at the largest D; gain: how "
                  "much the loss fell between them (positive: it improved); next 2x: how much the fit predicts it "
                  "falls from doubling the largest D once more")
    console.print(f"fits over each N's points at and past {result.fit_from_tpp:g} tokens/param (--fit-from; shorter "
                  "branches sit near or inside the warmup); intervals: 95% bootstrap over those points (shown from "
                  "6), conditional on the one trunk they share, so they understate seed-to-seed variation")
    if floorless:
        console.print(f"N = {', '.join(floorless)}: no loss floor is visible yet (E at its bound 0): the points "
                      "still fall as a pure power law, so β describes the range measured, not the asymptote")
    print_plateau(result)
    if "gain_from_steps" in result.summary.columns:
        print_control_split(result)


def print_plateau(result) -> None:
    """Which points the plateau rule took out of the fits (those below --fit-from were not fitted anyway)."""
    fitted, below = [], []
    for row in result.summary.itertuples():
        tpps = getattr(row, "plateau_tokens_per_param", None) or []
        cut = result.fit_from_tpp * 0.98
        for where, chosen in ((fitted, [t for t in tpps if t >= cut]), (below, [t for t in tpps if t < cut])):
            if chosen:
                where.append(f"N = {row.N:,} at {', '.join(f'{t:.3g}' for t in chosen)}")
    if fitted:
        verb = "kept in the fits (--fit-plateau)" if result.fit_plateau else "left out of the fits"
        console.print(f"on the unigram plateau, {verb}: {'; '.join(fitted)} tokens/param")
    if below:
        console.print(f"on the unigram plateau, below --fit-from {result.fit_from_tpp:g} (not fitted in any case): "
                      f"{'; '.join(below)} tokens/param")


def print_control_split(result) -> None:
    """Per N: how much of the gain from D0 to the largest D came from new data and how much from
    more steps on the same data."""
    console.print(f"more data, or only more steps? (control: the first {result.control_unique:g} tokens/param, repeated)")
    for row in result.summary.itertuples():
        head = f"  N = {row.N:,}: "
        if row.control_gain != row.control_gain:  # NaN
            console.print(head + "the control has fewer than 2 finished points; rerun the study to finish it")
        elif row.control_max_tpp <= row.control_anchor_tpp:
            console.print(head + f"the largest D ({row.control_max_tpp:.3g} tokens/param) does not pass the control's "
                          "unique data: nothing to split")
        elif row.control_gain <= 0:
            console.print(head + f"from {row.control_anchor_tpp:.3g} to {row.control_max_tpp:.3g} tokens/param the loss "
                          f"did not fall ({-row.control_gain:+.4f} nats); the control's own change was "
                          f"{-row.gain_from_steps:+.4f}: nothing to split")
        else:
            new, steps, gain = row.gain_from_new_data, row.gain_from_steps, row.control_gain
            console.print(head + f"from {row.control_anchor_tpp:.3g} to {row.control_max_tpp:.3g} tokens/param the loss "
                          f"fell {gain:.4f} nats: {new:.4f} ({new / gain:.0%}) from new data, {steps:.4f} "
                          f"({steps / gain:.0%}) from more steps on the same data ({row.control_epochs_at_max:.1f} "
                          "epochs of it by the largest D)")
    console.print("from more steps: the control's own fall between the two points (the same unique tokens, repeated); "
                  "from new data: the rest (= the unique-data gain at the largest D minus the one at the first point)")


def _with_interval(value: tuple[float, float, float]) -> str:
    estimate, lo, hi = value
    if lo != lo or hi != hi:  # NaN: too few points for an interval
        return f"{estimate:.3f} (no interval)"
    return f"{estimate:.3f} [{lo:.3f}, {hi:.3f}]"
