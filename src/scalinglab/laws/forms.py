"""Functional forms of loss laws: L as a function of parameters N, tokens D (and unique tokens U).

A form knows its parameter names, the data it needs, how to predict the loss and how to predict
log L with its Jacobian in *internal coordinates*: every positive coefficient (E, A, B, ...) is
fitted as its logarithm, every exponent as itself. Log coordinates keep the coefficients positive
and make the Hoffmann/Epoch objective, Huber on log L_pred - log L, a smooth function of the
coordinates; L_pred is computed through logsumexp, as Hoffmann and Epoch do, so no term
underflows.

Forms whose coefficients enter linearly (Chinchilla: L = E*1 + A*N^-α + B*D^-β) also describe
that structure (`VarPro`), which lets the fitter search only over the exponents and solve the rest
as (reweighted) linear least squares.

Forms
- `chinchilla`:  L(N, D) = E + A/N^α + B/D^β                     (Hoffmann et al. 2022)
- `overtrain`:   L(C, M) = E + (a·M^η + b·M^-η)·C^-η, C = 6ND, M = D/N  (Gadre et al. 2024): the
                 Chinchilla form with α = β, for predicting over-trained and larger models
- `data`:        L(D) = E + B/D^β at fixed N
- `params`:      L(N) = E + A/N^α with data not the bottleneck
- `kaplan`:      L(N, D) = [(N_c/N)^(α_N/α_D) + D_c/D]^α_D       (Kaplan et al. 2020, eq. 1.5)
- `data-constrained`: Chinchilla with repeated data and excess parameters decayed
                 (Muennighoff et al. 2023); needs U, the unique tokens
- `CustomForm(fn)`: any vectorised function of the variables and named parameters.
- `tie(form, {"beta": "alpha"})`: any form with parameters set equal (--tie alpha=beta).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from scalinglab.errors import UserError

Array = np.ndarray
# Exponents are searched and bounded in this range; wider than any published LM law.
EXPONENT_BOUNDS = (1e-4, 10.0)
# Bounds on the log of positive coefficients: loose, only there to stop runaway line searches.
LOG_COEF_BOUNDS = (-60.0, 80.0)


@dataclass(frozen=True)
class VarPro:
    """How a form splits into nonlinear parameters (searched) and linear coefficients (solved).

    For fixed nonlinear parameters θ, log L_pred = γ(θ) · log(Φ(θ) c) with c > 0 linear
    coefficients and Φ a basis matrix. Chinchilla: θ = (α, β), Φ = [1, N^-α, D^-β], γ = 1.
    """

    nonlinear: tuple[str, ...]
    basis: Callable[[Array, Mapping[str, Array]], Array]  # θ (G, q), X -> Φ (G, n, k)
    assemble: Callable[[Array, Array], Array]  # θ (G, q), c (G, k) -> z (G, P) internal coordinates
    power: Callable[[Array], Array] | None = None  # θ (G, q) -> γ (G,); None means γ = 1

    def grid(self) -> list[Array]:
        """One grid per nonlinear parameter; finer where LM exponents usually lie (0.05-0.6)."""
        points = 48 if len(self.nonlinear) > 1 else 400
        return [np.geomspace(0.02, 3.0, points) for _ in self.nonlinear]


class Form:
    """A loss law with named parameters. Subclasses set the class attributes and `predict`."""

    name: str = "form"
    formula: str = ""
    params: tuple[str, ...] = ()
    variables: tuple[str, ...] = ("N", "D")
    positive: frozenset[str] = frozenset()  # fitted as logarithms
    varpro: VarPro | None = None
    ties: Mapping[str, str] = {}  # follower -> leader: parameters set equal to others (see `tie`)

    # -- prediction ------------------------------------------------------------------------
    def predict(self, p: Mapping[str, float | Array], **X: float | Array) -> Array:
        """L for parameters `p` (name -> value) at the given variables; numpy broadcasting."""
        raise NotImplementedError

    def log_predict(self, z: Array, X: Mapping[str, Array]) -> Array:
        """log L_pred for internal coordinates `z` (P,) at data `X` (each (n,))."""
        with np.errstate(all="ignore"):
            return np.log(self.predict(self.natural(z), **X))

    def log_predict_jac(self, z: Array, X: Mapping[str, Array]) -> tuple[Array, Array]:
        """(log L_pred (n,), d log L_pred / dz (n, P)). Central differences unless overridden."""
        base = self.log_predict(z, X)
        jac = np.empty((base.size, z.size))
        for j in range(z.size):
            h = 1e-6 * max(1.0, abs(z[j]))
            up, down = z.copy(), z.copy()
            up[j] += h
            down[j] -= h
            jac[:, j] = (self.log_predict(up, X) - self.log_predict(down, X)) / (2 * h)
        return base, jac

    def log_predict_jac_batch(self, Z: Array, X: Mapping[str, Array]) -> tuple[Array, Array]:
        """Many parameter vectors at once: Z (B, P) -> (log L_pred (B, n), Jacobians (B, n, P))."""
        pairs = [self.log_predict_jac(z, X) for z in Z]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])

    # -- coordinates -----------------------------------------------------------------------
    def internal(self, p: Mapping[str, float]) -> Array:
        missing = [k for k in self.params if k not in p]
        if missing:
            raise UserError(f"the {self.name} form needs parameters {missing}; give all of {list(self.params)}")
        return np.array([np.log(p[k]) if k in self.positive else float(p[k]) for k in self.params], dtype=float)

    def natural(self, z: Array) -> dict[str, Array]:
        """Internal coordinates -> parameter dict. Works on (P,) vectors and on (..., P) batches."""
        z = np.asarray(z, dtype=float)
        return {k: (np.exp(z[..., i]) if k in self.positive else z[..., i]) for i, k in enumerate(self.params)}

    def bounds(self) -> list[tuple[float, float]]:
        return [LOG_COEF_BOUNDS if k in self.positive else EXPONENT_BOUNDS for k in self.params]

    def distinct_needed(self, fixed: Mapping[str, float] | None = None) -> dict[str, int]:
        """The fewest distinct values of each variable that can pin the free parameters down.

        The generic rule: a variable the form depends on needs two values for any of that
        dependence to be seen. Forms with known structure say more (PowerLawSum)."""
        return {v: 2 for v in self.variables}

    def default_start(self, X: Mapping[str, Array], loss: Array) -> dict[str, float]:
        """A plausible starting point for multistart (coefficients of the loss's own scale)."""
        return {k: (float(np.min(loss)) / 2 if k == "E" else 1.0 if k in self.positive else 0.3) for k in self.params}

    def __repr__(self) -> str:
        return f"<form {self.name}: {self.formula}>"


# -- the Chinchilla family ---------------------------------------------------------------------
class PowerLawSum(Form):
    """L = E + Σ_j C_j · (s_j X_j)^(-k_j e_j): an irreducible loss plus one power law per variable.

    Usually s_j = k_j = 1 (Chinchilla: E + A/N^α + B/D^β). Terms may share an exponent (the
    Chinchilla form with α = β, and the over-training form, whose C^-η M^±η terms are
    (√6·N)^(-2η) and (√6·D)^(-2η)): the shared exponent is one parameter, searched once.

    Internal coordinates measure each variable from a reference scale X0_j (the geometric mean of
    the data, see `centred`): the coordinate of C_j is log C_j - k_j e_j log(s_j X0_j), the log of the
    term at X0_j. That removes most of the correlation between a coefficient and its exponent, which
    otherwise form a long narrow valley (A and α trade off over the few decades of N a study spans).
    """

    def __init__(self, name: str, terms: list[tuple[str, str, str]], formula: str, ref: Mapping[str, float] | None = None,
                 shapes: list[tuple[float, float]] | None = None, implied: Callable[[Mapping], dict] | None = None):
        self.name, self.formula = name, formula
        self.terms = terms  # (coefficient, exponent, variable)
        self.shapes = shapes or [(1.0, 1.0)] * len(terms)  # (k_j, s_j) per term
        exponents = tuple(dict.fromkeys(exp for _, exp, _ in terms))  # each shared exponent once
        seen: set[str] = set()
        self.params = ("E", *[q for coef, exp, _ in terms for q in (coef, exp) if not (q in seen or seen.add(q))])
        self.variables = tuple(var for _, _, var in terms)
        self.positive = frozenset(["E", *[coef for coef, _, _ in terms]])
        self.ref = {var: float((ref or {}).get(var, 0.0)) for var in self.variables}  # log(s X0) per variable
        self.implied = implied  # parameters of the equivalent Chinchilla law, when there is one
        self.ties: dict[str, str] = {}  # follower -> leader, set by `tie`
        self.varpro = VarPro(nonlinear=exponents, basis=self._basis, assemble=self._assemble)

    def distinct_needed(self, fixed=None):
        return power_terms_need(self.terms, fixed)

    def _log_scaled(self, X: Mapping[str, Array], j: int) -> Array:
        """log(s_j X_j) - log(s_j X0_j) for term j."""
        var, (_, s) = self.terms[j][2], self.shapes[j]
        return np.log(X[var]) + np.log(s) - self.ref[var]

    def centred(self, X: Mapping[str, Array]) -> "PowerLawSum":
        """The same form with internal coordinates centred on the data's geometric means."""
        ref = {var: float(np.mean(np.log(X[var]) + np.log(s))) for (_, _, var), (_, s) in zip(self.terms, self.shapes)}
        out = PowerLawSum(self.name, self.terms, self.formula, ref, self.shapes, self.implied)
        out.ties = self.ties
        return out

    def to_chinchilla(self, p: Mapping) -> dict | None:
        """E, A, α, B, β of the same law (arrays broadcast), or None when this is no Chinchilla variant."""
        return None if self.implied is None else self.implied(p)

    def predict(self, p, **X):
        out = p["E"] + 0.0 * np.asarray(X[self.variables[0]], dtype=float)
        for (coef, exp, var), (k, s) in zip(self.terms, self.shapes):
            out = out + p[coef] * (s * np.asarray(X[var], dtype=float)) ** (-k * np.asarray(p[exp]))
        return out

    def internal(self, p):
        z = super().internal(p)
        for (coef, exp, var), (k, _) in zip(self.terms, self.shapes):
            z[self.params.index(coef)] -= k * float(p[exp]) * self.ref[var]
        return z

    def natural(self, z):
        z = np.asarray(z, dtype=float)
        out = super().natural(z)
        for (coef, exp, var), (k, _) in zip(self.terms, self.shapes):
            out[coef] = np.exp(z[..., self.params.index(coef)] + k * z[..., self.params.index(exp)] * self.ref[var])
        return out

    def log_predict_jac(self, z, X):
        lp, jac = self.log_predict_jac_batch(np.asarray(z)[None, :], X)
        return lp[0], jac[0]

    def log_predict_jac_batch(self, Z, X):
        ix = {k: i for i, k in enumerate(self.params)}
        centred = [k * self._log_scaled(X, j) for j, (k, _) in enumerate(self.shapes)]  # (n,) each
        # each term's log, (1 + terms, B, n): log E, then log C_j - k_j e_j (log s_j X_j - log s_j X0_j)
        t = np.stack([np.broadcast_to(Z[:, ix["E"], None], (Z.shape[0], centred[0].size))]
                     + [Z[:, ix[c], None] - Z[:, ix[e], None] * lx for (c, e, _), lx in zip(self.terms, centred)])
        top = t.max(axis=0)
        w = np.exp(t - top)
        total = w.sum(axis=0)
        share = w / total  # each term's share of L_pred
        jac = np.zeros((*Z.shape[:1], centred[0].size, Z.shape[1]))
        jac[..., ix["E"]] = share[0]
        for j, ((coef, exp, _), lx) in enumerate(zip(self.terms, centred), start=1):
            jac[..., ix[coef]] = share[j]
            jac[..., ix[exp]] -= share[j] * lx  # a shared exponent collects every term it shapes
        return top + np.log(total), jac

    def log_predict(self, z, X):
        return self.log_predict_jac(z, X)[0]

    def _basis(self, theta, X):
        n = np.asarray(X[self.variables[0]]).size
        cols = [np.ones((theta.shape[0], n))]
        for j, ((_, exp, _), (k, _)) in enumerate(zip(self.terms, self.shapes)):
            e = theta[:, self.varpro.nonlinear.index(exp), None]
            cols.append(np.exp(-k * e * self._log_scaled(X, j)[None, :]))
        return np.stack(cols, axis=-1)  # (G, n, 1 + terms)

    def _assemble(self, theta, c):
        z = np.empty((theta.shape[0], len(self.params)))
        z[:, 0] = np.log(c[:, 0])
        for j, (coef, _, _) in enumerate(self.terms):
            z[:, self.params.index(coef)] = np.log(c[:, 1 + j])
        for i, exp in enumerate(self.varpro.nonlinear):
            z[:, self.params.index(exp)] = theta[:, i]
        return z

    def default_start(self, X, loss):
        start = {"E": float(np.min(loss)) / 2}
        for (coef, exp, var), (k, s) in zip(self.terms, self.shapes):
            start[exp] = 0.3 / k
            # the term carries about half the reducible loss at the median of its variable
            start[coef] = float(np.min(loss)) / 2 * float(s * np.median(X[var])) ** 0.3
        return start


def power_terms_need(terms, fixed: Mapping[str, float] | None = None) -> dict[str, int]:
    """Distinct values each variable needs for E + Σ C_j·X_j^(-e_j). While E is free, a term is
    seen only through the differences between distinct values of its variable (E absorbs the
    level), so it needs one value more than its free parameters: 3 with C_j and e_j free. With E
    fixed, as many values as free parameters; at least 1. A shared exponent is counted in every
    term it shapes (a rule on the safe side)."""
    fixed = fixed or {}
    need: dict[str, int] = {}
    for coef, exp, var in terms:
        free = (coef not in fixed) + (exp not in fixed)
        need[var] = max(1, free + (1 if free and "E" not in fixed else 0))
    return need


def chinchilla() -> PowerLawSum:
    return PowerLawSum("chinchilla", [("A", "alpha", "N"), ("B", "beta", "D")], "L(N, D) = E + A/N^α + B/D^β")


def overtrain() -> PowerLawSum:
    """Gadre et al. 2024 (arXiv:2403.08540), eq. 4: L(C, M) = E + (a·M^η + b·M^-η)·C^-η with C = 6ND
    and M = D/N. Since M^η C^-η = 6^-η N^-2η and M^-η C^-η = 6^-η D^-2η, it is the Chinchilla law
    with α = β = 2η, A = a·6^-η, B = b·6^-η."""
    root6 = float(np.sqrt(6.0))

    def implied(p):
        scale = 6.0 ** (-np.asarray(p["eta"]))
        return {"E": p["E"], "A": p["a"] * scale, "alpha": 2 * np.asarray(p["eta"]), "B": p["b"] * scale, "beta": 2 * np.asarray(p["eta"])}

    return PowerLawSum("overtrain", [("a", "eta", "N"), ("b", "eta", "D")],
                       "L(C, M) = E + (a·M^η + b·M^-η)·C^-η,  C = 6ND, M = D/N  (Gadre et al. 2024)",
                       shapes=[(2.0, root6), (2.0, root6)], implied=implied)


def data_scaling() -> PowerLawSum:
    return PowerLawSum("data", [("B", "beta", "D")], "L(D) = E + B/D^β  (fixed N)")


def param_scaling() -> PowerLawSum:
    return PowerLawSum("params", [("A", "alpha", "N")], "L(N) = E + A/N^α  (data not the bottleneck)")


# -- Kaplan et al. 2020 ----------------------------------------------------------------------
class Kaplan(Form):
    """L(N, D) = [(N_c/N)^(α_N/α_D) + D_c/D]^α_D (Kaplan et al. 2020, eq. 1.5). No irreducible term.

    Variable projection still applies: L^(1/α_D) = N_c^p · N^-p + D_c · D^-1 with p = α_N/α_D, so
    for fixed (α_N, α_D) the coefficients (N_c^p, D_c) are linear.
    """

    name = "kaplan"
    formula = "L(N, D) = [(N_c/N)^(α_N/α_D) + D_c/D]^α_D"
    params = ("Nc", "alpha_N", "Dc", "alpha_D")
    variables = ("N", "D")
    positive = frozenset({"Nc", "Dc"})

    def __init__(self):
        self.varpro = VarPro(nonlinear=("alpha_N", "alpha_D"), basis=self._basis, assemble=self._assemble, power=self._power)

    def predict(self, p, **X):
        N, D = np.asarray(X["N"], dtype=float), np.asarray(X["D"], dtype=float)
        return ((p["Nc"] / N) ** (p["alpha_N"] / p["alpha_D"]) + p["Dc"] / D) ** p["alpha_D"]

    def log_predict_jac(self, z, X):
        lp, jac = self.log_predict_jac_batch(np.asarray(z)[None, :], X)
        return lp[0], jac[0]

    def log_predict_jac_batch(self, Z, X):
        nc, a_n, dc, a_d = (Z[:, i, None] for i in range(4))  # each (B, 1)
        lN, lD = np.log(X["N"]), np.log(X["D"])
        u1, u2 = a_n / a_d * (nc - lN), dc - lD
        top = np.maximum(u1, u2)
        s = top + np.log(np.exp(u1 - top) + np.exp(u2 - top))  # log of the bracket
        share1 = np.exp(u1 - s)
        share2 = 1.0 - share1
        jac = np.stack([share1 * a_n, share1 * (nc - lN), share2 * a_d, s - share1 * u1], axis=-1)
        return a_d * s, jac

    def log_predict(self, z, X):
        return self.log_predict_jac(z, X)[0]

    @staticmethod
    def _power(theta):
        return theta[:, 1]

    def _basis(self, theta, X):
        ratio = theta[:, 0] / theta[:, 1]
        first = np.exp(-ratio[:, None] * np.log(X["N"])[None, :])
        second = np.broadcast_to(1.0 / np.asarray(X["D"], dtype=float)[None, :], first.shape)
        return np.stack([first, second], axis=-1)

    def _assemble(self, theta, c):
        ratio = theta[:, 0] / theta[:, 1]
        return np.stack([np.log(c[:, 0]) / ratio, theta[:, 0], np.log(c[:, 1]), theta[:, 1]], axis=1)

    def bounds(self):
        return [(-60.0, 200.0), EXPONENT_BOUNDS, (-60.0, 200.0), EXPONENT_BOUNDS]

    def default_start(self, X, loss):
        return {"Nc": 1e13, "alpha_N": 0.08, "Dc": 1e13, "alpha_D": 0.1}


# -- Muennighoff et al. 2023 -----------------------------------------------------------------
class DataConstrained(Form):
    """Chinchilla with effective data D' and effective parameters N' (Muennighoff et al. 2023).

        U_D = min(U, D)                 R_D = D/U_D - 1   (repetitions beyond the first epoch)
        D'  = U_D + U_D R_D* (1 - exp(-R_D/R_D*))
        U_N = min(N, N_opt(U_D))        R_N = N/U_N - 1   (parameters beyond compute-optimal for U_D)
        N'  = U_N + U_N R_N* (1 - exp(-R_N/R_N*))
        L   = E + A/N'^α + B/D'^β

    N_opt(U_D) = G (U_D G)^(β/α), G = (αA/(βB))^(1/(α+β)): the compute-optimal size for U_D tokens.
    A repeated token is worth less with every epoch; R_D* is the number of repetitions after which
    a repeated token's value has decayed by 1/e.
    """

    name = "data-constrained"
    formula = "L = E + A/N'^α + B/D'^β,  D' = U + U·R_D*·(1 - exp(-(D/U - 1)/R_D*)),  N' likewise"
    params = ("E", "A", "alpha", "B", "beta", "RD_star", "RN_star")
    variables = ("N", "D", "U")
    positive = frozenset({"E", "A", "B", "RD_star", "RN_star"})

    def predict(self, p, **X):
        N, D, U = (np.asarray(X[k], dtype=float) for k in ("N", "D", "U"))
        n_eff, d_eff = effective_params_data(p, N, D, U)
        return p["E"] + p["A"] / n_eff ** p["alpha"] + p["B"] / d_eff ** p["beta"]

    def distinct_needed(self, fixed=None):
        # The Chinchilla core's needs; U may be the same for every point (R_D* is seen through D/U).
        return {**power_terms_need([("A", "alpha", "N"), ("B", "beta", "D")], fixed), "U": 1}

    def default_start(self, X, loss):
        return {"E": float(np.min(loss)) / 2, "A": 400.0, "alpha": 0.34, "B": 400.0, "beta": 0.3, "RD_star": 15.0, "RN_star": 5.0}


def effective_params_data(p: Mapping, N: Array, D: Array, U: Array) -> tuple[Array, Array]:
    """(N', D'): the effective parameters and data of Muennighoff et al. 2023 (see DataConstrained)."""
    u_d = np.minimum(U, D)
    r_d = np.maximum(D / u_d - 1.0, 0.0)
    d_eff = u_d + u_d * p["RD_star"] * (1.0 - np.exp(-r_d / p["RD_star"]))
    g = (p["alpha"] * p["A"] / (p["beta"] * p["B"])) ** (1.0 / (p["alpha"] + p["beta"]))
    u_n = np.minimum(N, g * (u_d * g) ** (p["beta"] / p["alpha"]))
    r_n = np.maximum(N / u_n - 1.0, 0.0)
    n_eff = u_n + u_n * p["RN_star"] * (1.0 - np.exp(-r_n / p["RN_star"]))
    return n_eff, d_eff


# -- user-defined forms ----------------------------------------------------------------------
class CustomForm(Form):
    """A form from any vectorised function whose arguments are the variables and the parameters.

        def my_law(N, D, E, A, alpha, B, beta):
            return E + A / N**alpha + B / D**beta

        form = CustomForm(my_law, positive=("E", "A", "B"), start={"alpha": 0.3, ...})

    Arguments named N, D or U are variables; every other argument is a parameter. Parameters in
    `positive` are fitted as logarithms. Custom forms are fitted by multistart L-BFGS (no variable
    projection) from `start` and random perturbations of it.
    """

    def __init__(
        self,
        fn: Callable[..., Array],
        *,
        positive: tuple[str, ...] = (),
        start: Mapping[str, float] | None = None,
        name: str | None = None,
        formula: str = "",
    ):
        names = list(inspect.signature(fn).parameters)
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "custom")
        self.formula = formula or f"{self.name}({', '.join(names)})"
        self.variables = tuple(v for v in names if v in ("N", "D", "U"))
        self.params = tuple(v for v in names if v not in ("N", "D", "U"))
        if not self.variables or not self.params:
            raise UserError(f"custom form {self.name}: its arguments must include N, D or U and at least one parameter")
        unknown = set(positive) - set(self.params)
        if unknown:
            raise UserError(f"custom form {self.name}: positive={sorted(unknown)} are not among its parameters {list(self.params)}")
        self.positive = frozenset(positive)
        self._start = dict(start or {})

    def predict(self, p, **X):
        return np.asarray(self.fn(**{v: np.asarray(X[v], dtype=float) for v in self.variables}, **{k: p[k] for k in self.params}), dtype=float)

    def default_start(self, X, loss):
        base = super().default_start(X, loss)
        base.update(self._start)
        return base


