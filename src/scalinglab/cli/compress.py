"""`scalinglab compress | decompress | compress-bench | compress-vs-data | prequential`."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

import typer

from scalinglab.cli.app import DEFAULT_DB, app, console, err_console, parse_number
from scalinglab.compress import DEFAULT_BATCH
from scalinglab.errors import UserError

# Options shared by several commands.
ChunkOption = typer.Option(None, "--chunk-size", help="Tokens per chunk (default: the model's training context).")
BatchOption = typer.Option(DEFAULT_BATCH, "--batch", help="Chunks coded together per forward batch.")
ThreadsOption = typer.Option(1, "--threads", help="Torch CPU threads (recorded; decompression uses the same).")
DeviceOption = typer.Option("cpu", "--device", help="cpu or cuda (decompress on the same kind of device).")
ForceOption = typer.Option(False, "--force", help="Overwrite OUTPUT if it exists.")
QuietOption = typer.Option(False, "--quiet", help="No progress bar.")


@contextmanager
def _token_bar(enabled: bool) -> Iterator[Callable[[str, int], Callable[[int], None]]]:
    """A rich progress display; yields `phase(label, total) -> advance(n)`."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    if not enabled:
        yield lambda label, total: (lambda n: None)
        return
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("tokens"), TimeElapsedColumn(), TimeRemainingColumn(), console=err_console,
                        transient=True)

    def phase(label: str, total: int) -> Callable[[int], None]:
        task = progress.add_task(label, total=max(total, 1))
        return lambda n: progress.advance(task, n)

    with progress:
        yield phase


def _size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


@app.command()
def compress(
    model: Path = typer.Argument(..., help="Run directory or .pt checkpoint."),
    input: Path = typer.Argument(..., help="File to compress (any bytes)."),
    output: Path = typer.Argument(..., help="Archive to write."),
    chunk_size: Optional[int] = ChunkOption,
    batch: int = BatchOption,
    threads: int = ThreadsOption,
    device: str = DeviceOption,
    force: bool = ForceOption,
    quiet: bool = QuietOption,
) -> None:
    """Compress INPUT losslessly with MODEL's next-token probabilities (range coding)."""
    from scalinglab.compress.archive import atomic_output, compress_bytes, load_compressor, read_input
    from scalinglab.compress.lm import check_threads

    check_threads(threads)
    data = read_input(input)
    with atomic_output(output, force=force, source=input) as fh:
        comp = load_compressor(model)
        with _token_bar(not quiet) as phase:
            archive, result = compress_bytes(comp, data, chunk_size=chunk_size, batch_size=batch, threads=threads,
                                             device=device, progress=phase("compress", len(data)))
        fh.write(archive)
    console.print(
        f"{input} -> {output}: {_size(result.original_bytes)} -> {_size(result.archive_bytes)}, "
        f"{result.bits_per_byte:.4f} bits/byte (ideal {result.ideal_bits_per_byte:.4f}, overhead "
        f"{100 * result.overhead:+.3f}%), {_size(result.bytes_per_second)}/s",
        highlight=False,
    )


@app.command()
def decompress(
    model: Path = typer.Argument(..., help="The run directory or .pt checkpoint the archive was made with."),
    input: Path = typer.Argument(..., help="Archive written by `scalinglab compress`."),
    output: Path = typer.Argument(..., help="File to restore."),
    force: bool = ForceOption,
    quiet: bool = QuietOption,
) -> None:
    """Restore the exact original of an archive (checked against its SHA-256)."""
    from scalinglab.compress.archive import ArchiveHeader, atomic_output, decompress_bytes, load_compressor, read_input

    archive = read_input(input)
    header, _ = ArchiveHeader.unpack(archive)
    with atomic_output(output, force=force, source=input) as fh:
        comp = load_compressor(model)
        with _token_bar(not quiet) as phase:
            data, result = decompress_bytes(comp, archive, progress=phase("decompress", header.n_tokens))
        fh.write(data)
    console.print(f"{input} -> {output}: {_size(len(data))}, SHA-256 verified, {_size(result.bytes_per_second)}/s",
                  highlight=False)


