"""LM compression benchmark: a ~1M-parameter byte model against gzip, bzip2, xz, zstd and brotli.

Trains (or reuses, from --workdir) a 1m-preset byte model briefly on the default corpus (the
Python standard library source), then on each test file reports
- the ideal code length and the real archive's bits/byte, and the overhead between them
  (target: within 0.5%);
- that the round trip is exact;
- throughput each way, as bytes/s and as a ratio to two references measured in the same run on
  the same bytes: the model's plain full-sequence forward over the same chunks, and gzip -9
  (targets on CPU: >= 20 kB/s and >= 0.8x the plain forward each way; timings are noisy on a
  shared machine, the ratios less so);
- where the model beats xz -9 (whole file, and on the same chunks) and where it does not.

    python benchmarks/compress.py                     # ~3-4 CPU-minutes of training, then ~10 minutes
    python benchmarks/compress.py --max-bytes 0       # whole files (slower)
    python benchmarks/compress.py --model RUN_DIR     # measure an existing model, no training
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from scalinglab.compress import DEFAULT_BATCH
from scalinglab.compress.archive import load_compressor
from scalinglab.compress.bench import BenchProgress, BenchSettings, compress_bench
from scalinglab.config import ModelSpec, OptimConfig, RunConfig, TrainConfig
from scalinglab.corpus import CorpusConfig, prepare_corpus, split_bytes
from scalinglab.fsutil import atomic_write_bytes, atomic_write_json, atomic_write_text
from scalinglab.model import count_params
from scalinglab.progress import RichReporter
from scalinglab.store import open_store
from scalinglab.train import plan_run, train_run

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TARGET_BPS = 20_000
TARGET_OVERHEAD = 0.005
TARGET_VS_FORWARD = 0.8  # the cached coding path against the plain full-sequence forward


def train_or_reuse(workdir: Path, tokens: float) -> Path:
    """The benchmark's model: the 1m preset, byte tokens, trained for `tokens` on the stdlib corpus.

    The recipe is pinned (batch 16 x 256, peak LR 3e-3, WSD) so that the benchmark's model does not
    change when the project's default rules do; at this budget it reached 2.30 val bits/byte where
    the default rule of the time (LR 4.7e-3) reached 2.83."""
    cfg = RunConfig(corpus=CorpusConfig(), model=ModelSpec(size="1m"),
                    optim=OptimConfig(lr=3e-3), train=TrainConfig(tokens=tokens, batch_size=16, eval_points=4))
    corpus = prepare_corpus(cfg.corpus)
    plan = plan_run(cfg, corpus)
    out = workdir / plan.run_id  # a changed recipe trains a new model rather than clashing with the old
    done = (out / "DONE").exists()
    print(f"model: {'reusing' if done else 'training'} {out} (run {plan.run_id})", flush=True)
    result = train_run(plan, corpus, open_store(workdir / "store.db"), out, resume=out.exists(),
                       reporter=None if done else RichReporter(plan.batch_tokens, label="train 1m"))
    last = result.points[-1]
    counts = count_params(plan.model)
    print(f"model: 1m preset, {counts.total:,} parameters ({counts.non_embedding:,} non-embedding), "
          f"trained on {last['tokens']:,.0f} tokens = {last['tokens'] / counts.non_embedding:.1f} tokens/param, "
          f"{last['epoch']:.2f} epochs, {plan.total_steps} steps in {last['wall_time'] / 60:.1f} min of training; "
          f"val {last['val_bpb']:.4f} bits/byte (briefly trained: far from converged)", flush=True)
    return out


def test_files(workdir: Path, max_bytes: int) -> list[Path]:
    """The files tried, each cut to `max_bytes` (0: whole): stdlib val and test text, Shakespeare,
    TinyStories, random bytes, and a binary (a compiled extension module of this Python)."""
    import _json

    corpus = prepare_corpus(CorpusConfig())
    cut = (lambda b: b[:max_bytes]) if max_bytes else (lambda b: b)
    sources: dict[str, bytes] = {
        "stdlib-val.py.txt": cut(split_bytes(corpus, "val")),
        "stdlib-test.py.txt": cut(split_bytes(corpus, "test")),
    }
    for name in ("tinyshakespeare.txt", "tinystories_head.txt"):
        path = SHARED / name
        if path.exists():
            sources[name] = cut(path.read_bytes())
        else:
            print(f"skipping {name}: not found under {SHARED}")
    size = max_bytes or 256 * 1024
    sources["random.bin"] = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes()
    dynload = sorted(Path(_json.__file__).parent.glob("*.so"), key=lambda p: p.stat().st_size)
    sources[f"{dynload[-1].name}"] = cut(dynload[-1].read_bytes())
    folder = workdir / "files"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in sources.items():
        path = folder / name
        atomic_write_bytes(path, data)
        paths.append(path)
    return paths


class Progress(BenchProgress):
    def phase(self, label: str, total: int):
        print(f"  {label} ({total:,} tokens)...", flush=True)
        return lambda n: None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("runs/bench-compress"))
    parser.add_argument("--tokens", type=float, default=1.5e6, help="training tokens of the benchmark model")
    parser.add_argument("--max-bytes", type=int, default=256 * 1024, help="bytes of each file (0: whole files)")
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="chunks per forward batch")
    parser.add_argument("--chunk-size", type=int, default=None, help="tokens per chunk (default: the context, 256)")
    parser.add_argument("--model", type=Path, default=None,
                        help="measure this run directory instead of training the benchmark's model")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)

    model_dir = args.model or train_or_reuse(args.workdir, args.tokens)
    if args.model:
        print(f"model: {args.model} (given)", flush=True)
    files = test_files(args.workdir, args.max_bytes)
    comp = load_compressor(model_dir)
    settings = BenchSettings(chunk_size=args.chunk_size, batch_size=args.batch, threads=1, device="cpu")
    frame = compress_bench(comp, files, settings, Progress(), store=open_store(args.workdir / "store.db"))
    atomic_write_text(args.workdir / "results.csv", frame.to_csv(index=False))

    print(f"\nCPU, 1 thread, chunk {frame['chunk_size'].iloc[0]} tokens, batch {frame['batch_size'].iloc[0]} chunks; "
          f"bits per byte (header included in 'actual')")
    for _, r in frame.iterrows():
        name = Path(r["file"]).name
        xz, xz_chunked = r["xz-9_bpb"], r["xz-9_chunked_bpb"]
        verdict = "beats" if r["actual_bpb"] < xz else "loses to"
        print(f"{name:>36}: {r['bytes']:>9,} B  ideal {r['ideal_bpb']:.4f}  actual {r['actual_bpb']:.4f}  "
              f"overhead {100 * r['overhead']:+.3f}% (coder {100 * r['coder_overhead']:+.4f}%)  "
              f"raw chunks {r['raw_chunks']}/{r['chunks']}  round trip {'exact' if r['round_trip'] else 'FAILED'}")
        print(f"{'':>36}  encode {r['encode_Bps'] / 1e3:6.2f} kB/s  decode {r['decode_Bps'] / 1e3:6.2f} kB/s  = "
              f"{r['encode_Bps'] / r['forward_Bps']:.2f}x / {r['decode_Bps'] / r['forward_Bps']:.2f}x the plain forward "
              f"({r['forward_Bps'] / 1e3:.1f} kB/s), {r['gzip_Bps'] / r['encode_Bps']:,.0f}x slower than gzip -9")
        print(f"{'':>36}  {verdict} xz -9 whole file ({xz:.4f}) by {100 * abs(r['actual_bpb'] / xz - 1):.1f}%; "
              f"xz -9 on the same chunks {xz_chunked:.4f} (model {100 * abs(1 - r['actual_bpb'] / xz_chunked):.1f}% "
              f"{'smaller' if r['actual_bpb'] < xz_chunked else 'larger'}); "
              f"best classical {min(r[f'{n}_bpb'] for n in ('gzip-9', 'bzip2-9', 'xz-9', 'zstd-19', 'brotli-11')):.4f}; "
              f"two-part (model at 32 bits/param) {r['adjusted_bpb']:.2f}")

    modelled = frame[frame["raw_chunks"] == 0]  # files where archive vs ideal is a coder question
    worst = modelled["overhead"].max()
    stored = frame[frame["raw_chunks"] > 0]
    slowest = min(frame["encode_Bps"].min(), frame["decode_Bps"].min())
    print("\ntargets:")
    print(f"  archive within 0.5% of the ideal code length ({len(modelled)} files coded by the model): worst "
          f"{100 * worst:+.3f}%, coder alone {100 * modelled['coder_overhead'].max():+.4f}% -> "
          f"{'PASS' if worst <= TARGET_OVERHEAD else 'FAIL'}")
    for _, r in stored.iterrows():
        print(f"  {Path(r['file']).name}: {r['raw_chunks']}/{r['chunks']} chunks stored raw, {r['actual_bpb']:.4f} "
              f"bits/byte where the model alone would spend {r['ideal_bpb']:.4f}")
    print(f"  round trips exact: {int(frame['round_trip'].sum())}/{len(frame)} -> "
          f"{'PASS' if frame['round_trip'].all() else 'FAIL'}")
    print(f"  >= {TARGET_BPS / 1e3:.0f} kB/s each way on CPU: slowest {slowest / 1e3:.2f} kB/s, median encode "
          f"{frame['encode_Bps'].median() / 1e3:.2f} / decode {frame['decode_Bps'].median() / 1e3:.2f} kB/s -> "
          f"{'PASS' if slowest >= TARGET_BPS else 'MISS'}")
    vs_forward = min((frame["encode_Bps"] / frame["forward_Bps"]).min(), (frame["decode_Bps"] / frame["forward_Bps"]).min())
    print(f"  >= {TARGET_VS_FORWARD:.1f}x the plain forward each way (same run): slowest {vs_forward:.2f}x, median "
          f"encode {(frame['encode_Bps'] / frame['forward_Bps']).median():.2f}x / decode "
          f"{(frame['decode_Bps'] / frame['forward_Bps']).median():.2f}x -> "
          f"{'PASS' if vs_forward >= TARGET_VS_FORWARD else 'MISS'}")
    print(f"  GPU: {gpu_line(comp, files[0])}")
    summary = {"files": len(frame), "worst_overhead": worst, "slowest_Bps": slowest}
    atomic_write_json(args.workdir / "summary.json", summary, indent=2)


def gpu_line(comp, path: Path) -> str:
    """MB/s each way on a CUDA GPU when there is one (float32, TF32 off, deterministic)."""
    from scalinglab.device import cuda_present

    if not cuda_present():
        return "no GPU available"
    frame = compress_bench(comp, [path], BenchSettings(batch_size=1024, device="cuda", chunked_baselines=False))
    r = frame.iloc[0]
    return (f"{torch.cuda.get_device_name()}: encode {r['encode_Bps'] / 1e6:.2f} MB/s, decode "
            f"{r['decode_Bps'] / 1e6:.2f} MB/s, round trip {'exact' if r['round_trip'] else 'FAILED'}")


if __name__ == "__main__":
    sys.exit(main())
