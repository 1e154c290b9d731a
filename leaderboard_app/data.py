"""Data shaping for the leaderboard: pure functions of result frames, no Streamlit, no torch.

Everything here tolerates older rows: a column may be absent, null, a list, a
numpy array (what parquet list columns come back as), or a JSON string.
"""

from __future__ import annotations

import io
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.results import read_results, result_files
from bench.summary import aggregate

#: Columns the app reads beyond bench.results.REQUIRED_COLUMNS; absent ones are added as nulls.
OPTIONAL_COLUMNS = (
    "method_id", "aa_curve", "aa_flags", "fgsm_curve", "pgd_linf_curve", "pgd_l2_curve",
    "layer_names", "layer_kappa", "layer_spectral_norm", "layer_ranks", "log10_cond_prod",
    "flops_per_example", "latency_ms_per_batch", "dense_latency_ms_per_batch", "n_nonzero",
    "method_details", "config_json", "traceback", "val_acc",
)
PROVENANCE = (
    "created_at", "git_commit", "python_version", "torch_version", "torchvision_version",
    "pyautoattack_version", "device_name", "device", "hostname", "source_file",
)
#: Curve families a run may carry: label -> (column, norm filter for aa_curve or None).
CURVES = {
    "AutoAttack L∞": ("aa_curve", "Linf"),
    "AutoAttack L2": ("aa_curve", "L2"),
    "PGD L∞": ("pgd_linf_curve", None),
    "PGD L2": ("pgd_l2_curve", None),
    "FGSM": ("fgsm_curve", None),
}


# ---------------------------------------------------------------- loading


@dataclass
class Loaded:
    """What one look at a results directory found."""

    results_dir: Path
    runs: pd.DataFrame
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file name, reason)
    exists: bool = True

    @property
    def empty(self) -> bool:
        return self.runs.empty


def results_dir_from_env(env: dict | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("BENCH_RESULTS_DIR") or "results")


def signature(results_dir: str | os.PathLike) -> tuple:
    """Names, sizes and modification times of the result files: a cache key that changes when they do."""
    out = []
    for p in result_files(results_dir):
        try:
            st = p.stat()
        except OSError:
            continue
        out.append((p.name, st.st_size, st.st_mtime_ns))
    return tuple(out)


def load(results_dir: str | os.PathLike) -> Loaded:
    """Read every parquet row (parquet only: nothing is unpickled or executed); note unreadable files."""
    d = Path(results_dir)
    skipped: list[tuple[str, str]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # reported through `skipped` instead
        df = read_results(d, on_skip=lambda path, reason: skipped.append((Path(path).name, reason)))
    for c in OPTIONAL_COLUMNS:
        if c not in df.columns:
            df[c] = None
    if not df.empty:
        df["method_id"] = df["method_id"].where(df["method_id"].notna(), df["method"])
    return Loaded(d, df.reset_index(drop=True), skipped, exists=d.is_dir())


# ---------------------------------------------------------------- cell values


def plain(v: Any) -> Any:
    """numpy arrays, numpy scalars and nested dicts from parquet -> plain Python lists/dicts/scalars."""
    if isinstance(v, np.ndarray):
        return [plain(x) for x in v.tolist()] if v.dtype != object else [plain(x) for x in v]
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, np.generic):
        return v.item()
    return v


def is_missing(v: Any) -> bool:
    if v is None or v is pd.NA or v is pd.NaT:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    return False


def as_list(v: Any) -> list:
    """A list cell as a Python list; null, NaN and unreadable values become []."""
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except ValueError:
            return []
    if is_missing(v):
        return []
    v = plain(v)
    return list(v) if isinstance(v, list) else []


def as_dict(v: Any) -> dict:
    """A JSON-string (or struct) cell as a dict; null becomes {}, non-JSON text becomes {'text': ...}."""
    if isinstance(v, str):
        if not v.strip():
            return {}
        try:
            v = json.loads(v)
        except ValueError:
            return {"text": v}
    if is_missing(v):
        return {}
    v = plain(v)
    return v if isinstance(v, dict) else {"value": v}


