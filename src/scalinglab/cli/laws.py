"""`scalinglab fit` and `scalinglab plan`: scaling-law fits with intervals, and allocation plans."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import typer

from scalinglab.cli.app import DEFAULT_DB, app, console, err_console, parse_number, parse_numbers
from scalinglab.errors import UserError


@app.command()
def fit(
    source: Optional[Path] = typer.Argument(None, help="CSV or Parquet table; omit it to fit the results store (--db)."),
    db: Path = typer.Option(DEFAULT_DB, "--db", help="Results store to read when no table is given."),
    group: Optional[str] = typer.Option(None, help="Store input: only the runs of this study/group."),
    kind: list[str] = typer.Option([], "--kind", help="Store input: runs of this kind (repeatable; fnmatch patterns such as 'probe:*'). Default: train, branch, cosine, wsd."),
    all_points: bool = typer.Option(False, "--all-points", help="Store input: every evaluation point of those runs, not only each run's final one."),
    min_tpp: Optional[float] = typer.Option(None, "--min-tpp", help="Store input: only points at and past this many tokens/param (default 20, as the study fits, for the default kinds; 0 keeps all)."),
    sizes: Optional[str] = typer.Option(None, "--sizes", help="Store input: only these model sizes N (non-embedding, comma-separated, e.g. 1.2e4,2.8e4; the nearest stored size within 10%)."),
    form: str = typer.Option("chinchilla", help="chinchilla | overtrain (Gadre et al. 2024: α = β) | data (L(D), fixed N) | params (L(N)) | kaplan | data-constrained | auto (the form whose held-out error is smallest, see --holdout)."),
    n_col: str = typer.Option("N", help="Column with the parameter count N."),
    d_col: str = typer.Option("D", help="Column with the training tokens D."),
    loss_col: str = typer.Option("loss", help="Column with the loss (nats/token)."),
    flops_col: Optional[str] = typer.Option(None, help="Column with training FLOPs C; D is derived as C/(6N)."),
    m_col: Optional[str] = typer.Option(None, help="Column with tokens per parameter M = D/N; with --flops-col, N and D are derived from C and M."),
    unique_col: Optional[str] = typer.Option(None, help="Column with unique tokens U (data-constrained form)."),
    group_col: Optional[str] = typer.Option(None, help="Column naming each point's run, to bootstrap over runs."),
    param_convention: str = typer.Option("nonembedding", help="Store input: which count is N (nonembedding or total)."),
    drop_top_loss: int = typer.Option(0, help="Drop the K highest-loss points first (Epoch dropped 5)."),
    delta: float = typer.Option(1e-3, help="Huber threshold on log-loss residuals."),
    asymmetry: float = typer.Option(1.0, help="Weight on over-predictions; > 1 fits a lower envelope."),
    bootstrap: int = typer.Option(1000, help="Bootstrap resamples for the intervals (0: none)."),
    by: str = typer.Option("auto", help="Resample points, runs, or auto (runs when each point's run is known and there are at least 10 runs)."),
    seed: int = typer.Option(0, help="Seed for the multistart check and the bootstrap."),
    fix: list[str] = typer.Option([], "--fix", help="Hold a parameter at a value, e.g. --fix alpha=0.34 (repeatable)."),
    tie: list[str] = typer.Option([], "--tie", help="Set one parameter equal to another, e.g. --tie alpha=beta (repeatable)."),
    holdout: Optional[str] = typer.Option(None, "--holdout", help="largest-n[:K] or largest-c[:K]: fit without the K largest model sizes (compute budgets), predict them and compare."),
    multistart: Optional[int] = typer.Option(None, help="Random L-BFGS starts (default 8 as a check; 64 for forms without variable projection)."),
    at_flops: list[str] = typer.Option([], "--at-flops", help="Also report N_opt, D_opt, tokens/param at this compute (repeatable)."),
    predict: list[str] = typer.Option([], "--predict", help="Also predict the loss at N,D (e.g. 7e10,1.4e12) or C=..,M=.. (compute, tokens/param); repeatable."),
    compare: bool = typer.Option(False, "--compare", help="Also run Approaches 1 and 2 (envelope, isoFLOP parabolas)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
    save: Optional[Path] = typer.Option(None, "--save", help="Write the fit with its bootstrap draws as JSON (for plan --law)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Directory to write fit.png, residuals.png, isoflop.png."),
) -> None:
    """Fit a scaling law with bootstrap intervals (Approach 3: Huber on log loss, variable projection)."""
    from scalinglab import laws
    from scalinglab.laws.approaches import compare_approaches
    from scalinglab.laws.forms import get_form
    from scalinglab.laws.result import COMPUTE_CONVENTION, compute_note
    from scalinglab.laws.validation import HELD_OUT_RESAMPLES, Holdout

    auto = form == "auto"
    if auto and (fix or tie):
        raise UserError("--form auto compares forms with different parameters; --fix and --tie need a named form (e.g. --form chinchilla)")
    law_form = get_form("chinchilla" if auto else form)  # auto: read N and D (and U), as every candidate needs
    flops = [parse_number(c, "--at-flops") for c in at_flops]
    fixed = dict(_parse_fix(f) for f in fix)
    ties = dict(_parse_tie(t) for t in tie)
    split = Holdout.parse(holdout) if holdout else (Holdout() if auto else None)
    free = len(law_form.params) - len(fixed) - len(ties)
    if min_tpp is not None and not (min_tpp >= 0 and math.isfinite(min_tpp)):
        raise UserError(f"--min-tpp must be a number of tokens/param >= 0, got {min_tpp}")
    selection = laws.Selection(kinds=tuple(kind) or laws.DEFAULT_KINDS, all_points=all_points, min_tpp=min_tpp,
                               sizes=parse_numbers(sizes, "--sizes") if sizes else ())
    if source is None:
        frame = laws.store_frame(db, group=group, convention=param_convention, selection=selection)
        data = laws.prepare(frame, law_form, group_col="group", unique_col="U" if "U" in frame else None, free_params=free,
                            drop_top_loss=drop_top_loss, source=str(db) + (f" (group {group})" if group else ""))
    else:
        if kind or all_points or min_tpp is not None or sizes:
            raise UserError("--kind, --all-points, --min-tpp and --sizes choose points from the results store; a table is "
                            "used as it is (filter it first)")
        data = laws.prepare(laws.read_table(source), law_form, n_col=n_col, d_col=d_col, loss_col=loss_col, flops_col=flops_col,
                            m_col=m_col, unique_col=unique_col, group_col=group_col, drop_top_loss=drop_top_loss, free_params=free,
                            source=source.name)
    points = [_parse_point(p, law_form.variables) for p in predict]
    options = dict(delta=delta, asymmetry=asymmetry, multistart=multistart, seed=seed, bootstrap_by=by)
    if split is not None:
        split.mask(data)  # a bad K is refused before any fitting

    choice = held = None
    with _progress() as report:
        if auto:
            choice = laws.select_form(data, split, bootstrap=bootstrap, held_out_bootstrap=min(bootstrap, HELD_OUT_RESAMPLES),
                                      progress=report, **options)
            result, held = choice.result, choice.held_out
        else:
            if split is not None:
                held = laws.validate(data, law_form, split, bootstrap=min(bootstrap, HELD_OUT_RESAMPLES), fixed=fixed, ties=ties, **options)
            result = laws.fit(data, law_form, fixed=fixed, ties=ties, bootstrap=bootstrap, progress=report, **options)
    _refuse_flat(result)
    derived = result.derived(flops=flops, at=points)
    beyond = laws.beyond_range(result, points, flops)
    approaches = compare_approaches(result) if compare else {}
    mentions_c = len(derived) and derived["quantity"].str.contains("C").any()  # the allocation exponents and budgets
    compute = compute_note(frame if source is None else None, flops_col) if mentions_c or compare or flops_col else None

    out = result.to_dict(derived=derived)
    out["compute_convention"] = COMPUTE_CONVENTION
    if held is not None:
        out["holdout"] = held.to_dict()
    if choice is not None:
        out["form_selection"] = choice.to_dict()
    if beyond:
        out["extrapolation"] = beyond
    if approaches:
        out["approaches"] = approaches
    if save is not None:
        _write_json(save, result.record(derived))
    stored = None
    if source is None:
        stored = result.save(db, f"{law_form.name}:{group or 'all'}:{param_convention}{selection.key()}", derived=derived)
    figures = []
    if plot is not None:
        from scalinglab.report.laws import save_figures

        figures = save_figures(result, plot)
    if json_out:
        print(json.dumps(out, indent=2, default=float))
        return
    if choice is not None:
        _print_choice(choice)
    if held is not None:
        _print_held_out(held)
    _print_fit(result, derived, approaches, compute, beyond)
    if save is not None:
        console.print(f"saved the fit with its bootstrap draws to {save}; plan with: scalinglab plan --law {save}")
    if stored:
        console.print(f"stored as fit {stored!r} in {db}; plan with: scalinglab plan --law store:{stored}")
    for path in figures:
        console.print(f"wrote {path}")


@app.command()
def plan(
    law: Optional[str] = typer.Option(None, help="epoch2024 (default: Epoch's refit of Chinchilla) | hoffmann2022 | hoffmann2022-rounded | muennighoff2023 (default with --unique-tokens) | a saved fit .json | store:KEY."),
    db: Path = typer.Option(DEFAULT_DB, "--db", help="Results store, for --law store:KEY."),
    flops: Optional[str] = typer.Option(None, help="Training compute C (e.g. 5.76e23): the compute-optimal N, D."),
    params: Optional[str] = typer.Option(None, help="Parameters N: with --tokens, where that run sits; with --inference-tokens, the reference size."),
    tokens: Optional[str] = typer.Option(None, help="Training tokens D, with --params."),
    inference_tokens: Optional[str] = typer.Option(None, help="Tokens to serve: the inference-optimal model (Sardana et al.)."),
    unique_tokens: Optional[str] = typer.Option(None, help="Unique tokens available: data-constrained planning (Muennighoff et al.)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Plan an allocation with a published or fitted law: compute-, inference- or data-constrained-optimal."""
    from scalinglab import laws
    from scalinglab.laws.reference import load_law
    from scalinglab.laws.result import COMPUTE_CONVENTION

    C = None if flops is None else parse_number(flops, "--flops")
    N = None if params is None else parse_number(params, "--params")
    D = None if tokens is None else parse_number(tokens, "--tokens")
    T = None if inference_tokens is None else parse_number(inference_tokens, "--inference-tokens")
    U = None if unique_tokens is None else parse_number(unique_tokens, "--unique-tokens")
    # Epoch's refit by default: Hoffmann's Approach 3 constants give ~43 tokens/param where their
    # other approaches and the refit give ~20, which matters most for over-training questions
    chosen = load_law(law or ("muennighoff2023" if U is not None else "epoch2024"), db=str(db))

    if (D is None) != (N is None) and U is None and T is None:
        raise UserError("give --params and --tokens together (where a run sits), or --flops for the compute-optimal allocation")
    if U is not None:
        result = laws.data_constrained(chosen, U, flops=C, n_params=N, tokens=D)
    elif T is not None:
        if D is not None:
            raise UserError("--inference-tokens plans a model; drop --tokens and give the reference as --flops C or --params N")
        result = laws.inference_optimal(chosen, T, flops=C, n_params=N)
    elif N is not None:
        if C is not None:
            raise UserError("give either --flops or --params with --tokens, not both")
        result = laws.assess_run(chosen, N, D)
    elif C is not None:
        result = laws.compute_optimal(chosen, C)
    else:
        raise UserError("nothing to plan: give --flops C, or --params N --tokens D, optionally with --inference-tokens T or --unique-tokens U")

    if json_out:
        print(json.dumps({**result.to_dict(), "law_detail": chosen.to_dict(), "compute_convention": COMPUTE_CONVENTION}, indent=2, default=float))
        return
    _print_plan(result, chosen)


