"""Aggregate result rows for the terminal (``bench show``) and the leaderboard.

Uncertainty. Every clean and robust accuracy of a configuration carries two spreads: the seed
spread (``<metric>_std``, sample std over seeds) and a 95% Wilson interval over the points the
accuracy was measured on: Wilson with the per-seed average of successes round(acc_i * n_i) and
of points n_i (``<metric>_ci_low``, ``<metric>_ci_high``, ``<metric>_points`` = mean n_i,
``<metric>_hits`` = mean successes). ``n_i`` is ``n_test`` for clean accuracy and ``aa_n`` (the
points AutoAttack attacked) for robust accuracy; a run without a point count counts in the mean
but not in the interval. Every seed attacks the *same* test points, so more seeds do not
narrow the uncertainty that comes from the finite sample of test points: pooling the seeds'
points as independent trials would make the interval about √seeds too narrow. The interval is
the test-point sampling uncertainty of the configuration's average model; ``_std`` is the
training (seed) spread.
"""

from __future__ import annotations

import math

import pandas as pd

from bench.stats import Z95, wilson_interval  # noqa: F401 - re-exported for the leaderboard

#: what makes runs one configuration (their seeds are averaged); see also ``config_id`` (one per seed)
GROUP_KEYS = ["track", "objective", "objective_params", "method", "method_params", "compression_target"]


def metrics() -> list[str]:
    """Per-run columns averaged over seeds: those declared with ``agg="mean"`` (:mod:`bench.columns`)."""
    from bench.columns import aggregated

    return aggregated("mean")


def points_of() -> dict[str, str]:
    """accuracy -> the per-run column holding the number of points it was measured on (declared)."""
    from bench.columns import accuracies

    return accuracies()


#: what the accuracy cells of :func:`summary_table` mean
LEGEND = ("accuracies in %: mean ± std over seeds [95% Wilson interval over the test points, which the seeds share]; "
          "points = test points (clean) and attacked points (robust) per seed; "
          "cond_max with BatchNorm and input normalisation folded in, cond_raw of the stored weights; "
          "transfer = the dense parent's APGD-CE examples; trust = 'ok' or 'suspect: k of n seeds' (reasons below)")


def pooled_interval(acc, n) -> dict:
    """Runs' accuracies over their points: {'hits', 'points', 'ci_low', 'ci_high'}, per-seed averages
    of successes and points (the seeds share their test points; see the module docstring).

    ``acc`` and ``n`` are aligned sequences (one entry per run); a run where either is missing,
    or ``n`` is not positive, is left out of the pool. With nothing to pool every value is NaN.
    """
    hits, points = _hits_points(pd.Series(list(acc), dtype=object), pd.Series(list(n), dtype=object))
    h, k = hits.mean(), points.mean()
    low, high = wilson_interval(h, k) if not pd.isna(k) else (float("nan"), float("nan"))
    return {"hits": float(h), "points": float(k), "ci_low": low, "ci_high": high}


def run_interval(acc, low, high, n) -> tuple[float, float]:
    """One run's 95% Wilson interval: the stored ``(low, high)``, else from its point count ``n`` (an
    accuracy declared without interval columns, e.g. certified or transfer; NaN without a count)."""
    if math.isnan(_num(low)) or math.isnan(_num(high)):
        pool = pooled_interval([acc], [n])
        return pool["ci_low"], pool["ci_high"]
    return low, high


