"""Check and time every CUDA path of scalinglab in one command: ~6-8 minutes on one H100/H200.

Parts, in order (each one's failure is a row of the table, never the end of the check):
  tests    the CUDA tests (tests/test_cuda.py): bf16 vs float32, compiled vs eager, exact GPU
           round trips, a GPU archive decoded in a fresh process, resume of a GPU run
  gpt2     GPT-2 small (124M), bf16, torch.compile: tokens/s against the nanoGPT-style loop of
           train_throughput.py in the same process, and MFU (goals >= 1.0x and >= 55%)
  sharing  4 small runs sharing the GPU against 1 alone, as the `gpu` study preset runs them
           (aggregate tokens/s, goal >= 2.5x)
  compress a 1M and a 10M byte model as compressors on the GPU: MB/s each way, exact round
           trip, the plain forward alongside (goal >= 1 MB/s at 1M)
  study    `scalinglab study --preset gpu --budget 3m`, end to end

It prints one table (device, torch, each figure against its goal: PASS / MISS / FAIL / NOT RUN)
and writes it as JSON (to $OUT/gpu_check.json when $OUT is set, else ./gpu_check.json). Without a
GPU it runs the CPU-safe parts (the tests file, whose GPU tests skip) and says which parts it
could not run.

    python benchmarks/gpu_check.py                      # everything
    python benchmarks/gpu_check.py --only tests gpt2    # some parts
    python benchmarks/gpu_check.py --skip study         # all but some

On a lent GPU machine that has torch but no package index, carry the three wheels scalinglab
needs beyond that image (see README.md, "Checking a GPU"):

    pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl constriction zstandard brotli
    # there:
    pip install --no-deps --target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site:src python3 benchmarks/gpu_check.py
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # train_throughput's reference loop

from scalinglab.device import cuda_present  # noqa: E402
from train_throughput import PEAK_BF16, compare  # noqa: E402

PARTS = ("tests", "gpt2", "sharing", "compress", "study")


@dataclass
class Row:
    part: str
    figure: str
    value: str
    goal: str
    status: str  # PASS | MISS | FAIL | NOT RUN
    detail: str = ""


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


# --- the parts ---------------------------------------------------------------------------------

def part_tests(gpu: bool) -> list[Row]:
    """The CUDA tests, and the CPU-safe one beside them, in a fresh pytest process."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                           str(ROOT / "tests" / "test_cuda.py")], cwd=ROOT, capture_output=True, text=True,
                          timeout=420)
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr.strip()[-200:]
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?)", tail)}
    passed, failed = counts.get("passed", 0), counts.get("failed", 0) + counts.get("error", 0) + counts.get("errors", 0)
    skipped = counts.get("skipped", 0)
    failures = [line for line in proc.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    value = f"{passed} passed, {failed} failed, {skipped} skipped"
    if failed or proc.returncode not in (0, 5):
        return [Row("tests", "tests/test_cuda.py", value, "all pass", "FAIL", "; ".join(failures)[:400] or tail)]
    if not gpu:
        return [Row("tests", "GPU archive refused up front without a GPU", f"{passed} passed", "pass", "PASS"),
                Row("tests", "CUDA tests", f"{skipped} skipped", "all pass", "NOT RUN", "no CUDA GPU on this machine")]
    status = "PASS" if skipped == 0 else "MISS"
    return [Row("tests", "tests/test_cuda.py", value, "all pass, none skipped", status)]


def part_gpt2(dev: str) -> list[Row]:
    if dev == "cuda":
        r = compare("gpt2", 16, 1024, rounds=3, steps=10, device=dev, dtype="bfloat16", compile_model=True, vocab=50304)
    else:  # rehearsal: the same code on a small model
        r = compare("100k", 4, 128, rounds=2, steps=2, device=dev, dtype="float32")
    mfu, ref_mfu = (x * r["flops_per_token"] / PEAK_BF16 for x in (r["ours"], r["ref"]))
    detail = (f"{r['ours']:,.0f} vs {r['ref']:,.0f} tokens/s, batch {r['batch']}, quartiles of the rounds' ratios "
              f"{r['quartiles'][0]:.2f}-{r['quartiles'][1]:.2f}")
    return [Row("gpt2", "GPT-2 124M bf16 compiled / nanoGPT-style loop", f"{r['ratio']:.2f}x", ">= 1.00x",
                verdict(r["ratio"] >= 1.0), detail),
            Row("gpt2", "GPT-2 124M MFU", f"{mfu:.1%}", ">= 55%", verdict(mfu >= 0.55),
                f"reference {ref_mfu:.1%}; of {PEAK_BF16 / 1e12:.0f} TFLOP/s dense bf16")]


def _sharing_worker(dev: str, size: str, batch: int, seq_len: int, steps: int, compile_model: bool, barrier,
                    results) -> None:
    """One run's training steps on the GPU; reports (tokens, start, end) of its timed window."""
    from scalinglab.device import place
    from scalinglab.model import GPT, preset
    from scalinglab.train.loop import train_step
    from scalinglab.train.optim import adamw

    placement = place(dev, "bfloat16")
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    torch.manual_seed(0)
    model = GPT(preset(size)).to(placement.device)
    run = torch.compile(model) if compile_model else model
    optimizer = adamw(model, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95))
    data = torch.randint(0, model.cfg.vocab_size, (batch, seq_len + 1), device=placement.device)
    x, y = data[:, :-1], data[:, 1:]
    for _ in range(10):  # compilation and allocator warm-up, outside the window
        train_step(run, optimizer, x, y, 1e-3, 1.0, placement)
    sync()
    barrier.wait()
    start = time.time()
    for _ in range(steps):
        train_step(run, optimizer, x, y, 1e-3, 1.0, placement)
    sync()
    results.put((steps * batch * seq_len, start, time.time()))


