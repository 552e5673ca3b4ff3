"""The same study on the local worker pool and on a private Ray cluster: wall-time ratio and the
peak memory of the Ray processes, measured in one session (ratios, not bare times).

    python benchmarks/backend_overhead.py                  # the smoke study
    python benchmarks/backend_overhead.py --preset default # the ten-minute study (twice that here)

Each backend trains the study from scratch in its own folder and store; the results must be the
same to the last digit, which the script checks before it prints the timing.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def ray_processes_rss_mib() -> float:
    """Resident memory of every Ray process on this machine now (raylet, GCS, workers), MiB."""
    out = subprocess.run(["ps", "-eo", "rss,args"], capture_output=True, text=True).stdout.splitlines()[1:]
    return sum(int(line.split(None, 1)[0]) for line in out
               if any(key in line for key in ("raylet", "gcs_server", "ray::", "default_worker"))) / 1024


def run_study(preset: str, backend: str, root: Path, corpus: str | None) -> tuple[float, float, str]:
    """(wall seconds, peak Ray RSS in MiB, md5 of study.csv) of one study."""
    cmd = [sys.executable, "-m", "scalinglab", "study", "--preset", preset, "--backend", backend,
           "--db", str(root / "s.db"), "--out", str(root / "out")]
    if corpus:
        cmd += ["--corpus", corpus]
    peak = [0.0]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], ray_processes_rss_mib())
            time.sleep(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    done.set()
    watcher.join()
    if result.returncode != 0:
        sys.exit(f"{backend} study failed:\n{result.stderr[-2000:]}")
    csv = next((root / "out").glob("*/study.csv"))
    return wall, peak[0], hashlib.md5(csv.read_bytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="smoke")
    parser.add_argument("--corpus", default=None, help="corpus for both studies (default: the preset's)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for backend in ("local", "ray"):
            root = Path(tmp) / backend
            root.mkdir()
            results[backend] = run_study(args.preset, backend, root, args.corpus)
            print(f"{backend:>5}: {results[backend][0]:7.1f} s, peak Ray processes {results[backend][1]:7.0f} MiB",
                  flush=True)
    (local_wall, _, local_md5), (ray_wall, ray_peak, ray_md5) = results["local"], results["ray"]
    same = "identical" if local_md5 == ray_md5 else "DIFFERENT"
    print(f"study.csv: {same} (md5 {local_md5[:8]} / {ray_md5[:8]})")
    print(f"ray / local wall time: {ray_wall / local_wall:.2f}x (goal <= 1.10x); Ray processes peaked at "
          f"{ray_peak:.0f} MiB")


if __name__ == "__main__":
    main()
