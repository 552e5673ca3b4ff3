"""Scaling laws: fit them with honest uncertainty, plan allocations with them.

    from scalinglab import laws
    result = laws.fit(frame, "chinchilla", bootstrap=1000)     # frame: columns N, D, loss
    result.intervals()                                        # estimates and 95% intervals
    laws.validate(frame, "overtrain", "largest-n:1")          # fit small, predict the largest held out
    laws.select_form(frame, "largest-n:1")                    # the form that extrapolates best, refitted
    laws.compute_optimal(result.law(), 1e21)                  # N_opt, D_opt with intervals
    laws.assess_run(laws.HOFFMANN_2022, 8e9, 15e12)           # Llama 3 8B at 15T tokens

Modules, each readable top to bottom: forms (the functional forms), objective (Huber on log
residuals, L-BFGS polish), varpro (variable projection), fitting (`fit`), bootstrap (intervals),
approaches (Hoffmann's Approaches 1 and 2), law / reference (published laws), planning, data
(input checks), validation (held-out-largest checks, form selection, extrapolation warnings),
synthetic (data from a known law). The figures are in `scalinglab.report.laws`.
"""

from scalinglab.laws.approaches import approach1, approach2, approach2_bias
from scalinglab.laws.bootstrap import Bootstrap, run_bootstrap
from scalinglab.laws.data import DEFAULT_KINDS, FitData, Selection, prepare, read_table, store_frame
from scalinglab.laws.fitting import fit
from scalinglab.laws.forms import FORMS, CustomForm, Form, get_form, overtrain, tie
from scalinglab.laws.law import Estimate, Law, law_from_dict
from scalinglab.laws.planning import Plan, assess_run, compute_optimal, data_constrained, inference_optimal
from scalinglab.laws.reference import (
    EPOCH_2024,
    HOFFMANN_2022,
    HOFFMANN_2022_ROUNDED,
    MUENNIGHOFF_2023,
    REFERENCE_LAWS,
    load_law,
    reference_law,
)
from scalinglab.laws.result import FitResult
from scalinglab.laws.validation import FormChoice, HeldOut, Holdout, beyond_range, select_form, validate

__all__ = [
    "fit", "FitResult", "FitData", "prepare", "read_table", "store_frame", "Selection", "DEFAULT_KINDS", "run_bootstrap", "Bootstrap",
    "Form", "CustomForm", "FORMS", "get_form", "overtrain", "tie",
    "validate", "select_form", "Holdout", "HeldOut", "FormChoice", "beyond_range", "Law", "Estimate", "law_from_dict",
    "Plan", "compute_optimal", "inference_optimal", "assess_run", "data_constrained",
    "HOFFMANN_2022", "HOFFMANN_2022_ROUNDED", "EPOCH_2024", "MUENNIGHOFF_2023", "REFERENCE_LAWS", "reference_law", "load_law",
    "approach1", "approach2", "approach2_bias",
]