def _shared_rate(runs: int, **job) -> float:
    """Aggregate tokens/s of `runs` processes training at once (spawned: CUDA needs fresh processes)."""
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(runs), ctx.Queue()
    procs = [ctx.Process(target=_sharing_worker, kwargs=dict(job, barrier=barrier, results=results))
             for _ in range(runs)]
    for p in procs:
        p.start()
    windows = [results.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
        if p.exitcode:
            raise RuntimeError(f"a sharing worker exited with code {p.exitcode}")
    tokens = sum(w[0] for w in windows)
    return tokens / (max(w[2] for w in windows) - min(w[1] for w in windows))


def part_sharing(dev: str) -> list[Row]:
    from scalinglab.study.grid import PRESETS

    gpu = PRESETS["gpu"]
    job = dict(dev=dev, size="1m", batch=32, seq_len=gpu["seq_len"], steps=200, compile_model=gpu["compile"])
    if dev != "cuda":  # rehearsal
        job.update(size="10k", batch=2, seq_len=64, steps=3, compile_model=False)
    alone = _shared_rate(1, **job)
    shared = _shared_rate(gpu["workers"], **job)
    ratio = shared / alone
    return [Row("sharing", f"{gpu['workers']} runs sharing the GPU / 1 alone (aggregate tokens/s)", f"{ratio:.2f}x",
                ">= 2.50x", verdict(ratio >= 2.5),
                f"{job['size']} preset, batch {job['batch']}x{job['seq_len']}, bf16, compile={job['compile_model']}: "
                f"{alone:,.0f} alone, {shared:,.0f} together")]


def part_compress(dev: str, work: Path) -> list[Row]:
    from scalinglab.compress.archive import compress_bytes, decompress_bytes, load_compressor
    from scalinglab.compress.lm import deterministic, ideal_code_length
    from scalinglab.corpus import CorpusConfig, prepare_corpus, split_bytes
    from scalinglab.model import GPT, preset
    from scalinglab.train.checkpoint import save_checkpoint

    text = split_bytes(prepare_corpus(CorpusConfig()), "val")
    rows = []
    cases = (("1m", 1 << 20, 1e6), ("10m", 1 << 18, None)) if dev == "cuda" else (("10k", 3000, 1e6),)
    for size, n_bytes, goal in cases:
        # Untrained weights: speed does not depend on what the model learned, and the round trip
        # must be exact whatever the probabilities are.
        torch.manual_seed(0)
        model = GPT(preset(size))
        path = work / f"compress-{size}.pt"
        save_checkpoint(path, model=model, optimizer=torch.optim.AdamW(model.parameters()), step=0,
                        config={"model": model.cfg.to_dict(), "train": {"seq_len": 256}},
                        tokenizer={"spec": {"kind": "byte", "vocab_size": 256}, "json": None})
        comp = load_compressor(path)
        data = text[:n_bytes]
        archive, enc = compress_bytes(comp, data, batch_size=1024, device=dev)
        restored, dec = decompress_bytes(comp, archive)
        tokens = comp.tokenize(data)
        start = time.perf_counter()
        with deterministic(1):
            ideal_code_length(comp.model.to(dev), tokens, enc.header.chunk_size, enc.header.prefix_token,
                              batch_size=enc.header.batch_size)
        if dev == "cuda":
            torch.cuda.synchronize()
        forward = len(data) / (time.perf_counter() - start)
        exact = restored == data
        slower = min(enc.bytes_per_second, dec.bytes_per_second)
        value = f"{enc.bytes_per_second / 1e6:.2f} / {dec.bytes_per_second / 1e6:.2f} MB/s"
        detail = (f"{len(data):,} B, batch {enc.header.batch_size} chunks of {enc.header.chunk_size}; "
                  f"{enc.bytes_per_second / forward:.2f}x / {dec.bytes_per_second / forward:.2f}x the plain forward "
                  f"({forward / 1e6:.2f} MB/s); round trip {'exact' if exact else 'WRONG'}")
        if not exact:
            status = "FAIL"
        elif goal is None:
            status = "PASS"  # measured, no goal beyond the exact round trip
        else:
            status = verdict(slower >= goal)
        rows.append(Row("compress", f"{size} model, encode / decode", value,
                        f">= {goal / 1e6:.0f} MB/s each way, exact" if goal else "exact", status, detail))
    return rows


def part_study(dev: str, work: Path) -> list[Row]:
    rehearsal = [] if dev == "cuda" else ["--device", "cpu", "--sizes", "3e3,6e3", "--seq-len", "64",
                                          "--budget", "20s", "--workers", "2"]
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "scalinglab", "study", "--preset", "gpu", "--budget", "3m",
                           "--out", str(work / "studies"), "--db", str(work / "study.db"), "--no-report", *rehearsal],
                          cwd=ROOT, capture_output=True, text=True, timeout=420)
    wall = time.perf_counter() - start
    last = (proc.stdout.strip().splitlines() or [""])[-1][:200]
    if proc.returncode != 0:
        err = (proc.stderr.strip().splitlines() or [""])[-1][:300]
        return [Row("study", "study --preset gpu --budget 3m", f"exit {proc.returncode}", "exit 0", "FAIL", err)]
    from scalinglab.store import open_store

    runs = open_store(work / "study.db").runs()
    done = sum(1 for r in runs if r["status"] == "done")
    return [Row("study", "study --preset gpu --budget 3m", f"{wall / 60:.1f} min, {done}/{len(runs)} runs done",
                "exit 0, runs done", verdict(done > 0), last)]