@app.command("compress-bench")
def compress_bench(
    model: Path = typer.Argument(..., help="Run directory or .pt checkpoint."),
    files: list[Path] = typer.Argument(..., help="Files to compress."),
    chunk_size: Optional[int] = ChunkOption,
    batch: int = BatchOption,
    threads: int = ThreadsOption,
    device: str = DeviceOption,
    no_chunked: bool = typer.Option(False, "--no-chunked", help="Skip the classical compressors on the same chunks."),
    db: Path = typer.Option(DEFAULT_DB, "--db", help="Results store: one `compress-bench` result per file."),
    csv: Optional[Path] = typer.Option(None, help="Also write the table to this CSV file."),
    quiet: bool = QuietOption,
) -> None:
    """Model vs gzip/bzip2/xz/zstd/brotli: bits/byte, overhead, round trip, throughput."""
    from scalinglab.compress.bench import BenchProgress, BenchSettings
    from scalinglab.compress.bench import compress_bench as run_bench
    from scalinglab.compress.lm import check_threads
    from scalinglab.store import open_store

    check_threads(threads)
    store = open_store(db)
    settings = BenchSettings(chunk_size=chunk_size, batch_size=batch, threads=threads, device=device,
                             chunked_baselines=not no_chunked)
    with _token_bar(not quiet) as phase:
        progress = BenchProgress()
        progress.phase = phase  # type: ignore[method-assign]
        frame = run_bench(model, files, settings, progress, store=store)
    console.print(bench_table(frame))
    if csv is not None:
        from scalinglab.fsutil import atomic_write_text

        try:
            atomic_write_text(csv, frame.to_csv(index=False))
        except OSError as exc:
            raise UserError(f"cannot write {csv}: {exc.strerror}; check the path") from None
    console.print(f"recorded {len(frame)} result(s) in {db}", highlight=False)


def bench_table(frame):
    from rich.table import Table

    table = Table("file", "bytes", "ideal", "actual", "overhead", "round trip", "enc B/s", "dec B/s",
                  "gzip-9", "xz-9", "xz-9 chunked", "best classical", "adjusted", title="bits per byte")
    for _, r in frame.iterrows():
        classical = {name: r[f"{name}_bpb"] for name in ("gzip-9", "bzip2-9", "xz-9", "zstd-19", "brotli-11")
                     if f"{name}_bpb" in r}
        best = min(classical, key=classical.get) if classical else "-"
        table.add_row(
            Path(r["file"]).name, f"{r['bytes']:,}", f"{r['ideal_bpb']:.4f}", f"{r['actual_bpb']:.4f}",
            f"{100 * r['overhead']:+.3f}%", "exact" if r["round_trip"] else "FAILED", f"{r['encode_Bps']:,.0f}",
            f"{r['decode_Bps']:,.0f}", f"{r['gzip-9_bpb']:.4f}", f"{r['xz-9_bpb']:.4f}",
            f"{r['xz-9_chunked_bpb']:.4f}", f"{best} {classical.get(best, float('nan')):.4f}",
            f"{r['adjusted_bpb']:.2f}",
        )
    return table


@app.command("compress-vs-data")
def compress_vs_data(
    group: Optional[str] = typer.Option(None, help="Study group whose finished branch runs to measure."),
    run: list[Path] = typer.Option([], "--run", help="Run directory to measure (repeatable; instead of --group)."),
    n: Optional[str] = typer.Option(None, help="Keep one model size: a count (N non-embedding, e.g. 1e5) or a preset (e.g. 100k); the nearest size the runs have."),
    split: str = typer.Option("test", help="Split to compress: test, val or train."),
    input_: Optional[Path] = typer.Option(None, "--input", help="Code this file instead of a split (text the models never saw: the direct test of structure)."),
    max_bytes: Optional[str] = typer.Option(None, help="Measure only this many bytes of the split (e.g. 100k)."),
    archive: bool = typer.Option(False, "--archive", help="Also write the real archive (slower) and record its size."),
    chunk_size: Optional[int] = ChunkOption,
    figure: Optional[Path] = typer.Option(None, help="Figure to write (default: the study folder's figures/compress-vs-data-<what>.png)."),
    db: Path = typer.Option(DEFAULT_DB, "--db", help="Results store."),
    cache_dir: Optional[Path] = typer.Option(None, help="Prepared-corpus cache."),
) -> None:
    """Code length of held-out text (a split, or your own file) at every training-data size D, for fixed N."""
    from scalinglab.compress.vsdata import compression_vs_data
    from scalinglab.corpus.prepare import SPLITS
    from scalinglab.report.compress import plot_compression_vs_data
    from scalinglab.store import open_store

    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    store = open_store(db)
    frame = compression_vs_data(
        store, group, run or None, n=_model_size(n) if n else None, split=split,
        max_bytes=int(parse_number(max_bytes, "--max-bytes")) if max_bytes else None, archive=archive,
        chunk_size=chunk_size, cache_dir=cache_dir, input_path=input_,
        progress=lambda label: err_console.print(f"measuring {label}...", highlight=False),
    )
    what = frame["split"].iloc[0]
    for _, r in frame.iterrows():
        archived = f", archive {r['archive_bpb']:.4f}" if r["archive_bytes"] else ""
        warm = "" if r["cooled"] else f"  ({r['kind']} at step {r['step']:,}: not cooled down)"
        console.print(f"N={r['n']:>12,.0f}  D={r['d']:>14,.0f}  ({r['tokens_per_param']:8.1f} tok/param)  "
                      f"{what} {r['ideal_bpb']:.4f} bits/byte (−log2 p){archived}{warm}", highlight=False)
    first = frame.iloc[0]
    console.print(f"gzip -9 {first['gzip-9_bpb']:.4f}, xz -9 {first['xz-9_bpb']:.4f} bits/byte on the same "
                  f"{first['bytes']:,} bytes", highlight=False)
    for note in coding_notes(frame):
        console.print(note, highlight=False)
    path = plot_compression_vs_data(frame, figure or _default_figure(frame, group, input_))
    console.print(f"figure: {path}; results in {db} (kind compress-vs-data)", highlight=False)


