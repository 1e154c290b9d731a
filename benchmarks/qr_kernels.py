"""Householder QR (bench.condlr.householder_qr) against Cholesky-QR2 (bench.condlr.cholesky_qr),
each kernel alone, interleaved, on the factor-bucket shapes of our tracks.

Inside a training step the crossover comes earlier than alone (Householder QR loses from about
n = 20r there, against about 40r here; ``bench.condlr._HOUSEHOLDER_ASPECT``, the rule of
``retraction="auto"`` on the CPU, follows the step); ``benchmarks/condlr_step.py --retraction both``
times whole steps.

    python benchmarks/qr_kernels.py --threads 1
"""

from __future__ import annotations

import argparse
import time

#: (batch, n, r): factor buckets of mnist-lenet5 and cifar10-vgg16 at compression 0.5 / 0.8
SHAPES = [(6, 30, 24), (2, 805, 64), (1, 500, 160), (1, 800, 160), (2, 128, 128), (3, 259, 112), (9, 519, 224),
          (9, 519, 88), (1, 576, 128), (1, 1152, 128), (1, 1155, 112), (1, 2311, 224), (1, 2304, 88),
          (2, 2307, 112), (4, 4615, 224), (1, 4613, 224), (3, 2305, 48), (4, 4614, 88)]


def _interleaved(fns, rounds: int) -> list[float]:
    """Median ms per call of each function, called in turn (ABAB…) so that drift hits all alike."""
    import statistics

    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for r in range(rounds):
        for i in (range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))):
            t0 = time.perf_counter()
            fns[i]()
            times[i].append(time.perf_counter() - t0)
    return [1e3 * statistics.median(t) for t in times]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--rounds", type=int, default=11, help="calls of each kernel per shape, interleaved")
    args = p.parse_args(argv)

    import torch

    from bench.condlr import _HOUSEHOLDER_ASPECT, cholesky_qr, householder_qr
    from bench.train import synchronize

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    print(f"{args.device}, {args.threads} thread(s); torch {torch.__version__}; float32, ms per call; "
          f"auto takes householder where n <= {_HOUSEHOLDER_ASPECT} r (CPU)")
    print(f"{'b x n x r':>14}  {'cholesky_qr2':>12}  {'householder':>11}  {'h / c':>5}  {'auto':>12}")
    for b, n, r in SHAPES:
        X = (torch.linalg.qr(torch.randn(b, n, r, generator=g))[0] + 1e-3 * torch.randn(b, n, r, generator=g)).to(device)

        c, h = _interleaved([lambda: (cholesky_qr(X), synchronize(device)),
                             lambda: (householder_qr(X), synchronize(device))], args.rounds)
        auto = "householder" if n <= _HOUSEHOLDER_ASPECT * r else "cholesky_qr2"
        print(f"{f'{b}x{n}x{r}':>14}  {c:>12.2f}  {h:>11.2f}  {h / c:>5.2f}  {auto:>12}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