def _refuse_flat(result) -> None:
    """A fit whose profile is flat along an exponent is one of a family of equally good laws:
    refuse it, saying which data would pin it down."""
    import numpy as np

    flat = result.diagnostics.get("flat_exponents") or []
    if not flat:
        return
    name = flat[0]
    var = next((v for _, e, v in getattr(result.form, "terms", ()) if e == name), None)
    add = f"add {var} values spread wider (these span {np.ptp(np.log10(getattr(result.data, var))):.2f} decades)" if var else "add data"
    raise UserError(f"these points cannot pin {name} down: at half or at twice {result.params[name]:.3g}, the rest "
                    f"refitted, they fit as well; {add}, or hold it with --fix {name}=VALUE")


# -- printing --------------------------------------------------------------------------------


def _print_choice(choice) -> None:
    from rich.table import Table

    console.print(f"form auto: each candidate fitted without {choice.holdout.describe()}, judged by how well it predicts the held-out points",
                  highlight=False)
    table = Table("form", "held-out mean |error|", "max |error|")
    for name, c in choice.candidates.items():
        if isinstance(c, str):
            table.add_row(name, "not applicable", c)
        else:
            mark = " (chosen)" if name == choice.chosen else ""
            table.add_row(name + mark, f"{c.error:.2%}", f"{c.table['error'].abs().max():.2%}")
    console.print(table)
    console.print(f"chose {choice.chosen}; refitted on all {choice.result.n_points} points", highlight=False)


