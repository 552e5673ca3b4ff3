"""Input for fits: any CSV/Parquet table or the results store, checked before fitting.

Everything is turned into a `FitData`: arrays N (parameters), D (training tokens), optionally U
(unique tokens) and `groups` (points that share a training run, so that the bootstrap can resample
runs rather than points), and the loss in nats/token. Every problem a user can cause (a missing
file or column, non-positive values, too few points, one model size in a two-variable fit) raises
`UserError` with a one-line message naming the fix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import numpy as np

from scalinglab.errors import UserError
from scalinglab.laws.forms import Form

if TYPE_CHECKING:
    import pandas as pd

Array = np.ndarray
FLOPS_PER_PARAM_TOKEN = 6.0  # C = 6 N D, the convention of Kaplan, Hoffmann and Epoch


@dataclass(frozen=True)
class FitData:
    """Points for a fit: variables, loss, and which run each point came from."""

    loss: Array
    N: Array | None = None
    D: Array | None = None
    U: Array | None = None
    groups: Array | None = None  # integer run id per point; None: every point independent
    source: str = ""
    notes: tuple[str, ...] = ()
    meta: dict = field(default_factory=dict)  # columns used, param convention, points dropped

    def __len__(self) -> int:
        return int(self.loss.size)

    def X(self, form: Form) -> dict[str, Array]:
        return {v: getattr(self, v) for v in form.variables}

    @property
    def flops(self) -> Array:
        return FLOPS_PER_PARAM_TOKEN * self.N * self.D

    @property
    def n_groups(self) -> int:
        return len(self) if self.groups is None else int(np.unique(self.groups).size)

    def subset(self, keep: Array) -> "FitData":
        """The points where `keep` (bool, one per point) is true; run ids renumbered."""
        pick = lambda a: None if a is None else a[keep]  # noqa: E731
        groups = None if self.groups is None else np.unique(self.groups[keep], return_inverse=True)[1]
        return replace(self, loss=self.loss[keep], N=pick(self.N), D=pick(self.D), U=pick(self.U), groups=groups)

    def frame(self) -> "pd.DataFrame":
        import pandas as pd

        cols = {k: getattr(self, k) for k in ("N", "D", "U") if getattr(self, k) is not None}
        cols["loss"] = self.loss
        if self.groups is not None:
            cols["group"] = self.groups
        return pd.DataFrame(cols)


# -- reading ---------------------------------------------------------------------------------
def read_table(path: str | Path) -> "pd.DataFrame":
    """A CSV or Parquet file (by suffix) as a DataFrame."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise UserError(f"no such file: {path}; give the path of a CSV or Parquet table")
    if path.is_dir():
        raise UserError(f"{path} is a directory; give the path of a CSV or Parquet table")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            return pd.read_parquet(path)
        return pd.read_csv(path)
    except Exception as exc:  # pandas raises many kinds; all mean "not a readable table"
        raise UserError(f"cannot read {path} as a {'Parquet' if path.suffix.lower() in ('.parquet', '.pq') else 'CSV'} table ({exc.__class__.__name__}: {exc}); check the file") from None


# Runs whose last evaluation is a finished (annealed) training run: a trunk's points are at a
# constant learning rate (never cooled down), and probe runs measure other things (repetition,
# junk, memorisation subsets, grokking's modular arithmetic).
DEFAULT_KINDS = ("train", "branch", "cosine", "wsd")


# The study fits each N from Chinchilla's 20 tokens/param on (`study.analysis.FIT_FROM_TPP`): its
# shorter branches sit near or inside the warmup. A fit of the same store starts there too.
DEFAULT_MIN_TPP = 20.0


