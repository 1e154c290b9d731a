"""How well `bench sweep --executor ray` uses the machine, against the local executor.

The same grid (default: dense and vanilla_lowrank x 4 seeds = 8 runs on digits-cnn, one thread
each) is swept twice into two fresh results directories: once by the local executor (one run
after another in one process) and once by Ray with one CPU per run. With ``k`` runs fitting at a
time (the machine's cores), the ideal Ray wall time is local / k, and

    efficiency = local wall time / (k x Ray wall time)

which counts everything Ray adds: starting the instance, worker start-up and imports, scheduling,
and every run's data loading in its own process. Both sweeps are timed by this script around the
real `bench` command; run it on an otherwise idle machine.

    python benchmarks/ray_efficiency.py                        # 8 runs, ~4 min on 2 cores
    python benchmarks/ray_efficiency.py --seeds 0,1 --epochs 1 --n-eval 0     # a smoke run
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def sweep(executor: str, results: Path, args) -> float:
    bench = shutil.which("bench") or "bench"
    cmd = [bench, "sweep", "--executor", executor, "--track", args.track, "--methods", args.methods,
           "--seeds", args.seeds, "--epochs", str(args.epochs), "--threads", "1", "--results-dir", str(results)]
    cmd += ["--no-attacks"] if args.n_eval == 0 else ["--n-eval", str(args.n_eval)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"{executor} sweep failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return wall


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--track", default="digits-cnn")
    ap.add_argument("--methods", default="dense,vanilla_lowrank")
    ap.add_argument("--seeds", default="0,1,2,3")
    ap.add_argument("--epochs", type=float, default=30)
    ap.add_argument("--n-eval", type=int, default=60, help="points attacked per run (0: no attacks)")
    ap.add_argument("--keep", action="store_true", help="keep the two results directories")
    args = ap.parse_args(argv)

    from bench.results import read_results

    cores = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="ray_eff_"))
    try:
        walls = {ex: sweep(ex, work / ex, args) for ex in ("local", "ray")}
        rows = {ex: read_results(work / ex) for ex in walls}
        n = len(rows["local"])
        if len(rows["ray"]) != n or not (rows["ray"]["status"] == "ok").all():
            sys.exit(f"the Ray sweep wrote {len(rows['ray'])} rows, the local one {n}")
        eff = walls["local"] / (cores * walls["ray"])
        busy = rows["local"]["train_seconds"].sum() + rows["local"]["eval_seconds"].sum()
        print(f"{n} runs of {args.methods} on {args.track} ({args.epochs:g} epochs, {args.n_eval} attacked points), "
              f"1 thread each, {cores} cores")
        print("| executor | wall s | runs at a time | runs/min | efficiency (of ideal) |")
        print("| --- | --- | --- | --- | --- |")
        print(f"| local | {walls['local']:.1f} | 1 | {60 * n / walls['local']:.2f} | – |")
        print(f"| ray | {walls['ray']:.1f} | {cores} | {60 * n / walls['ray']:.2f} | {eff:.2f} |")
        print(f"(train + eval inside the local runs: {busy:.1f} s of its {walls['local']:.1f} s wall)")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"results kept in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