def _print_held_out(held) -> None:
    from rich.table import Table

    fit, rows = held.fit, held.table
    boot = fit.bootstrap
    console.print(f"held out {held.holdout.describe()} ({len(rows)} points); {fit.form.name} fitted on the other {fit.n_points}"
                  + (f", prediction intervals from {len(boot)} bootstrap resamples and the residual scatter" if boot else ""),
                  highlight=False)
    table = Table("N", "D", "loss", "predicted", "error", "95% prediction interval", "covered")
    for r in rows.itertuples():
        covered = "-" if not math.isfinite(r.covered) else ("yes" if r.covered else "NO")
        table.add_row(f"{r.N:.3g}", f"{r.D:.3g}", f"{r.loss:.4f}", f"{r.predicted:.4f}", f"{r.error:+.2%}",
                      _interval(r.lo, r.hi, lambda x: f"{x:.4f}"), covered)
    console.print(table)
    inside = "" if not math.isfinite(held.coverage) else f"; {int(rows['covered'].sum())}/{len(rows)} inside their 95% prediction interval"
    console.print(f"held-out mean |error| {held.error:.2%}{inside}", highlight=False)


def _print_fit(result, derived, approaches: dict, compute: str | None = None, beyond: list[str] = ()) -> None:
    from rich.table import Table
    from rich.text import Text

    boot = result.bootstrap
    console.print(Text.assemble((result.form.name, "bold"), f": {result.form.formula}"))
    dropped = result.data.meta.get("dropped_top_loss")
    console.print(
        f"{result.n_points} points{f' ({dropped} highest-loss dropped)' if dropped else ''} from {result.data.source}; {result.method}",
        highlight=False,
    )
    if result.data.meta.get("selection"):
        console.print(f"points: {result.data.meta['selection']}")
    if compute:
        console.print(compute, style="dim")
    if not result.converged:
        console.print(Text.assemble(("warning: ", "bold red"), f"the fit {result.message}"))
    floorless = "E" in result.params and "E" not in result.fixed and result.params["E"] < AT_BOUND
    if floorless:
        beyond = [*beyond, "E sits at its bound 0: these points show no loss floor yet, so E trades off with the "
                           "exponents; predictions far beyond the data, and plans from this law, are unreliable"]
    for text in [*result.warnings, *beyond]:
        console.print(Text.assemble(("warning: ", "yellow"), text))
    head = "95% interval" + (f" ({len(boot)} bootstrap resamples over {boot.by})" if boot else " (no bootstrap)")
    table = Table("parameter", "estimate", head)
    for row in result.intervals().itertuples():
        interval = "fixed" if row.fixed else _interval(row.lo, row.hi, _fmt_param)
        table.add_row(row.param, _fmt_param(row.estimate) + (" (bound)" if row.param == "E" and floorless else ""), interval)
    console.print(table)
    if len(derived):
        table = Table("derived", "estimate", "95% interval")
        for row in derived.itertuples():
            table.add_row(row.quantity, _fmt_num(row.estimate), _interval(row.lo, row.hi, _fmt_num))
        console.print(table)
    for name, found in approaches.items():
        if "error" in found:
            console.print(f"{name}: not applicable here: {found['error']}")
        else:
            console.print(f"{name}: a = {found['a']:.4f}, b = {found['b']:.4f} from {found['points']} budgets")
        if "bias_on_this_design" in found:
            bias = found["bias_on_this_design"]
            console.print(
                f"  on noise-free data from the Approach 3 law at these same points, Approach 2 gives N_opt "
                f"{bias['n_opt_error']:+.1%}, D_opt {bias['d_opt_error']:+.1%}, a {bias['a_fit']:.4f} (true {bias['a_true']:.4f})",
                highlight=False,
            )
        for note in found["notes"]:
            console.print(f"  {note}", style="dim")
    d = result.diagnostics
    parts = []
    if "varpro" in d:
        parts.append(f"variable projection {d['varpro']['seconds']:.2f} s")
    check = d.get("multistart_check", {})
    if check.get("starts"):
        parts.append(f"multistart check: {check['reached_optimum']}/{check['starts']} starts reached the same optimum")
    if boot:
        parts.append(f"bootstrap {boot.seconds:.1f} s, {int((~boot.converged).sum())} resamples not converged, {boot.switched} moved to another basin, "
                     f"{boot.redrawn} redrawn (could not identify the form)")
    console.print(f"objective {result.objective:.6g}; {'; '.join(parts)}", style="dim")


