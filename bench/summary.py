"""Aggregate result rows for the terminal (``bench show``) and the leaderboard."""

from __future__ import annotations

import pandas as pd

GROUP_KEYS = ["track", "method", "method_params", "compression_target"]
#: Numeric per-run columns averaged over seeds (those a results frame lacks are left out).
METRICS = [
    "compression", "clean_acc", "robust_acc", "cond_max", "log10_cond_prod", "n_params", "n_nonzero",
    "flops_per_example", "train_seconds", "images_per_second", "latency_ms_per_batch", "val_acc",
]


def aggregate(df: pd.DataFrame, *, include_failed: bool = False) -> pd.DataFrame:
    """One row per (track, method, params, compression target): mean and std over seeds, and the seed count.

    Means and stds (``<metric>_mean``, ``<metric>_std``) use successful runs only. ``seeds`` and
    ``runs`` count successful runs, ``failed`` the failed ones. With ``include_failed`` a
    configuration whose runs all failed still gets a row (its metrics empty); otherwise it is left out.
    """
    if df is None or df.empty or "status" not in df.columns:
        return pd.DataFrame()
    df = df.copy()
    for c in GROUP_KEYS:
        if c not in df.columns:
            df[c] = None
    for c in ("track", "method", "method_params"):
        df[c] = df[c].astype(object).where(df[c].notna(), "")
    df["compression_target"] = pd.to_numeric(df["compression_target"], errors="coerce")
    ok_mask = df["status"] == "ok"
    base = df if include_failed else df[ok_mask]
    if base.empty:
        return pd.DataFrame()
    metrics = [m for m in METRICS if m in df.columns]
    for m in metrics:
        df[m] = pd.to_numeric(df[m], errors="coerce").astype("float64")
    ok = df[ok_mask]

    keys = base[GROUP_KEYS].drop_duplicates().reset_index(drop=True)
    g_ok = ok.groupby(GROUP_KEYS, dropna=False, sort=False)
    mean = g_ok[metrics].mean().add_suffix("_mean")
    std = g_ok[metrics].std(ddof=1).add_suffix("_std")
    stats = mean.join(std)
    stats["seeds"] = g_ok["seed"].nunique() if "seed" in ok.columns else g_ok.size()
    stats["runs"] = g_ok.size()
    for c in ("robust_eps", "method_id"):
        if c in ok.columns:
            stats[c] = g_ok[c].first()
    g_all = base.groupby(GROUP_KEYS, dropna=False, sort=False)
    counts = pd.DataFrame({"failed": g_all["status"].agg(lambda s: int((s != "ok").sum()))})
    out = keys.merge(stats.reset_index(), on=GROUP_KEYS, how="left").merge(
        counts.reset_index(), on=GROUP_KEYS, how="left")
    for c in ("seeds", "runs", "failed"):
        out[c] = out[c].fillna(0).astype(int)
    if "method_id" not in out.columns:
        out["method_id"] = None
    # A configuration with only failed runs has no method_id from a successful run: take any.
    if "method_id" in base.columns:
        any_id = g_all["method_id"].first().reset_index().rename(columns={"method_id": "_any_id"})
        out = out.merge(any_id, on=GROUP_KEYS, how="left")
        out["method_id"] = out["method_id"].where(out["method_id"].notna(), out["_any_id"])
        out = out.drop(columns="_any_id")
    out["method_id"] = out["method_id"].where(out["method_id"].notna(), out["method"])
    return out.sort_values(["track", "method", "compression_target", "method_params"], na_position="first",
                           kind="stable").reset_index(drop=True)


def summary_table(df: pd.DataFrame, per_run: bool = False) -> pd.DataFrame:
    """A compact, printable table."""
    if per_run:
        cols = ["run_id", "status", "track", "method", "seed", "compression", "clean_acc", "robust_acc",
                "robust_eps", "cond_max", "train_seconds", "created_at"]
        return df[[c for c in cols if c in df.columns]].sort_values(["track", "method"])
    agg = aggregate(df)
    rows = []
    for _, r in agg.iterrows():
        def ms(name, spec=".3f"):
            m, s = r.get(f"{name}_mean"), r.get(f"{name}_std")
            if m is None or pd.isna(m):
                return "-"
            return f"{m:{spec}}" + (f" ± {s:{spec}}" if s is not None and not pd.isna(s) else "")
        target = r["compression_target"]
        rows.append({
            "track": r["track"], "method": r["method"], "params": r["method_params"] if r["method_params"] not in ("{}", "") else "",
            "target": f"{target:.2f}" if target != "" and not pd.isna(target) else "",
            "compression": ms("compression"), "clean_acc": ms("clean_acc"), "robust_acc": ms("robust_acc"),
            "eps": f"{r['robust_eps']:.4g}" if "robust_eps" in r and not pd.isna(r["robust_eps"]) else "-",
            "cond_max": ms("cond_max", ".3g"), "train_s": ms("train_seconds", ".1f"),
            "img/s": ms("images_per_second", ",.0f"), "seeds": int(r["seeds"]),
        })
    failed = int((df["status"] != "ok").sum())
    t = pd.DataFrame(rows)
    if failed:
        print(f"({failed} failed run(s) not shown; `bench show --all` lists them)")
    return t
