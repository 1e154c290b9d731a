"""FGSM and L2-PGD on stored models with ε measured on pixels (ours) and on normalised inputs.

Our attacks measure ε on [0, 1] pixels, before the model's input normalisation. Code that
normalises in its data loader (the CondLR code does, for CIFAR-10) and attacks the loader's images
measures ε on the normalised inputs instead, where it is 1/std times larger on pixels' scale: the
same number is a weaker attack. This script attacks a stored model both ways, on the row's attacked
points, so the two readings of a published ε can be set side by side:

- pixels: ε as our rows use it; these numbers must equal the row's own `fgsm_curve` and
  `pgd_l2_curve` (the last column says whether they do, a check that the model and points are the
  row's);
- normalised: ε·σ̄ on pixels, σ̄ the mean of the track's per-channel std (for CIFAR-10 0.2009; the
  channels' std differ by less than 1.5 %, so one scale stands for all three).

    python benchmarks/eps_space.py --track cifar10-vgg16q-e25 --seed 2 --threads 1
    python benchmarks/eps_space.py 5f3a 9c1e                  # run ids (or unique prefixes)

Only rows whose model is in the model store (`<results-dir>/.models/`, not committed) can be
attacked; `--track/--seed` picks every such clean-trained row of that track and seed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

HEADER = ("| configuration | seed | FGSM, ε on pixels: {grid} % | FGSM, ε on normalised inputs % "
          "| L2-PGD-{steps} {l2:g}, pixels % | L2-PGD-{steps} {l2:g}, normalised % | pixels = the row's |")


def pick_rows(df, run_ids: list[str], track: str | None, seed: int | None, results_dir: Path):
    """The rows to attack (dicts, missing values None): the given run ids (unique prefixes), or every
    clean-trained ``ok`` row of ``track`` and ``seed`` whose stored model exists. A ValueError names
    what is wrong."""
    from bench.reevaluate import find_run, plain_row
    from bench.store import model_file

    if run_ids and (track or seed is not None):
        raise ValueError("give run ids, or --track with --seed, not both")
    if run_ids:
        return [find_run(df, rid, results_dir) for rid in run_ids]
    if not track or seed is None:
        raise ValueError("give run ids, or --track and --seed")
    sel = df[(df["track"] == track) & (df["seed"] == seed) & (df["status"] == "ok")
             & (df["objective"].fillna("standard") == "standard")]
    rows = [plain_row(r) for _, r in sel.sort_values(["method", "compression_target"]).iterrows()]
    rows = [r for r in rows if (path := model_file(r, results_dir)) is not None and path.is_file()]
    if not rows:
        raise ValueError(f"no clean-trained row of {track} seed {seed} has its model in the store under {results_dir}")
    return rows


def _curve_at(curve, eps: float) -> float | None:
    for p in curve if curve is not None else []:
        if abs(float(p["eps"]) - eps) <= 1e-12:
            return float(p["acc"])
    return None


def attack_row(parent: dict, results_dir: Path, data_dir, device: str = "cpu", data=None) -> dict:
    """Attack one row's stored model (``parent``: a row of :func:`pick_rows`) both ways; returns the
    numbers as fractions. ``data``: the track's data set when the caller has loaded it already."""
    import numpy as np
    import torch

    from bench.build import input_normalization, load_dataset_for
    from bench.metrics.attacks import attack_masks, curve_of
    from bench.registry import TRACKS
    from bench.reevaluate import load_stored_model

    track = TRACKS.get(parent["track"])
    data = load_dataset_for(track, data_dir) if data is None else data
    model, _ = load_stored_model(parent, results_dir, data, track, device=device, log=lambda *a, **k: None)
    idx = torch.as_tensor([int(i) for i in parent["attacked_indices"]])
    x, y = data.x_test[idx], data.y_test[idx]
    sigma = float(np.mean(input_normalization(track, data)[1]))
    grid = [float(e) for e in track.eval.fgsm_eps]
    l2 = 0.3 if 0.3 in track.eval.pgd_l2_eps else float(track.eval.pgd_l2_eps[0])
    steps, seed = int(parent["pgd_steps"]), int(parent["seed"])  # as the row's evaluation ran them
    kw = dict(device=device, seed=seed)
    out = {"sigma": sigma, "grid": grid, "l2": l2, "steps": steps}
    with torch.enable_grad():
        out["fgsm_pixels"] = [p["acc"] for p in curve_of(grid, attack_masks(model, x, y, grid, attack="fgsm", **kw))]
        norm_grid = [e * sigma for e in grid]
        out["fgsm_normalised"] = [p["acc"] for p in curve_of(norm_grid, attack_masks(model, x, y, norm_grid,
                                                                                   attack="fgsm", **kw))]
        for key, e in (("l2_pixels", l2), ("l2_normalised", l2 * sigma)):
            mask = attack_masks(model, x, y, [e], attack="pgd", norm="L2", steps=steps, **kw)[0]
            out[key] = int(mask.sum()) / len(mask)
    row_fgsm = [_curve_at(parent.get("fgsm_curve"), e) for e in grid]
    row_l2 = _curve_at(parent.get("pgd_l2_curve"), l2)
    out["matches_row"] = (all(a is not None and abs(a - b) < 1e-9 for a, b in zip(row_fgsm, out["fgsm_pixels"]))
                          and row_l2 is not None and abs(row_l2 - out["l2_pixels"]) < 1e-9)
    if not out["matches_row"]:
        print(f"eps_space: run {parent['run_id']}: on pixels FGSM {out['fgsm_pixels']} and L2 {out['l2_pixels']}, "
              f"the row has {row_fgsm} and {row_l2}", file=sys.stderr)
    return out


