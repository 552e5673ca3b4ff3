"""Fit quality on synthetic data: do the 95% intervals cover the truth 95% of the time, and how
biased is Approach 2 on noise-free data?

    python benchmarks/fit_quality.py                  # 200 trials per design (~10 minutes on 2 cores)
    python benchmarks/fit_quality.py --trials 40      # a quick look
    python benchmarks/fit_quality.py --only extrapolation   # just the held-out-largest check (~5 minutes)

Coverage: data from the Hoffmann 2022 law on an N x D grid with multiplicative noise
(log L + σ·ε), fitted and bootstrapped as `scalinglab fit` does; for each parameter and for
derived quantities (the allocation exponent a, tokens/param at 1e21 FLOPs, the loss predicted at
a larger model), the share of trials whose interval contains the true value, with its binomial
standard error. Approach 2: the error of N_opt, D_opt and a against the law's exact optimum, for
sampling widths, off-centre and drifting sampling (scalinglab.laws.approach2_bias).

Extrapolation: data from a tied-exponent law (α = β, the over-training form of Gadre et al. 2024)
on their design (6 sizes 11M-411M, 5 to 640 tokens/param), 1% noise; each form is fitted without
the largest size and predicts it; the mean |error| of those predictions and the share of held-out
points inside their 95% prediction interval.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from scalinglab import laws  # noqa: E402
from scalinglab.laws.synthetic import grid_data, multiplier_data, tied_law  # noqa: E402

TRUTH = laws.HOFFMANN_2022
DESIGNS = {
    # name: (sizes, token counts, noise σ, Huber δ)
    "5x5 grid, σ=0.01": (np.geomspace(1e7, 3e9, 5), np.geomspace(2e8, 2e11, 5), 0.01, 1e-3),
    "8x8 grid, σ=0.02": (np.geomspace(1e7, 3e9, 8), np.geomspace(2e8, 2e11, 8), 0.02, 1e-3),
    "5x5 grid, σ=0.01, δ=1 (least squares)": (np.geomspace(1e7, 3e9, 5), np.geomspace(2e8, 2e11, 5), 0.01, 1.0),
}
AT = (1e10, 2e11)  # a model 3x larger than any fitted: an extrapolation
FLOPS = 1e21


def truth_of(name: str) -> float:
    p = TRUTH.params
    if name == "a":
        return p["beta"] / (p["alpha"] + p["beta"])
    if name == "tokens/param":
        return laws.compute_optimal(TRUTH, FLOPS)["tokens_per_param"].value
    if name == "loss":
        return float(TRUTH.predict(N=AT[0], D=AT[1]))
    return p[name]


def coverage(sizes, tokens, sigma, delta, trials: int, resamples: int, seed: int) -> tuple[dict[str, float], float]:
    names = [*TRUTH.form.params, "a", "tokens/param", "loss"]
    hits = dict.fromkeys(names, 0)
    rng = np.random.default_rng(seed)
    for t in range(trials):
        frame = grid_data(TRUTH, sizes, tokens, noise=sigma, seed=rng)
        result = laws.fit(frame, "chinchilla", delta=delta, multistart=0, bootstrap=resamples, seed=t)
        table = result.intervals().set_index("param")
        derived = result.derived(flops=[FLOPS], at=[AT]).set_index("quantity")
        rows = {k: (table.loc[k, "lo"], table.loc[k, "hi"]) for k in TRUTH.form.params}
        rows["a"] = tuple(derived.iloc[0][["lo", "hi"]])
        rows["tokens/param"] = tuple(derived.loc[f"tokens/param at C={FLOPS:.3g}", ["lo", "hi"]])
        rows["loss"] = tuple(derived.loc[f"loss at N={AT[0]:.3g}, D={AT[1]:.3g}", ["lo", "hi"]])
        for k, (lo, hi) in rows.items():
            hits[k] += lo <= truth_of(k) <= hi
    return {k: v / trials for k, v in hits.items()}, math.sqrt(0.95 * 0.05 / trials)


def extrapolation(trials: int, resamples: int, seed: int, sigma: float = 0.01) -> None:
    truth = tied_law()
    print(f"extrapolation: {trials} data sets from {truth.name} (η = {truth.params['eta']}), σ = {sigma}, 6 sizes x 8 multipliers; "
          f"fit without the largest size (411M), predict its 8 runs; {resamples} resamples")
    rng = np.random.default_rng(seed)
    frames = [multiplier_data(truth, noise=sigma, seed=rng) for _ in range(trials)]
    for form in ("overtrain", "chinchilla", "kaplan"):
        t0 = time.perf_counter()
        errors, inside, signed = [], [], []
        for t, frame in enumerate(frames):
            held = laws.validate(frame, form, "largest-n:1", bootstrap=resamples, multistart=0, seed=t)
            errors.append(held.error)
            signed.append(float(held.table["error"].mean()))
            inside.append(held.table["covered"].to_numpy())
        inside = np.concatenate(inside)
        se = math.sqrt(0.95 * 0.05 / trials)  # points of one data set are correlated: count data sets
        print(f"  {form}: held-out mean |error| {np.mean(errors):.2%} (median {np.median(errors):.2%}, mean signed {np.mean(signed):+.2%}); "
              f"95% prediction intervals cover {inside.mean():.1%} of {inside.size} held-out points "
              f"(±{se:.1%} s.e. per data set; {time.perf_counter() - t0:.0f} s)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--resamples", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--only", choices=["coverage", "approach2", "extrapolation"], default=None)
    args = parser.parse_args()
    if args.only in (None, "coverage"):
        coverage_report(args)
    if args.only in (None, "approach2"):
        approach2_report()
    if args.only in (None, "extrapolation"):
        extrapolation(args.trials, args.resamples, args.seed)
    return 0


def coverage_report(args) -> None:
    print(f"coverage of 95% percentile-bootstrap intervals ({args.trials} trials x {args.resamples} resamples; "
          f"truth: {TRUTH.name}; derived: a, tokens/param at {FLOPS:.0e} FLOPs, loss at N={AT[0]:.0e}, D={AT[1]:.0e})")
    for name, (sizes, tokens, sigma, delta) in DESIGNS.items():
        t0 = time.perf_counter()
        cov, se = coverage(sizes, tokens, sigma, delta, args.trials, args.resamples, args.seed)
        shown = ", ".join(f"{k} {v:.1%}" for k, v in cov.items())
        print(f"  {name}: {shown}  (±{se:.1%} s.e. at 95%; {time.perf_counter() - t0:.0f} s)")


def approach2_report() -> None:
    print("Approach 2 on noise-free data, 5 budgets 1e17-1e21 FLOPs, 15 sizes per budget (error vs the law's exact optimum):")
    for law in (laws.HOFFMANN_2022_ROUNDED, laws.HOFFMANN_2022):
        for width in (2, 4, 8, 16, 32):
            b = laws.approach2_bias(law, width=width)
            print(f"  {law.name}, ±{width}x around N_opt: N_opt {b.n_opt_error:+.2%}, D_opt {b.d_opt_error:+.2%}, "
                  f"tokens/param {b.tokens_per_param_error:+.2%}, a {b.a_fit - b.a_true:+.1e}")
    law = laws.HOFFMANN_2022_ROUNDED
    for center in (0.25, 0.5, 2.0, 4.0):
        b = laws.approach2_bias(law, width=8, center=center)
        print(f"  {law.name}, ±8x around {center:g}·N_opt: N_opt {b.n_opt_error:+.2%}, D_opt {b.d_opt_error:+.2%}, a {b.a_fit - b.a_true:+.1e}")
    for drift in (0.05, 0.1, 0.2):
        b = laws.approach2_bias(law, width=8, drift=drift)
        print(f"  {law.name}, ±8x around N_opt·(C/1e17)^{drift:g}: N_opt {b.n_opt_error:+.2%}, D_opt {b.d_opt_error:+.2%}, "
              f"a {b.a_fit:.4f} vs {b.a_true:.4f} ({b.a_fit - b.a_true:+.4f})")
    symmetric = laws.approach2_bias(law.with_params(beta=law.params["alpha"]), width=16)
    print(f"  α = β = {law.params['alpha']}, ±16x: N_opt {symmetric.n_opt_error:+.2%}, D_opt {symmetric.d_opt_error:+.2%} (no bias when α = β)")


if __name__ == "__main__":
    sys.exit(main())