def _print_plan(plan, law) -> None:
    from rich.table import Table

    console.print(plan.title, style="bold")
    console.print(f"law: {law.name}: {law.source}" + (f"; {law.notes}" if law.notes else ""))
    has_intervals = any(q.estimate.has_interval for q in plan.quantities.values())
    columns = ["quantity", "value"] + ([f"{int(law.level * 100)}% interval"] if has_intervals else [])
    table = Table(*columns)
    formats = _formats()
    for q in plan.quantities.values():
        fmt = formats.get(q.unit, _fmt_num) if math.isfinite(q.estimate.value) else str
        row = [q.label, fmt(q.estimate.value)]
        if has_intervals:
            row.append(_interval(q.estimate.lo, q.estimate.hi, fmt))
        table.add_row(*row)
    console.print(table)
    from scalinglab.laws.result import COMPUTE_NOTE

    for note in plan.notes:
        console.print(note, style="dim")
    console.print(COMPUTE_NOTE, style="dim")


# A positive coefficient this small sits at the optimiser's bound (log-space coefficients stop
# near 1e-12): print it as the 0 it stands for, not as 1.156e-12.
AT_BOUND = 1e-8


def _fmt_param(x: float) -> str:
    return "0" if math.isfinite(x) and 0 <= x < AT_BOUND else _fmt_num(x)


