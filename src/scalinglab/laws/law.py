"""A law: a form with parameter values, where they came from, and (for a fit) their bootstrap draws.

Planning works on laws, published or fitted alike. A quantity derived from a law (an optimal
size, a predicted loss) is an `Estimate`: the value at the law's parameters and, when the law
carries bootstrap draws, the percentile interval of the same quantity computed for every draw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable, Mapping

import numpy as np

from scalinglab.errors import UserError
from scalinglab.laws.forms import Form, get_form

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class Estimate:
    """A value with an optional percentile interval (NaN when the law has no draws)."""

    value: float
    lo: float = math.nan
    hi: float = math.nan

    @property
    def has_interval(self) -> bool:
        return math.isfinite(self.lo) and math.isfinite(self.hi)

    def to_dict(self) -> dict:
        out = {"estimate": self.value}
        if self.has_interval:
            out.update(lo=self.lo, hi=self.hi)
        return out


@dataclass(frozen=True)
class Law:
    name: str
    form: Form
    params: Mapping[str, float]
    source: str = ""
    notes: str = ""
    samples: "pd.DataFrame | None" = None  # one row per bootstrap resample, a column per parameter
    level: float = 0.95
    published_intervals: Mapping[str, tuple[float, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = [k for k in self.form.params if k not in self.params]
        if missing:
            raise UserError(f"law {self.name}: parameters {missing} missing for the {self.form.name} form")

    def predict(self, **X: float | np.ndarray) -> np.ndarray:
        return self.form.predict(self.params, **X)

    def estimate(self, fn: Callable[[Mapping[str, object]], object], vectorised: bool = True) -> Estimate:
        """fn(params) at the law's values and, with draws, its percentile interval over the draws."""
        return self.estimate_all(lambda p: {"x": fn(p)}, vectorised)["x"]

    def estimate_all(self, fn: Callable[[Mapping[str, object]], Mapping[str, object]], vectorised: bool = True) -> dict[str, Estimate]:
        """Several quantities at once: fn(params) returns a dict of numbers.

        `fn` receives a dict of floats for the point value. For the interval, with `vectorised` it
        receives a dict of arrays (one entry per draw), otherwise it is called once per draw.
        """
        point = {k: float(v) for k, v in fn(dict(self.params)).items()}
        if self.samples is None or len(self.samples) == 0:
            return {k: Estimate(v) for k, v in point.items()}
        if vectorised:
            out = fn({k: self.samples[k].to_numpy(dtype=float) for k in self.form.params})
            draws = {k: np.broadcast_to(np.asarray(v, dtype=float), (len(self.samples),)) for k, v in out.items()}
        else:
            rows = [fn(row) for row in self.samples[list(self.form.params)].to_dict("records")]
            draws = {k: np.array([float(r[k]) for r in rows]) for k in point}
        return {k: self._interval(point[k], draws[k]) for k in point}

    def _interval(self, value: float, draws: np.ndarray) -> Estimate:
        draws = draws[np.isfinite(draws)]
        if draws.size < 0.9 * len(self.samples):  # the quantity does not exist for many draws
            return Estimate(value)
        if np.ptp(draws) <= 1e-12 * abs(value):  # an input, not an estimate
            return Estimate(value)
        tail = 100 * (1 - self.level) / 2
        lo, hi = np.percentile(draws, [tail, 100 - tail])
        return Estimate(value, float(lo), float(hi))

    def param(self, name: str) -> Estimate:
        return self.estimate(lambda p: p[name])

    def implied(self) -> "Law":
        """The same law in the Chinchilla form's parameters (E, A, α, B, β) when its form is the
        Chinchilla form with tied exponents (the over-training form, a fit with --tie alpha=beta),
        draws included, so that planning's closed forms apply; otherwise the law itself."""
        convert = getattr(self.form, "to_chinchilla", None)
        if convert is None or convert(self.params) is None:
            return self
        import pandas as pd

        from scalinglab.laws.forms import chinchilla

        params = {k: float(v) for k, v in convert(dict(self.params)).items()}
        samples = None
        if self.samples is not None:
            draws = convert({k: self.samples[k].to_numpy(dtype=float) for k in self.form.params})
            samples = pd.DataFrame({k: np.broadcast_to(np.asarray(v, dtype=float), (len(self.samples),)) for k, v in draws.items()})
        note = f"the {self.form.name} law {self.form.formula} in the Chinchilla form's parameters"
        return replace(self, form=chinchilla(), params=params, samples=samples, notes="; ".join(filter(None, [self.notes, note])))

    def with_params(self, **changes: float) -> "Law":
        return replace(self, params={**self.params, **changes}, samples=None)

    def to_dict(self) -> dict:
        out = {"name": self.name, "form": self.form.name, "formula": self.form.formula, "source": self.source,
               "params": {k: float(v) for k, v in self.params.items()}}
        if self.notes:
            out["notes"] = self.notes
        if self.published_intervals:
            out["published_intervals"] = {k: list(v) for k, v in self.published_intervals.items()}
        return out


