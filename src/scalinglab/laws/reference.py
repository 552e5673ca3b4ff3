"""Published laws, with their sources, stored unrounded.

Rounding is not harmless: with Hoffmann's printed constants (α=0.34, β=0.28, E=1.69) the
compute-optimal split at 5.76e23 FLOPs is ~93 tokens per parameter; with the unrounded ones it is
~59. Losses are in nats per token on each paper's own data and tokenizer, so E and the predicted
losses of different laws are not comparable with each other; exponents and allocations are.
"""

from __future__ import annotations

import math

from scalinglab.errors import UserError
from scalinglab.laws.forms import DataConstrained, chinchilla
from scalinglab.laws.law import Law

HOFFMANN_2022 = Law(
    name="hoffmann2022",
    form=chinchilla(),
    params={"E": 1.6934, "A": 406.4, "alpha": 0.33917, "B": 410.7, "beta": 0.28491},
    source=(
        "Hoffmann et al. 2022, Training Compute-Optimal Large Language Models (arXiv:2203.15556), "
        "Approach 3 (eq. 10, MassiveText); E, α, β unrounded (printed as 1.69, 0.34, 0.28)"
    ),
)

HOFFMANN_2022_ROUNDED = Law(
    name="hoffmann2022-rounded",
    form=chinchilla(),
    params={"E": 1.69, "A": 406.4, "alpha": 0.34, "B": 410.7, "beta": 0.28},
    source="Hoffmann et al. 2022 (arXiv:2203.15556), eq. 10 as printed, rounded; for comparison only",
)

EPOCH_2024 = Law(
    name="epoch2024",
    form=chinchilla(),
    params={"E": 1.8172, "A": 482.01, "alpha": 0.3478, "B": 2085.43, "beta": 0.3658},
    source=(
        "Besiroglu, Erdil, Barnett, You 2024, Chinchilla Scaling: A replication attempt (arXiv:2404.10102): "
        "Huber (δ=1e-3) refit of 240 points digitised from Hoffmann's Figure 4"
    ),
    published_intervals={
        "A": (285.0, 744.0), "B": (1042.0, 5810.0), "E": (1.769, 1.871), "alpha": (0.317, 0.373), "beta": (0.331, 0.415),
    },
)

# The authors publish the fit as logs: a, b, e, α, β, R_D*, R_N* =
# 6.255414, 7.3049974, 0.6254804, 0.3526596, 0.3526596, 15.387756, 5.309743.
MUENNIGHOFF_2023 = Law(
    name="muennighoff2023",
    form=DataConstrained(),
    params={
        "E": math.exp(0.6254804), "A": math.exp(6.255414), "alpha": 0.3526596,
        "B": math.exp(7.3049974), "beta": 0.3526596, "RD_star": 15.387756, "RN_star": 5.309743,
    },
    source=(
        "Muennighoff et al. 2023, Scaling Data-Constrained Language Models (arXiv:2305.16264), "
        "data-constrained fit on C4 (GPT-2 tokenizer); constants from the authors' repository (huggingface/datablations)"
    ),
)

REFERENCE_LAWS: dict[str, Law] = {law.name: law for law in (HOFFMANN_2022, HOFFMANN_2022_ROUNDED, EPOCH_2024, MUENNIGHOFF_2023)}


def reference_law(name: str) -> Law:
    key = name.lower().replace("_", "").replace(" ", "")
    aliases = {"hoffmann": "hoffmann2022", "chinchilla": "hoffmann2022", "epoch": "epoch2024", "muennighoff": "muennighoff2023"}
    key = aliases.get(key, key)
    if key not in REFERENCE_LAWS:
        raise UserError(f"unknown law {name!r}; pick one of {', '.join(REFERENCE_LAWS)}, a saved fit (.json) or store:KEY")
    return REFERENCE_LAWS[key]


def load_law(spec: str, db: str | None = None) -> Law:
    """A law by reference name, from a saved fit (a .json file) or from the store ("store:KEY")."""
    import json
    from pathlib import Path

    from scalinglab.laws.law import law_from_dict

    if spec.startswith("store:"):
        from scalinglab.store import open_store

        key = spec[len("store:"):]
        if db is None or not Path(db).exists():
            raise UserError(f"--law {spec} reads the results store, but there is none at {db}; pass --db")
        saved = open_store(db).get_result("fit", key)
        if saved is None:
            keys = [r["key"] for r in open_store(db).results("fit")]
            raise UserError(f"no fit {key!r} in {db} (stored fits: {', '.join(keys) or 'none'}); run scalinglab fit first")
        return law_from_dict(saved, name=f"fit {key}", where=f"the stored fit {key!r} in {db}")
    if spec.endswith(".json") or Path(spec).is_file():
        path = Path(spec)
        if not path.is_file():
            raise UserError(f"no such file: {path}; save a fit with scalinglab fit --save {path}")
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read {path} as JSON ({exc}); save a fit with scalinglab fit --save") from None
        return law_from_dict(saved, name=f"fit {path.name}", where=str(path))
    return reference_law(spec)
