"""``bench export``: the results table, or one RobustBench model-info JSON per configuration.

RobustBench (Croce et al.) lists each model of its leaderboard as a JSON file,
``model_info/<dataset>/<threat model>/<name>.json``, with the fields ``link``, ``name``,
``authors``, ``additional_data``, ``number_forward_passes``, ``dataset``, ``venue``,
``architecture``, ``eps`` (a string such as ``"8/255"``), ``clean_acc``, ``reported`` and
``autoattack_acc`` (percent, as strings with two decimals), and optionally ``footnote`` and
``unreliable``. ``--format robustbench`` writes one such file per configuration (track, method,
parameters, compression target), the accuracies averaged over its seeds, under
``<out>/model_info/<dataset>/Linf/``. ``reported`` is our own measured number (no paper reports
these models); ``footnote`` says what RobustBench would not assume: how many seeds and test
points, and which AutoAttack version. Our extra fields, which RobustBench's loader ignores:
``compression``, ``compression_target``, ``method``, ``method_params``, ``objective``,
``objective_params`` (the training objective; a non-standard one also names the file), ``track``,
``track_differs``, ``n_params``, ``n_params_dense``, ``seeds``, ``run_ids``, ``weights_sha256``,
``aa_points``, ``aa_version``, ``clean_acc_ci95``, ``autoattack_acc_ci95``, ``cond_max``,
``git_commits``, ``trust`` (the verdict over seeds: 'ok', 'suspect: k of n seeds', or null when not
evaluated) and ``transfer_acc`` (percent; null when not evaluated). ``unreliable`` is true when a
seed's trust verdict is suspect. Only configurations whose headline is the standard AutoAttack in Linf are
exported. The ``robustbench`` package itself is not used (it does not import as published).

``--format csv|parquet`` writes the aggregated table (``bench.summary.aggregate``) as one file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from bench.columns import eps_text

FORMATS = ("robustbench", "csv", "parquet")


def _pct(v) -> str:
    return f"{100 * float(v):.2f}"


def _suspect(trust) -> bool:
    return isinstance(trust, str) and trust.startswith("suspect")


def _safe(s: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_.=" else "_" for ch in s)


def robustbench_entries(runs: pd.DataFrame) -> list[tuple[str, str, dict]]:
    """(dataset, file name, model-info dict) for every configuration with a standard-AutoAttack headline."""
    from bench.summary import aggregate

    ok = runs[(runs["status"] == "ok")].copy()
    if ok.empty:
        return []
    if "aa_headline_version" in ok.columns:
        ok = ok[ok["aa_headline_version"] == "standard"]
    ok = ok[ok["robust_acc"].notna()] if "robust_acc" in ok.columns else ok.iloc[0:0]
    if ok.empty:
        return []
    from bench.method import short_id
    from bench.results import with_objective
    from bench.summary import objective_text

    agg = aggregate(ok)
    ok = with_objective(ok)
    for c in ("method", "method_params", "track"):
        ok[c] = ok[c].astype(object).where(ok[c].notna(), "")
    ok["compression_target"] = pd.to_numeric(ok["compression_target"], errors="coerce")
    out = []
    for _, a in agg.iterrows():
        g = ok[(ok["track"] == a["track"]) & (ok["method"] == a["method"]) & (ok["method_params"] == a["method_params"])
               & (ok["objective"] == a["objective"]) & (ok["objective_params"] == a["objective_params"])
               & (ok["compression_target"].sub(a["compression_target"]).abs() < 1e-9)]
        trained = "" if a["objective"] == "standard" else objective_text(a)
        first = g.iloc[0]
        params = json.loads(a["method_params"] or "{}")
        label = short_id(a["method"], params)
        target = float(a["compression_target"])
        name = f"{a['track']}__{label}__c{target:g}" + (f"__{trained}" if trained else "")
        aa_n = int(pd.to_numeric(g["aa_n"], errors="coerce").max()) if "aa_n" in g else None
        n_seeds = int(a["seeds"])
        info = {
            "link": "",
            "name": f"{label} at compression {target:g} ({a['track']})" + (f", trained with {trained}" if trained else ""),
            "authors": "",
            "additional_data": False,
            "number_forward_passes": 1,
            "dataset": str(first["dataset"]),
            "venue": "robust-compression-bench",
            "architecture": str(first["arch"]),
            "eps": eps_text(float(a["robust_eps"])),
            "clean_acc": _pct(a["clean_acc_mean"]),
            "reported": _pct(a["robust_acc_mean"]),
            "autoattack_acc": _pct(a["robust_acc_mean"]),
            "footnote": (f"Mean over {n_seeds} seed(s). Standard AutoAttack on {_points_text(first, aa_n)}; clean "
                         f"accuracy on {_clean_text(first)}. Trained and measured by robust-compression-bench, "
                         f"not reported by a paper."),
            "unreliable": _suspect(a.get("trust")),
            # ours
            "compression": float(a["compression_mean"]),
            "compression_target": target,
            "method": a["method"],
            "method_params": params,
            "objective": a["objective"],
            "objective_params": json.loads(a["objective_params"] or "{}"),
            "track": a["track"],
            "track_differs": str(first.get("track_differs") or "") if "track_differs" in g else "",
            "n_params": int(a["n_params_mean"]),
            "n_params_dense": int(first["n_params_dense"]),
            "seeds": sorted(int(s) for s in g["seed"]),
            "run_ids": sorted(str(r) for r in g["run_id"]),
            "weights_sha256": sorted(str(s) for s in g["model_sha256"].dropna()) if "model_sha256" in g else [],
            "aa_points": aa_n,
            "aa_version": "standard",
            "clean_acc_ci95": [_pct(a["clean_acc_ci_low"]), _pct(a["clean_acc_ci_high"])]
            if not math.isnan(a["clean_acc_ci_low"]) else None,
            "autoattack_acc_ci95": [_pct(a["robust_acc_ci_low"]), _pct(a["robust_acc_ci_high"])]
            if not math.isnan(a["robust_acc_ci_low"]) else None,
            "cond_max": float(a["cond_max_mean"]) if "cond_max_mean" in a and not pd.isna(a["cond_max_mean"]) else None,
            "git_commits": sorted({str(c) for c in g["git_commit"].dropna()}) if "git_commit" in g else [],
            "trust": a.get("trust") if isinstance(a.get("trust"), str) else None,
            "transfer_acc": _pct(a["transfer_acc_mean"]) if not pd.isna(a.get("transfer_acc_mean")) else None,
        }
        out.append((str(first["dataset"]), _safe(name) + ".json", info))
    return out


def _points_text(row, aa_n) -> str:
    """Which points the attacks used: 'the first 500 test points' or '500 test points drawn by a fixed
    seeded permutation' (from the row's ``attacked_indices``)."""
    idx = row.get("attacked_indices")
    idx = [] if idx is None or (isinstance(idx, float) and math.isnan(idx)) else [int(i) for i in idx]
    if idx and idx != list(range(len(idx))):
        return f"{aa_n} test points drawn by a fixed seeded permutation (the same for every run; attacked_indices)"
    return f"the first {aa_n} test points"


def _clean_text(row) -> str:
    """'n = 10,000 test images' from the row's ``n_test`` (the offline CIFAR-10 copy holds 1,000)."""
    n = pd.to_numeric(row.get("n_test"), errors="coerce")
    return "the whole test split" if pd.isna(n) else f"n = {int(n):,} test images"


def export(results_dir, out, fmt: str = "robustbench", *, track: str | None = None,
           objective: str | None = None) -> list[Path]:
    """Write the export; returns the files written. ``track`` keeps one track only, ``objective`` one
    training objective."""
    from bench.results import read_results
    from bench.summary import aggregate

    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    runs = read_results(results_dir)
    if not runs.empty and track is not None:
        runs = runs[runs["track"] == track]
    if not runs.empty and objective is not None:
        runs = runs[runs["objective"] == objective]
    if runs.empty:
        raise ValueError(f"no result rows in {results_dir}" + (f" for track {track!r}" if track else "")
                         + (f" for objective {objective!r}" if objective else ""))
    out = Path(out)
    if fmt in ("csv", "parquet"):
        table = aggregate(runs)
        out.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "csv":
            table.to_csv(out, index=False)
        else:
            table.to_parquet(out, index=False)
        return [out]
    written = []
    for dataset, fname, info in robustbench_entries(runs):
        path = out / "model_info" / dataset / "Linf" / fname
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(info, indent=2) + "\n")
        written.append(path)
    if not written:
        raise ValueError("no configuration has a standard-AutoAttack Linf headline to export (attacks skipped?)")
    return written