def _hits_points(acc: pd.Series, n: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Per run: correct points round(acc * n) and points n, both NaN where either is unusable."""
    a = pd.to_numeric(acc, errors="coerce").astype("float64")
    k = pd.to_numeric(n, errors="coerce").astype("float64")
    use = a.notna() & k.notna() & (k > 0)
    return (a * k).round().where(use), k.where(use)


def aggregate(df: pd.DataFrame, *, include_failed: bool = False) -> pd.DataFrame:
    """One row per (track, method, params, compression target): mean and std over seeds, and the seed count.

    Means and stds (``<metric>_mean``, ``<metric>_std``) use successful runs only, and so do the
    Wilson intervals of clean and robust accuracy (``<acc>_ci_low``, ``<acc>_ci_high``,
    ``<acc>_points``, ``<acc>_hits``; see the module docstring). ``seeds`` and
    ``runs`` count successful runs, ``failed`` the failed ones. With ``include_failed`` a
    configuration whose runs all failed still gets a row (its metrics empty); otherwise it is left out.
    """
    if df is None or df.empty or "status" not in df.columns:
        return pd.DataFrame()
    from bench.results import with_objective

    df = with_objective(df.copy())
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
    means = [m for m in metrics() if m in df.columns]
    points = points_of()
    for m in means:
        df[m] = pd.to_numeric(df[m], errors="coerce").astype("float64")
    ok = df[ok_mask]

    keys = base[GROUP_KEYS].drop_duplicates().reset_index(drop=True)
    g_ok = ok.groupby(GROUP_KEYS, dropna=False, sort=False)
    mean = g_ok[means].mean().add_suffix("_mean")
    std = g_ok[means].std(ddof=1).add_suffix("_std")
    stats = mean.join(std)
    # Wilson intervals over one seed's worth of points (see the module docstring).
    pool = pd.DataFrame(index=ok.index)
    for m, n_col in points.items():
        acc = ok[m] if m in ok.columns else pd.Series(float("nan"), index=ok.index)
        n = ok[n_col] if n_col in ok.columns else pd.Series(float("nan"), index=ok.index)
        pool[f"{m}_hits"], pool[f"{m}_points"] = _hits_points(acc, n)
    # Grouped exactly as g_ok (same keys, same rows, sort=False), so the rows line up with stats.
    sums = ok[GROUP_KEYS].join(pool).groupby(GROUP_KEYS, dropna=False, sort=False).mean()
    assert len(sums) == len(stats)
    for m in points:
        stats[f"{m}_hits"] = sums[f"{m}_hits"].to_numpy()
        stats[f"{m}_points"] = sums[f"{m}_points"].to_numpy()
        ci = [wilson_interval(h, k) if not (pd.isna(h) or pd.isna(k)) else (float("nan"), float("nan"))
              for h, k in zip(stats[f"{m}_hits"], stats[f"{m}_points"])]
        stats[f"{m}_ci_low"] = [c[0] for c in ci]
        stats[f"{m}_ci_high"] = [c[1] for c in ci]
    stats["seeds"] = g_ok["seed"].nunique() if "seed" in ok.columns else g_ok.size()
    stats["runs"] = g_ok.size()
    from bench.columns import aggregated

    for c in aggregated("first"):
        if c in ok.columns:
            stats[c] = g_ok[c].first()
    for c in aggregated("verdict"):
        if c in ok.columns:
            stats[c] = g_ok[c].agg(verdict_of)
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
    return out.sort_values(["track", "objective", "method", "compression_target", "method_params"], na_position="first",
                           kind="stable").reset_index(drop=True)


def verdict_of(values) -> str | None:
    """A configuration's verdict from its seeds' ('ok' or 'suspect: ...'; null: not evaluated): 'ok' when
    every evaluated seed's is, else 'suspect: k of n seeds' (n counts the evaluated seeds); None when no seed
    has one."""
    got = [str(v) for v in values if isinstance(v, str) and v]
    if not got:
        return None
    bad = sum(not v.startswith("ok") for v in got)
    return "ok" if not bad else f"suspect: {bad} of {len(got)} seed{'s' if len(got) > 1 else ''}"


def _num(v) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return float("nan")
    return f


def acc_text(mean, std=None, low=None, high=None) -> str:
    """'97.2 ± 0.3 [96.8, 97.6]' (percent): mean ± seed std [95% Wilson interval]; '-' without a mean.

    A part that is missing (one seed: no std; no point count: no interval) is left out.
    """
    m = _num(mean)
    if math.isnan(m):
        return "-"
    out = f"{100 * m:.1f}"
    s = _num(std)
    if not math.isnan(s):
        out += f" ± {100 * s:.1f}"
    lo, hi = _num(low), _num(high)
    if not (math.isnan(lo) or math.isnan(hi)):
        out += f" [{100 * lo:.1f}, {100 * hi:.1f}]"
    return out


def summary_table(df: pd.DataFrame, per_run: bool = False) -> pd.DataFrame:
    """A compact, printable table (accuracies as :func:`acc_text`; :data:`LEGEND` says what the cells mean).

    Its columns are the ones declared with the "show" view (:func:`bench.columns.shown`), in their
    ``position`` order; an accuracy brings its points column; a column no row has a value for is left out.
    """
    from bench.columns import shown
    from bench.method import short_id

    cols = shown()
    if per_run:
        return _per_run_table(df, cols)
    agg = aggregate(df)
    rows = []
    adversarial = bool(len(agg)) and (agg["objective"] != "standard").any()
    for _, r in agg.iterrows():
        target = r["compression_target"]
        row = {"track": r["track"], **({"objective": objective_text(r)} if adversarial else {}),
               "method": short_id(r["method"], r["method_params"]),
               "target": f"{target:.2f}" if target != "" and not pd.isna(target) else ""}
        for c in cols:
            if c.points:
                row[c.terminal] = acc_text(r.get(f"{c.name}_mean"), r.get(f"{c.name}_std"),
                                           r.get(f"{c.name}_ci_low"), r.get(f"{c.name}_ci_high"))
                k = _num(r.get(f"{c.name}_points"))
                row[_points_label(c)] = "-" if math.isnan(k) else f"{int(k)}"
            elif c.agg == "mean":
                m, sd = r.get(f"{c.name}_mean"), r.get(f"{c.name}_std")
                row[c.terminal] = "-" if m is None or pd.isna(m) else (
                    f"{m:{c.fmt}}" + (f" ± {sd:{c.fmt}}" if sd is not None and not pd.isna(sd) else ""))
            else:
                v = r.get(c.name)
                row[c.terminal] = "-" if v is None or pd.isna(v) else c.display(v)
        row["seeds"] = int(r["seeds"])
        rows.append(row)
    failed = int((df["status"] != "ok").sum())
    t = pd.DataFrame(rows)
    if failed:
        print(f"({failed} failed run(s) not shown; `bench show --all` lists them)")
    # a non-accuracy column no configuration has a value for (e.g. trust of unattacked runs) says nothing
    empty = [c.terminal for c in cols if not c.points and c.terminal in t.columns and (t[c.terminal] == "-").all()]
    return t.drop(columns=empty)


def markdown_table(table: pd.DataFrame) -> str:
    """``table`` as a GitHub-flavoured markdown table (every cell as text, ``|`` escaped)."""
    if table.empty:
        return ""

    def cell(v) -> str:
        return ("" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(c) for c in table.columns) + " |",
             "| " + " | ".join("---" for _ in table.columns) + " |"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def bracket_lines(df: pd.DataFrame) -> list[str]:
    """Per configuration with both numbers: 'certified ≤ true ≤ AutoAttack' at the headline ε (means over seeds)."""
    from bench.method import short_id

    agg = aggregate(df)
    out = []
    for _, r in agg.iterrows():
        cert, rob = _num(r.get("certified_acc_mean")), _num(r.get("robust_acc_mean"))
        if math.isnan(cert) or math.isnan(rob):
            continue
        eps = _num(r.get("robust_eps"))
        target = _num(r.get("compression_target"))
        name = short_id(r["method"], r["method_params"]) + (f"@{target:g}" if target > 0 else "")
        if r.get("objective", "standard") != "standard":
            name += f" trained with {objective_text(r)}"
        out.append(f"  {r['track']} {name}: certified {cert:.1%} <= true "
                   f"<= AutoAttack {rob:.1%} at Linf eps {eps:.4g}" + ("   (certified > AutoAttack: suspect)"
                                                                        if cert > rob + 1e-12 else ""))
    return out


def objective_text(r) -> str:
    """``pgd_at[alpha=0.075,eps=0.3,steps=10]`` from a row's ``objective`` and ``objective_params``."""
    import json

    params = r.get("objective_params")
    try:
        d = json.loads(params) if isinstance(params, str) and params else {}
    except json.JSONDecodeError:
        d = {}
    inner = ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(d.items()))
    return f"{r.get('objective') or 'standard'}" + (f"[{inner}]" if inner else "")