def _model_size(text: str) -> int:
    """--n as a count (1e5, 100k) or a model preset's non-embedding count (1m, gpt2)."""
    from scalinglab.model import PRESETS, count_params, preset

    if text.strip().lower() in PRESETS:
        return count_params(preset(text.strip())).non_embedding
    return int(parse_number(text, "--n"))


def _default_figure(frame, group: str | None, input_: Path | None) -> Path:
    """In the study's own figures folder, beside the study's figures (else the current folder)."""
    name = f"compress-vs-data-{input_.stem if input_ else frame['split'].iloc[0]}.png"
    runs = Path(frame["out_dir"].iloc[0]).parent
    return runs.parent / "figures" / name if group and runs.name == "runs" else Path(name)


def coding_notes(frame) -> list[str]:
    """What a reader of the numbers needs told: a file the models trained on, and archives
    shorter than the float code length."""
    notes = []
    overlap = frame["train_overlap"].dropna() if "train_overlap" in frame else []
    if len(overlap) and overlap.max() > 0.05:
        notes.append(f"warning: {overlap.max():.0%} of the input's 64-byte windows occur verbatim in the models' "
                     "training split: this is not text they never saw, so its code length measures memory as "
                     "much as structure")
    if "archive_bpb" in frame and (frame["archive_bpb"] < frame["ideal_bpb"]).any():
        notes.append("note: some archives are shorter than the float code length −log2 p. The coder gives every "
                     "token at least one count in 2^24, so a byte the model thinks nearly impossible costs at most "
                     "24 bits in the archive but more under −log2 p; the float figure is the model's code length, "
                     "not a bound on the archive.")
    return notes


@app.command()
def prequential(
    run: Path = typer.Argument(..., help="Run directory (holds train_loss.f32)."),
    figure: Optional[Path] = typer.Option(None, help="Figure to write (default <run>/prequential.png)."),
    db: Path = typer.Option(DEFAULT_DB, "--db", help="Results store (finds a branch's trunk; records the result)."),
    cache_dir: Optional[Path] = typer.Option(None, help="Prepared-corpus cache."),
) -> None:
    """Prequential code length of a training run against gzip -9 and xz -9 of its data."""
    from scalinglab.compress.prequential import prequential_code_length
    from scalinglab.report.compress import plot_prequential
    from scalinglab.store import open_store

    result = prequential_code_length(run, store=open_store(db), cache_dir=cache_dir)
    scope = " (branch only: its trunk's log was not found)" if result.partial else ""
    console.print(
        f"{result.run_id}: {result.tokens:,} training tokens ({result.bytes:,} bytes, {result.epochs:.2f} epochs){scope}\n"
        f"  prequential {result.bits / 8e6:.3f} MB = {result.bits_per_byte:.4f} bits/byte "
        f"(+{result.window_start_bits / 8e6:.3f} MB for window starts)\n"
        f"  gzip -9     {result.gzip_bits / 8e6:.3f} MB = {result.gzip_bpb:.4f} bits/byte\n"
        f"  xz -9       {result.xz_bits / 8e6:.3f} MB = {result.xz_bpb:.4f} bits/byte",
        highlight=False,
    )
    path = plot_prequential(result, figure or run / "prequential.png")
    console.print(f"figure: {path}; result in {db} (kind prequential)", highlight=False)
