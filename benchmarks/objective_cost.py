"""What adversarial training costs per run: a short `bench run` per (method, objective), projected.

Each configuration is trained by the runner exactly as `bench run` trains it (no attacks at
evaluation: only training matters here) for ``--epochs`` (a fraction of an epoch is enough: every
step of an epoch costs the same), interleaved round by round so machine load hits all alike.
Reported per configuration: the median over rounds of training seconds per epoch (attack
generation included, the per-epoch PGD monitor excluded, as in the rows' ``train_seconds``), the
forward passes per step, and the projection to the track's full budget in minutes.

    OMP_NUM_THREADS=1 python benchmarks/objective_cost.py --track mnist-lenet5-e10 --epochs 0.05 \\
        --methods dense,robust_lowrank --objectives "standard;fgsm_rs;pgd_at[steps=10];pgd_at[steps=40,alpha=0.01]"
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--track", default="mnist-lenet5-e10")
    ap.add_argument("--epochs", type=float, default=0.05, help="epochs trained per measurement (default 0.05)")
    ap.add_argument("--methods", default="dense,robust_lowrank")
    ap.add_argument("--objectives", default="standard;fgsm_rs;pgd_at[steps=10];pgd_at[steps=40,alpha=0.01]",
                    help="objectives separated by ';' (each as for --objective)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args(argv)

    from bench import runner
    from bench.config import RunConfig
    from bench.objective import objective_spec
    from bench.registry import TRACKS

    objectives = [objective_spec(o.strip()) for o in args.objectives.split(";") if o.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    tmp = tempfile.mkdtemp(prefix="objective-cost-")
    base = RunConfig(method=methods[0], track=args.track, epochs=args.epochs, skip_attacks=True, results_dir=tmp,
                     data_dir=args.data_dir, num_threads=args.threads, progress=False, n_eval=0)
    grid = [dataclasses.replace(base, method=m, objective=o, objective_params=p) for m in methods for o, p in objectives]
    per_epoch: dict[int, list[float]] = {i: [] for i in range(len(grid))}
    facts = {}
    for r in range(args.rounds):
        for i, cfg in enumerate(grid):
            row, _ = runner.run(dataclasses.replace(cfg, seed=r), log=lambda *a: None)
            per_epoch[i].append(row["train_seconds"] / row["epochs"])
            facts[i] = (row["objective"], row["objective_params"], row["train_forward_passes"] // row["steps"])
            print(f"  round {r} {cfg.method} {row['objective']} {row['objective_params']}: "
                  f"{row['train_seconds']:.1f} s for {row['epochs']:.3f} epochs", flush=True)
    track = TRACKS.get(args.track)
    print(f"\n{args.track}, {args.threads} thread(s), {args.epochs:g} epochs x {args.rounds} rounds; "
          f"projection to {track.epochs:g} epochs")
    print(f"{'method':16s} {'objective':40s} {'passes/step':>11s} {'s/epoch':>8s} {'min/run':>8s}")
    for i, cfg in enumerate(grid):
        s = statistics.median(per_epoch[i])
        obj, params, passes = facts[i]
        print(f"{cfg.method:16s} {obj + ' ' + (params if params != '{}' else ''):40s} {passes:11d} {s:8.1f} "
              f"{s * track.epochs / 60:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
