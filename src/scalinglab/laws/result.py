"""What a fit returns: parameters, intervals, diagnostics and a `predict`, like scipy/scikit-learn."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Iterable, Mapping

import numpy as np

from scalinglab.errors import UserError
from scalinglab.laws.data import FitData
from scalinglab.laws.forms import Form
from scalinglab.laws.law import Estimate, Law
from scalinglab.laws.objective import RobustLoss

if TYPE_CHECKING:
    from pathlib import Path

    import pandas as pd

    from scalinglab.laws.bootstrap import Bootstrap
    from scalinglab.store import Store

# Stored with every saved fit and printed by fit/plan: the compute convention of the derived quantities.
COMPUTE_CONVENTION = "C = 6·N·D training FLOPs (+ 2·N per inference token)"
COMPUTE_BASE = "compute: C = 6·N·D training FLOPs (Kaplan et al. 2020, Hoffmann et al. 2022), the convention the published laws were fitted with"
STORED_FLOPS = ("scalinglab's stored run FLOPs also count the output layer and attention, "
                "6(N + d_model·vocab) + 6·n_layer·seq_len·d_model per token (docs/laws.md)")
COMPUTE_NOTE = f"{COMPUTE_BASE}; {STORED_FLOPS}"


@dataclass(frozen=True)
class FitResult:
    form: Form
    params: dict[str, float]
    z: np.ndarray  # internal coordinates (logs of the positive coefficients)
    objective: float  # Σ huber(log L_pred - log L) at the optimum
    converged: bool
    message: str
    data: FitData
    robust: RobustLoss
    method: str
    fixed: Mapping[str, float] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    diagnostics: dict = field(default_factory=dict)
    bootstrap: "Bootstrap | None" = None

    # -- basics ----------------------------------------------------------------------------
    @property
    def n_points(self) -> int:
        return len(self.data)

    def predict(self, N=None, D=None, U=None) -> np.ndarray:
        """Predicted loss (nats/token) at the given N, D (and U); arrays broadcast."""
        X = {k: v for k, v in (("N", N), ("D", D), ("U", U)) if v is not None}
        missing = [v for v in self.form.variables if v not in X]
        if missing:
            raise ValueError(f"the {self.form.name} form needs {missing} to predict")
        return self.form.predict(self.params, **X)

    def residuals(self) -> np.ndarray:
        """log L_pred - log L at each data point."""
        return np.log(self.predict(**self.data.X(self.form))) - np.log(self.data.loss)

    def law(self, name: str | None = None) -> Law:
        """This fit as a law for planning, carrying its bootstrap draws for intervals. A Chinchilla
        law with tied exponents (the over-training form, --tie alpha=beta) comes back in the
        Chinchilla form's parameters, which planning's closed forms use."""
        return self.own_law(name).implied()

    def own_law(self, name: str | None = None) -> Law:
        """This fit as a law in its own form's parameters."""
        return Law(
            name=name or f"fit ({self.form.name}, {self.n_points} points)",
            form=self.form,
            params=dict(self.params),
            source=f"scalinglab fit of {self.data.source or 'data'}",
            samples=None if self.bootstrap is None else self.bootstrap.params,
        )

    def prediction_interval(self, level: float = 0.95, **X) -> tuple[np.ndarray, np.ndarray]:
        """Where the loss of a new run at X (arrays of N, D, [U]) should fall, at `level`.

        Two sources of error add up: the law's own uncertainty, each bootstrap draw's prediction
        (it grows with the distance from the fitted points, the further the extrapolation the
        more the draws' exponents fan out), and the scatter of a run about the law, the fitted
        points' log residuals. The residuals are scaled by sqrt(n / (n - p)): a fit pulls its
        own points towards itself, so their residuals understate a new run's. Every draw is paired
        with every residual and the percentiles read off. NaN without a bootstrap."""
        X = {k: np.atleast_1d(np.asarray(v, dtype=float)) for k, v in X.items()}
        size = np.broadcast(*X.values()).size
        if self.bootstrap is None:
            return np.full(size, np.nan), np.full(size, np.nan)
        draws = {k: self.bootstrap.params[k].to_numpy(dtype=float)[:, None] for k in self.form.params}
        with np.errstate(all="ignore"):
            log_pred = np.log(self.form.predict(draws, **{k: v.reshape(1, -1) for k, v in X.items()}))  # (B, m)
        free = len(self.form.params) - len(self.fixed)
        scatter = -self.residuals() * np.sqrt(self.n_points / max(self.n_points - free, 1))  # (n,) actual minus law
        tail = 100 * (1 - level) / 2
        lo, hi = np.empty(log_pred.shape[1]), np.empty(log_pred.shape[1])
        for j in range(log_pred.shape[1]):
            combined = log_pred[:, j][np.isfinite(log_pred[:, j])][:, None] + scatter[None, :]
            lo[j], hi[j] = np.exp(np.percentile(combined, [tail, 100 - tail]))
        return lo, hi

    def with_bootstrap(self, boot: "Bootstrap") -> "FitResult":
        return replace(self, bootstrap=boot, warnings=self.warnings + tuple(w for w in boot.warnings if w not in self.warnings))

    # -- intervals -------------------------------------------------------------------------
    def intervals(self, level: float = 0.95) -> "pd.DataFrame":
        """Each parameter's estimate and percentile interval (NaN without a bootstrap)."""
        import pandas as pd

        law = replace(self.own_law(), level=level)
        rows = []
        for k in self.form.params:
            est = law.param(k)
            rows.append({"param": k, "estimate": est.value, "lo": est.lo, "hi": est.hi, "fixed": k in self.fixed})
        return pd.DataFrame(rows)

    def derived(self, flops: Iterable[float] = (), at: Iterable[tuple[float, ...]] = (), level: float = 0.95) -> "pd.DataFrame":
        """Derived quantities with intervals: the allocation exponents a, b (N_opt ∝ C^a, D_opt ∝ C^b),
        N_opt, D_opt and tokens/param at each budget in `flops`, and the predicted loss at each
        point in `at` (tuples in the order of the form's variables)."""
        import pandas as pd

        from scalinglab.laws.planning import compute_optimal

        law = replace(self.law(), level=level)
        rows: list[tuple[str, Estimate]] = []
        if set(self.form.variables) >= {"N", "D"} and {"alpha", "beta"} <= set(self.form.params):
            rows.append(("a: N_opt ∝ C^a, a = β/(α+β)", law.estimate(lambda p: p["beta"] / (p["alpha"] + p["beta"]))))
            rows.append(("b: D_opt ∝ C^b, b = α/(α+β)", law.estimate(lambda p: p["alpha"] / (p["alpha"] + p["beta"]))))
        for c in flops if self.form.variables == ("N", "D") else ():  # (the data-constrained form also needs U)
            plan = compute_optimal(law, float(c))
            rows.append((f"N_opt at C={c:.3g}", plan["n_params"]))
            rows.append((f"D_opt at C={c:.3g}", plan["tokens"]))
            rows.append((f"tokens/param at C={c:.3g}", plan["tokens_per_param"]))
        if law.form is not self.form:  # the over-training form and tied fits: the Chinchilla law they imply
            rows += [(f"{k} (implied Chinchilla)", law.param(k)) for k in law.form.params]
        for point in at:
            X = dict(zip(self.form.variables, point))
            where = ", ".join(f"{k}={v:.3g}" for k, v in X.items())
            rows.append((f"loss at {where}", law.estimate(lambda p, X=X: law.form.predict(p, **X))))
        for point in at:  # after the law's own values, so that their rows keep their places
            X = dict(zip(self.form.variables, point))
            where = ", ".join(f"{k}={v:.3g}" for k, v in X.items())
            lo, hi = self.prediction_interval(level, **X)
            rows.append((f"a run's loss at {where} (prediction)", Estimate(float(self.form.predict(self.params, **X)), float(lo[0]), float(hi[0]))))
        return pd.DataFrame([{"quantity": q, "estimate": e.value, "lo": e.lo, "hi": e.hi} for q, e in rows])

    # -- serialisation ---------------------------------------------------------------------
    def to_dict(self, samples: bool = False, derived: "pd.DataFrame | None" = None) -> dict:
        """A JSON-able summary; `samples=True` adds the bootstrap draws (what `plan --law` needs)."""
        table = self.intervals()
        out = {
            "kind": "scalinglab.fit",
            "form": self.form.name,
            "formula": self.form.formula,
            "method": self.method,
            "loss": self.robust.describe(),
            "delta": self.robust.delta,
            "asymmetry": self.robust.asymmetry,
            "n_points": self.n_points,
            "n_groups": self.data.n_groups,
            "source": self.data.source,
            "data": self.data.meta,
            # how many distinct values of each variable the fit saw: a plan refuses a law they cannot identify
            "distinct": {v: int(np.unique(x).size) for v, x in self.data.X(self.form).items()},
            "converged": self.converged,
            "message": self.message,
            "objective": self.objective,
            "level": 0.95,
            "params": {r.param: _clean({"estimate": r.estimate, "lo": r.lo, "hi": r.hi, "fixed": bool(r.fixed)}) for r in table.itertuples()},
            **({"ties": dict(self.form.ties)} if self.form.ties else {}),
            "warnings": list(self.warnings),
            "diagnostics": self.diagnostics,
        }
        if self.bootstrap is not None:
            out["bootstrap"] = self.bootstrap.summary()
            if samples:
                out["samples"] = {k: self.bootstrap.params[k].tolist() for k in self.form.params}
        if derived is not None:
            out["derived"] = {r.quantity: _clean({"estimate": r.estimate, "lo": r.lo, "hi": r.hi}) for r in derived.itertuples()}
        return out

    def record(self, derived: "pd.DataFrame | None" = None) -> dict:
        """What `save` stores and `scalinglab fit --save FILE` writes: the summary with the bootstrap
        draws, the derived quantities (default: `self.derived()`) and the compute convention."""
        if derived is None:
            derived = self.derived()
        return {**self.to_dict(samples=True, derived=derived), "compute_convention": COMPUTE_CONVENTION}

    def save(self, store: "Store | str | Path", key: str, derived: "pd.DataFrame | None" = None) -> str:
        """Store this fit in the results store (a `Store` or its path) as fit `key`, replacing one
        with the same key; returns the key. `scalinglab plan --law store:KEY` plans with it, and so
        does `laws.load_law("store:KEY", db=PATH)`."""
        from scalinglab.store import Store, open_store

        if not isinstance(key, str) or not key.strip():
            raise UserError(f"a stored fit needs a non-empty key, got {key!r}; pass a name such as \"mine\"")
        if not isinstance(store, Store):
            store = open_store(store)
        store.put_result("fit", key, self.record(derived))  # the kind laws.reference.load_law reads
        return key


def _clean(d: dict) -> dict:
    """Drop NaN entries (no interval) so the JSON stays valid and small."""
    return {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in d.items()
            if not (isinstance(v, (float, np.floating)) and not np.isfinite(v))}


def compute_note(frame, flops_col: str | None) -> str:
    """The compute convention; for store input, how far the store's own FLOPs for these points are from it."""
    import numpy as np

    if flops_col:
        return f"{COMPUTE_BASE}; D was derived from --flops-col {flops_col} as C/(6N)"
    if frame is None:
        return COMPUTE_BASE
    note = COMPUTE_NOTE
    if "flops_stored" in frame:
        ratio = frame["flops_stored"].to_numpy(dtype=float) / (6.0 * frame["N"].to_numpy(dtype=float) * frame["D"].to_numpy(dtype=float))
        ratio = ratio[np.isfinite(ratio) & (ratio > 0)]
        if ratio.size:
            spread = f"{ratio.min():.2f}x" if ratio.max() < ratio.min() * 1.005 else f"{ratio.min():.2f}x-{ratio.max():.2f}x"
            note += f"; for these points the stored FLOPs are {spread} 6·N·D"
    return note