# -- ties: one parameter set equal to another ------------------------------------------------
def tie(form: Form, ties: Mapping[str, str], fixed: Mapping[str, float] | None = None) -> Form:
    """`form` with each parameter in `ties` (follower -> leader) set equal to its leader.

    Exponents of a sum of power laws (--tie alpha=beta on the Chinchilla form) stay a sum of power
    laws with a shared exponent, so variable projection still fits it; any other tie wraps the form
    (`Tied`) and is fitted by multistart."""
    if not ties:
        return form
    check_ties(form, ties, fixed)
    if isinstance(form, PowerLawSum) and all({follower, leader} <= exponents_of(form) for follower, leader in ties.items()):
        terms = [(coef, ties.get(exp, exp), var) for coef, exp, var in form.terms]
        shown = ", ".join(f"{follower} = {leader}" for follower, leader in ties.items())
        implied = form.implied
        if implied is None and form.params == ("E", "A", "alpha", "B", "beta"):
            implied = lambda p, ties=dict(ties): {**p, **{follower: p[leader] for follower, leader in ties.items()}}  # noqa: E731
        tied = PowerLawSum(form.name, terms, f"{form.formula}  with {shown}", None, form.shapes, implied)
        tied.ties = dict(ties)
        return tied
    return Tied(form, ties)