def _pcts(values) -> str:
    return " / ".join(f"{100 * v:.1f}" for v in values)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_ids", nargs="*", help="run ids or unique prefixes (bench show --all)")
    ap.add_argument("--track", default=None)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--results-dir", default=None, help="default: $BENCH_RESULTS_DIR, then ./results")
    ap.add_argument("--data-dir", default=None, help="default: $BENCH_DATA_DIR, then ./data")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args(argv)
    from bench.commands import results_dir_default
    from bench.method import short_id
    from bench.results import read_results

    results_dir = Path(results_dir_default(args.results_dir))
    try:
        rows = pick_rows(read_results(results_dir), args.run_ids, args.track, args.seed, results_dir)
    except ValueError as exc:
        print(f"eps_space: {exc}", file=sys.stderr)
        return 2
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from bench.build import load_dataset_for
    from bench.registry import TRACKS

    lines, datasets = [], {}  # each track's data set loaded once
    for r in rows:
        if r["track"] not in datasets:
            datasets[r["track"]] = load_dataset_for(TRACKS.get(r["track"]), args.data_dir)
        res = attack_row(r, results_dir, args.data_dir, data=datasets[r["track"]])
        if not lines:
            lines.append(HEADER.format(grid=" / ".join(f"{e:g}" for e in res["grid"]), steps=res["steps"], l2=res["l2"]))
            lines.append("| --- " * 7 + "|")
        name = short_id(r["method"], r["method_params"])
        c = float(r["compression_target"])
        lines.append(f"| {name}{f'@{c:g}' if c > 0 else ''} | {int(r['seed'])} | {_pcts(res['fgsm_pixels'])} "
                     f"| {_pcts(res['fgsm_normalised'])} | {100 * res['l2_pixels']:.1f} | {100 * res['l2_normalised']:.1f} "
                     f"| {'yes' if res['matches_row'] else 'NO'} |")
        print(lines[-1] if len(lines) > 3 else "\n".join(lines), flush=True)
    print(f"\nnormalised: ε·{res['sigma']:.4f} on pixels (the mean of the track's per-channel std)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
