"""The leaderboard: ``bench leaderboard`` or ``streamlit run leaderboard_app/app.py``.

Reads the parquet rows under ``$BENCH_RESULTS_DIR`` (default ``./results``) and nothing else:
no pickles, no code from results, no torch. The data shaping lives in ``leaderboard_app.data``.
"""

from __future__ import annotations

import hashlib
import math
import shlex
import sys
from pathlib import Path

try:
    from leaderboard_app import data as lbd
except ImportError:  # `streamlit run` from a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from leaderboard_app import data as lbd
from bench import columns
from bench.results import OutdatedResultsError

import altair as alt
import pandas as pd
import streamlit as st

TITLE = "Compressed networks under attack"
CHART_HEIGHT = 330
#: one colour per curve family (ids of lbd.CURVES; their names come from the rows), the same in every panel
CURVE_COLORS = {"aa_linf": "#1b9e77", "aa_l2": "#d95f02", "pgd_linf": "#7570b3", "pgd_l2": "#e7298a",
                "fgsm": "#66a61e"}
#: for curve families a plugin declares
_EXTRA_COLORS = ("#e6ab02", "#a6761d", "#666666", "#1f78b4")


@st.cache_resource(show_spinner=False, max_entries=8)
def _load(results_dir: str, signature: tuple) -> lbd.Loaded:
    # Keyed on the files' names, sizes and mtimes, so a new or rewritten run is picked up on the
    # next interaction. cache_resource hands back the same object (no pickling): treat it as read-only.
    return lbd.load(results_dir)


def _fmt(v, spec: str = ".3f", scale: float = 1.0, suffix: str = "") -> str:
    f = lbd.as_float(v)
    return "–" if math.isnan(f) else f"{f * scale:{spec}}{suffix}"


def _eps_text(eps: float) -> str:
    return lbd.eps_text(eps)


@st.cache_data(show_spinner=False)
def _paper_reference(path: str, mtime_ns: int) -> pd.DataFrame:
    return lbd.load_paper_reference(path)


def _load_paper() -> tuple[pd.DataFrame | None, str | None]:
    """The paper's numbers, or (None, why not)."""
    path = lbd.PAPER_REFERENCE
    try:
        return _paper_reference(str(path), path.stat().st_mtime_ns), None
    except OSError as exc:
        return None, f"{path}: {exc.strerror or exc}"
    except lbd.PaperReferenceError as exc:
        return None, str(exc)


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


