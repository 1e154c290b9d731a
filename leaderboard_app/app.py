"""The leaderboard: ``bench leaderboard`` or ``streamlit run leaderboard_app/app.py``.

Reads the parquet rows under ``$BENCH_RESULTS_DIR`` (default ``./results``) and nothing else:
no pickles, no code from results, no torch. The data shaping lives in ``leaderboard_app.data``.
"""

from __future__ import annotations

import math
import shlex
import sys
from pathlib import Path

try:
    from leaderboard_app import data as lbd
except ImportError:  # `streamlit run` from a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from leaderboard_app import data as lbd

import altair as alt
import pandas as pd
import streamlit as st

TITLE = "Compressed networks under attack"
CHART_HEIGHT = 330
#: one colour per attack family, the same in every panel
CURVE_COLORS = {"AutoAttack L∞": "#1b9e77", "AutoAttack L2": "#d95f02", "PGD L∞": "#7570b3", "PGD L2": "#e7298a",
                "FGSM": "#66a61e"}


@st.cache_resource(show_spinner=False, max_entries=8)
def _load(results_dir: str, signature: tuple) -> lbd.Loaded:
    # Keyed on the files' names, sizes and mtimes, so a new or rewritten run is picked up on the
    # next interaction. cache_resource hands back the same object (no pickling): treat it as read-only.
    return lbd.load(results_dir)


def _fmt(v, spec: str = ".3f", scale: float = 1.0, suffix: str = "") -> str:
    f = lbd.as_float(v)
    return "–" if math.isnan(f) else f"{f * scale:{spec}}{suffix}"


def _eps_text(eps: float) -> str:
    if math.isnan(eps):
        return ""
    k = eps * 255
    if abs(k - round(k)) < 1e-6 and eps < 0.1:
        return f"{int(round(k))}/255"
    return f"{eps:g}"


def _skipped_warnings(loaded: lbd.Loaded) -> None:
    for name, reason in loaded.skipped:
        st.warning(f"Skipped unreadable results file `{name}`: {reason}", icon=":material/warning:")


def _empty_page(loaded: lbd.Loaded) -> None:
    d = str(loaded.results_dir)
    st.title(TITLE)
    _skipped_warnings(loaded)
    if not loaded.exists:
        st.info(f"There is no results directory at `{d}` yet.", icon=":material/inbox:")
    elif loaded.skipped:
        st.info(f"No readable results in `{d}`.", icon=":material/inbox:")
    else:
        st.info(f"No results in `{d}` yet.", icon=":material/inbox:")
    st.markdown("Train and evaluate a first network on the offline digits track (CPU is enough), "
                "then reload this page:")
    st.code(f"bench run --method dense --results-dir {shlex.quote(d)}", language="bash")
    st.markdown("Then add a compressed one, for example:")
    st.code(f"bench list\nbench run --method <name> --compression 0.5 --results-dir {shlex.quote(d)}", language="bash")


def _color(methods: list[str]) -> alt.Color:
    # One fixed method -> colour mapping for every chart on the page.
    return alt.Color("method:N", title="method", scale=alt.Scale(domain=methods, scheme="tableau10"),
                     legend=alt.Legend(orient="bottom", columns=4))


