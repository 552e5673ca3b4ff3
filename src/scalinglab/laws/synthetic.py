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
