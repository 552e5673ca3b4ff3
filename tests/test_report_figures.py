"""Figures as a reader sees them: a law's curve no further than its data unless marked, axes a
degenerate fit cannot stretch, plain log tick labels."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from scalinglab import laws
from scalinglab.laws.reference import EPOCH_2024
from scalinglab.laws.synthetic import grid_data
from scalinglab.report.figures import pyplot


def _fit():
    data = grid_data(EPOCH_2024, N=[1e7, 3e7, 1e8, 3e8], D=[2e8, 1e9, 5e9, 2e10], noise=0.01, seed=1)
    return laws.fit(data, "chinchilla", bootstrap=0)


def test_a_degenerate_law_cannot_stretch_the_isoflop_axes():
    from scalinglab.report.laws import isoflop_figure

    result = _fit()
    # E -> 0 and alpha -> 0: the compute-optimal N of this law runs off to absurd sizes
    degenerate = replace(result, params={**result.params, "E": 1e-9, "alpha": 1e-6})
    fig = isoflop_figure(degenerate)
    ax = fig.axes[0]
    lo, hi = ax.get_xlim()
    assert lo >= result.data.N.min() / 10 and hi <= result.data.N.max() * 10
    assert "not drawn" in ax.get_title()
    labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert labels and not any("^" in t or "$" in t for t in labels)  # plain labels, no 10^x mathtext
    pyplot().close(fig)


def test_the_fit_figure_marks_its_extrapolation(tmp_path):
    from scalinglab.report.laws import fit_figure, save_figures

    result = _fit()
    paths = save_figures(result, tmp_path)
    assert [p.name for p in paths] == ["fit.png", "residuals.png", "isoflop.png"]
    assert all(p.stat().st_size > 10_000 for p in paths)
    fig = fit_figure(result)
    ax = fig.axes[0]
    solid = [ln for ln in ax.get_lines() if ln.get_linestyle() == "-" and len(ln.get_xdata())]
    dashed = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--" and len(ln.get_xdata())]
    top = result.data.D.max()
    assert solid and max(max(ln.get_xdata()) for ln in solid) <= top * 1.0001  # the law over its data
    assert dashed and min(min(ln.get_xdata()) for ln in dashed) >= top * 0.9999  # beyond it, dashed
    assert "extrapolation (2x)" in [t.get_text() for t in ax.get_legend().get_texts()]
    pyplot().close(fig)


def test_study_fit_lines_stop_at_the_data_and_the_doubling_ahead_is_dashed():
    import pandas as pd

    from scalinglab.report.study import loss_vs_data_figure
    from scalinglab.study.analysis import fit_per_n

    D = np.geomspace(2e5, 6.4e6, 8)
    points = pd.DataFrame({"N": 10_000, "D": D, "tokens_per_param": D / 1e4, "val_loss": 1.5 + 40 / D ** 0.3})
    fits = fit_per_n(points, bootstrap=20)
    fig = loss_vs_data_figure(points, pd.DataFrame(columns=["N", "D", "val_loss"]), fits)
    lines = [ln for ln in fig.axes[0].get_lines() if ln.get_linestyle() in ("-", "--")]
    solid = [ln for ln in lines if ln.get_linestyle() == "-"]
    dashed = [ln for ln in lines if ln.get_linestyle() == "--"]
    assert max(solid[0].get_xdata()) <= D.max() * 1.0001  # the fit over its data only
    assert min(dashed[0].get_xdata()) >= D.max() * 0.9999 and max(dashed[0].get_xdata()) <= 2 * D.max() * 1.0001
    pyplot().close(fig)


def test_every_saved_figure_gets_plain_log_ticks_and_says_what_a_log_axis_hid(tmp_path):
    from scalinglab.report.figures import finish

    plt = pyplot()
    fig, ax = plt.subplots()
    ax.plot([1e3, 1e4, 1e5, 1e6], [0.5, -0.1, 0.2, 0.0])  # two values a log axis cannot show
    ax.set_xscale("log")
    ax.set_yscale("log")
    finish(fig)
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert labels and all("$" not in t for t in labels) and "10k" in labels
    assert any("2 point(s) <= 0 not drawn" in t.get_text() for t in ax.texts)
    plt.close(fig)