# --- the table ---------------------------------------------------------------------------------

def run_part(name: str, gpu: bool, rehearse: bool, work: Path) -> list[Row]:
    if name != "tests" and not gpu and not rehearse:
        return [Row(name, "-", "-", "-", "NOT RUN", "no CUDA GPU on this machine")]
    dev = "cuda" if gpu else "cpu"
    try:
        if name == "tests":
            return part_tests(gpu)
        if name == "gpt2":
            return part_gpt2(dev)
        if name == "sharing":
            return part_sharing(dev)
        if name == "compress":
            return part_compress(dev, work)
        return part_study(dev, work)
    except Exception as exc:  # one part's failure is a row; the others still run
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        return [Row(name, "-", "-", "-", "FAIL", f"{type(exc).__name__}: {first}")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=PARTS, help="run only these parts")
    parser.add_argument("--skip", nargs="+", choices=PARTS, default=[], help="leave these parts out")
    parser.add_argument("--rehearse", action="store_true",
                        help="without a GPU: run every part on the CPU at toy sizes, to check the check itself "
                             "(its figures mean nothing)")
    parser.add_argument("--json", type=Path, default=Path(os.environ.get("OUT", ".")) / "gpu_check.json")
    args = parser.parse_args()

    gpu = cuda_present()
    device = torch.cuda.get_device_name() if gpu else "no CUDA GPU"
    print(f"device: {device}  torch {torch.__version__}  python {sys.version.split()[0]}", flush=True)
    parts = [p for p in (args.only or PARTS) if p not in args.skip]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        for name in parts:
            start = time.perf_counter()
            print(f"[{name}] ...", flush=True)
            new = run_part(name, gpu, args.rehearse and not gpu, Path(tmp))
            if args.rehearse and not gpu and name != "tests":
                new = [Row(r.part, f"(rehearsal, toy size) {r.figure}", r.value, r.goal,
                           "NOT RUN" if r.status != "FAIL" else "FAIL",
                           f"rehearsal on the CPU ({r.status}): {r.detail}") for r in new]
            for row in new:
                print(f"[{name}] {row.status}: {row.figure} = {row.value} {row.detail}", flush=True)
            print(f"[{name}] {time.perf_counter() - start:.0f} s", flush=True)
            rows.extend(new)

    widths = [max(len(getattr(r, f)) for r in rows + [Row("part", "figure", "value", "goal", "status")])
              for f in ("part", "figure", "value", "goal", "status")]
    print(f"\n{device}, torch {torch.__version__}")
    for r in [Row("part", "figure", "value", "goal", "status")] + rows:
        cells = [getattr(r, f).ljust(w) for f, w in zip(("part", "figure", "value", "goal", "status"), widths)]
        print("  ".join(cells).rstrip())
    not_run = list(dict.fromkeys(r.part for r in rows if r.status == "NOT RUN"))
    if not_run:
        print(f"not run here: {', '.join(not_run)} (they need a CUDA GPU)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"device": device, "torch": torch.__version__, "time": time.strftime("%F %T"),
                                     "rows": [asdict(r) for r in rows]}, indent=2))
    print(f"written: {args.json}")
    sys.exit(1 if any(r.status == "FAIL" for r in rows) else 0)


if __name__ == "__main__":
    main()
