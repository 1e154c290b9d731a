"""Aggregate result rows for the terminal (``bench show``) and the leaderboard."""

from __future__ import annotations

import pandas as pd

GROUP_KEYS = ["track", "method", "method_params", "compression_target"]
METRICS = ["compression", "clean_acc", "robust_acc", "cond_max", "n_params", "train_seconds", "images_per_second"]


def aggregate(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (track, method, params, compression target): mean and std over seeds, and the seed count."""
    ok = df[df["status"] == "ok"].copy()
    if ok.empty:
        return pd.DataFrame()
    for c in GROUP_KEYS:
        ok[c] = ok[c].fillna("")
    metrics = [m for m in METRICS if m in ok.columns]
    g = ok.groupby(GROUP_KEYS, dropna=False)
    mean = g[metrics].mean(numeric_only=True)
    std = g[metrics].std(numeric_only=True, ddof=1)
    out = mean.add_suffix("_mean").join(std.add_suffix("_std"))
    out["seeds"] = g["seed"].nunique()
    out["runs"] = g.size()
    if "robust_eps" in ok.columns:
        out["robust_eps"] = g["robust_eps"].first()
    return out.reset_index()


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
        rows.append({
            "track": r["track"], "method": r["method"], "params": r["method_params"] if r["method_params"] not in ("{}", "") else "",
            "target": f"{r['compression_target']:.2f}" if r["compression_target"] != "" else "",
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