def _tradeoff_chart(lb: pd.DataFrame, metric: str, methods: list[str], y_title: str) -> alt.LayerChart | None:
    pts = lbd.tradeoff_frame(lb, metric)
    if pts.empty:
        return None
    pts["lo"] = pts["acc"] - pts["acc_std"]
    pts["hi"] = pts["acc"] + pts["acc_std"]
    x = alt.X("compression:Q", title="compression (fraction of parameters removed)",
              scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%"))
    y = alt.Y("acc:Q", title=y_title, scale=alt.Scale(zero=False, padding=12), axis=alt.Axis(format="%"))
    tooltip = [alt.Tooltip("label:N", title="configuration"), alt.Tooltip("compression:Q", format=".1%"),
               alt.Tooltip("acc:Q", title=y_title, format=".1%"), alt.Tooltip("acc_std:Q", title="± std", format=".1%"),
               alt.Tooltip("clean_acc:Q", title="clean acc", format=".1%"), alt.Tooltip("seeds:Q")]
    base = alt.Chart(pts)
    err = base.mark_rule(strokeWidth=2, opacity=0.6).encode(
        x=x, y=alt.Y("lo:Q"), y2="hi:Q", color=alt.Color("method:N", legend=None, scale=alt.Scale(domain=methods, scheme="tableau10")))
    dots = base.mark_circle(size=110, opacity=0.9).encode(x=x, y=y, color=_color(methods), tooltip=tooltip)
    front = pts[pts["pareto"]].sort_values("compression")
    line = alt.Chart(front).mark_line(interpolate="step-after", strokeDash=[6, 4], color="#555").encode(
        x=x, y=y, order="compression:Q")
    rings = alt.Chart(front).mark_point(size=320, filled=False, color="#222", strokeWidth=1.5).encode(
        x=x, y=y, tooltip=tooltip)
    return (dots + err + line + rings).properties(height=CHART_HEIGHT)


def _curve_chart(curves: pd.DataFrame, methods: list[str], family: str) -> alt.Chart:
    norm = "L2" if "L2" in family else "L∞"
    return alt.Chart(curves).mark_line(point=alt.OverlayMarkDef(size=60), strokeWidth=2.5).encode(
        x=alt.X("eps:Q", title=f"ε ({norm}, pixels in [0, 1])"),
        y=alt.Y("acc:Q", title="accuracy under attack", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%")),
        color=_color(methods), detail="label:N",
        tooltip=[alt.Tooltip("label:N", title="configuration"), alt.Tooltip("eps:Q", format=".4g"),
                 alt.Tooltip("acc:Q", format=".1%"), alt.Tooltip("acc_std:Q", title="± std", format=".1%"),
                 alt.Tooltip("seeds:Q")],
    ).properties(height=CHART_HEIGHT)


def _cond_chart(cf: pd.DataFrame, methods: list[str]) -> alt.Chart:
    metric = "robust accuracy" if cf["metric"].iloc[0] == "robust_acc" else "clean accuracy"
    return alt.Chart(cf).mark_circle(size=110, opacity=0.9).encode(
        x=alt.X("cond_max:Q", title="cond_max (largest per-layer condition number κ)", scale=alt.Scale(type="log")),
        y=alt.Y("acc:Q", title=metric, scale=alt.Scale(zero=False, padding=12), axis=alt.Axis(format="%")),
        color=_color(methods),
        tooltip=[alt.Tooltip("label:N", title="configuration"), alt.Tooltip("cond_max:Q", format=".4g"),
                 alt.Tooltip("acc:Q", title=metric, format=".1%"), alt.Tooltip("compression:Q", format=".1%")],
    ).properties(height=CHART_HEIGHT)


def _cost_chart(lb: pd.DataFrame, methods: list[str]) -> tuple[alt.Chart | None, str]:
    # Inference latency answers "does the compression make it faster?"; older rows only have
    # training throughput, which is plotted instead.
    if "latency_ms_per_batch_mean" in lb.columns and lb["latency_ms_per_batch_mean"].notna().any():
        col, title, fmt = "latency_ms_per_batch_mean", "inference latency (ms per batch)", ".3g"
    elif "images_per_second_mean" in lb.columns and lb["images_per_second_mean"].notna().any():
        col, title, fmt = "images_per_second_mean", "training throughput (images/s)", ",.0f"
    else:
        return None, ""
    df = pd.DataFrame({
        "label": [lbd.label_of(r) for _, r in lb.iterrows()], "method": lb["method"].to_numpy(),
        "compression": lb["compression_mean"].to_numpy(dtype=float), "value": lb[col].to_numpy(dtype=float),
    }).dropna()
    chart = alt.Chart(df).mark_circle(size=110, opacity=0.9).encode(
        x=alt.X("compression:Q", title="compression (fraction of parameters removed)",
                scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%")),
        y=alt.Y("value:Q", title=title, scale=alt.Scale(zero=False, padding=12)),
        color=_color(methods),
        tooltip=[alt.Tooltip("label:N", title="configuration"), alt.Tooltip("value:Q", title=title, format=fmt),
                 alt.Tooltip("compression:Q", format=".1%")],
    ).properties(height=CHART_HEIGHT)
    return chart, title


def _layer_chart(layers: pd.DataFrame) -> alt.Chart | None:
    have_kappa = layers["kappa"].notna().any()
    have_rank = layers["rank"].notna().any()
    if not (have_kappa or have_rank):
        return None
    tooltip = [alt.Tooltip("layer:N"), alt.Tooltip("kind:N"), alt.Tooltip("shape:N"),
               alt.Tooltip("kappa:Q", title="κ", format=".4g"),
               alt.Tooltip("spectral_norm:Q", title="spectral norm", format=".4g"), alt.Tooltip("rank:Q")]
    layers = layers.assign(label=[f"{n} · {k}" if k else n for n, k in zip(layers["layer"], layers["kind"])])
    x = alt.X("label:N", sort=alt.SortField("order"), title=None, axis=alt.Axis(labelAngle=-30))
    if have_kappa:
        # κ >= 1, and a log axis has no zero: bars grow from 1 (a perfectly conditioned layer).
        y = alt.Y("kappa:Q", title="κ (condition number, log scale)", scale=alt.Scale(type="log", domainMin=1),
                  axis=alt.Axis(format="~g"))
        bars = alt.Chart(layers.dropna(subset=["kappa"])).mark_bar(color="#4c78a8").encode(
            x=x, y=y, y2=alt.datum(1), tooltip=tooltip)
        if have_rank:
            labels = alt.Chart(layers.dropna(subset=["kappa", "rank"])).mark_text(dy=-7, fontSize=11, color="#333").encode(
                x=x, y=y, text=alt.Text("rank:Q", format="d"))
            bars = bars + labels
        return bars.properties(height=280)
    return alt.Chart(layers.dropna(subset=["rank"])).mark_bar(color="#4c78a8").encode(
        x=x, y=alt.Y("rank:Q", title="rank"), tooltip=tooltip).properties(height=280)


def _run_curve_charts(curves: pd.DataFrame) -> list[tuple[str, alt.Chart]]:
    # L∞ and L2 budgets live on different ε scales, so each norm gets its own panel.
    out = []
    for norm, part in curves.groupby("norm", sort=False):
        present = [f for f in lbd.CURVES if f in set(part["attack"])]
        out.append((norm, alt.Chart(part).mark_line(point=True, strokeWidth=2).encode(
            x=alt.X("eps:Q", title=f"ε ({norm})"),
            y=alt.Y("acc:Q", title="accuracy", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%")),
            color=alt.Color("attack:N", title=None, legend=alt.Legend(orient="right"),
                            scale=alt.Scale(domain=present, range=[CURVE_COLORS[f] for f in present])),
            tooltip=["attack:N", alt.Tooltip("eps:Q", format=".4g"), alt.Tooltip("acc:Q", format=".1%"),
                     "version:N", "attacks:N", "n:Q"],
        ).properties(height=190)))
    return out


def _column_config(eps_label: str) -> dict:
    cc = st.column_config
    pct = dict(min_value=0.0, max_value=100.0, format="%.1f%%")
    return {
        "rank": cc.NumberColumn("rank", format="%d", width=50, help="by robust accuracy, then clean accuracy"),
        "method": cc.TextColumn("method", width=130),
        "settings": cc.TextColumn("settings", width=100, help="method parameters"),
        "compression": cc.NumberColumn("compression", format="%.1f%%", width=95,
                                       help="parameters removed, mean over seeds"),
        "clean acc": cc.ProgressColumn("clean acc", help="test accuracy, mean over seeds", width=120, **pct),
        "± clean": cc.TextColumn("±", help="std of clean accuracy over seeds, percentage points", width=58),
        "robust acc": cc.ProgressColumn(f"robust acc {eps_label}".strip(), width=140,
                                        help="AutoAttack accuracy at the track's headline ε, mean over seeds", **pct),
        "± robust": cc.TextColumn("± ", help="std of robust accuracy over seeds, percentage points", width=58),
        "cond_max": cc.NumberColumn("cond_max", format="%.3g", width=80,
                                    help="largest per-layer condition number, mean over seeds (std in the download)"),
        "params": cc.NumberColumn("params", format="compact", width=70, help="inference-form parameters"),
        "FLOPs": cc.NumberColumn("FLOPs", format="compact", width=70, help="multiply-adds per example"),
        "train s": cc.NumberColumn("train s", format="%.1f", width=70, help="training wall time (s)"),
        "images/s": cc.NumberColumn("images/s", format="compact", width=80, help="training throughput"),
        "seeds": cc.NumberColumn("seeds", format="%d", width=60),
        "failed": cc.NumberColumn("failed", format="%d", width=60, help="failed runs of this configuration"),
    }


def _sidebar(loaded: lbd.Loaded):
    runs = loaded.runs
    st.sidebar.header("Filters")
    counts = runs["track"].value_counts()
    tracks = list(counts.index)
    track = st.sidebar.selectbox("Track", tracks, format_func=lambda t: f"{t} ({counts[t]} runs)", key="track")
    in_track = runs[runs["track"] == track]
    all_methods = sorted(in_track["method"].dropna().unique().tolist())
    methods = st.sidebar.multiselect("Methods", all_methods, default=all_methods, key=f"methods::{track}")
    lo, hi = st.sidebar.slider("Compression (fraction removed)", 0.0, 1.0, (0.0, 1.0), step=0.05, key="compression")
    hide_failed = st.sidebar.checkbox("Hide failed runs", value=True, key="hide_failed")
    sort_by = st.sidebar.selectbox("Sort by", list(lbd.SORTS), key="sort_by")
    st.sidebar.caption(f"Results: `{loaded.results_dir}`")
    return track, all_methods, methods, (lo, hi), hide_failed, sort_by


def main() -> None:
    st.set_page_config(page_title="Robust compression leaderboard", page_icon=":material/shield:", layout="wide")
    # Wide tables want the room Streamlit's default side padding takes.
    st.html("<style>[data-testid='stMainBlockContainer']{padding-left:2.5rem;padding-right:2.5rem;"
            "padding-top:2.5rem}</style>")
    results_dir = str(lbd.results_dir_from_env())
    loaded = _load(results_dir, lbd.signature(results_dir))
    if loaded.empty:
        _empty_page(loaded)
        return

    track, all_methods, methods, comp_range, hide_failed, sort_by = _sidebar(loaded)
    in_track = loaded.runs[loaded.runs["track"] == track]
    lb_all = lbd.leaderboard(in_track, include_failed=not hide_failed)
    lb = lbd.sort_table(lbd.filter_table(lb_all, methods=methods, compression=comp_range), sort_by)
    shown_runs = lbd.runs_of(in_track, lb, include_failed=not hide_failed)
    ok_lb = lb[lb["runs"] > 0] if not lb.empty else lb
    eps = lbd.as_float(in_track["robust_eps"].dropna().iloc[0]) if in_track["robust_eps"].notna().any() \
        else float("nan")
    eps_label = "" if math.isnan(eps) else f"(ε={_eps_text(eps)})"
    n_failed = int((in_track["status"] != "ok").sum())

    st.title(TITLE)
    _skipped_warnings(loaded)
    st.caption(f"Track **{track}** · {len(lb)} of {len(lb_all)} configurations · {len(shown_runs)} runs shown"
               + (f" · {n_failed} failed run(s) hidden" if hide_failed and n_failed else ""))
    _headline(lb, ok_lb, shown_runs, eps_label)
    picked = _table_section(lb, lb_all, shown_runs, track, eps_label)
    _plots(ok_lb, shown_runs, all_methods, eps_label)
    _run_detail(shown_runs, lb, picked)


def _headline(lb: pd.DataFrame, ok_lb: pd.DataFrame, shown_runs: pd.DataFrame, eps_label: str) -> None:
    k1, k2, k3, k4 = st.columns(4)
    k1.metric("Configurations", len(lb))
    k2.metric("Runs", len(shown_runs))
    for col, metric, title in ((k3, "robust_acc_mean", f"Best robust acc {eps_label}".strip()),
                               (k4, "clean_acc_mean", "Best clean acc")):
        if not ok_lb.empty and ok_lb[metric].notna().any():
            best = ok_lb.loc[ok_lb[metric].idxmax()]
            col.metric(title, _fmt(best[metric], ".1f", 100, "%"), delta=lbd.label_of(best),
                       delta_color="off", delta_arrow="off")
        else:
            col.metric(title, "–", help="no run in view has this number")


def _table_section(lb: pd.DataFrame, lb_all: pd.DataFrame, shown_runs: pd.DataFrame, track: str,
                   eps_label: str) -> pd.DataFrame | None:
    """The table and its downloads; returns the row ticked in the table (a one-row frame), if any."""
    st.subheader("Leaderboard")
    if lb.empty:
        st.info("No configuration matches these filters." if not lb_all.empty else
                "Every run of this track failed: untick **Hide failed runs** to see them.")
        return None
    event = st.dataframe(lbd.display_table(lb), hide_index=True, column_config=_column_config(eps_label), key="table",
                         on_select="rerun", selection_mode="single-row")
    st.caption("One row per method, settings and compression target; mean over seeds (± std in percentage "
               "points). Robust accuracy is AutoAttack's at the track's headline ε. Click a header to sort, "
               "tick a row to pick its runs in the run detail below.")
    export = lbd.export_table(lb)
    parquet = "application/vnd.apache.parquet"
    c1, c2, c3, _ = st.columns([1, 1, 1, 2])
    c1.download_button("Table as CSV", lbd.to_csv_bytes(export), f"leaderboard-{track}.csv", "text/csv",
                       on_click="ignore", key="dl_csv", icon=":material/download:")
    c2.download_button("Table as parquet", lbd.to_parquet_bytes(export), f"leaderboard-{track}.parquet", parquet,
                       on_click="ignore", key="dl_parquet", icon=":material/download:")
    c3.download_button("Runs behind it (parquet)", lbd.to_parquet_bytes(lbd.export_table(shown_runs)),
                       f"runs-{track}.parquet", parquet, on_click="ignore", key="dl_runs", icon=":material/download:")
    rows = list(getattr(getattr(event, "selection", None), "rows", None) or [])
    return lb.iloc[[rows[0]]] if rows and 0 <= rows[0] < len(lb) else None


def _plots(ok_lb: pd.DataFrame, shown_runs: pd.DataFrame, all_methods: list[str], eps_label: str) -> None:
    st.subheader("Trade-offs")
    have_robust = not ok_lb.empty and ok_lb["robust_acc_mean"].notna().any()
    which = "robust" if have_robust else "clean"
    left, right = st.columns(2, gap="large")
    with left:
        st.markdown(f"**{which.capitalize()} accuracy vs compression** · Pareto front dashed")
        chart = _tradeoff_chart(ok_lb, f"{which}_acc", all_methods,
                                f"robust accuracy {eps_label}".strip() if have_robust else "clean accuracy")
        if chart is None:
            st.info("Nothing to plot with these filters.")
        else:
            st.altair_chart(chart, width="stretch")
            if not have_robust:
                st.caption("No run in view was attacked (`--no-attacks`), so clean accuracy is shown.")
    with right:
        st.markdown("**Accuracy vs ε** · one curve per configuration")
        families = lbd.curve_families(shown_runs)
        if not families:
            st.info("No robustness curves in these runs (they were run with `--no-attacks`, or before curves "
                    "were recorded).")
        else:
            family = st.selectbox("Attack", families, key="curve_family", label_visibility="collapsed")
            curves = lbd.mean_curves(lbd.curve_points(shown_runs, family))
            st.altair_chart(_curve_chart(curves, all_methods, family), width="stretch")

    left, right = st.columns(2, gap="large")
    with left:
        st.markdown(f"**cond_max vs {which} accuracy**")
        cf = lbd.cond_frame(ok_lb)
        if cf.empty:
            st.info("No conditioning numbers (cond_max) in these runs.")
        else:
            st.altair_chart(_cond_chart(cf, all_methods), width="stretch")
    with right:
        chart, title = _cost_chart(ok_lb, all_methods) if not ok_lb.empty else (None, "")
        st.markdown(f"**{title[:1].upper() + title[1:] if title else 'Cost'} vs compression**")
        if chart is None:
            st.info("No speed numbers in these runs.")
        else:
            st.altair_chart(chart, width="stretch")


def _run_detail(shown_runs: pd.DataFrame, lb: pd.DataFrame, picked: pd.DataFrame | None) -> None:
    st.subheader("Run detail")
    if picked is not None:
        shown_runs = lbd.runs_of(shown_runs, picked, include_failed=True)
        st.caption(f"Runs of the row ticked in the table ({lbd.label_of(picked.iloc[0])}); untick it to choose "
                   "among all runs in view.")
    if shown_runs.empty:
        st.info("No run in view.")
        return
    order = lbd.order_runs(shown_runs, lb)
    labels = {r["run_id"]: lbd.run_label(r) for _, r in order.iterrows()}
    run_id = st.selectbox("Run", list(labels), format_func=labels.get, key="run")
    r = shown_runs[shown_runs["run_id"] == run_id].iloc[0]

    if r["status"] != "ok":
        st.error(f"This run failed: {r.get('error') or 'no error message recorded'}", icon=":material/error:")
        tb = r.get("traceback")
        if isinstance(tb, str) and tb.strip():
            with st.expander("Traceback"):
                st.code(tb, language="text")

    m = st.columns(6)
    m[0].metric("clean acc", _fmt(r.get("clean_acc"), ".1f", 100, "%"))
    eps = lbd.as_float(r.get("robust_eps"))
    m[1].metric(f"robust acc (ε={_eps_text(eps)})" if not math.isnan(eps) else "robust acc",
                _fmt(r.get("robust_acc"), ".1f", 100, "%"))
    m[2].metric("compression", _fmt(r.get("compression"), ".1f", 100, "%"))
    m[3].metric("cond_max", _fmt(r.get("cond_max"), ".4g"))
    m[4].metric("params", _fmt(r.get("n_params"), ",.0f"))
    m[5].metric("train time", _fmt(r.get("train_seconds"), ".1f", suffix=" s"))

    attacked = bool(lbd.as_list(r.get("aa_curve"))) or not math.isnan(lbd.as_float(r.get("robust_acc")))
    flags = lbd.as_list(r.get("aa_flags"))
    for f in flags:
        st.warning(f"AutoAttack flag: {f}", icon=":material/flag:")
    if not flags:
        if attacked and "aa_flags" in r.index and not lbd.is_missing(r.get("aa_flags")):
            st.success("AutoAttack raised no flags for this run.", icon=":material/check_circle:")
        elif not attacked and r["status"] == "ok":
            st.caption("This run was not attacked (`--no-attacks`), so it has no AutoAttack numbers or flags.")
        else:
            st.caption("No AutoAttack flags recorded for this run.")

    left, right = st.columns(2, gap="large")
    with left:
        st.markdown("**Per-layer condition number κ** (numbers on bars: rank)")
        layers = lbd.layer_frame(r)
        chart = _layer_chart(layers) if not layers.empty else None
        if chart is None:
            st.info("No per-layer numbers recorded for this run.")
        else:
            st.altair_chart(chart, width="stretch")
            st.dataframe(layers.drop(columns="order"), hide_index=True, key="layers",
                         column_config={"kappa": st.column_config.NumberColumn("κ", format="%.4g"),
                                        "spectral_norm": st.column_config.NumberColumn("spectral norm", format="%.4g"),
                                        "rank": st.column_config.NumberColumn("rank", format="%d")})
    with right:
        st.markdown("**Robustness curves of this run**")
        curves = lbd.run_curves(r)
        if curves.empty:
            st.info("No robustness curves recorded for this run.")
        else:
            for norm, chart in _run_curve_charts(curves):
                st.altair_chart(chart, width="stretch")

    c1, c2, c3 = st.columns(3, gap="large")
    with c1:
        st.markdown("**Configuration**")
        cfg = lbd.as_dict(r.get("config_json"))
        if cfg:
            st.json(cfg, expanded=1)
        else:
            st.caption("No configuration recorded.")
    with c2:
        st.markdown("**Provenance**")
        st.json(lbd.provenance(r), expanded=True)
    with c3:
        st.markdown("**Method details**")
        details = lbd.as_dict(r.get("method_details"))
        params = lbd.as_dict(r.get("method_params"))
        st.json({"method_id": r.get("method_id"), "params": params, **details}, expanded=1)


main()
