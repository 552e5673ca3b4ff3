"""Figures of the compression analyses. The `*_figure` functions return the figure (the report
inlines it as SVG); the `plot_*` functions write it to a file."""

from __future__ import annotations

from pathlib import Path

from scalinglab.compress.prequential import PrequentialResult
from scalinglab.report.document import size_colour
from scalinglab.report.figures import plain_log_axis, pyplot, save


def plot_compression_vs_data(frame, path: str | Path) -> Path:
    return save(compression_vs_data_figure(frame), path)


def plot_prequential(result: PrequentialResult, path: str | Path) -> Path:
    return save(prequential_figure(result), path)


def compression_vs_data_figure(frame, sizes=None):
    """Test-split bits/byte against training tokens D, a line per N, gzip -9 and xz -9 for scale.
    `sizes`: every N of the study, so that each N keeps its colour from the study's figures."""
    plt = pyplot()
    colour = size_colour(list(sizes or []) + list(frame["n"]))
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    # rows stored before trunks could be measured carry no "cooled" column: they are branches
    cooled = frame["cooled"].fillna(True).astype(bool) if "cooled" in frame else True
    for n, part in frame.assign(cooled=cooled).sort_values("d").groupby("n"):
        done, trunk = part[part["cooled"]], part[~part["cooled"]]
        color = colour[int(n)]
        if len(done):
            ax.plot(done["d"], done["ideal_bpb"], "o-", color=color, label=f"N = {n:,.0f} (−log2 p)")
            if done["archive_bpb"].notna().any():
                ax.plot(done["d"], done["archive_bpb"], "x", color=color, label=f"N = {n:,.0f} (archive)")
        if len(trunk):  # constant learning rate, never cooled down: not on the same curve
            ax.plot(trunk["d"], trunk["ideal_bpb"], "o", mfc="none", color=color,
                    label=f"N = {n:,.0f} (not cooled down)")
    size = int(frame["bytes"].iloc[0])
    for name, style in (("gzip-9", ":"), ("xz-9", "--")):
        ax.axhline(frame[f"{name}_bpb"].iloc[0], color="grey", linestyle=style, label=f"{name} (the same {size:,} bytes)")
    ax.set_xscale("log")
    plain_log_axis(ax.xaxis)
    ax.set_xlabel("training tokens D")
    what = frame["split"].iloc[0]
    ax.set_ylabel(f"{what[5:] if what.startswith('file:') else what + ' split'}, bits per byte")
    ax.set_title("Held-out code length against training tokens D, by model size N")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig


def prequential_figure(result: PrequentialResult):
    """Left: cumulative prequential code length against gzip -9 and xz -9 of the same stream.
    Right: the training loss in bits/byte, whose area is the code length."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    tokens = result.curve_tokens
    bytes_per_token = result.bytes / result.tokens
    left.plot(tokens, [b / 8e6 for b in result.curve_bits], label=f"model, prequential ({result.bits_per_byte:.3f} bits/byte)")
    for name, total in (("gzip -9", result.gzip_bits), ("xz -9", result.xz_bits)):
        rate = total / result.bytes
        left.plot(tokens, [rate * t * bytes_per_token / 8e6 for t in tokens], "--",
                  label=f"{name}, whole stream ({rate:.3f} bits/byte, average)")
    left.set_xlabel("training tokens seen")
    left.set_ylabel("code length, MB")
    left.set_title("Prequential code length of the training stream")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    right.plot(tokens, result.loss_bpb, label="training loss before each update")
    right.axhline(result.gzip_bpb, color="grey", linestyle=":", label="gzip -9")
    right.axhline(result.xz_bpb, color="grey", linestyle="--", label="xz -9")
    right.set_xscale("log")
    plain_log_axis(right.xaxis)
    right.set_ylim(bottom=0.9 * min(result.xz_bpb, result.gzip_bpb, min(result.loss_bpb)))
    right.set_xlabel("training tokens seen")
    right.set_ylabel("bits per byte")
    right.set_title("Compression = area under the loss curve")
    right.legend(fontsize=8)
    right.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig
