"""Data shaping for the leaderboard: pure functions of result frames, no Streamlit, no torch.

A value may be null (not measured in that run: no attacks, no dense parent, a metric the run
predates), a list, a numpy array (what parquet list columns come back as), or a JSON string.
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

from bench import columns
from bench.results import PROVENANCE_COLUMNS, read_results, resolve_results_dir, result_files
from bench.summary import aggregate

#: Every declared column (bench.columns); a results frame lacking one gets nulls (no file measured it).
OPTIONAL_COLUMNS = tuple(c.name for c in columns.all_columns())
#: shown under "provenance" for a run
PROVENANCE = tuple(c for c in PROVENANCE_COLUMNS if c != "config_json") + ("device", "source_file")
#: Curve families a run may carry: id -> (column, norm filter for aa_curve or None). The AutoAttack
#: families' display names come from the rows (:func:`curve_label`): their ε away from the
#: headline are usually APGD-CE + APGD-T only, not the standard AutoAttack. The others are the
#: declared "curve" columns (id = the column name without ``_curve``).
CURVES = {"aa_linf": ("aa_curve", "Linf"), "aa_l2": ("aa_curve", "L2")}
CURVES.update({c.name.removesuffix("_curve"): (c.name, None) for c in columns.curve_columns()})
_NORM_TEXT = {"Linf": "L∞", "L2": "L2"}
#: a family's norm as displayed
FAMILY_NORM = {"aa_linf": "L∞", "aa_l2": "L2"}
FAMILY_NORM.update({c.name.removesuffix("_curve"): _NORM_TEXT[c.norm] for c in columns.curve_columns()})
#: names of the families whose name does not depend on the rows
FAMILY_NAMES = {c.name.removesuffix("_curve"): c.title for c in columns.curve_columns()}
#: AutoAttack's attack names as its paper writes them
ATTACK_NAMES = {"apgd-ce": "APGD-CE", "apgd-t": "APGD-T", "apgd-dlr": "APGD-DLR", "fab": "FAB", "fab-t": "FAB-T",
                "square": "Square"}
#: pyautoattack's versions (an aa_curve point's ``version``), as displayed
VERSION_NAMES = {"standard": "standard AutoAttack", "plus": "AutoAttack plus", "rand": "AutoAttack rand"}
UNRECORDED = "AutoAttack (version not recorded)"


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
    return resolve_results_dir(None, env)


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


def sorts() -> dict[str, tuple[str, bool]]:
    """The sort menu: label -> (aggregated column, ascending); rank, then the declared sortable columns
    in display order."""
    out = {"rank": ("rank", True)}
    out.update({c.sort_label or c.name: (c.aggregate_key, c.sort == "asc")
                for c in sorted(columns.sortable(), key=lambda c: c.position)})
    return out


def sort_table(lb: pd.DataFrame, by: str = "rank") -> pd.DataFrame:
    menu = sorts()
    col, ascending = menu.get(by, menu["rank"])
    if lb.empty or col not in lb.columns:
        return lb
    return lb.sort_values([col, "method"], ascending=[ascending, True], na_position="last", kind="stable")


def _pm(std: Any, scale: float = 1.0, spec: str = ".1f") -> str:
    return "" if is_missing(std) else f"± {std * scale:{spec}}"


def ci_text(low: Any, high: Any, scale: float = 100.0, spec: str = ".1f") -> str:
    """'[96.8, 97.6]' (percent by default); '' when either end is missing."""
    lo, hi = as_float(low), as_float(high)
    if math.isnan(lo) or math.isnan(hi):
        return ""
    return f"[{lo * scale:{spec}}, {hi * scale:{spec}}]"


#: what an empty accuracy interval or verdict cell says (rows from before the column, or not measured)
NOT_EVALUATED = "not evaluated"


def verdict_badge(v: Any) -> str:
    """A ``verdict`` cell (:func:`bench.summary.verdict_of`) as shown: 'ok', '⚠ suspect (1 of 3 seeds)',
    or 'not evaluated'."""
    if is_missing(v) or not isinstance(v, str) or not v:
        return NOT_EVALUATED
    if v.startswith("ok"):
        return "ok"
    rest = v.removeprefix("suspect").lstrip(": ").strip()
    return f"⚠ suspect ({rest})" if rest and "seed" in rest else "⚠ suspect"


def display_table(lb: pd.DataFrame) -> pd.DataFrame:
    """The table as shown: numbers stay numbers (so clicking a header sorts them), accuracies and
    compression in percent; beside each accuracy its seed spread ('± x', percentage points) and its
    95% Wilson interval over the test points the seeds share ('[lo, hi]', percent), or 'not evaluated'
    where no seed has the accuracy (rows from before it was recorded, dense rows' transfer accuracy);
    a verdict ('trust') as a badge: 'ok', '⚠ suspect (k of n seeds)' or 'not evaluated'."""
    def col(name, scale=1.0):
        if name not in lb.columns:
            return pd.Series(np.nan, index=lb.index)
        return lb[name] * scale if scale != 1.0 else lb[name]

    out = pd.DataFrame({"rank": col("rank"), "method": lb["method"], "settings": col("settings")})
    for c in columns.on_board():  # declared with the "board" view, in position order
        if c.points:
            out[c.title] = col(f"{c.name}_mean", 100)
            out[f"± {c.stem}"] = [_pm(s, 100) for s in col(f"{c.name}_std")]
            out[f"{c.stem} 95% CI"] = [NOT_EVALUATED if is_missing(m) else ci_text(lo, hi) for m, lo, hi in
                                       zip(col(f"{c.name}_mean"), col(f"{c.name}_ci_low"), col(f"{c.name}_ci_high"))]
            if c.board_points:
                out[c.points_label or c.points] = col(f"{c.name}_points")
        elif c.agg == "verdict":
            out[c.title] = [verdict_badge(v) for v in col(c.aggregate_key)]
        else:
            out[c.title] = col(c.aggregate_key, 100 if c.unit == "fraction" else 1.0)
    out["seeds"] = col("seeds")
    if "failed" in lb.columns and (lb["failed"] > 0).any():
        out["failed"] = lb["failed"]
    return out.reset_index(drop=True)


def export_table(lb: pd.DataFrame) -> pd.DataFrame:
    """The filtered table with raw numbers, for download: means, stds, the Wilson intervals
    (``clean_acc_ci_low`` ... ``robust_acc_ci_high``), the points behind them (per seed)
    (``clean_acc_points``; ``robust_acc_points`` = points attacked), ``n_seeds`` and counts.
    A frame of runs (no ``seeds`` column) keeps its columns."""
    first = ["rank", "track", "method", "method_id", "method_params", "compression_target", "robust_eps"]
    cols = [c for c in first if c in lb.columns] + [c for c in lb.columns if c not in first and c != "settings"]
    out = lb[cols].reset_index(drop=True).copy()
    for c in out.columns:
        if out[c].dtype == object:
            out[c] = out[c].map(lambda v: v if is_missing(v) or isinstance(v, (str, int, float, bool)) else json.dumps(plain(v)))
    return out.rename(columns={"seeds": "n_seeds"})


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


def comparison(runs: pd.DataFrame, row_a: Any, row_b: Any):
    """:func:`bench.compare.compare` of two leaderboard rows (configurations) on ``runs`` (one track's runs)."""
    from bench.compare import compare, spec_of
    from bench.summary import objective_text

    specs = [spec_of(r["method_id"], as_float(r.get("compression_target"))) for r in (row_a, row_b)]
    return compare(runs, specs[0], specs[1], track=row_a["track"], objective=objective_text(row_a),
                   objective_b=objective_text(row_b))


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


def eps_text(eps: Any) -> str:
    """0.0313725 -> '8/255' (a small ε that is a whole number of 255ths), else '%g'; '' for NaN."""
    eps = as_float(eps)
    if math.isnan(eps):
        return ""
    k = eps * 255
    if abs(k - round(k)) < 1e-6 and 0 < eps < 0.1:
        return f"{int(round(k))}/255"
    return f"{eps:g}"


def attack_set_name(version: Any, attacks: Any) -> str:
    """What an AutoAttack curve point ran, from its ``version`` and ``attacks`` fields.

    'standard' -> 'standard AutoAttack'; 'custom' with 'apgd-ce,apgd-t' -> 'APGD-CE + APGD-T';
    without a version, the attacks are named; a point that records neither says so.
    """
    if isinstance(attacks, (list, tuple, np.ndarray)):
        names = [str(a).strip() for a in plain(attacks)]
    elif isinstance(attacks, str):
        names = [a.strip() for a in attacks.split(",")]
    else:
        names = []
    names = [a for a in names if a]
    v = version if isinstance(version, str) and version else None
    if v in VERSION_NAMES:
        return VERSION_NAMES[v]
    if names:
        return " + ".join(ATTACK_NAMES.get(a.lower(), a) for a in names)
    return f"AutoAttack ({v})" if v else UNRECORDED


def curve_points(runs: pd.DataFrame, family: str) -> pd.DataFrame:
    """Long frame of one curve family over runs: run_id, label, method, seed, eps, acc, and for
    AutoAttack points their version, attacks, n, ``attack_set`` (:func:`attack_set_name`) and
    ``headline`` (the point is the run's headline robust accuracy: L∞ at its ``robust_eps``)."""
    column, norm = CURVES[family]
    cols = ["run_id", "label", "method", "seed", "eps", "acc", "version", "attacks", "n", "attack_set", "headline"]
    rows = []
    if column in runs.columns:
        for _, r in runs.iterrows():
            head = as_float(r.get("robust_eps"))
            for p in as_list(r[column]):
                if not isinstance(p, dict):
                    continue
                if norm is not None and str(p.get("norm", "Linf")).lower() != norm.lower():
                    continue
                eps, acc = as_float(p.get("eps")), as_float(p.get("acc"))
                if math.isnan(eps) or math.isnan(acc):
                    continue
                attacks = p.get("attacks")
                aa = column == "aa_curve"
                rows.append({
                    "run_id": r["run_id"], "label": label_of(r), "method": r["method"], "seed": r.get("seed"),
                    "eps": eps, "acc": acc, "version": p.get("version"),
                    "attacks": ", ".join(map(str, attacks)) if isinstance(attacks, list) else attacks,
                    "n": p.get("n"),
                    "attack_set": attack_set_name(p.get("version"), attacks) if aa else FAMILY_NAMES[family],
                    "headline": bool(aa and norm == "Linf" and not math.isnan(head)
                                     and math.isclose(eps, head, rel_tol=1e-6)),
                })
    return pd.DataFrame(rows, columns=cols)


def family_label(points: pd.DataFrame, family: str) -> str:
    """The display name of a curve family, from its points (:func:`curve_points`).

    PGD and FGSM are what they say. An AutoAttack family is named after what ran at most of
    its ε, with the rest in brackets, e.g. 'APGD-CE + APGD-T L∞ (standard AutoAttack at
    ε=8/255)' for the default protocol, 'standard AutoAttack L∞' when every ε ran it.
    """
    if family in FAMILY_NAMES:
        return FAMILY_NAMES[family]
    norm = FAMILY_NORM[family]
    if points.empty or "attack_set" not in points.columns:
        return f"{UNRECORDED} {norm}"
    eps_of = {s: sorted(set(part["eps"])) for s, part in points.groupby("attack_set", sort=False)}
    # the name carried by the most ε; ties go to a recorded version, then to the set not at the headline
    headline_sets = set(points.loc[points["headline"].astype(bool), "attack_set"]) if "headline" in points else set()
    main = max(eps_of, key=lambda s: (len(eps_of[s]), s != UNRECORDED, s not in headline_sets))
    others = [f"{s} at ε={', '.join(eps_text(e) for e in eps_of[s])}" for s in eps_of if s != main]
    return f"{main} {norm}" + (f" ({'; '.join(others)})" if others else "")


def curve_label(runs: pd.DataFrame, family: str) -> str:
    """:func:`family_label` of ``runs``' points of ``family``."""
    return family_label(curve_points(runs, family), family)


def curve_families(runs: pd.DataFrame) -> list[str]:
    """The ids (keys of :data:`CURVES`) of the families at least one of ``runs`` has points for, in display order."""
    return [f for f in CURVES if not curve_points(runs, f).empty]


def mean_curves(points: pd.DataFrame) -> pd.DataFrame:
    """Curve points averaged over seeds: label, method, eps, acc (mean), acc_std, seeds, attack_set, headline."""
    cols = ["label", "method", "eps", "acc", "acc_std", "seeds", "attack_set", "headline"]
    if points.empty:
        return pd.DataFrame(columns=cols)
    g = points.groupby(["label", "method", "eps"], sort=True)
    out = g["acc"].agg(["mean", "std", "count"]).reset_index()
    out = out.rename(columns={"mean": "acc", "std": "acc_std", "count": "seeds"})
    out["acc_std"] = out["acc_std"].fillna(0.0)
    if "attack_set" in points.columns:
        out["attack_set"] = g["attack_set"].agg(lambda s: " / ".join(dict.fromkeys(map(str, s)))).to_numpy()
        out["headline"] = g["headline"].agg(lambda s: bool(pd.Series(s).astype(bool).any())).to_numpy()
    else:
        out["attack_set"], out["headline"] = "", False
    return out[cols]


def headline_text(runs: pd.DataFrame) -> str:
    """What the robust accuracy column is, from the rows: e.g. 'standard AutoAttack (APGD-CE, APGD-T,
    FAB-T, Square) at ε=8/255'. Several versions or ε in ``runs`` are all named, with run counts; ''
    when no run has a robust accuracy."""
    if runs.empty or "robust_acc" not in runs.columns:
        return ""
    rob = runs[pd.to_numeric(runs["robust_acc"], errors="coerce").notna()]
    if rob.empty:
        return ""
    found: dict[tuple[str, str], int] = {}
    for _, r in rob.iterrows():
        eps = as_float(r.get("robust_eps"))
        version = r.get("aa_headline_version")
        attacks = None
        for p in as_list(r.get("aa_curve")):
            if (isinstance(p, dict) and str(p.get("norm", "Linf")).lower() == "linf"
                    and not math.isnan(eps) and math.isclose(as_float(p.get("eps")), eps, rel_tol=1e-6)):
                attacks = p.get("attacks")
                version = version if isinstance(version, str) and version else p.get("version")
                break
        name = attack_set_name(version, attacks)
        if attacks and name in VERSION_NAMES.values():  # name the version's attacks too
            name += f" ({attack_set_name(None, attacks).replace(' + ', ', ')})"
        key = (name, eps_text(eps))
        found[key] = found.get(key, 0) + 1
    parts = [f"{name} at ε={eps}" if eps else name for name, eps in found]
    if len(found) == 1:
        return parts[0]
    return "; ".join(f"{t} ({n} run{'s' if n > 1 else ''})" for t, n in zip(parts, found.values()))


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

    ``kappa`` and ``spectral_norm`` are of the layer's folded map (BatchNorm and input
    normalisation folded in), ``kappa_raw`` and ``spectral_norm_raw`` of the stored weights alone,
    ``folded`` what was folded ('bn', 'bn_in', 'input_norm', joined by '+'; '' nothing;
    'untraced'). Lists a run lacks leave their column empty.
    """
    cols = ["order", "layer", "kind", "shape", "kappa", "kappa_raw", "folded", "spectral_norm", "spectral_norm_raw",
            "rank"]
    names = as_list(r.get("layer_names"))
    lists = {"kappa": as_list(r.get("layer_kappa")), "spectral_norm": as_list(r.get("layer_spectral_norm")),
             "rank": as_list(r.get("layer_ranks")), "kind": as_list(r.get("layer_kinds")),
             "shape": as_list(r.get("layer_shapes")), "kappa_raw": as_list(r.get("layer_kappa_raw")),
             "spectral_norm_raw": as_list(r.get("layer_spectral_norm_raw")), "folded": as_list(r.get("layer_folded"))}
    n = max([len(names)] + [len(v) for v in lists.values()])
    if n == 0:
        return pd.DataFrame(columns=cols)

    def pad(xs, conv):
        xs = list(xs)[:n] + [None] * max(0, n - len(xs))
        return [conv(x) for x in xs]

    def text(x):
        return "" if x is None else str(x)

    def folded(x):  # None: not recorded; "" nothing folded
        return None if x is None else str(x)

    return pd.DataFrame({
        "order": range(n),
        "layer": [text(x) for x in names[:n]] + [f"layer {i}" for i in range(len(names), n)],
        "kind": pad(lists["kind"], text), "shape": pad(lists["shape"], text),
        "kappa": pad(lists["kappa"], as_float), "kappa_raw": pad(lists["kappa_raw"], as_float),
        "folded": pad(lists["folded"], folded),
        "spectral_norm": pad(lists["spectral_norm"], as_float),
        "spectral_norm_raw": pad(lists["spectral_norm_raw"], as_float),
        "rank": pad(lists["rank"], as_float),
    }, columns=cols)


#: parts of a ``layer_folded`` entry, as displayed
FOLDED_NAMES = {"bn": "BatchNorm after", "bn_in": "BatchNorm before", "input_norm": "input normalisation",
                "untraced": "not traced (κ = raw κ)"}


def folded_text(v: Any) -> str:
    """A ``layer_folded`` entry for people: 'bn+input_norm' -> 'BatchNorm after + input normalisation',
    '' -> 'nothing', None -> 'not recorded'."""
    if v is None or is_missing(v):
        return "not recorded"
    parts = [x for x in str(v).split("+") if x]
    return " + ".join(FOLDED_NAMES.get(x, x) for x in parts) if parts else "nothing"


def provenance(r: Any) -> dict:
    out = {}
    for c in PROVENANCE:
        v = r.get(c)
        if not is_missing(v):
            out[c] = plain(v)
    return out


def bracket_band(part: pd.DataFrame) -> pd.DataFrame:
    """eps, certified, attacked: where one norm's points (:func:`run_curves`) hold both the certified and the
    AutoAttack accuracy at the same ε — the band in which the true robust accuracy lies."""
    fams = set(part["family"]) if "family" in part.columns else set()
    pairs = [(c, a) for c, a in (("certified_linf", "aa_linf"), ("certified_l2", "aa_l2")) if {c, a} <= fams]
    if not pairs:
        return pd.DataFrame(columns=["eps", "certified", "attacked"])
    c, a = pairs[0]
    cert = part[part["family"] == c][["eps", "acc"]].rename(columns={"acc": "certified"})
    att = part[part["family"] == a][["eps", "acc"]].rename(columns={"acc": "attacked"})
    return cert.merge(att, on="eps").sort_values("eps").reset_index(drop=True)


#: the certified curve family under each AutoAttack family (the bracket certified ≤ true ≤ AutoAttack)
CERTIFIED_UNDER = {"aa_linf": "certified_linf", "aa_l2": "certified_l2"}


def config_bracket_band(runs: pd.DataFrame, family: str) -> pd.DataFrame:
    """label, method, eps, certified, attacked: per configuration (means over seeds), the band between its
    certified and its AutoAttack accuracy at the ε where it has both; empty for other families or
    runs without certified curves."""
    cols = ["label", "method", "eps", "certified", "attacked"]
    cert_family = CERTIFIED_UNDER.get(family)
    if cert_family is None:
        return pd.DataFrame(columns=cols)
    att = mean_curves(curve_points(runs, family))[["label", "method", "eps", "acc"]].rename(columns={"acc": "attacked"})
    cert = mean_curves(curve_points(runs, cert_family))[["label", "eps", "acc"]].rename(columns={"acc": "certified"})
    if att.empty or cert.empty:
        return pd.DataFrame(columns=cols)
    att["key"], cert["key"] = att["eps"].round(9), cert["eps"].round(9)
    out = att.merge(cert.drop(columns="eps"), on=["label", "key"]).drop(columns="key")
    return out.sort_values(["label", "eps"]).reset_index(drop=True)[cols]


def run_curves(r: Any) -> pd.DataFrame:
    """All curve points of one run: ``family`` (a :data:`CURVES` id), ``attack`` (its
    :func:`family_label` for this run), ``norm``, eps, acc, and the AutoAttack details."""
    one = pd.DataFrame([r])
    frames = []
    for fam in CURVES:
        pts = curve_points(one, fam)
        if not pts.empty:
            pts.insert(0, "family", fam)
            pts.insert(1, "attack", family_label(pts, fam))
            pts.insert(2, "norm", FAMILY_NORM[fam])
            frames.append(pts)
    if not frames:
        return pd.DataFrame(columns=["family", "attack", "norm", "eps", "acc", "attack_set", "headline"])
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------- the track


def _most_common(values: pd.Series) -> tuple[Any, int]:
    """The most frequent non-null value and how many distinct non-null values there are."""
    v = values.dropna()
    if v.empty:
        return None, 0
    counts = v.astype(str).value_counts()
    return counts.index[0], len(counts)


def track_info(runs: pd.DataFrame) -> dict:
    """What the rows say about their track (``track_description``, ``track_differs``).

    Returns {'description', 'reference', 'differs', 'variants'}: the description without its
    bracketed reference part, the reference it reproduces ('' if none), what differs (None when no
    row recorded it: a sweep's failed rows only; '' when nothing differs), and how many distinct descriptions the rows carry
    (more than one when the track changed between runs; the most common one is returned).
    """
    desc, variants = _most_common(runs["track_description"])
    differs, _ = _most_common(runs["track_differs"])
    out = {"description": desc or "", "reference": "", "differs": differs, "variants": variants}
    if desc and desc.endswith("]") and " [" in desc:
        # Track.summary(): "<description> [<reference>; differs: <...>]" or "... [<reference>, exactly]"
        # or, without a reference, "<description> [<differs>]".
        head, bracket = desc[:-1].rsplit(" [", 1)
        ref = None
        if "; differs: " in bracket:
            ref = bracket.split("; differs: ", 1)[0]
        elif bracket.endswith(", exactly"):
            ref = bracket[: -len(", exactly")]
        elif differs is not None and bracket == differs:
            ref = ""
        if ref is not None:
            out.update(description=head, reference=ref)
    return out


# ---------------------------------------------------------------- the paper's numbers

#: the published numbers, shown beside ours and never ranked
PAPER_REFERENCE = Path(__file__).resolve().parent / "paper_reference.csv"
PAPER_COLUMNS = ("paper", "dataset", "arch", "method", "bench_method", "method_params", "compression",
                 "compression_kind", "attack", "norm", "eps", "metric", "value", "unit", "source", "note")
#: columns that may be empty in a row
PAPER_MAY_BE_EMPTY = ("bench_method", "method_params", "compression", "compression_kind", "note")
#: attack, norm -> the curve family our runs record it in (the metric 'accuracy' at ε)
PAPER_ATTACKS = {("FGSM", "Linf"): "fgsm", ("PGD", "Linf"): "pgd_linf", ("PGD", "L2"): "pgd_l2",
                 ("AutoAttack", "Linf"): "aa_linf", ("AutoAttack", "L2"): "aa_l2"}
PAPER_LABEL = "paper (reported)"


class PaperReferenceError(ValueError):
    """The paper reference file is missing, unreadable or malformed; the message says where."""


def load_paper_reference(path: str | os.PathLike | None = None) -> pd.DataFrame:
    """The paper's published numbers, validated: one row per number, the columns of
    :data:`PAPER_COLUMNS` plus ``acc`` (the value as a fraction) and ``family`` (our curve family).

    Raises :class:`PaperReferenceError` naming the file, the line and the problem for a missing
    column, an empty required field, a non-numeric eps/value/compression, a value outside its unit's
    range, an unknown attack/norm/unit, or a duplicated number.
    """
    path = Path(PAPER_REFERENCE if path is None else path)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except FileNotFoundError:
        raise PaperReferenceError(f"{path}: no such file") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise PaperReferenceError(f"{path}: not a readable CSV file ({exc})") from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in PAPER_COLUMNS if c not in df.columns]
    if missing:
        raise PaperReferenceError(f"{path}: missing column(s) {', '.join(missing)} "
                                  f"(expected {', '.join(PAPER_COLUMNS)})")
    if df.empty:
        raise PaperReferenceError(f"{path}: no rows")
    df = df[list(PAPER_COLUMNS)].apply(lambda c: c.str.strip())

    def fail(i, msg):
        raise PaperReferenceError(f"{path}, line {i + 2}: {msg}")  # line 1 is the header

    units = {"%": 100.0, "fraction": 1.0}
    for i, r in df.iterrows():
        for c in PAPER_COLUMNS:
            if c not in PAPER_MAY_BE_EMPTY and not r[c]:
                fail(i, f"empty {c!r}")
        for c in ("eps", "value") + (("compression",) if r["compression"] else ()):
            try:
                v = float(r[c])
            except ValueError:
                fail(i, f"{c} {r[c]!r} is not a number")
            if not math.isfinite(v):
                fail(i, f"{c} {r[c]!r} is not finite")
        if r["compression"] and not r["compression_kind"]:
            fail(i, "a compression needs its compression_kind (what fraction it is: of parameters, of rank ...)")
        if r["unit"] not in units:
            fail(i, f"unit {r['unit']!r} is not one of {', '.join(units)}")
        if not 0 <= float(r["value"]) <= units[r["unit"]]:
            fail(i, f"value {r['value']} is outside [0, {units[r['unit']]:g}] for unit {r['unit']!r}")
        if (r["attack"], r["norm"]) not in PAPER_ATTACKS:
            fail(i, f"attack/norm {r['attack']!r}/{r['norm']!r} is not one of "
                    f"{', '.join('/'.join(k) for k in PAPER_ATTACKS)}")
        if float(r["eps"]) < 0 or (r["compression"] and not 0 <= float(r["compression"]) < 1):
            fail(i, "eps must be >= 0 and compression in [0, 1)")
    key = ["paper", "dataset", "arch", "method", "method_params", "compression", "attack", "norm", "eps", "metric"]
    dup = df.assign(_eps=df["eps"].astype(float)).duplicated(subset=[k if k != "eps" else "_eps" for k in key])
    if dup.any():
        fail(int(np.flatnonzero(dup.to_numpy())[0]), "the same number is listed twice")
    out = df.copy()
    out["eps"] = out["eps"].astype(float)
    out["value"] = out["value"].astype(float)
    out["compression"] = pd.to_numeric(out["compression"], errors="coerce")
    out["acc"] = [v / units[u] for v, u in zip(out["value"], out["unit"])]
    out["family"] = [PAPER_ATTACKS[(a, n)] for a, n in zip(out["attack"], out["norm"])]
    return out.reset_index(drop=True)


def paper_rows(ref: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """The reference rows of the dataset and architecture of ``runs`` (empty when nothing matches)."""
    if ref is None or ref.empty or runs.empty:
        return ref.iloc[0:0] if ref is not None else pd.DataFrame(columns=PAPER_COLUMNS)
    pairs = set()
    for d, a in zip(runs.get("dataset", pd.Series(dtype=object)), runs.get("arch", pd.Series(dtype=object))):
        if isinstance(d, str) and isinstance(a, str):
            pairs.add((d.lower(), a.lower()))
    keep = [(d.lower(), a.lower()) in pairs for d, a in zip(ref["dataset"], ref["arch"])]
    return ref[keep].reset_index(drop=True)


def paper_setting(r: Any) -> str:
    """'CondLR (tau=0.5), c.r. 50% (rank fraction removed per layer)' for one reference row."""
    text = r["method"] + (f" ({r['method_params']})" if r.get("method_params") else "")
    comp = as_float(r.get("compression"))
    if not math.isnan(comp) and comp > 0:
        text += f", c.r. {comp * 100:g}%" + (f" ({r['compression_kind']})" if r.get("compression_kind") else "")
    elif math.isnan(comp):
        text += ", c.r. not stated"
    return text


def paper_beside_ours(ref: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Each paper number beside ours at the same attack and ε, per our configuration of the
    matching method (``bench_method``): our mean over seeds and std, as fractions. A paper row
    without a matching configuration in ``runs`` is kept, its 'ours' columns empty. The two
    columns are never merged or ranked together."""
    cols = ["paper setting", "attack", "eps", PAPER_LABEL, "our configuration", "ours", "ours_std", "seeds",
            "source", "note"]
    rows = []
    ok = runs[runs["status"] == "ok"] if "status" in runs.columns else runs
    for _, p in ref.iterrows():
        attack = f"{p['attack']} {'L∞' if p['norm'] == 'Linf' else p['norm']}"
        base = {"paper setting": paper_setting(p), "attack": attack, "eps": p["eps"], PAPER_LABEL: p["acc"],
                "source": p["source"], "note": p["note"]}
        mine = ok[ok["method"] == p["bench_method"]] if p["bench_method"] else ok.iloc[0:0]
        pts = curve_points(mine, p["family"]) if not mine.empty else pd.DataFrame()
        if not pts.empty:
            pts = pts[np.isclose(pts["eps"].astype(float), p["eps"], rtol=1e-6, atol=1e-12)]
        if pts.empty:
            rows.append({**base, "our configuration": "", "ours": np.nan, "ours_std": np.nan, "seeds": 0})
            continue
        for label, part in pts.groupby("label", sort=True):
            rows.append({**base, "our configuration": label, "ours": part["acc"].mean(),
                         "ours_std": part["acc"].std(ddof=1) if len(part) > 1 else np.nan, "seeds": len(part)})
    return pd.DataFrame(rows, columns=cols)


def paper_curve_points(ref: pd.DataFrame, family: str) -> pd.DataFrame:
    """The reference numbers of one curve family, for drawing beside our curves: method (ours, the
    ``bench_method``; '' when none matches), eps, acc, and a label saying it is the paper's."""
    cols = ["method", "eps", "acc", "label", "source"]
    if ref is None or ref.empty:
        return pd.DataFrame(columns=cols)
    part = ref[ref["family"] == family]
    return pd.DataFrame({
        "method": part["bench_method"].to_numpy(), "eps": part["eps"].to_numpy(dtype=float),
        "acc": part["acc"].to_numpy(dtype=float),
        "label": [f"{PAPER_LABEL}: {paper_setting(r)}" for _, r in part.iterrows()],
        "source": part["source"].to_numpy(),
    }, columns=cols)