def _curve_chart(curves: pd.DataFrame, methods: list[str], family: str,
                 paper: pd.DataFrame | None = None, band: pd.DataFrame | None = None) -> alt.LayerChart:
    """Our mean curves; the headline ε (standard AutoAttack) as a large diamond; the paper's reported
    numbers, when given, as hollow squares in the colour of the matching method, with their own legend entry."""
    norm = lbd.FAMILY_NORM[family]
    x = alt.X("eps:Q", title=f"ε ({norm}, pixels in [0, 1])")
    y = alt.Y("acc:Q", title="accuracy under attack", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%"))
    tooltip = [alt.Tooltip("label:N", title="configuration"), alt.Tooltip("eps:Q", format=".4g"),
               alt.Tooltip("acc:Q", format=".1%"), alt.Tooltip("acc_std:Q", title="± std", format=".1%"),
               alt.Tooltip("seeds:Q"), alt.Tooltip("attack_set:N", title="attacks at this ε")]
    line = alt.Chart(curves).mark_line(point=alt.OverlayMarkDef(size=60), strokeWidth=2.5).encode(
        x=x, y=y, color=_color(methods), detail="label:N", tooltip=tooltip)
    layers = [line]
    if band is not None and not band.empty:  # certified ≤ true ≤ AutoAttack: the truth lies in the band
        layers.insert(0, alt.Chart(band).mark_area(opacity=0.12).encode(
            x=x, y=alt.Y("certified:Q"), y2=alt.Y2("attacked:Q"), color=_color(methods), detail="label:N",
            tooltip=[alt.Tooltip("label:N", title="configuration"), alt.Tooltip("eps:Q", format=".4g"),
                     alt.Tooltip("certified:Q", title="certified", format=".1%"),
                     alt.Tooltip("attacked:Q", title="AutoAttack", format=".1%")]))
    head = curves[curves["headline"].astype(bool)] if "headline" in curves.columns else curves.iloc[0:0]
    if not head.empty:
        head = head.assign(marker=[f"headline ε: {s}" for s in head["attack_set"]])
        layers.append(alt.Chart(head).mark_point(shape="diamond", size=220, filled=True, opacity=1,
                                                 stroke="#111", strokeWidth=1.2).encode(
            x=x, y=y, color=_color(methods),
            shape=alt.Shape("marker:N", title=None, legend=alt.Legend(orient="top", labelLimit=480)), tooltip=tooltip))
    if paper is not None and not paper.empty:
        pts = paper.assign(marker=lbd.PAPER_LABEL)
        layers.append(alt.Chart(pts).mark_point(size=130, filled=False, strokeWidth=2).encode(
            x=x, y=y, color=_color(methods),
            shape=alt.Shape("marker:N", title=None, legend=alt.Legend(orient="top", labelLimit=300),
                            scale=alt.Scale(domain=[lbd.PAPER_LABEL], range=["square"])),
            tooltip=[alt.Tooltip("label:N", title="paper (reported)"), alt.Tooltip("eps:Q", format=".4g"),
                     alt.Tooltip("acc:Q", format=".1%"), alt.Tooltip("source:N")]))
    # Streamlit fits the chart, legends included, to the height: each top legend gets its row added.
    return alt.layer(*layers).resolve_scale(shape="independent").properties(
        height=CHART_HEIGHT + 30 * (len(layers) - 1))


def _cond_chart(cf: pd.DataFrame, methods: list[str]) -> alt.Chart:
    metric = "robust accuracy" if cf["metric"].iloc[0] == "robust_acc" else "clean accuracy"
    return alt.Chart(cf).mark_circle(size=110, opacity=0.9).encode(
        x=alt.X("cond_max:Q", title="cond_max (largest per-layer κ, BatchNorm and input normalisation folded in)",
                scale=alt.Scale(type="log")),
        y=alt.Y("acc:Q", title=metric, scale=alt.Scale(zero=False, padding=12), axis=alt.Axis(format="%")),
        color=_color(methods),
        tooltip=[alt.Tooltip("label:N", title="configuration"), alt.Tooltip("cond_max:Q", format=".4g"),
                 alt.Tooltip("acc:Q", title=metric, format=".1%"), alt.Tooltip("compression:Q", format=".1%")],
    ).properties(height=CHART_HEIGHT)


def _cost_chart(lb: pd.DataFrame, methods: list[str]) -> tuple[alt.Chart | None, str]:
    # Inference latency answers "does the compression make it faster?" (every run measures it)
    col, title, fmt = "latency_ms_per_batch_mean", "inference latency (ms per batch)", ".3g"
    if not lb[col].notna().any():
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
    """κ per layer: bars of the folded κ (BatchNorm and input normalisation folded in), a black tick
    at the κ of the stored weights alone where the row records it, ranks written on the bars."""
    have_kappa = layers["kappa"].notna().any()
    have_rank = layers["rank"].notna().any()
    have_raw = "kappa_raw" in layers.columns and layers["kappa_raw"].notna().any()
    if not (have_kappa or have_rank):
        return None
    tooltip = [alt.Tooltip("layer:N"), alt.Tooltip("kind:N"), alt.Tooltip("shape:N"),
               alt.Tooltip("kappa:Q", title="κ (folded)" if have_raw else "κ", format=".4g"),
               alt.Tooltip("kappa_raw:Q", title="κ raw (stored weights)", format=".4g"),
               alt.Tooltip("folded_text:N", title="folded in"),
               alt.Tooltip("spectral_norm:Q", title="spectral norm", format=".4g"), alt.Tooltip("rank:Q")]
    if "kappa_raw" not in layers.columns:
        layers = layers.assign(kappa_raw=float("nan"))
    folded = layers["folded"] if "folded" in layers.columns else pd.Series([None] * len(layers), index=layers.index)
    layers = layers.assign(
        label=[f"{n} · {k}" if k else n for n, k in zip(layers["layer"], layers["kind"])],
        folded_text=[lbd.folded_text(f) for f in folded])
    x = alt.X("label:N", sort=alt.SortField("order"), title=None, axis=alt.Axis(labelAngle=-30))
    if have_kappa:
        # κ >= 1, and a log axis has no zero: bars grow from 1 (a perfectly conditioned layer).
        y = alt.Y("kappa:Q", title="κ (condition number, log scale)", scale=alt.Scale(type="log", domainMin=1),
                  axis=alt.Axis(format="~g"))
        bars = alt.Chart(layers.dropna(subset=["kappa"])).mark_bar(color="#4c78a8").encode(
            x=x, y=y, y2=alt.datum(1), tooltip=tooltip)
        if have_raw:
            ticks = alt.Chart(layers.dropna(subset=["kappa_raw"]).assign(what="κ raw (stored weights)")).mark_tick(
                thickness=2.5, size=22).encode(
                x=x, y=alt.Y("kappa_raw:Q"),
                color=alt.Color("what:N", title=None, legend=alt.Legend(orient="top"),
                                scale=alt.Scale(domain=["κ raw (stored weights)"], range=["#111"])),
                tooltip=tooltip)
            bars = bars + ticks
        if have_rank:
            labels = alt.Chart(layers.dropna(subset=["kappa", "rank"])).mark_text(dy=-7, fontSize=11, color="#333").encode(
                x=x, y=y, text=alt.Text("rank:Q", format="d"))
            bars = bars + labels
        return bars.properties(height=280)
    return alt.Chart(layers.dropna(subset=["rank"])).mark_bar(color="#4c78a8").encode(
        x=x, y=alt.Y("rank:Q", title="rank"), tooltip=tooltip).properties(height=280)


def _run_curve_charts(curves: pd.DataFrame) -> list[tuple[str, alt.Chart]]:
    # L∞ and L2 budgets live on different ε scales, so each norm gets its own panel. Each family is
    # named from this run's points (lbd.family_label); the headline ε is drawn as a diamond.
    out = []
    for norm, part in curves.groupby("norm", sort=False):
        fams = [f for f in lbd.CURVES if f in set(part["family"])]
        names = [part.loc[part["family"] == f, "attack"].iloc[0] for f in fams]
        color = alt.Color("attack:N", title=None,
                          legend=alt.Legend(orient="bottom", direction="vertical", labelLimit=520),
                          scale=alt.Scale(domain=names, range=[CURVE_COLORS.get(f, _EXTRA_COLORS[i % len(_EXTRA_COLORS)])
                                                               for i, f in enumerate(fams)]))
        x = alt.X("eps:Q", title=f"ε ({norm})")
        y = alt.Y("acc:Q", title="accuracy", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%"))
        tooltip = ["attack:N", alt.Tooltip("eps:Q", format=".4g"), alt.Tooltip("acc:Q", format=".1%"),
                   alt.Tooltip("attack_set:N", title="attacks at this ε"), "version:N", "attacks:N", "n:Q"]
        chart = alt.Chart(part).mark_line(point=True, strokeWidth=2).encode(x=x, y=y, color=color, tooltip=tooltip)
        band = lbd.bracket_band(part)
        if not band.empty:  # certified ≤ true ≤ AutoAttack: the truth lies in the shaded band
            chart = alt.Chart(band).mark_area(opacity=0.15, color="#555").encode(
                x=x, y=alt.Y("certified:Q"), y2=alt.Y2("attacked:Q"),
                tooltip=[alt.Tooltip("eps:Q", format=".4g"), alt.Tooltip("certified:Q", format=".1%"),
                         alt.Tooltip("attacked:Q", title="AutoAttack", format=".1%")]) + chart
        head = part[part["headline"].astype(bool)]
        if not head.empty:
            head = head.assign(marker="headline ε (the table's robust accuracy)")
            chart = chart + alt.Chart(head).mark_point(shape="diamond", size=200, filled=True, opacity=1,
                                                       stroke="#111", strokeWidth=1).encode(
                x=x, y=y, color=color,
                shape=alt.Shape("marker:N", title=None, legend=alt.Legend(orient="bottom", labelLimit=520)),
                tooltip=tooltip)
        # The height includes the legends (Streamlit fits the chart to it): one row per family and marker.
        out.append((norm, chart.properties(height=190 + 22 * (len(names) + (0 if head.empty else 1)))))
    return out


#: printf formats for the declared display formats (bench.columns.Column.fmt)
_NUMBER_FORMATS = {",.0f": "compact", ".3g": "%.3g", ".1f": "%.1f", ".3f": "%.3f", ".4g": "%.4g"}


def _column_config(eps_label: str, headline: str) -> dict:
    """Streamlit column settings for :func:`lbd.display_table`, from the declared columns (bench.columns)."""
    cc = st.column_config
    pct = dict(min_value=0.0, max_value=100.0, format="%.1f%%")
    ci = ("95% Wilson interval, percent, over the test points (every seed attacks the same points, so "
          "the interval uses one seed's worth: the per-seed average of successes and of points)")
    out = {
        "rank": cc.NumberColumn("rank", format="%d", width=50, help="by robust accuracy, then clean accuracy"),
        "method": cc.TextColumn("method", width=130),
        "settings": cc.TextColumn("settings", width=100, help="method parameters"),
    }
    for c in columns.on_board():
        help_ = c.help or c.description
        if c.points:
            title = c.title
            if c.name == "robust_acc":  # the headline: its ε and attack come from the rows
                title = f"{c.title} {eps_label}".strip()
                help_ = f"{headline or 'AutoAttack at the track headline ε'}; mean over seeds"
            out[c.title] = cc.ProgressColumn(title, width=120, help=help_, **pct)
            out[f"± {c.stem}"] = cc.TextColumn("±", width=58, help=f"std of {c.title} over seeds, percentage points")
            out[f"{c.stem} 95% CI"] = cc.TextColumn(f"{c.stem} CI", width=105,
                                                   help=f"{c.title}: {ci}, n = {c.points_label or c.points} points")
            if c.board_points:
                name = c.points_label or c.points
                out[name] = cc.NumberColumn(name, format="%d", width=75,
                                            help=f"points per seed behind {c.title}, the same points for every seed")
        elif c.agg == "verdict":
            out[c.title] = cc.TextColumn(c.title, width=120, help=help_)
        elif c.unit == "fraction":
            out[c.title] = cc.NumberColumn(c.title, format="%.1f%%", width=95, help=help_)
        else:
            out[c.title] = cc.NumberColumn(c.title, format=_NUMBER_FORMATS.get(c.fmt), width=80, help=help_)
    out["seeds"] = cc.NumberColumn("seeds", format="%d", width=60)
    out["failed"] = cc.NumberColumn("failed", format="%d", width=60, help="failed runs of this configuration")
    return out


def _sidebar(loaded: lbd.Loaded):
    runs = loaded.runs
    st.sidebar.header("Filters")
    counts = runs["track"].value_counts()
    tracks = list(counts.index)
    track = st.sidebar.selectbox("Track", tracks, format_func=lambda t: f"{t} ({counts[t]} runs)", key="track")
    in_track = runs[runs["track"] == track]
    # Adversarially trained rows are never ranked against clean-trained ones: one objective at a time.
    n_of = in_track["objective"].value_counts()
    objectives = sorted(n_of.index, key=lambda o: (o != "standard", o))
    objective = st.sidebar.selectbox(
        "Training objective", objectives, key=f"objective::{track}", format_func=lambda o: f"{o} ({n_of[o]} runs)",
        help="standard: clean cross-entropy; pgd_at, fgsm_rs, trades: adversarial training (docs/objectives.md). "
             "Rows of different objectives are never ranked together.")
    in_track = in_track[in_track["objective"] == objective]
    _track_caption(in_track)
    all_methods = sorted(in_track["method"].dropna().unique().tolist())
    methods = st.sidebar.multiselect("Methods", all_methods, default=all_methods, key=f"methods::{track}::{objective}")
    lo, hi = st.sidebar.slider("Compression (fraction removed)", 0.0, 1.0, (0.0, 1.0), step=0.05, key="compression")
    hide_failed = st.sidebar.checkbox("Hide failed runs", value=True, key="hide_failed")
    sort_by = st.sidebar.selectbox("Sort by", list(lbd.sorts()), key="sort_by")
    show_paper = st.sidebar.checkbox(
        "Show the paper's reported numbers", value=True, key="show_paper",
        help="The published numbers (leaderboard_app/paper_reference.csv) for this track's dataset and "
             "architecture, drawn beside ours and labelled 'paper (reported)'; they are never ranked.")
    st.sidebar.caption(f"Results: `{loaded.results_dir}`")
    return (track, objective), all_methods, methods, (lo, hi), hide_failed, sort_by, show_paper


def _track_caption(in_track: pd.DataFrame) -> None:
    """What the track is and what it changes against the paper, as its rows recorded it."""
    info = lbd.track_info(in_track)
    lines = []
    if info["description"]:
        lines.append(info["description"])
    if info["reference"]:
        lines.append(f"Reproduces: {info['reference']}")
    if info["differs"]:
        lines.append(f"**Differs:** {info['differs']}")
    elif info["differs"] is not None:
        lines.append("**Differs:** nothing (the reference setting exactly)")
    if info["variants"] > 1:
        lines.append(f"The runs carry {info['variants']} different descriptions (the track changed between runs); "
                     "the most common is shown.")
    st.sidebar.caption("  \n".join(lines))


def main() -> None:
    st.set_page_config(page_title="Robust compression leaderboard", page_icon=":material/shield:", layout="wide")
    # Wide tables want the room Streamlit's default side padding takes.
    st.html("<style>[data-testid='stMainBlockContainer']{padding-left:2.5rem;padding-right:2.5rem;"
            "padding-top:2.5rem}</style>")
    results_dir = str(lbd.results_dir_from_env())
    try:
        loaded = _load(results_dir, lbd.signature(results_dir))
    except OutdatedResultsError as exc:
        st.title(TITLE)
        st.error(str(exc), icon=":material/error:")
        return
    if loaded.empty:
        _empty_page(loaded)
        return

    (track, objective), all_methods, methods, comp_range, hide_failed, sort_by, show_paper = _sidebar(loaded)
    show_paper = show_paper and objective == "standard"  # the paper's models were trained on clean data
    in_track = loaded.runs[(loaded.runs["track"] == track) & (loaded.runs["objective"] == objective)]
    lb_all = lbd.leaderboard(in_track, include_failed=not hide_failed)
    lb = lbd.sort_table(lbd.filter_table(lb_all, methods=methods, compression=comp_range), sort_by)
    shown_runs = lbd.runs_of(in_track, lb, include_failed=not hide_failed)
    ok_lb = lb[lb["runs"] > 0] if not lb.empty else lb
    eps = lbd.as_float(in_track["robust_eps"].dropna().iloc[0]) if in_track["robust_eps"].notna().any() \
        else float("nan")
    eps_label = "" if math.isnan(eps) else f"(ε={_eps_text(eps)})"
    headline = lbd.headline_text(in_track[in_track["status"] == "ok"])
    n_failed = int((in_track["status"] != "ok").sum())
    paper = None
    if show_paper:
        ref, why = _load_paper()
        if ref is None:
            st.error(f"The paper's reference numbers could not be loaded: {why}", icon=":material/error:")
        else:
            paper = lbd.paper_rows(ref, in_track)

    st.title(TITLE)
    _skipped_warnings(loaded)
    st.caption(f"Track **{track}** · objective **{objective}** · {len(lb)} of {len(lb_all)} configurations · "
               f"{len(shown_runs)} runs shown"
               + (f" · {n_failed} failed run(s) hidden" if hide_failed and n_failed else ""))
    _headline(lb, ok_lb, shown_runs, eps_label)
    picked = _table_section(lb, lb_all, shown_runs, track, eps_label, headline)
    _compare_section(ok_lb, in_track)
    if show_paper and paper is not None:
        _paper_section(paper, shown_runs, in_track)
    _plots(ok_lb, shown_runs, all_methods, eps_label, paper)
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
                   eps_label: str, headline: str) -> pd.DataFrame | None:
    """The table and its downloads; returns the row ticked in the table (a one-row frame), if any."""
    st.subheader("Leaderboard")
    if lb.empty:
        st.info("No configuration matches these filters." if not lb_all.empty else
                "Every run of this track failed: untick **Hide failed runs** to see them.")
        return None
    event = st.dataframe(lbd.display_table(lb), hide_index=True, column_config=_column_config(eps_label, headline),
                         key="table", on_select="rerun", selection_mode="single-row")
    robust = f"Robust accuracy: {headline}." if headline else "No run in view has a robust accuracy."
    st.caption("One row per method, settings and compression target. Accuracies: mean over seeds, ± the std "
               "over seeds (percentage points), and a 95% Wilson interval over the "
               f"test points, which every seed shares (test points for clean, attacked points for robust). {robust} cond_max is with BatchNorm and "
               "input normalisation folded in; cond_max raw of the stored weights. Click a header to sort, tick a "
               "row to pick its runs in the run detail below.")
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


def _compare_section(ok_lb: pd.DataFrame, in_track: pd.DataFrame) -> None:
    """Two configurations of the table compared pairwise (bench.compare, as `bench compare` prints it)."""
    if len(ok_lb) < 2:
        return
    st.subheader("Compare two configurations")
    labels = {i: lbd.label_of(r) for i, r in ok_lb.iterrows()}
    c1, c2 = st.columns(2)
    ia = c1.selectbox("A", list(labels), format_func=labels.get, key="compare_a")
    rest = [i for i in labels if i != ia]
    ib = c2.selectbox("B", rest, format_func=labels.get, key="compare_b")
    try:
        text = lbd.comparison(in_track, ok_lb.loc[ia], ok_lb.loc[ib]).text()
    except ValueError as exc:
        st.warning(f"These two do not compare: {exc}", icon=":material/warning:")
        return
    st.code(text, language=None)
    st.caption("Paired by seed and, where the rows keep per-point outcomes, by attacked point: McNemar's exact "
               "test per seed and a bootstrap over points and seeds; rows without outcomes get a test over seeds, "
               "and say so. The same as `bench compare A B --track T`.")


def _paper_section(paper: pd.DataFrame, shown_runs: pd.DataFrame, in_track: pd.DataFrame) -> None:
    """The paper's published numbers beside ours: a separate table, never part of the ranking."""
    if paper.empty:
        st.caption("The paper reports no numbers for this track's dataset and architecture "
                   "(`leaderboard_app/paper_reference.csv`).")
        return
    st.subheader("Paper (reported) beside ours")
    both = lbd.paper_beside_ours(paper, shown_runs)
    cc = st.column_config
    pct = "%.2f%%"
    shown = both.assign(**{lbd.PAPER_LABEL: both[lbd.PAPER_LABEL] * 100, "ours": both["ours"] * 100,
                           "ours_std": both["ours_std"] * 100})
    st.dataframe(shown, hide_index=True, key="paper_table", column_config={
        "paper setting": cc.TextColumn("paper setting", width=260,
                                       help="the paper's method, its parameters and compression ratio"),
        "eps": cc.NumberColumn("ε", format="%.4g", width=60),
        lbd.PAPER_LABEL: cc.NumberColumn(lbd.PAPER_LABEL, format=pct, width=115,
                                         help="as published (RobustDLRT, arXiv 2505.08022, tables 4 and 7, quoting the CondLR paper); not produced by this benchmark"),
        "our configuration": cc.TextColumn("our configuration", width=170,
                                           help="our runs in view of the matching method; empty: none"),
        "ours": cc.NumberColumn("ours", format=pct, width=80, help="our mean over seeds at the same attack and ε"),
        "ours_std": cc.NumberColumn("± ours", format="%.2f", width=65, help="std over seeds, percentage points"),
        "seeds": cc.NumberColumn("seeds", format="%d", width=55),
        "source": cc.TextColumn("source", width=200), "note": cc.TextColumn("note", width=260),
    })
    differs = lbd.track_info(in_track)["differs"]
    st.caption("The paper's numbers are shown for reference only and are never ranked. They are FGSM and L2-PGD "
               "(not AutoAttack), and its compression ratio c.r. is the fraction of *rank* removed per layer, ours "
               "the fraction of *parameters* removed, so equal percentages are not the same compression."
               + (f" This track differs from the paper's setting: {differs}." if differs else ""))


def _plots(ok_lb: pd.DataFrame, shown_runs: pd.DataFrame, all_methods: list[str], eps_label: str,
           paper: pd.DataFrame | None = None) -> None:
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
            names = {f: lbd.curve_label(shown_runs, f) for f in families}
            # The names come from the runs in view. A keyed selectbox keeps showing the name it was
            # created with, so the key follows the names (a new widget when they change) and the
            # choice is carried over by hand.
            prev = st.session_state.get("_curve_family")
            key = "curve_family::" + hashlib.sha1(repr(sorted(names.items())).encode()).hexdigest()[:12]
            family = st.selectbox("Attack", families, key=key, label_visibility="collapsed", format_func=names.get,
                                  index=families.index(prev) if prev in families else 0)
            st.session_state["_curve_family"] = family
            points = lbd.curve_points(shown_runs, family)
            curves = lbd.mean_curves(points)
            ref = lbd.paper_curve_points(paper, family) if paper is not None else None
            if ref is not None:
                ref = ref[ref["method"].isin(all_methods)]
            band = lbd.config_bracket_band(shown_runs, family)
            st.altair_chart(_curve_chart(curves, all_methods, family, ref, band), width="stretch")
            notes = []
            if not band.empty:
                notes.append("Shaded: from the certified accuracy (a lower bound) up to AutoAttack's (an upper "
                             "bound); the true robust accuracy lies in between.")
            if family in ("aa_linf", "aa_l2"):
                at_eps = {s: sorted(set(part["eps"])) for s, part in points.groupby("attack_set", sort=False)}
                notes.append("Attacks: " + "; ".join(f"{s} at ε={', '.join(lbd.eps_text(e) for e in eps)}"
                                                     for s, eps in at_eps.items())
                             + ". Diamonds: the headline ε (the table's robust accuracy).")
            if ref is not None and not ref.empty:
                notes.append("Hollow squares: the paper's reported numbers (not ours; never ranked).")
            if notes:
                st.caption(" ".join(notes))

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


def _run_ci(r, metric: str, n_col: str) -> str:
    """A run's 95% Wilson interval as '[lo, hi]' percent (:func:`bench.summary.run_interval`)."""
    from bench.summary import run_interval

    return lbd.ci_text(*run_interval(r.get(metric), r.get(f"{metric}_ci_low"), r.get(f"{metric}_ci_high"),
                                     r.get(n_col)))


def _trust_detail(r) -> None:
    """The run's trust verdict with its reasons, and its transfer attack from the dense parent."""
    trust = r.get("trust")
    checks = ", ".join(str(c) for c in lbd.as_list(r.get("trust_checks")))
    if lbd.is_missing(trust) or not trust:
        st.caption(f"Trust: {lbd.NOT_EVALUATED} (a row from before the trust checks, or not attacked; "
                   "`bench eval RUN_ID` adds them).")
    elif str(trust).startswith("ok"):
        st.success(f"Trust: ok. Every check passed ({checks}).", icon=":material/check_circle:")
    else:
        reasons = str(trust).removeprefix("suspect: ").split("; ")
        st.error("Trust: ⚠ suspect. The white-box evaluation may have failed:\n"
                 + "\n".join(f"- {x}" for x in reasons) + (f"\n\nChecks applied: {checks}." if checks else ""),
                 icon=":material/warning:")
    t = lbd.as_float(r.get("transfer_acc"))
    note = r.get("transfer_note")
    if not math.isnan(t):
        st.caption(f"Transfer attack: {t:.1%} accuracy on APGD-CE examples crafted on the dense run "
                   f"`{r.get('transfer_source_run_id')}` at L∞ ε={_eps_text(lbd.as_float(r.get('transfer_eps')))} "
                   f"(AutoAttack here: {_fmt(r.get('robust_acc'), '.1f', 100, '%')}).")
    else:
        why = note if isinstance(note, str) and note else "a row from before the transfer attack"
        st.caption(f"Transfer attack: {lbd.NOT_EVALUATED} ({why}).")


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

    m = st.columns(7)
    clean_ci = _run_ci(r, "clean_acc", "n_test")
    m[0].metric("clean acc", _fmt(r.get("clean_acc"), ".1f", 100, "%"),
                delta=f"95% CI {clean_ci}" if clean_ci else None, delta_color="off", delta_arrow="off",
                help=f"on {_fmt(r.get('n_test'), ',.0f')} test points; 95% Wilson interval")
    eps = lbd.as_float(r.get("robust_eps"))
    robust_ci = _run_ci(r, "robust_acc", "aa_n")
    what = lbd.headline_text(pd.DataFrame([r]))
    m[1].metric(f"robust acc (ε={_eps_text(eps)})" if not math.isnan(eps) else "robust acc",
                _fmt(r.get("robust_acc"), ".1f", 100, "%"),
                delta=f"95% CI {robust_ci}" if robust_ci else None, delta_color="off", delta_arrow="off",
                help=(f"{what}, " if what else "") + f"on {_fmt(r.get('aa_n'), ',.0f')} attacked points; "
                     "95% Wilson interval")
    m[2].metric("compression", _fmt(r.get("compression"), ".1f", 100, "%"))
    m[3].metric("cond_max (folded)", _fmt(r.get("cond_max"), ".4g"),
                help="largest per-layer κ with BatchNorm and input normalisation folded in")
    m[4].metric("cond_max raw", _fmt(r.get("cond_max_raw"), ".4g"),
                help="largest per-layer κ of the stored weights alone; '–' for rows from before it was recorded")
    m[5].metric("params", _fmt(r.get("n_params"), ",.0f"))
    m[6].metric("train time", _fmt(r.get("train_seconds"), ".1f", suffix=" s"))

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

    _trust_detail(r)

    left, right = st.columns(2, gap="large")
    with left:
        st.markdown("**Per-layer condition number κ** (bars: folded κ; ticks: raw κ; numbers on bars: rank)")
        layers = lbd.layer_frame(r)
        chart = _layer_chart(layers) if not layers.empty else None
        if chart is None:
            st.info("No per-layer numbers recorded for this run.")
        else:
            st.altair_chart(chart, width="stretch")
            cc = st.column_config
            shown = layers.drop(columns="order").assign(folded=[lbd.folded_text(f) for f in layers["folded"]])
            st.dataframe(shown, hide_index=True, key="layers",
                         column_config={"kappa": cc.NumberColumn("κ", format="%.4g",
                                                                 help="of the folded map (see 'folded in')"),
                                        "kappa_raw": cc.NumberColumn("κ raw", format="%.4g",
                                                                     help="of the stored weights alone"),
                                        "folded": cc.TextColumn("folded in", help="what was folded into the "
                                                                "layer's map before κ was taken"),
                                        "spectral_norm": cc.NumberColumn("spectral norm", format="%.4g"),
                                        "spectral_norm_raw": cc.NumberColumn("spectral norm raw", format="%.4g"),
                                        "rank": cc.NumberColumn("rank", format="%d")})
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