@dataclass(frozen=True)
class Selection:
    """Which of the store's points a fit uses: runs of these kinds (fnmatch patterns), only the
    final point of each run (its largest step) unless `all_points`, only points at and past
    `min_tpp` tokens per parameter (None: a study's cooldown branches from 20 on, as the study
    fits them, and every other run's points), and only the model sizes in `sizes` (non-embedding
    N; empty: all)."""

    kinds: tuple[str, ...] = DEFAULT_KINDS
    all_points: bool = False
    min_tpp: float | None = None
    sizes: tuple[float, ...] = ()

    @property
    def tpp_floor(self) -> float:
        return DEFAULT_MIN_TPP if self.min_tpp is None else self.min_tpp

    @property
    def is_default(self) -> bool:
        return tuple(self.kinds) == DEFAULT_KINDS and not self.all_points and self.min_tpp is None and not self.sizes

    def key(self) -> str:
        """A suffix for the stored fit's key ("" for the default selection)."""
        if self.is_default:
            return ""
        return ((f":kinds={'+'.join(self.kinds)}" if tuple(self.kinds) != DEFAULT_KINDS else "")
                + (":all-points" if self.all_points else "")
                + (f":min-tpp={self.min_tpp:g}" if self.min_tpp is not None else "")
                + (f":sizes={'+'.join(f'{n:g}' for n in self.sizes)}" if self.sizes else ""))

    def describe(self) -> str:
        which = "every point" if self.all_points else "the final point"
        text = f"{which} of each finished run of kind {', '.join(self.kinds)}"
        if self.min_tpp:
            text += f" at and past {self.min_tpp:g} tokens/param"
        if self.sizes:
            text += " with N in " + ", ".join(f"{n:,.0f}" for n in self.sizes)
        if self.is_default:
            text += " (trunk and probe runs left out; widen with --kind, --all-points, --min-tpp 0)"
        return text

    def matches(self, kinds: "pd.Series") -> "pd.Series":
        from fnmatch import fnmatchcase

        return kinds.astype(str).map(lambda k: any(fnmatchcase(k, pattern) for pattern in self.kinds))


def store_frame(db: str | Path, group: str | None = None, convention: str = "nonembedding",
                selection: Selection | None = None) -> "pd.DataFrame":
    """The results store's points as a table with columns N, D, [U], loss, group, flops_stored.

    By default only the final point of each finished run of an annealed kind (train, branch,
    cosine, wsd) is used: a point in the middle of a schedule or on a constant-LR trunk has not
    been cooled down and sits above the curve of finished runs. N is the non-embedding parameter
    count unless `convention` is "total" (or "embedding"). Points from the cooldown branches of
    one trunk share the trunk's group: they are correlated, so the bootstrap can resample trunks.
    """
    from scalinglab.store import load_points

    return points_to_frame(load_points(db, group=group), convention=convention, source=str(db), selection=selection)


def select_points(points: "pd.DataFrame", selection: Selection, source: str = "store") -> tuple["pd.DataFrame", str]:
    """The rows of the store's point table that `selection` keeps, and a line saying what was used."""
    if "kind" not in points.columns:
        raise UserError(f"the points from {source} lack the run kind; the store is older or newer than this scalinglab")
    chosen = points[selection.matches(points["kind"])]
    if len(chosen) == 0:
        present = ", ".join(sorted(points["kind"].astype(str).unique())) or "none"
        raise UserError(f"{source} has no finished points of kind {', '.join(selection.kinds)} (kinds present: {present}); "
                        f"pick kinds with --kind, e.g. --kind trunk")
    if not selection.all_points:
        chosen = chosen.loc[chosen.groupby("run_id", sort=False)["step"].idxmax()]
    runs = chosen["run_id"].nunique()
    line = f"{selection.describe()}: {runs} run{'s' * (runs != 1)}; {len(points) - len(chosen)} other finished points not used"
    return chosen, line


