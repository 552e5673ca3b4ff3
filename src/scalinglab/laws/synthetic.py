"""Data from a known law, for recovery tests, coverage studies and the Approach 2 bias.

Noise is multiplicative: log L = log L_law + σ·ε, ε standard normal, the residual model that a fit
on log-loss residuals assumes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from scalinglab.laws.law import Law

if TYPE_CHECKING:
    import pandas as pd


def grid_data(
    law: Law,
    N: Sequence[float],
    D: Sequence[float],
    noise: float = 0.0,
    seed: int | np.random.Generator = 0,
    U: float | None = None,
) -> "pd.DataFrame":
    """Every (N, D) pair of the two lists, with loss from `law` (columns N, D, [U], loss)."""
    import pandas as pd

    n, d = (a.ravel() for a in np.meshgrid(np.asarray(N, float), np.asarray(D, float), indexing="ij"))
    X = {"N": n, "D": d} | ({"U": np.full(n.size, float(U))} if U is not None else {})
    loss = law.predict(**{k: v for k, v in X.items() if k in law.form.variables})
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    if noise:
        loss = loss * np.exp(noise * rng.standard_normal(loss.size))
    return pd.DataFrame({**X, "loss": loss})


# Gadre et al. 2024 trained 11M-411M-parameter models at 5 to 640 tokens per parameter (M = D/N,
# 0.25x to 32x the 20 of Chinchilla) and predicted 1.4B and 6.9B runs from them.
GADRE_SIZES = tuple(np.geomspace(11e6, 411e6, 6))
GADRE_MULTIPLIERS = (5, 10, 20, 40, 80, 160, 320, 640)


def tied_law(eta: float = 0.17, E: float = 1.8172, A: float = 482.01, B: float = 2085.43) -> Law:
    """A law with one exponent for N and D, in the over-training form: Epoch's E, A, B with
    α = β = 2η (a = A·6^η, b = B·6^η)."""
    from scalinglab.laws.forms import overtrain

    return Law("tied-exponent law (synthetic)", overtrain(), {"E": E, "a": A * 6.0**eta, "eta": eta, "b": B * 6.0**eta},
               source="scalinglab.laws.synthetic.tied_law")


def multiplier_data(
    law: Law,
    N: Sequence[float] = GADRE_SIZES,
    M: Sequence[float] = GADRE_MULTIPLIERS,
    noise: float = 0.0,
    seed: int | np.random.Generator = 0,
) -> "pd.DataFrame":
    """Runs of every size in `N` trained to M·N tokens for every token multiplier in `M`
    (columns N, D, loss), the design of an over-training study."""
    import pandas as pd

    n, m = (a.ravel() for a in np.meshgrid(np.asarray(N, float), np.asarray(M, float), indexing="ij"))
    loss = law.predict(N=n, D=m * n)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    if noise:
        loss = loss * np.exp(noise * rng.standard_normal(loss.size))
    return pd.DataFrame({"N": n, "D": m * n, "loss": loss})