def exponents_of(form: PowerLawSum) -> set[str]:
    return {exp for _, exp, _ in form.terms}


def check_ties(form: Form, ties: Mapping[str, str], fixed: Mapping[str, float] | None = None) -> None:
    for follower, leader in ties.items():
        unknown = [k for k in (follower, leader) if k not in form.params]
        if unknown:
            raise UserError(f"cannot tie {unknown[0]!r}: the {form.name} form's parameters are {list(form.params)}; "
                            f"write it as --tie NAME=NAME, e.g. --tie alpha=beta")
        if follower == leader:
            raise UserError(f"--tie {leader}={follower} ties a parameter to itself; name two different parameters")
        if leader in ties:
            raise UserError(f"--tie: {leader!r} is tied to {ties[leader]!r} and {follower!r} to {leader!r}; tie both to {ties[leader]!r}")
        if fixed and (follower in fixed or leader in fixed):
            held = follower if follower in fixed else leader
            raise UserError(f"{held!r} is both fixed and tied; fix both parameters (--fix) or tie them, not both")


class Tied(Form):
    """Any form with some parameters set equal to others (fitted by multistart)."""

    def __init__(self, base: Form, ties: Mapping[str, str]):
        self.base, self.ties = base, dict(ties)
        self.name = base.name
        self.formula = f"{base.formula}  with " + ", ".join(f"{follower} = {leader}" for follower, leader in self.ties.items())
        self.params = tuple(k for k in base.params if k not in self.ties)
        self.variables = base.variables
        self.positive = frozenset(k for k in base.positive if k in self.params)

    def expand(self, p: Mapping) -> dict:
        return {**p, **{follower: p[leader] for follower, leader in self.ties.items()}}

    def predict(self, p, **X):
        return self.base.predict(self.expand(p), **X)

    def bounds(self):
        return [b for b, k in zip(self.base.bounds(), self.base.params) if k not in self.ties]

    def distinct_needed(self, fixed=None):
        return self.base.distinct_needed(fixed)

    def default_start(self, X, loss):
        start = self.base.default_start(X, loss)
        return {k: start[k] for k in self.params}


FORMS: dict[str, Callable[[], Form]] = {
    "chinchilla": chinchilla,
    "overtrain": overtrain,
    "data": data_scaling,
    "params": param_scaling,
    "kaplan": Kaplan,
    "data-constrained": DataConstrained,
}


def get_form(form: str | Form) -> Form:
    """A form by name (see FORMS), or the form itself."""
    if isinstance(form, Form):
        return form
    if form not in FORMS:
        raise UserError(f"unknown form {form!r}; pick one of {', '.join(FORMS)}")
    return FORMS[form]()