def as_float(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return float("nan")
    return f


def params_text(method_params: Any) -> str:
    """'{"kappa": 1.5, "mode": "x"}' -> 'kappa=1.5, mode=x' ('' for no parameters)."""
    d = as_dict(method_params)
    return ", ".join(f"{k}={d[k]}" for k in sorted(d))


# ---------------------------------------------------------------- the table


def leaderboard(runs: pd.DataFrame, *, include_failed: bool = False) -> pd.DataFrame:
    """Aggregated configurations (see :func:`bench.summary.aggregate`) with a per-track ``rank``.

    The rank orders by AutoAttack robust accuracy (the benchmark's headline), then clean
    accuracy; a track without robust numbers ranks by clean accuracy. Configurations with only
    failed runs get no rank.
    """
    agg = aggregate(runs, include_failed=include_failed)
    if agg.empty:
        return agg
    agg["settings"] = agg["method_params"].map(params_text)
    agg["rank"] = pd.array([pd.NA] * len(agg), dtype="Int64")
    for _, idx in agg.groupby("track", sort=False).groups.items():
        part = agg.loc[idx]
        part = part[part["runs"] > 0]
        if part.empty:
            continue
        keys = ["robust_acc_mean", "clean_acc_mean"] if part["robust_acc_mean"].notna().any() else ["clean_acc_mean"]
        order = part.sort_values(keys, ascending=False, na_position="last", kind="stable").index
        agg.loc[order, "rank"] = range(1, len(order) + 1)
    return agg


def filter_table(lb: pd.DataFrame, *, track: str | None = None, methods: list[str] | None = None,
                 compression: tuple[float, float] | None = None) -> pd.DataFrame:
    """Rows of one track, of the given methods, whose mean compression lies in the closed range [lo, hi].

    A configuration with no successful run (no compression to test) passes the range filter.
    """
    if lb.empty:
        return lb
    keep = pd.Series(True, index=lb.index)
    if track is not None:
        keep &= lb["track"] == track
    if methods is not None:
        keep &= lb["method"].isin(list(methods))
    if compression is not None:
        # Compared at the table's precision (0.1 %), so 49.97 % shown as "50.0%" passes a 0.50 bound.
        lo, hi = (round(v * 100, 1) for v in compression)
        c = (lb["compression_mean"] * 100).round(1)
        keep &= c.isna() | ((c >= lo) & (c <= hi))
    return lb[keep]


SORTS = {
    "rank": ("rank", True),
    "robust accuracy": ("robust_acc_mean", False),
    "clean accuracy": ("clean_acc_mean", False),
    "compression": ("compression_mean", False),
    "cond_max": ("cond_max_mean", True),
    "parameters": ("n_params_mean", True),
    "FLOPs": ("flops_per_example_mean", True),
    "train time": ("train_seconds_mean", True),
    "images/s": ("images_per_second_mean", False),
}


def sort_table(lb: pd.DataFrame, by: str = "rank") -> pd.DataFrame:
    col, ascending = SORTS.get(by, SORTS["rank"])
    if lb.empty or col not in lb.columns:
        return lb
    return lb.sort_values([col, "method"], ascending=[ascending, True], na_position="last", kind="stable")


def _pm(std: Any, scale: float = 1.0, spec: str = ".1f") -> str:
    return "" if is_missing(std) else f"± {std * scale:{spec}}"


def display_table(lb: pd.DataFrame) -> pd.DataFrame:
    """The table as shown: numbers stay numbers (so clicking a header sorts them), accuracies and
    compression in percent, spreads as '± x' text in percentage points."""
    def col(name, scale=1.0):
        if name not in lb.columns:
            return pd.Series(np.nan, index=lb.index)
        return lb[name] * scale if scale != 1.0 else lb[name]

    out = pd.DataFrame({
        "rank": col("rank"),
        "method": lb["method"],
        "settings": col("settings"),
        "compression": col("compression_mean", 100),
        "clean acc": col("clean_acc_mean", 100),
        "± clean": [_pm(s, 100) for s in col("clean_acc_std")],
        "robust acc": col("robust_acc_mean", 100),
        "± robust": [_pm(s, 100) for s in col("robust_acc_std")],
        "cond_max": col("cond_max_mean"),
        "params": col("n_params_mean"),
        "FLOPs": col("flops_per_example_mean"),
        "train s": col("train_seconds_mean"),
        "images/s": col("images_per_second_mean"),
        "seeds": col("seeds"),
    })
    if "failed" in lb.columns and (lb["failed"] > 0).any():
        out["failed"] = lb["failed"]
    return out.reset_index(drop=True)


def export_table(lb: pd.DataFrame) -> pd.DataFrame:
    """The filtered table with raw numbers (means, stds, counts), for download."""
    first = ["rank", "track", "method", "method_id", "method_params", "compression_target", "robust_eps"]
    cols = [c for c in first if c in lb.columns] + [c for c in lb.columns if c not in first and c != "settings"]
    out = lb[cols].reset_index(drop=True).copy()
    for c in out.columns:
        if out[c].dtype == object:
            out[c] = out[c].map(lambda v: v if is_missing(v) or isinstance(v, (str, int, float, bool)) else json.dumps(plain(v)))
    return out


def to_csv_bytes(df: pd.DataFrame) -> bytes:
    return df.to_csv(index=False).encode("utf-8")


def to_parquet_bytes(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


def runs_of(runs: pd.DataFrame, lb: pd.DataFrame, *, include_failed: bool = False) -> pd.DataFrame:
    """The runs behind the rows of ``lb`` (a filtered leaderboard)."""
    if lb.empty or runs.empty:
        return runs.iloc[0:0]
    keys = ["track", "method", "method_params", "compression_target"]
    r = runs.copy()
    for c in ("track", "method", "method_params"):
        r[c] = r[c].astype(object).where(r[c].notna(), "")
    r["compression_target"] = pd.to_numeric(r["compression_target"], errors="coerce")
    sel = lb[keys].drop_duplicates()
    merged = r.reset_index().merge(sel, on=keys, how="inner")
    out = runs.loc[merged["index"]]
    if not include_failed:
        out = out[out["status"] == "ok"]
    return out


# ---------------------------------------------------------------- plots


def label_of(row: Any) -> str:
    """A configuration's short name: method id, plus the compression target when it compresses."""
    mid = row.get("method_id") if hasattr(row, "get") else None
    name = mid if isinstance(mid, str) and mid else row["method"]
    t = as_float(row.get("compression_target"))
    if not math.isnan(t) and t > 0:
        name += f" @ {t:.2f}"
    return name


def pareto_mask(x: Any, y: Any) -> np.ndarray:
    """True for points no other point beats in both x and y (both maximised); NaNs are never on it."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    ok = ~(np.isnan(x) | np.isnan(y))
    mask = np.zeros(len(x), dtype=bool)
    for i in np.flatnonzero(ok):
        others = ok.copy()
        others[i] = False
        dominated = others & (x >= x[i]) & (y >= y[i]) & ((x > x[i]) | (y > y[i]))
        mask[i] = not dominated.any()
    return mask


def tradeoff_frame(lb: pd.DataFrame, metric: str = "robust_acc") -> pd.DataFrame:
    """Points for accuracy vs compression: one per configuration, with std and a Pareto flag."""
    cols = ["label", "method", "compression", "acc", "acc_std", "clean_acc", "seeds", "pareto"]
    if lb.empty or f"{metric}_mean" not in lb.columns:
        return pd.DataFrame(columns=cols)
    out = pd.DataFrame({
        "label": [label_of(r) for _, r in lb.iterrows()],
        "method": lb["method"].to_numpy(),
        "compression": lb["compression_mean"].to_numpy(dtype=float),
        "acc": lb[f"{metric}_mean"].to_numpy(dtype=float),
        "acc_std": lb[f"{metric}_std"].fillna(0.0).to_numpy(dtype=float),
        "clean_acc": lb["clean_acc_mean"].to_numpy(dtype=float),
        "seeds": lb["seeds"].to_numpy(),
    })
    out = out.dropna(subset=["compression", "acc"]).reset_index(drop=True)
    out["pareto"] = pareto_mask(out["compression"], out["acc"])
    return out


def curve_points(runs: pd.DataFrame, family: str) -> pd.DataFrame:
    """Long frame of one curve family over runs: run_id, label, method, seed, eps, acc (+ AA details)."""
    column, norm = CURVES[family]
    rows = []
    if column in runs.columns:
        for _, r in runs.iterrows():
            for p in as_list(r[column]):
                if not isinstance(p, dict):
                    continue
                if norm is not None and str(p.get("norm", "Linf")).lower() != norm.lower():
                    continue
                eps, acc = as_float(p.get("eps")), as_float(p.get("acc"))
                if math.isnan(eps) or math.isnan(acc):
                    continue
                attacks = p.get("attacks")
                rows.append({
                    "run_id": r["run_id"], "label": label_of(r), "method": r["method"], "seed": r.get("seed"),
                    "eps": eps, "acc": acc, "version": p.get("version"),
                    "attacks": ", ".join(map(str, attacks)) if isinstance(attacks, list) else attacks,
                    "n": p.get("n"),
                })
    return pd.DataFrame(rows, columns=["run_id", "label", "method", "seed", "eps", "acc", "version", "attacks", "n"])


def curve_families(runs: pd.DataFrame) -> list[str]:
    """The curve families at least one of ``runs`` has points for, in display order."""
    return [f for f in CURVES if not curve_points(runs, f).empty]


def mean_curves(points: pd.DataFrame) -> pd.DataFrame:
    """Curve points averaged over seeds: label, method, eps, acc (mean), acc_std, seeds."""
    if points.empty:
        return pd.DataFrame(columns=["label", "method", "eps", "acc", "acc_std", "seeds"])
    g = points.groupby(["label", "method", "eps"], sort=True)
    out = g["acc"].agg(["mean", "std", "count"]).reset_index()
    out = out.rename(columns={"mean": "acc", "std": "acc_std", "count": "seeds"})
    out["acc_std"] = out["acc_std"].fillna(0.0)
    return out


def cond_frame(lb: pd.DataFrame) -> pd.DataFrame:
    """cond_max against robust accuracy (clean accuracy when no run was attacked), one point per configuration."""
    cols = ["label", "method", "cond_max", "acc", "metric", "compression"]
    if lb.empty or "cond_max_mean" not in lb.columns:
        return pd.DataFrame(columns=cols)
    metric = "robust_acc" if lb["robust_acc_mean"].notna().any() else "clean_acc"
    out = pd.DataFrame({
        "label": [label_of(r) for _, r in lb.iterrows()],
        "method": lb["method"].to_numpy(),
        "cond_max": lb["cond_max_mean"].to_numpy(dtype=float),
        "acc": lb[f"{metric}_mean"].to_numpy(dtype=float),
        "metric": metric,
        "compression": lb["compression_mean"].to_numpy(dtype=float),
    })
    return out[np.isfinite(out["cond_max"]) & (out["cond_max"] > 0) & out["acc"].notna()].reset_index(drop=True)


# ---------------------------------------------------------------- one run


def order_runs(runs: pd.DataFrame, lb: pd.DataFrame) -> pd.DataFrame:
    """Runs in the order of their configuration's row in ``lb``, then by seed (the best run first)."""
    if runs.empty:
        return runs
    keys = ["track", "method", "method_params", "compression_target"]
    pos = {tuple(_key(v) for v in r): i for i, r in enumerate(lb[keys].itertuples(index=False))}
    where = [pos.get(tuple(_key(v) for v in r), len(pos)) for r in runs[keys].itertuples(index=False)]
    seed = pd.to_numeric(runs["seed"], errors="coerce") if "seed" in runs.columns else pd.Series(0, index=runs.index)
    order = pd.DataFrame({"pos": where, "seed": seed.to_numpy()}, index=runs.index)
    return runs.loc[order.sort_values(["pos", "seed"], na_position="last", kind="stable").index]


def _key(v: Any) -> Any:
    if is_missing(v):
        return ""
    return round(float(v), 9) if isinstance(v, (float, np.floating)) else v


def run_label(r: Any) -> str:
    seed = r.get("seed")
    seed = "" if is_missing(seed) else f" · seed {int(seed)}"
    status = "" if r.get("status") == "ok" else " · FAILED"
    return f"{label_of(r)}{seed} · {r['run_id']}{status}"


def layer_frame(r: Any) -> pd.DataFrame:
    """Per-layer κ, spectral norm, rank, kind and shape of one run, in network order.

    Lists a run lacks leave their column empty; a run with no per-layer lists at all but
    ``method_details["ranks"]`` (older rows) still gets its ranks.
    """
    cols = ["order", "layer", "kind", "shape", "kappa", "spectral_norm", "rank"]
    names = as_list(r.get("layer_names"))
    lists = {"kappa": as_list(r.get("layer_kappa")), "spectral_norm": as_list(r.get("layer_spectral_norm")),
             "rank": as_list(r.get("layer_ranks")), "kind": as_list(r.get("layer_kinds")),
             "shape": as_list(r.get("layer_shapes"))}
    n = max([len(names)] + [len(v) for v in lists.values()])
    if n == 0:
        ranks_d = as_dict(r.get("method_details")).get("ranks")
        if not (isinstance(ranks_d, dict) and ranks_d):
            return pd.DataFrame(columns=cols)
        names, lists["rank"] = list(ranks_d), list(ranks_d.values())
        n = len(names)

    def pad(xs, conv):
        xs = list(xs)[:n] + [None] * max(0, n - len(xs))
        return [conv(x) for x in xs]

    def text(x):
        return "" if x is None else str(x)

    return pd.DataFrame({
        "order": range(n),
        "layer": [text(x) for x in names[:n]] + [f"layer {i}" for i in range(len(names), n)],
        "kind": pad(lists["kind"], text), "shape": pad(lists["shape"], text),
        "kappa": pad(lists["kappa"], as_float), "spectral_norm": pad(lists["spectral_norm"], as_float),
        "rank": pad(lists["rank"], as_float),
    }, columns=cols)


def provenance(r: Any) -> dict:
    out = {}
    for c in PROVENANCE:
        v = r.get(c)
        if not is_missing(v):
            out[c] = plain(v)
    return out


def run_curves(r: Any) -> pd.DataFrame:
    """All curve points of one run, with their family."""
    one = pd.DataFrame([r])
    frames = []
    for fam in CURVES:
        pts = curve_points(one, fam)
        if not pts.empty:
            pts.insert(0, "attack", fam)
            pts.insert(1, "norm", "L2" if "L2" in fam else "L∞")
            frames.append(pts)
    if not frames:
        return pd.DataFrame(columns=["attack", "norm", "eps", "acc"])
    return pd.concat(frames, ignore_index=True)