def points_to_frame(points: "pd.DataFrame", convention: str = "nonembedding", source: str = "store",
                    selection: Selection | None = None) -> "pd.DataFrame":
    """Map the store's point table (see store.load_points) to the fit's canonical columns, keeping
    the points `selection` picks (default: `Selection()`)."""
    import pandas as pd

    column = {"nonembedding": "n_nonembedding", "total": "n_total", "embedding": "n_embedding"}.get(convention)
    if column is None:
        raise UserError(f"unknown parameter convention {convention!r}; use nonembedding or total")
    needed = [column, "tokens", "val_loss", "run_id", "step"]
    missing = [c for c in needed if c not in points.columns]
    if missing:
        raise UserError(f"the points from {source} lack columns {missing}; the store is older or newer than this scalinglab")
    if len(points) == 0:
        raise UserError(f"{source} has no finished evaluation points; train runs to completion first or pass --group/--db")
    selection = selection or Selection()
    points, line = select_points(points, selection, source)
    points, dropped = _size_and_tpp(points, column, selection, source)
    if dropped:
        line += f"; {dropped}"
    parent = points["parent_run"] if "parent_run" in points.columns else pd.Series([None] * len(points), index=points.index)
    frame = pd.DataFrame(
        {
            "N": points[column].astype(float),
            "D": points["tokens"].astype(float),
            "loss": points["val_loss"].astype(float),
            "group": parent.where(parent.notna() & (parent.astype(str) != ""), points["run_id"]).astype(str).values,
        }
    )
    if "flops" in points.columns:
        frame["flops_stored"] = points["flops"].astype(float)
    if "unique_train_tokens" in points.columns and points["unique_train_tokens"].notna().all():
        frame["U"] = points["unique_train_tokens"].astype(float)
    frame = frame.dropna(subset=["loss"]).reset_index(drop=True)
    frame.attrs.update(param_convention=convention, source=source, selection=line)
    return frame


def _size_and_tpp(points: "pd.DataFrame", column: str, selection: Selection, source: str) -> tuple["pd.DataFrame", str]:
    """The points of the chosen sizes at and past the tokens/param floor, and what was left out."""
    said = []
    if selection.sizes:
        have = np.unique(points[column].astype(float))
        keep = set()
        for n in selection.sizes:  # each asked size matches the nearest stored one, within 10%
            nearest = have[np.argmin(np.abs(np.log(have / n)))] if have.size else None
            if nearest is None or abs(math.log(nearest / n)) > math.log(1.1):
                shown = ", ".join(f"{v:,.0f}" for v in have)
                raise UserError(f"--sizes {n:,.0f}: no runs of that size in {source} (sizes there: {shown})")
            keep.add(float(nearest))
        before = len(points)
        points = points[points[column].astype(float).isin(keep)]
        said.append(f"{before - len(points)} points of other sizes left out (--sizes)")
    floor = selection.tpp_floor
    if floor > 0:
        # milestones are rounded to whole steps: 19.97 tokens/param is the 20 point
        tpp = points["tokens"].astype(float) / points[column].astype(float)
        below = tpp < floor * 0.98
        if selection.min_tpp is None:  # by default only a study's short branches, which sit near the warmup
            below &= points["kind"].astype(str) == "branch"
        if below.all():
            raise UserError(f"every selected point of {source} lies below {floor:g} tokens/param; lower --min-tpp "
                            f"(e.g. --min-tpp 0) or train longer")
        if below.any():
            which = "points" if selection.min_tpp is not None else "study branch points"
            said.append(f"{int(below.sum())} {which} below {floor:g} tokens/param left out (the study fits from "
                        f"{DEFAULT_MIN_TPP:g} too; --min-tpp 0 keeps them)")
        points = points[~below]
    return points, "; ".join(said)


# -- checking --------------------------------------------------------------------------------
def with_n_from_multiplier(table: "pd.DataFrame", flops_col: str | None, m_col: str, n_col: str, where: str) -> "pd.DataFrame":
    """The table with column `n_col` = sqrt(C / (6M)), so that D = C / (6N) = M·N follows."""
    import pandas as pd

    if not flops_col:
        raise UserError(f"--m-col {m_col} gives tokens per parameter M = D/N; name the compute column too with --flops-col")
    missing = [c for c in (flops_col, m_col) if c not in table.columns]
    if missing:
        shown = ", ".join(map(str, list(table.columns)[:12]))
        raise UserError(f"column {missing[0]!r} not found{where} (columns: {shown}); name it with "
                        f"{'--flops-col' if missing[0] == flops_col else '--m-col'}")
    C = pd.to_numeric(table[flops_col], errors="coerce").to_numpy(dtype=float)
    M = pd.to_numeric(table[m_col], errors="coerce").to_numpy(dtype=float)
    with np.errstate(all="ignore"):
        N = np.sqrt(C / (FLOPS_PER_PARAM_TOKEN * M))
    out = table.copy()
    out[n_col] = N  # non-positive C or M give NaN here, which the column checks below name
    out.attrs.update(table.attrs)
    return out