def verdict_short(v) -> str:
    """A run's verdict in a table cell: 'ok', 'suspect (k reasons)', or '-' (not evaluated)."""
    if not isinstance(v, str) or not v:
        return "-"
    if v.startswith("ok"):
        return "ok"
    k = len(v.removeprefix("suspect: ").split("; "))
    return f"suspect ({k} reason{'s' if k > 1 else ''})"


def suspect_lines(df: pd.DataFrame) -> list[str]:
    """One line per successful run whose trust verdict is suspect: its run id, configuration and reasons."""
    if df is None or df.empty or "trust" not in df.columns:
        return []
    out = []
    for _, r in df[df["status"] == "ok"].iterrows():
        v = r.get("trust")
        if isinstance(v, str) and v.startswith("suspect"):
            params = r.get("method_params") if r.get("method_params") not in (None, "{}", "") else ""
            out.append(f"  {r['run_id']} {r['track']} {r['method']}{(' ' + params) if params else ''} seed "
                       f"{r.get('seed')}: {v}")
    return out


def _points_label(c) -> str:
    return f"{c.points_label or c.points} pts"


def _per_run_table(df: pd.DataFrame, cols) -> pd.DataFrame:
    from bench.method import short_id
    from bench.results import with_objective

    runs = with_objective(df.copy())
    runs["method"] = [short_id(m, p if isinstance(p, str) else None)
                      for m, p in zip(runs["method"], runs.get("method_params", pd.Series(None, index=runs.index)))]
    out = ["run_id", "status", "track", "method", "seed"]
    if (runs["objective"] != "standard").any():
        runs["objective"] = [objective_text(r) for r in runs.to_dict("records")]
        out.insert(3, "objective")
    for c in cols:
        if c.points:
            for part in (c.name, f"{c.name}_ci_low", f"{c.name}_ci_high", c.points):
                if part not in runs.columns:
                    runs[part] = None
            runs[c.terminal] = [acc_text(acc, None, *run_interval(acc, lo, hi, k)) for acc, lo, hi, k in zip(
                runs[c.name], runs[f"{c.name}_ci_low"], runs[f"{c.name}_ci_high"], runs[c.points])]
            out.append(c.terminal)
            if c.board_points:
                runs[c.points] = [("-" if math.isnan(_num(n)) or _num(n) <= 0 else f"{int(_num(n))}")
                                  for n in runs[c.points]]
                out.append(c.points)
        elif c.agg == "verdict":  # the reasons are long: `bench show` lists them under the table
            runs[c.terminal] = [verdict_short(v) for v in runs[c.name]] if c.name in runs.columns else None
            out.append(c.terminal)
        else:
            if c.name in runs.columns:
                runs[c.name] = [c.display(v) for v in runs[c.name]]
            out.append(c.name)
    out.append("created_at")
    return runs[[c for c in out if c in runs.columns]].sort_values(["track", "method"])
