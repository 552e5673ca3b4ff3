"""Figures and reports, one module per subject.

- `figures`: shared plumbing (matplotlib on Agg, saving that fails cleanly);
- `study`: loss vs data per N, vs tokens/param, vs compute;
- `laws`: a fit against its data, its residuals, an isoFLOP view;
- `compress`: compression vs data, prequential code length;
- `storage`: the capacity and memorisation probes;
- `phase`: grokking, facts vs rules, repetition.

matplotlib is imported only here, and only when a figure is drawn.
"""