def law_from_dict(data: object, name: str | None = None, where: str = "this JSON") -> Law:
    """A law from a saved fit (`scalinglab fit --save`, the store's "fit" results) or a law dict.

    Anything else (not an object, parameters that are not numbers, draws that do not match the
    form) raises UserError naming `where` and what is wrong."""
    import pandas as pd

    hint = "save a fit with scalinglab fit --save FILE"
    if not isinstance(data, Mapping):
        raise UserError(f"{where} holds a JSON {_json_type(data)}, not an object with 'form' and 'params'; {hint}")
    if "form" not in data or "params" not in data:
        raise UserError(f"{where} is neither a saved fit nor a law: it needs 'form' and 'params'; {hint}")
    if not isinstance(data["form"], str):
        raise UserError(f"{where}: 'form' must be a form name such as \"chinchilla\", not a JSON {_json_type(data['form'])}; {hint}")
    form = get_form(data["form"])
    if data.get("ties"):
        from scalinglab.laws.forms import tie

        if not isinstance(data["ties"], Mapping):
            raise UserError(f"{where}: 'ties' must be an object of follower -> leader names; {hint}")
        form = tie(form, dict(data["ties"]))
    if not isinstance(data["params"], Mapping):
        raise UserError(f"{where}: 'params' must be an object of parameter values, not a JSON {_json_type(data['params'])}; {hint}")
    params = {}
    for k, v in data["params"].items():
        value = v.get("estimate") if isinstance(v, Mapping) else v
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise UserError(f"{where}: parameter {k!r} is {value!r}, not a finite number; {hint}")
        params[k] = float(value)
    samples = None
    if data.get("samples"):
        draws = data["samples"]
        if not isinstance(draws, Mapping) or any(k not in draws for k in form.params):
            raise UserError(f"{where}: 'samples' must hold a list of draws for each of {list(form.params)}; {hint}")
        try:
            samples = pd.DataFrame({k: pd.to_numeric(pd.Series(draws[k]), errors="raise") for k in form.params}).astype(float)
        except (TypeError, ValueError) as exc:
            raise UserError(f"{where}: 'samples' are not lists of numbers of one length ({exc}); {hint}") from None
    fitted = data.get("kind") == "scalinglab.fit"
    notes = str(data.get("notes", ""))
    if fitted:
        notes = _check_identified(data, form, where) or notes
    level = data.get("level", 0.95)
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
        raise UserError(f"{where}: 'level' must be a number between 0 and 1, got {level!r}; {hint}")
    return Law(
        name=name or str(data.get("name") or f"fit ({form.name})"),
        form=form,
        params=params,
        source=f"scalinglab fit of {data.get('source') or 'data'} ({data.get('n_points', '?')} points)" if fitted else str(data.get("source", "")),
        notes=notes,
        samples=samples,
        level=float(level),
    ).implied()


def _check_identified(data: Mapping, form: Form, where: str) -> str:
    """Refuse a saved fit whose points could not identify its form (fewer distinct N or D than a
    power-law term needs: a whole family of laws fits them equally well). A fit saved before the
    counts were recorded cannot be checked: say so, in the law's notes."""
    distinct = data.get("distinct")
    if not isinstance(distinct, Mapping):
        return ("saved by an older scalinglab, before fits checked that their points identify the law; "
                "refit with `scalinglab fit` to check")
    params = data.get("params") if isinstance(data.get("params"), Mapping) else {}
    fixed = {k: v.get("estimate") for k, v in params.items() if isinstance(v, Mapping) and v.get("fixed")}
    for var, need in form.distinct_needed(fixed).items():
        have = distinct.get(var)
        if isinstance(have, int) and have < need:
            raise UserError(f"{where} was fitted on {have} distinct {var}, too few to identify its {var} term (it needs "
                            f"{need}): a family of laws fits those points equally well; refit with more {var} values")
    return ""


def _json_type(value: object) -> str:
    names = {list: "array", str: "string", bool: "boolean", type(None): "null", int: "number", float: "number", dict: "object"}
    return names.get(type(value), type(value).__name__)
