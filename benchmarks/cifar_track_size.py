"""Size the CIFAR-10 track for two CPU cores: width x epochs -> dense accuracy and the cost of one run.

Each candidate is a real ``bench run`` of ``dense`` on a variant of the two-core track
(``cifar10-vgg16q-e25``: the paper's VGG16 layout, optimizer, schedule shape, normalisation,
augmentation and hold-out) with another channel multiplier and epoch budget, evaluated with that
track's whole protocol (standard AutoAttack at the headline ε, the APGD curve, FGSM, PGD) on its
500 attacked points. Rows go to ``--results-dir`` (not the project's results), so a candidate
already measured is only reported again. The table gives, per candidate: dense clean accuracy
(n = the test points held), training seconds, AutoAttack seconds at the headline ε and for the
whole curve, the whole evaluation, and the AutoAttack curve (to place the headline ε where dense
keeps 20-60 %).

Requirement of the track: one complete run <= 45 min on one core while another run uses the
other core, dense clean >= 0.80.

    python benchmarks/cifar_track_size.py --candidates 0.25x25 --threads 1      # measure one
    python benchmarks/cifar_track_size.py --report-only                          # the table so far
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

BASE_TRACK = "cifar10-vgg16q-e25"


def candidate_track(width: float, epochs: float):
    """The base track with another width and epoch budget, registered under its own name."""
    from bench.registry import TRACKS

    base = TRACKS.get(BASE_TRACK)
    name = f"size-cifar10-vgg16-w{width:g}-e{epochs:g}"
    if name not in TRACKS.names():
        TRACKS.add(name, dataclasses.replace(base, name=name, arch_kwargs=(("width", width),), epochs=epochs,
                                             differs=f"size candidate: width x{width:g}, {epochs:g} epochs"))
    return name


def parse_candidate(text: str) -> tuple[float, float]:
    try:
        w, e = text.lower().split("x")
        return float(w), float(e)
    except ValueError:
        raise SystemExit(f"--candidates expects WIDTHxEPOCHS such as 0.25x20, got {text!r}") from None


def report(results_dir: Path) -> None:
    import pandas as pd

    from bench.results import read_results

    df = read_results(results_dir) if results_dir.exists() else pd.DataFrame()
    if not len(df):
        print(f"no rows in {results_dir}")
        return
    df = df[(df["status"] == "ok") & df["track"].astype(str).str.startswith("size-")]
    print(f"{'candidate':<34} {'params':>9} {'clean':>6} {'n':>5} {'train s':>8} {'AA head s':>9} {'AA all s':>8} "
          f"{'eval s':>7} {'total min':>9}  AutoAttack curve (Linf eps*255: acc)")
    for _, r in df.sort_values("track").iterrows():
        curve = list(r["aa_curve"]) if r.get("aa_curve") is not None else []
        head = sum(c["seconds"] for c in curve if c.get("version") not in (None, "custom"))
        pts = "  ".join(f"{c['eps'] * 255:g}: {c['acc']:.3f}" for c in curve if c["norm"] == "Linf")
        total = (float(r["train_seconds"]) + float(r["eval_seconds"])) / 60
        print(f"{r['track']:<34} {int(r['n_params']):>9,} {r['clean_acc']:>6.3f} {int(r['n_test']):>5} "
              f"{r['train_seconds']:>8.0f} {head:>9.0f} {r['aa_seconds']:>8.0f} {r['eval_seconds']:>7.0f} "
              f"{total:>9.1f}  {pts}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--candidates", nargs="*", default=["0.25x25"], help="WIDTHxEPOCHS, e.g. 0.25x20 0.125x30")
    ap.add_argument("--results-dir", default="runs/cifar_track_size")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    results_dir = Path(args.results_dir)
    if not args.report_only:
        import bench.tracks  # noqa: F401 - the built-in tracks
        from bench.config import RunConfig
        from bench.runner import run

        for text in args.candidates:
            width, epochs = parse_candidate(text)
            name = candidate_track(width, epochs)
            done = results_dir.exists() and any(results_dir.glob(f"{name}__dense__*.parquet"))
            if done:
                print(f"{name}: already measured in {results_dir}")
                continue
            print(f"{name}: training and evaluating dense on {args.threads} thread(s) ...", flush=True)
            run(RunConfig(method="dense", track=name, seed=args.seed, results_dir=str(results_dir),
                          data_dir=args.data_dir, num_threads=args.threads, progress=False))
    report(results_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