def _fmt_num(x: float) -> str:
    if not math.isfinite(x):
        return str(x)
    return f"{x:.4g}"


def _formats() -> dict:
    """How to show a quantity of each unit (see laws.planning.Quantity)."""
    from scalinglab.laws.planning import count

    return {
        "params": count,
        "tokens": count,
        "FLOPs": lambda x: f"{x:.3g}",
        "nats": lambda x: f"{x:.4f}",
        "ratio": lambda x: f"{x:,.1f}",
        "x": lambda x: f"{x:,.1f}x",
        "fraction": lambda x: f"{x:.1%}",
        "epochs": lambda x: f"{x:.2f}",
    }


def _interval(lo: float, hi: float, fmt) -> str:
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return "-"
    return f"({fmt(lo)}, {fmt(hi)})"


def _parse_point(text: str, variables: tuple[str, ...]) -> tuple[float, ...]:
    parts = [p for p in text.replace(";", ",").split(",") if p.strip()]
    if "=" in text:
        return _parse_named_point(text, parts, variables)
    if len(parts) != len(variables):
        raise UserError(f"--predict {text!r}: give {len(variables)} comma-separated values ({', '.join(variables)})")
    return tuple(parse_number(p, "--predict") for p in parts)


def _parse_named_point(text: str, parts: list[str], variables: tuple[str, ...]) -> tuple[float, ...]:
    """N=..,D=.. or C=..,M=.. (compute and tokens per parameter: N = sqrt(C/(6M)), D = M·N)."""
    named = {}
    for part in parts:
        name, _, value = part.partition("=")
        named[name.strip()] = parse_number(value, f"--predict {name.strip()}")
    if set(named) == {"C", "M"} and variables == ("N", "D"):
        n = math.sqrt(named["C"] / (6 * named["M"]))
        return (n, named["M"] * n)
    if set(named) == set(variables):
        return tuple(named[v] for v in variables)
    also = " or C=..,M=.." if variables == ("N", "D") else ""
    raise UserError(f"--predict {text!r}: name {', '.join(v + '=..' for v in variables)}{also}, e.g. --predict C=1e21,M=640")


def _parse_tie(text: str) -> tuple[str, str]:
    """--tie alpha=beta: beta follows alpha (returned as follower, leader)."""
    leader, sep, follower = text.partition("=")
    if not sep or not leader.strip() or not follower.strip():
        raise UserError(f"--tie {text!r}: write it as NAME=NAME, e.g. --tie alpha=beta")
    return follower.strip(), leader.strip()


def _parse_fix(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise UserError(f"--fix {text!r}: write it as NAME=VALUE, e.g. --fix alpha=0.34")
    return name.strip(), parse_number(value, f"--fix {name.strip()}")


def _write_json(path: Path, data: dict) -> None:
    from scalinglab.fsutil import atomic_write_text

    try:
        atomic_write_text(path, json.dumps(data, indent=1, default=float))
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror}; check the path") from None


class _progress:
    """A transient rich progress bar for the bootstrap, on stderr; yields the callback fit() calls."""

    def __enter__(self):
        from rich.progress import BarColumn, Progress, TimeRemainingColumn

        self.bar = Progress("bootstrap", BarColumn(), "{task.completed}/{task.total}", TimeRemainingColumn(),
                            console=err_console, transient=True)
        self.bar.start()
        self.task = None

        def report(done: int, total: int) -> None:
            if self.task is None:
                self.task = self.bar.add_task("bootstrap", total=total)
            self.bar.update(self.task, completed=done)

        return report

    def __exit__(self, *exc):
        self.bar.stop()
        return False