def prepare(
    table: "pd.DataFrame",
    form: Form,
    *,
    n_col: str = "N",
    d_col: str | None = "D",
    loss_col: str = "loss",
    flops_col: str | None = None,
    m_col: str | None = None,
    unique_col: str | None = None,
    group_col: str | None = None,
    drop_top_loss: int = 0,
    free_params: int | None = None,
    source: str = "table",
) -> FitData:
    """Check a table and turn it into FitData for `form`.

    D comes from `d_col`, or from `flops_col` as D = C / (6 N). With `m_col` (the token multiplier
    M = D/N, as Gadre et al. 2024 tabulate their runs) N and D both come from C and M:
    N = sqrt(C / (6M)), D = M·N. `drop_top_loss` drops the K highest-loss points first (Epoch
    dropped 5 of Hoffmann's 245).
    """
    where = f" in {source}" if source else ""
    columns = list(table.columns)
    if m_col is not None:
        table = with_n_from_multiplier(table, flops_col, m_col, n_col, where)

    def column(name: str, flag: str) -> Array:
        if name not in table.columns:
            shown = ", ".join(map(str, columns[:12])) + (", ..." if len(columns) > 12 else "")
            raise UserError(f"column {name!r} not found{where} (columns: {shown}); name it with {flag}")
        import pandas as pd

        raw = table[name]
        values = pd.to_numeric(raw, errors="coerce")
        text = values.isna() & raw.notna()
        if text.any():
            row = int(np.flatnonzero(text.to_numpy())[0])
            raise UserError(f"column {name!r}{where} is not numeric (row {row}: {raw.iloc[row]!r}); point {flag} at a numeric column")
        return values.to_numpy(dtype=float)

    needs = set(form.variables)
    wanted = [(n_col, "--n-col") if "N" in needs or flops_col else None,
              ((flops_col, "--flops-col") if flops_col else (d_col, "--d-col")) if "D" in needs and (flops_col or d_col) else None,
              (unique_col or "U", "--unique-col") if "U" in needs else None,
              (loss_col, "--loss-col")]
    absent = [(name, flag) for name, flag in filter(None, wanted) if name not in table.columns]
    if absent:
        shown = ", ".join(map(str, columns[:12])) + (", ..." if len(columns) > 12 else "")
        names = ", ".join(repr(name) for name, _ in absent)
        flags = ", ".join(flag for _, flag in absent)
        raise UserError(f"column{'s' * (len(absent) > 1)} {names} not found{where} (columns: {shown}); name {'them' if len(absent) > 1 else 'it'} with {flags}")
    if "N" not in needs and n_col in table.columns:
        sizes = np.unique(column(n_col, "--n-col"))
        if sizes.size > 1:  # a law in D alone holds at one model size; pooled sizes fit neither
            shown = ", ".join(f"{v:.3g}" for v in sizes[:6]) + (", ..." if sizes.size > 6 else "")
            raise UserError(f"the {form.name} form fits one model size but these points hold {sizes.size} (N = {shown}); "
                            f"keep the rows of one N (scalinglab study fits each N on its own), or fit N and D together "
                            f"with --form chinchilla")
    loss = column(loss_col, "--loss-col")
    arrays: dict[str, Array] = {"loss": loss}
    names = {"loss": loss_col}
    if "N" in needs or flops_col:
        arrays["N"], names["N"] = column(n_col, "--n-col"), n_col
        if m_col is not None:
            names["N"] = f"sqrt({flops_col} / (6 {m_col}))"
    if "D" in needs:
        if flops_col:
            arrays["D"] = column(flops_col, "--flops-col") / (FLOPS_PER_PARAM_TOKEN * arrays["N"])
            names["D"] = f"{flops_col} / (6 N)"
        elif d_col:
            arrays["D"], names["D"] = column(d_col, "--d-col"), d_col
        else:
            raise UserError("the form needs tokens D; name the column with --d-col or derive it from FLOPs with --flops-col")
    if "U" in needs:
        arrays["U"], names["U"] = column(unique_col or "U", "--unique-col"), unique_col or "U"

    for key, values in arrays.items():
        bad = ~(np.isfinite(values) & (values > 0))
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise UserError(
                f"column {names[key]!r}{where} has {int(bad.sum())} non-positive or non-finite values "
                f"(first at row {first}: {values[first]!r}); remove or fix those rows"
            )

    groups = None
    if group_col:
        if group_col not in table.columns:
            raise UserError(f"column {group_col!r} not found{where}; name the run column with --group-col")
        groups = np.unique(table[group_col].astype(str).to_numpy(), return_inverse=True)[1]

    keep = np.arange(loss.size)
    if drop_top_loss:
        if drop_top_loss < 0 or drop_top_loss >= loss.size:
            raise UserError(f"--drop-top-loss {drop_top_loss} must be between 0 and {loss.size - 1} (there are {loss.size} points)")
        keep = np.sort(np.argsort(loss, kind="stable")[: loss.size - drop_top_loss])

    data = FitData(
        loss=loss[keep],
        N=arrays["N"][keep] if "N" in arrays else None,
        D=arrays["D"][keep] if "D" in arrays else None,
        U=arrays["U"][keep] if "U" in arrays else None,
        groups=None if groups is None else np.unique(groups[keep], return_inverse=True)[1],
        source=source,
        meta={"columns": names, "dropped_top_loss": int(drop_top_loss), "rows": int(loss.size),
              "param_convention": table.attrs.get("param_convention"),
              **({"selection": table.attrs["selection"]} if table.attrs.get("selection") else {})},
    )
    check_fittable(data, form, free_params)
    return data


