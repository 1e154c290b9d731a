"""How many PGD steps are enough: accuracy under PGD at 10, 20, 50, 100 steps, one trained model each.

Trains each method on the track (a short budget is enough for the question), then attacks the
track's first ``n_eval`` test points on its PGD grids with every step count (``bench.metrics.
attacks.pgd``: a point is broken when any iterate misclassifies it). Enough steps is where the
next count changes no accuracy by more than a point or two.

    python benchmarks/pgd_steps.py --data-dir /work/shared/data --track mnist-lenet5-e10 --epochs 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def trained(method_name: str, data, track, epochs: float, seed: int):
    import torch

    from bench.method import OptimHP
    from bench.registry import METHODS
    from bench.build import build_for_track
    from bench.train import Budget, train

    method = METHODS.get(method_name)()
    steps = -(-len(data.y_train) // track.batch_size) * epochs
    model, _ = build_for_track(track, data, method, compression=track.compression, seed=seed, total_steps=int(steps))
    hp = OptimHP(lr=track.lr, momentum=track.momentum, weight_decay=track.weight_decay, nesterov=track.nesterov)
    train(model, method, data.x_train, data.y_train, hp=hp, budget=Budget(epochs=epochs), batch_size=track.batch_size,
          lr_milestones=track.lr_milestones, lr_gamma=track.lr_gamma, augment=track.augment, seed=seed,
          device=torch.device("cpu"), progress=False)
    method.finalize(model)
    return model.eval()


def main(argv=None) -> int:
    import torch

    import bench.tracks  # noqa: F401
    from bench.data import load_dataset
    from bench.metrics.attacks import attack_curve
    from bench.registry import TRACKS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--track", default="mnist-lenet5-e10")
    ap.add_argument("--methods", nargs="+", default=["dense", "robust_lowrank"])
    ap.add_argument("--epochs", type=float, default=2)
    ap.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50, 100])
    ap.add_argument("--n-eval", type=int, default=None)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    track = TRACKS.get(args.track)
    data = load_dataset(track.dataset, args.data_dir, val_fraction=track.val_fraction, train_subset=track.train_subset)
    n = track.eval.n_eval if args.n_eval is None else args.n_eval
    x, y = data.x_test[:n], data.y_test[:n]
    grids = [("Linf", track.eval.pgd_linf_eps), ("L2", track.eval.pgd_l2_eps)]
    print(f"track {track.name}, {n} points, {args.epochs:g} epochs of training, torch threads {torch.get_num_threads()}")
    print(f"{'method':16s} {'norm':4s} {'eps':>6s} " + " ".join(f"{s:>7d}" for s in args.steps) + "   (accuracy, PGD steps)")
    for m in args.methods:
        model = trained(m, data, track, args.epochs, seed=0)
        for norm, eps_list in grids:
            accs = {}
            for s in args.steps:
                t0 = time.perf_counter()
                accs[s] = attack_curve(model, x, y, eps_list, attack="pgd", norm=norm, steps=s, seed=0)
            for i, eps in enumerate(eps_list):
                print(f"{m:16s} {norm:4s} {eps:6.3g} " + " ".join(f"{accs[s][i]['acc']:7.3f}" for s in args.steps),
                      flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
