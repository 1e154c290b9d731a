"""Training throughput of methods relative to dense, measured back to back.

Each measurement is a real ``bench.train.train`` call (the trainer that writes
``images_per_second`` into result rows) on the track's data, batch size and
optimizer, for a fraction of an epoch. Methods are interleaved (dense, robust,
dense, robust, ...) and repeated so that a shared, noisy CPU slows both alike;
the ratio is taken per round and summarised by its median.

    python benchmarks/throughput.py --data-dir /work/shared/data            # mnist-lenet5, c = 0.5
    python benchmarks/throughput.py --track digits-cnn --compression 0.8 --methods dense vanilla_lowrank
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def measure(method_name: str, data, track, compression: float, epochs: float, device, seed: int) -> float:
    import torch

    from bench.method import OptimHP
    from bench.registry import METHODS
    from bench.build import build_for_track
    from bench.train import Budget, train

    method = METHODS.get(method_name)()
    model, _ = build_for_track(track, data, method, compression=compression, seed=seed, total_steps=None,
                               device=device)
    hp = OptimHP(lr=track.lr, momentum=track.momentum, weight_decay=track.weight_decay, nesterov=track.nesterov)
    stats = train(model, method, data.x_train, data.y_train, hp=hp, budget=Budget(epochs=epochs),
                  batch_size=track.batch_size, lr_milestones=track.lr_milestones, lr_gamma=track.lr_gamma,
                  augment=track.augment, seed=seed, device=device, progress=False)
    return stats.images_per_second


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--track", default="mnist-lenet5")
    ap.add_argument("--compression", type=float, default=0.5)
    ap.add_argument("--methods", nargs="+", default=["dense", "robust_lowrank"],
                    help="the first is the baseline of the ratios")
    ap.add_argument("--epochs", type=float, default=0.1, help="training per measurement (fraction of an epoch)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)

    import torch

    from bench.data import load_dataset
    from bench.registry import TRACKS

    if args.threads:
        torch.set_num_threads(args.threads)
    track = TRACKS.get(args.track)
    data = load_dataset(track.dataset, args.data_dir, val_fraction=track.val_fraction)
    device = torch.device(args.device)
    print(f"{args.track}: {len(data.y_train)} training images, batch {track.batch_size}, {args.epochs:g} epoch per "
          f"measurement, compression {args.compression:g}, {torch.get_num_threads()} threads, device {device}")
    for name in args.methods:  # warm-up: first calls pay for allocator and kernel set-up
        measure(name, data, track, args.compression, min(args.epochs, 0.02), device, 0)
    ips: dict[str, list[float]] = {m: [] for m in args.methods}
    for rep in range(args.repeats):
        order = args.methods if rep % 2 == 0 else args.methods[::-1]
        for name in order:
            ips[name].append(measure(name, data, track, args.compression, args.epochs, device, rep))
        print(f"round {rep + 1}: " + "  ".join(f"{m} {ips[m][-1]:,.0f} img/s" for m in args.methods), flush=True)
    base = args.methods[0]
    print()
    for name in args.methods:
        ratios = [a / b for a, b in zip(ips[name], ips[base])]
        print(f"{name:18s} median {statistics.median(ips[name]):8,.0f} img/s   ratio to {base}: median "
              f"{statistics.median(ratios):.2f} (per round {', '.join(f'{r:.2f}' for r in ratios)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