def check_fittable(data: FitData, form: Form, free_params: int | None = None) -> None:
    """Enough points, and enough distinct N and D, for this form."""
    k = len(form.params) if free_params is None else free_params
    if len(data) < k:
        raise UserError(
            f"{len(data)} points for the {form.name} form, which has {k} free parameters; "
            f"add points or choose a form with fewer parameters (--form data or --form params)"
        )
    if "N" in form.variables and "D" in form.variables:
        if np.unique(data.N).size < 2:
            raise UserError(
                f"all {len(data)} points have the same N ({data.N[0]:.4g}); a two-variable fit needs several "
                f"model sizes: fit L(D) at this size with --form data"
            )
        if np.unique(data.D).size < 2:
            raise UserError(
                f"all {len(data)} points have the same D ({data.D[0]:.4g}); a two-variable fit needs several "
                f"token counts: fit L(N) with --form params"
            )
    for v in form.variables:
        if np.unique(getattr(data, v)).size < 2 and len(form.variables) == 1:
            raise UserError(f"all points have the same {v}; a power law in {v} needs several values of {v}")


def as_fit_data(data: "FitData | pd.DataFrame | Mapping", form: Form, free_params: int | None = None) -> FitData:
    """FitData from FitData, or from a DataFrame/dict with canonical columns N, D, U, loss, group."""
    import pandas as pd

    if isinstance(data, FitData):
        check_fittable(data, form, free_params)
        return data
    table = data if isinstance(data, pd.DataFrame) else pd.DataFrame(dict(data))
    return prepare(
        table, form, group_col="group" if "group" in table.columns else None, free_params=free_params,
        source=table.attrs.get("source", ""), unique_col="U",
    )

