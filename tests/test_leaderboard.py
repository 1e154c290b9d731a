"""The leaderboard: its data shaping on real result rows, and the Streamlit app under AppTest.

The rows come from tiny real runs (`bench run ... --epochs 1 --no-attacks`), made once per
session; a few hand-made rows (derived from a real one) cover what tiny runs cannot: another
track, a failed run, full attack curves and flags, null curves.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.results import new_run_id, read_results, write_row

APP = Path(__file__).resolve().parent.parent / "leaderboard_app" / "app.py"
@pytest.fixture(scope="session")
def real_methods(real_runs) -> list[str]:
    return sorted(read_results(real_runs)["method"].unique())


def _handmade(real_runs: Path, **changes) -> dict:
    """A row derived from a real one: every real column, with ``changes`` applied."""
    from leaderboard_app.data import is_missing, plain

    df = read_results(real_runs)
    row = df[df["method"] == "dense"].iloc[0].to_dict()
    row.pop("source_file", None)
    row = {k: (None if not isinstance(v, np.ndarray) and is_missing(v) else plain(v)) for k, v in row.items()}
    row.update(run_id=new_run_id(), **changes)
    return row


def _curves(acc0: float) -> dict:
    return {
        "robust_acc": acc0 - 0.3, "robust_eps": 0.1, "aa_headline_version": "standard", "aa_n": 16,
        "aa_curve": [{"norm": "Linf", "eps": e, "acc": max(0.0, acc0 - 3 * e), "version": v,
                      "attacks": a, "n": 16, "n_attacked": 8, "seconds": 1.0}
                     for e, v, a in ((0.05, "custom", "apgd-ce,apgd-t"),
                                     (0.1, "standard", "apgd-ce,apgd-t,fab-t,square"),
                                     (0.2, "custom", "apgd-ce,apgd-t"))],
        "aa_flags": ["Linf eps=0.1 standard: robust accuracy above the clean accuracy on 1 point"],
        "fgsm_curve": [{"eps": e, "acc": max(0.0, acc0 - 2 * e)} for e in (0.0, 0.05, 0.1)],
        "pgd_linf_curve": [{"eps": e, "acc": max(0.0, acc0 - 4 * e)} for e in (0.05, 0.1, 0.2)],
        "pgd_l2_curve": [{"eps": e, "acc": max(0.0, acc0 - e / 2)} for e in (0.25, 0.5, 1.0)],
    }


@pytest.fixture(scope="session")
def mixed_runs(real_runs, tmp_path_factory) -> dict:
    """The real runs plus hand-made rows: a pruned network at 0.9 with full curves and flags,
    the same method in another track, a failed run, and a row with null curves."""
    d = tmp_path_factory.mktemp("leaderboard-mixed")
    for p in real_runs.glob("*.parquet"):
        shutil.copy(p, d)
    ids = {}
    row = _handmade(real_runs, method="handmade_prune", method_id="handmade_prune[amount=0.9]",
                    method_params=json.dumps({"amount": 0.9}), compression_target=0.9, compression=0.9,
                    n_params=15000, method_details=json.dumps({"sparsity": {"conv1": 0.9}}), **_curves(0.9))
    ids["full"] = row["run_id"]
    write_row(row, d)
    row = _handmade(real_runs, track="mnist-lenet5", dataset="mnist", method="handmade_prune",
                    method_id="handmade_prune[amount=0.9]", method_params=json.dumps({"amount": 0.9}),
                    compression_target=0.9, compression=0.9)
    ids["other_track"] = row["run_id"]
    write_row(row, d)
    row = _handmade(real_runs, method="handmade_broken", method_id="handmade_broken", status="failed",
                    error="RuntimeError: the loss went NaN", traceback="Traceback (most recent call last):\n"
                    "RuntimeError: the loss went NaN", compression_target=0.5, compression=None,
                    clean_acc=None, layer_names=None, layer_kappa=None)
    ids["failed"] = row["run_id"]
    write_row(row, d)
    row = _handmade(real_runs, method="handmade_nulls", method_id="handmade_nulls", compression_target=0.3,
                    compression=0.3, aa_curve=None, fgsm_curve=None, layer_names=None, layer_kappa=None,
                    layer_ranks=None, layer_spectral_norm=None, cond_max=None, config_json=None,
                    method_details=None, aa_flags=None)
    ids["nulls"] = row["run_id"]
    write_row(row, d)
    return {"dir": d, "ids": ids}


def _app(results_dir: Path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("BENCH_RESULTS_DIR", str(results_dir))
    at = AppTest.from_file(str(APP), default_timeout=120)
    return at.run()


def _no_exception(at) -> None:
    assert not at.exception, [e.value for e in at.exception]


def _table(at) -> pd.DataFrame:
    return at.dataframe[0].value


def _curve_select(at):
    """The ε-curve family picker (its key follows the family names, so it is found by its label)."""
    return next(s for s in at.selectbox if s.label == "Attack")


# ---------------------------------------------------------------- data shaping


def test_parquet_lists_come_back_plain(real_runs):
    from leaderboard_app import data as lbd

    df = read_results(real_runs)
    ok = df[df["status"] == "ok"].iloc[0]
    names = lbd.as_list(ok.get("layer_names"))
    assert all(isinstance(n, str) for n in names)
    assert lbd.as_list(None) == [] and lbd.as_list(float("nan")) == [] and lbd.as_list("not json") == []
    arr = np.array([{"eps": np.float64(0.1), "acc": np.float64(0.5), "attacks": np.array(["a", "b"])}], dtype=object)
    assert lbd.as_list(arr) == [{"eps": 0.1, "acc": 0.5, "attacks": ["a", "b"]}]
    assert lbd.as_dict('{"a": 1}') == {"a": 1} and lbd.as_dict(None) == {} and lbd.as_dict("x") == {"text": "x"}


def test_leaderboard_aggregates_real_runs_over_seeds(real_runs, real_methods):
    from leaderboard_app import data as lbd

    lb = lbd.leaderboard(read_results(real_runs))
    assert sorted(lb["method"]) == real_methods
    dense = lb[lb["method"] == "dense"].iloc[0]
    assert dense["seeds"] == 2 and dense["runs"] == 2
    assert 0 < dense["clean_acc_mean"] <= 1 and not np.isnan(dense["clean_acc_std"])
    assert sorted(lb["rank"].dropna().astype(int)) == list(range(1, len(lb) + 1))
    shown = lbd.display_table(lb)
    for col in ("rank", "method", "compression", "clean acc", "robust acc", "cond_max", "params", "FLOPs",
                "train s", "images/s", "seeds"):
        assert col in shown.columns
    assert shown.loc[shown["method"] == "dense", "± clean"].iloc[0].startswith("± ")


def test_aggregate_counts_failed_runs(mixed_runs):
    from bench.summary import aggregate

    df = read_results(mixed_runs["dir"])
    assert "handmade_broken" not in set(aggregate(df)["method"])
    with_failed = aggregate(df, include_failed=True)
    broken = with_failed[with_failed["method"] == "handmade_broken"].iloc[0]
    assert broken["failed"] == 1 and broken["runs"] == 0 and np.isnan(broken["clean_acc_mean"])


def test_pareto_front():
    from leaderboard_app.data import pareto_mask

    x = [0.0, 0.5, 0.5, 0.8, 0.3, float("nan")]
    y = [0.9, 0.7, 0.6, 0.2, 0.5, 1.0]
    assert pareto_mask(x, y).tolist() == [True, True, False, True, False, False]


def test_compression_filter_uses_the_shown_precision():
    from leaderboard_app.data import filter_table

    lb = pd.DataFrame({"track": ["t"] * 3, "method": ["a", "b", "c"], "compression_mean": [0.4997, 0.494, None]})
    assert list(filter_table(lb, compression=(0.5, 1.0))["method"]) == ["a", "c"]
    assert list(filter_table(lb, methods=["b"], compression=(0.0, 0.5))["method"]) == ["b"]


def test_curves_are_read_from_rows(mixed_runs):
    from leaderboard_app import data as lbd

    runs = read_results(mixed_runs["dir"])
    assert lbd.curve_families(runs) == ["aa_linf", "pgd_linf", "pgd_l2", "fgsm"]
    pts = lbd.curve_points(runs, "aa_linf")
    assert sorted(pts["eps"]) == [0.05, 0.1, 0.2] and set(pts["run_id"]) == {mixed_runs["ids"]["full"]}
    assert pts["attacks"].str.contains("apgd-ce").all()
    mean = lbd.mean_curves(pts)
    assert list(mean.columns[:4]) == ["label", "method", "eps", "acc"]
    assert mean.loc[mean["headline"], "eps"].tolist() == [0.1]
    one = runs[runs["run_id"] == mixed_runs["ids"]["full"]].iloc[0]
    rc = lbd.run_curves(one)
    assert set(rc["norm"]) == {"L∞", "L2"}
    assert set(rc.loc[rc["family"] == "aa_linf", "attack"]) == {"APGD-CE + APGD-T L∞ (standard AutoAttack at ε=0.1)"}


def test_downloads_round_trip(mixed_runs):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from leaderboard_app import data as lbd

    runs = read_results(mixed_runs["dir"])
    lb = lbd.filter_table(lbd.leaderboard(runs), track="digits-cnn")
    export = lbd.export_table(lb)
    back = pq.read_table(pa.BufferReader(lbd.to_parquet_bytes(export))).to_pandas()
    assert len(back) == len(lb) and set(back["method"]) == set(lb["method"])
    csv = lbd.to_csv_bytes(export).decode()
    assert csv.splitlines()[0].startswith("rank,track,method") and "handmade_prune" in csv
    raw = pq.read_table(pa.BufferReader(lbd.to_parquet_bytes(lbd.export_table(lbd.runs_of(runs, lb)))))
    assert raw.num_rows == int(lb["runs"].sum())


def test_bench_show_still_works(mixed_runs, capsys):
    from bench.cli import main

    assert main(["show", "--results-dir", str(mixed_runs["dir"])]) == 0
    out = capsys.readouterr().out
    assert "dense" in out and "handmade_prune" in out and "failed run" in out


# ---------------------------------------------------------------- the app


def test_app_shows_real_runs_and_names_the_corrupt_file(real_runs, real_methods, tmp_path, monkeypatch):
    d = tmp_path / "results"
    shutil.copytree(real_runs, d)
    (d / "zz-corrupt.parquet").write_bytes(b"PAR1 this is not parquet")
    at = _app(d, monkeypatch)
    _no_exception(at)
    assert any("zz-corrupt.parquet" in w.value for w in at.warning)
    table = _table(at)
    assert set(table["method"]) == set(real_methods)
    assert table.loc[table["method"] == "dense", "seeds"].iloc[0] == 2
    assert at.get("vega_lite_chart"), "no chart rendered"
    labels = [b.proto.label for b in at.get("download_button")]
    assert any("CSV" in x for x in labels) and any("parquet" in x for x in labels)


def test_filters_change_the_rows(mixed_runs, monkeypatch):
    at = _app(mixed_runs["dir"], monkeypatch)
    _no_exception(at)
    methods = set(_table(at)["method"])
    assert {"dense", "handmade_prune", "handmade_nulls"} <= methods and "handmade_broken" not in methods

    at.multiselect(key="methods::digits-cnn::standard").unselect("dense").run()
    _no_exception(at)
    assert "dense" not in set(_table(at)["method"])
    at.multiselect(key="methods::digits-cnn::standard").select("dense").run()

    at.slider(key="compression").set_value((0.6, 1.0)).run()
    _no_exception(at)
    assert set(_table(at)["method"]) == {"handmade_prune"}
    at.slider(key="compression").set_value((0.0, 1.0)).run()

    at.checkbox(key="hide_failed").uncheck().run()
    _no_exception(at)
    table = _table(at)
    assert "handmade_broken" in set(table["method"])
    assert table.loc[table["method"] == "handmade_broken", "failed"].iloc[0] == 1
    at.checkbox(key="hide_failed").check().run()

    at.selectbox(key="sort_by").set_value("compression").run()
    _no_exception(at)
    assert _table(at)["method"].iloc[0] == "handmade_prune"

    at.selectbox(key="track").set_value("mnist-lenet5").run()
    _no_exception(at)
    assert list(_table(at)["method"]) == ["handmade_prune"]


def test_detail_view_renders_a_full_run(mixed_runs, monkeypatch):
    at = _app(mixed_runs["dir"], monkeypatch)
    at.selectbox(key="run").set_value(mixed_runs["ids"]["full"]).run()
    _no_exception(at)
    assert any("AutoAttack flag" in w.value for w in at.warning)
    assert _curve_select(at).options[0] == "APGD-CE + APGD-T L∞ (standard AutoAttack at ε=0.1)"
    jsons = [json.loads(j.proto.body) for j in at.json]
    assert any("git_commit" in j for j in jsons), "provenance not shown"
    assert any(j.get("method_id") == "handmade_prune[amount=0.9]" and "sparsity" in j for j in jsons)
    assert any("run" in j and "track" in j for j in jsons), "resolved config not shown"
    layers = at.dataframe[1].value
    assert len(layers) > 0 and layers["kappa"].notna().all() and layers["rank"].notna().all()
    assert len(at.get("vega_lite_chart")) >= 6  # 4 trade-off plots + κ + at least one curve panel


def test_detail_view_of_null_and_failed_runs(mixed_runs, monkeypatch):
    at = _app(mixed_runs["dir"], monkeypatch)
    at.selectbox(key="run").set_value(mixed_runs["ids"]["nulls"]).run()
    _no_exception(at)
    assert any("No robustness curves" in i.value for i in at.info)
    at.checkbox(key="hide_failed").uncheck().run()
    at.selectbox(key="run").set_value(mixed_runs["ids"]["failed"]).run()
    _no_exception(at)
    assert any("loss went NaN" in e.value for e in at.error)


@pytest.mark.parametrize("case", ["empty", "missing", "only_corrupt"])
def test_app_without_results_shows_how_to_make_some(case, tmp_path, monkeypatch):
    d = tmp_path / "results"
    if case != "missing":
        d.mkdir()
    if case == "only_corrupt":
        (d / "broken.parquet").write_bytes(b"\x00" * 64)
    at = _app(d, monkeypatch)
    _no_exception(at)
    assert any(f"bench run --method dense --results-dir {d}" in c.value for c in at.code)
    assert not at.dataframe
    if case == "only_corrupt":
        assert any("broken.parquet" in w.value for w in at.warning)


def test_app_names_the_converter_for_files_of_an_older_schema(real_runs, tmp_path, monkeypatch):
    """A file written before the current schema (no config_id/objective columns) stops the page with one
    error that says how to convert it, instead of a board that silently misreads it."""
    import pyarrow.parquet as pq

    src = sorted(real_runs.glob("*.parquet"))[0]
    pq.write_table(pq.read_table(src).drop(["config_id", "objective", "objective_params"]), tmp_path / src.name)
    at = _app(tmp_path, monkeypatch)
    _no_exception(at)
    assert not at.dataframe
    assert any("scripts/migrate_results.py" in e.value and src.name in e.value for e in at.error)


def test_app_does_not_import_torch(mixed_runs):
    code = (
        "import os, sys\n"
        "from streamlit.testing.v1 import AppTest\n"
        f"os.environ['BENCH_RESULTS_DIR'] = {str(mixed_runs['dir'])!r}\n"
        f"at = AppTest.from_file({str(APP)!r}, default_timeout=120).run()\n"
        "assert not at.exception, [e.value for e in at.exception]\n"
        "assert len(at.dataframe[0].value) > 0\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_leaderboard_command_refuses_a_busy_port(tmp_path, monkeypatch, capsys):
    from bench import cli, commands

    def no_exec(*a, **k):  # never replace the test process with a server
        raise AssertionError("cmd_leaderboard tried to start the server on a busy port")

    monkeypatch.setattr(commands.os, "execve", no_exec)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert cli.main(["leaderboard", "--results-dir", str(tmp_path), "--port", str(port)]) == 2
    assert "--port" in capsys.readouterr().err


def test_app_tolerates_a_minimal_row(real_runs, tmp_path, monkeypatch):
    """A row with nothing but the four keys the store insists on (no seed, params, target, metrics)."""
    d = tmp_path / "results"
    shutil.copytree(real_runs, d)
    write_row({"run_id": new_run_id(), "status": "ok", "method": "bare_minimum", "track": "digits-cnn"}, d)
    at = _app(d, monkeypatch)
    _no_exception(at)
    assert "bare_minimum" in set(_table(at)["method"])
    bare = read_results(d).query("method == 'bare_minimum'")["run_id"].iloc[0]
    at.selectbox(key="run").set_value(bare).run()
    _no_exception(at)
    at.selectbox(key="sort_by").set_value("cond_max").run()
    _no_exception(at)


# ---------------------------------------------------------------- uncertainty, curve labels, new columns, paper


def _synthetic_runs() -> pd.DataFrame:
    """Known numbers: 'm' has two seeds (clean 0.9 and 0.8 of 1,000 test points; robust 0.5 and 0.4
    of 200 attacked points), 'uneven' two seeds on different point counts, 'old' a row without
    point counts, 'one' a single seed."""
    return pd.DataFrame({
        "run_id": list("abcdefg"), "status": ["ok"] * 6 + ["failed"], "track": ["t"] * 7,
        "method": ["m", "m", "uneven", "uneven", "old", "one", "m"], "method_params": ["{}"] * 7,
        "compression_target": [0.5, 0.5, 0.5, 0.5, 0.5, 0.0, 0.5], "seed": [0, 1, 0, 1, 0, 0, 2],
        "clean_acc": [0.9, 0.8, 0.5, 1.0, 0.7, 0.95, None], "n_test": [1000, 1000, 100, 300, None, 20, 1000],
        "robust_acc": [0.5, 0.4, None, None, 0.3, 0.0, None], "aa_n": [200, 200, 0, 0, None, 50, 200],
    })


def test_wilson_interval_over_the_test_points_not_pooled_over_seeds():
    from bench.summary import aggregate, pooled_interval, wilson_interval
    from leaderboard_app import data as lbd

    # Wilson's closed form, checked against values computed by hand (z = 1.95996)
    assert wilson_interval(180, 400) == pytest.approx((0.4020, 0.4990), abs=1e-4)
    assert wilson_interval(0, 50) == pytest.approx((0.0, 0.0713), abs=1e-4)
    assert wilson_interval(20, 20) == pytest.approx((0.8389, 1.0), abs=1e-4)
    agg = aggregate(_synthetic_runs()).set_index("method")
    m = agg.loc["m"]
    # The seeds share their test points, so the interval is over one seed's worth of points:
    # 900 and 800 of 1,000 -> 850 of 1,000; 100 and 80 of 200 -> 90 of 200. Wilson 95% by hand:
    # p = 0.85, n = 1000 -> [0.826531, 0.870790]; p = 0.45, n = 200 -> [0.382641, 0.519244].
    assert (m["clean_acc_hits"], m["clean_acc_points"]) == (850, 1000)
    assert (m["robust_acc_hits"], m["robust_acc_points"]) == (90, 200)
    assert m["clean_acc_ci_low"] == pytest.approx(0.826531, abs=1e-6)
    assert m["clean_acc_ci_high"] == pytest.approx(0.870790, abs=1e-6)
    assert m["robust_acc_ci_low"] == pytest.approx(0.382641, abs=1e-6)
    assert m["robust_acc_ci_high"] == pytest.approx(0.519244, abs=1e-6)
    assert m["clean_acc_mean"] == pytest.approx(0.85) and m["clean_acc_std"] == pytest.approx(0.0707107, abs=1e-6)
    assert m["seeds"] == 2  # the failed seed 2 counts nowhere
    # Unequal points per seed: 50 of 100 and 300 of 300 -> 175 of 200 (the mean of seeds is 0.75).
    u = agg.loc["uneven"]
    assert (u["clean_acc_hits"], u["clean_acc_points"]) == (175, 200)
    assert (u["clean_acc_ci_low"], u["clean_acc_ci_high"]) == pytest.approx(wilson_interval(175, 200))
    assert np.isnan(u["robust_acc_ci_low"]) and np.isnan(u["robust_acc_points"])  # aa_n = 0: not attacked
    # A row without point counts keeps its mean and gets no interval.
    o = agg.loc["old"]
    assert o["clean_acc_mean"] == pytest.approx(0.7) and np.isnan(o["clean_acc_ci_low"])
    one = agg.loc["one"]
    assert one["robust_acc_ci_low"] == 0.0 and one["robust_acc_ci_high"] == pytest.approx(wilson_interval(0, 50)[1])
    assert pooled_interval([0.9, 0.8, None], [1000, 1000, 5])["points"] == 1000

    lb = lbd.leaderboard(_synthetic_runs())
    shown = lbd.display_table(lb).set_index("method")
    assert shown.loc["m", "clean 95% CI"] == "[82.7, 87.1]" and shown.loc["m", "robust 95% CI"] == "[38.3, 51.9]"
    assert shown.loc["m", "± clean"] == "± 7.1" and shown.loc["m", "attacked"] == 200
    assert shown.loc["old", "clean 95% CI"] == ""
    export = lbd.export_table(lb).set_index("method")
    for c in ("clean_acc_ci_low", "clean_acc_ci_high", "robust_acc_ci_low", "robust_acc_ci_high", "n_seeds",
              "robust_acc_points", "clean_acc_points"):
        assert pd.api.types.is_numeric_dtype(export[c]), c
    assert export.loc["m", "n_seeds"] == 2 and export.loc["m", "robust_acc_points"] == 200
    csv = lbd.to_csv_bytes(lbd.export_table(lb)).decode().splitlines()[0].split(",")
    assert {"clean_acc_ci_low", "robust_acc_ci_high", "n_seeds", "robust_acc_points"} <= set(csv)


def test_bench_show_prints_mean_std_and_interval(tmp_path, capsys):
    from bench.cli import main

    for row in _synthetic_runs().to_dict("records"):
        write_row({k: v for k, v in row.items() if not (isinstance(v, float) and np.isnan(v))}, tmp_path)
    assert main(["show", "--results-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "85.0 ± 7.1 [82.7, 87.1]" in out and "45.0 ± 7.1 [38.3, 51.9]" in out
    assert "attacked pts" in out and "95% Wilson interval" in out and "mean ± std over seeds" in out
    line = next(x for x in out.splitlines() if " m " in f" {x} " and "85.0" in x)
    assert " 1000 " in line and " 200 " in line
    assert main(["show", "--all", "--results-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "90.0 [88.0, 91.7]" in out  # one run: its own interval over its 1,000 points


def _aa_row(points, *, robust_eps=0.1, version="standard", run_id="r1", method="m"):
    return {"run_id": run_id, "status": "ok", "track": "t", "method": method, "method_id": method, "seed": 0,
            "compression_target": 0.5, "robust_eps": robust_eps, "robust_acc": 0.5, "aa_headline_version": version,
            "aa_curve": [{"norm": n, "eps": e, "acc": 0.5, "version": v, "attacks": a, "n": 10}
                         for n, e, v, a in points]}


def test_curve_labels_come_from_the_rows_versions():
    from leaderboard_app import data as lbd

    default = pd.DataFrame([_aa_row([("Linf", 0.05, "custom", "apgd-ce,apgd-t"),
                                     ("Linf", 0.1, "standard", "apgd-ce,apgd-t,fab-t,square"),
                                     ("Linf", 0.2, "custom", "apgd-ce,apgd-t"),
                                     ("L2", 0.5, "custom", "apgd-ce,apgd-t")])])
    assert lbd.curve_label(default, "aa_linf") == "APGD-CE + APGD-T L∞ (standard AutoAttack at ε=0.1)"
    assert lbd.curve_label(default, "aa_l2") == "APGD-CE + APGD-T L2"
    assert lbd.headline_text(default) == "standard AutoAttack (APGD-CE, APGD-T, FAB-T, Square) at ε=0.1"
    pts = lbd.curve_points(default, "aa_linf")
    assert pts.set_index("eps")["headline"].to_dict() == {0.05: False, 0.1: True, 0.2: False}
    assert pts.set_index("eps")["attack_set"][0.1] == "standard AutoAttack"
    # Other curve attacks, a CIFAR headline ε: the label follows the rows, nothing is assumed.
    other = pd.DataFrame([_aa_row([("Linf", 2 / 255, "custom", "apgd-ce"),
                                   ("Linf", 8 / 255, "standard", "apgd-ce,apgd-t,fab-t,square"),
                                   ("Linf", 4 / 255, "custom", "apgd-ce")], robust_eps=8 / 255)])
    assert lbd.curve_label(other, "aa_linf") == "APGD-CE L∞ (standard AutoAttack at ε=8/255)"
    # --aa-version standard everywhere; and plus.
    forced = pd.DataFrame([_aa_row([("Linf", e, "standard", "apgd-ce,apgd-t,fab-t,square") for e in (0.05, 0.1)])])
    assert lbd.curve_label(forced, "aa_linf") == "standard AutoAttack L∞"
    plus = pd.DataFrame([_aa_row([("Linf", 0.1, "plus", "apgd-ce,apgd-dlr,fab,square,apgd-t,fab-t")], version="plus")])
    assert lbd.curve_label(plus, "aa_linf") == "AutoAttack plus L∞"
    assert lbd.headline_text(plus).startswith("AutoAttack plus (APGD-CE, APGD-DLR, FAB, Square, APGD-T, FAB-T)")
    # Points without version or attacks say so instead of claiming a version.
    bare = pd.DataFrame([_aa_row([("Linf", 0.1, None, None)], version=None)])
    assert lbd.curve_label(bare, "aa_linf") == "AutoAttack (version not recorded) L∞"
    assert lbd.curve_label(default, "fgsm") == "FGSM"
    # Runs with different headline versions are both named.
    mixed = pd.concat([default, pd.DataFrame([{**_aa_row([("Linf", 0.1, "plus", "apgd-ce")], version="plus"),
                                              "run_id": "r2"}])])
    assert "standard AutoAttack" in lbd.headline_text(mixed) and "AutoAttack plus" in lbd.headline_text(mixed)


def test_paper_reference_loads_with_the_published_numbers():
    from leaderboard_app import data as lbd

    ref = lbd.load_paper_reference()
    assert len(ref) == 27 and set(ref["dataset"]) == {"cifar10"} and set(ref["arch"]) == {"vgg16"}
    fgsm = ref[ref["attack"] == "FGSM"].pivot_table(index="method", columns="eps", values="value")
    assert fgsm.loc["CondLR"].tolist() == [89.97, 72.25, 60.19, 50.17]
    assert fgsm.loc["LoRA-style"].tolist() == [89.97, 67.71, 48.86, 38.49]
    assert fgsm.loc["SVD prune"].tolist() == [89.92, 67.30, 47.77, 36.98]
    assert fgsm.loc["Cayley SGD (dense)"].tolist() == [89.62, 74.46, 58.16, 45.29]
    assert fgsm.loc["RobustDLRT"].tolist() == [89.35, 78.72, 66.02, 54.15]
    assert fgsm.loc["Baseline (dense, RobustDLRT's run)"].tolist() == [89.83, 78.61, 64.66, 53.71]
    assert ref.loc[ref["method"] == "RobustDLRT", "compression"].unique().tolist() == [0.9435]
    pgd = ref[ref["attack"] == "PGD"].set_index("method")
    assert set(pgd["norm"]) == {"L2"} and set(pgd["eps"]) == {0.3}
    assert pgd["value"].to_dict() == {"CondLR": 54.58, "LoRA-style": 21.84, "SVD prune": 19.94}
    assert pgd.loc["CondLR", "method_params"] == "tau=0.1" and np.isnan(pgd.loc["SVD prune", "compression"])
    assert ref.loc[(ref["method"] == "CondLR") & (ref["eps"] == 0.006), "acc"].item() == pytest.approx(0.5017)
    assert set(ref["family"]) == {"fgsm", "pgd_l2"}
    assert set(ref["bench_method"]) == {"robust_lowrank", "vanilla_lowrank", "svd_prune", "orthogonal_dense",
                                        "robust_dlrt", "dense"}
    assert ref["source"].str.contains("RobustDLRT").all()  # the CondLR numbers as RobustDLRT quotes them


@pytest.mark.parametrize("breakage, message", [
    (lambda t: t.replace(",unit,", ",units,", 1), "missing column(s) unit"),
    (lambda t: t.replace(",89.97,%", ",89,97%", 1), "line 2"),
    (lambda t: t.replace("72.25", "seventy"), "line 3: value 'seventy' is not a number"),
    (lambda t: t.replace("72.25", "172.25"), "line 3: value 172.25 is outside [0, 100]"),
    (lambda t: t.replace(",PGD,L2,", ",PGD,L3,", 1), "attack/norm 'PGD'/'L3'"),
    (lambda t: t + t.splitlines()[1] + "\n", "line 29: the same number is listed twice"),
    (lambda t: t.splitlines()[0] + "\n", "no rows"),
    (lambda t: "", "not a readable CSV file"),
])
def test_a_malformed_paper_reference_is_a_clear_error(tmp_path, breakage, message):
    from leaderboard_app import data as lbd

    bad = tmp_path / "paper.csv"
    bad.write_text(breakage(lbd.PAPER_REFERENCE.read_text(encoding="utf-8")), encoding="utf-8")
    with pytest.raises(lbd.PaperReferenceError) as err:
        lbd.load_paper_reference(bad)
    assert message in str(err.value) and str(bad) in str(err.value)
    with pytest.raises(lbd.PaperReferenceError, match="no such file"):
        lbd.load_paper_reference(tmp_path / "absent.csv")


@pytest.fixture(scope="session")
def cifar_runs(real_runs, tmp_path_factory) -> dict:
    """Hand-made rows on the paper's track (cifar10 / vgg16) with every new column, plus an old-format
    file of the same track written without the new columns (as rows from before them were)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tmp_path_factory.mktemp("leaderboard-cifar")
    fgsm = [{"eps": e, "acc": a} for e, a in ((0.0, 0.88), (0.002, 0.70), (0.004, 0.55), (0.006, 0.45))]
    common = dict(track="cifar10-vgg16", dataset="cifar10", arch="vgg16", n_test=10000, aa_n=1000,
                  track_description="CIFAR-10, VGG16 [CondLR paper, public code; differs: 10 epochs instead of 120]",
                  track_differs="10 epochs instead of 120", robust_eps=8 / 255,
                  layer_names=["conv1", "fc"], layer_kappa=[2.0, 1.5], layer_kappa_raw=[9.0, 1.5],
                  layer_folded=["bn+input_norm", ""], layer_spectral_norm=[3.0, 1.0], layer_ranks=[3, 10],
                  layer_spectral_norm_raw=[4.0, 1.0], layer_kinds=["conv", "linear"], layer_shapes=["8 x 27", "10 x 8"],
                  cond_max=2.0, cond_max_raw=9.0, clean_acc_ci_low=None, clean_acc_ci_high=None,
                  robust_acc_ci_low=None, robust_acc_ci_high=None)
    ids = []
    for seed, (clean, rob) in enumerate(((0.88, 0.40), (0.86, 0.38))):
        row = _handmade(real_runs, method="robust_lowrank", method_id="robust_lowrank", seed=seed,
                        method_params="{}", compression_target=0.5, compression=0.5, clean_acc=clean,
                        robust_acc=rob, fgsm_curve=fgsm, pgd_l2_curve=[{"eps": 0.3, "acc": 0.5}],
                        aa_curve=[{"norm": "Linf", "eps": 8 / 255, "acc": rob, "version": "standard",
                                   "attacks": "apgd-ce,apgd-t,fab-t,square", "n": 1000, "n_attacked": 800,
                                   "seconds": 1.0}], **common)
        ids.append(row["run_id"])
        write_row(row, d)
    old = _handmade(real_runs, method="vanilla_lowrank", method_id="vanilla_lowrank", seed=0, method_params="{}",
                    compression_target=0.5, compression=0.5, track="cifar10-vgg16", dataset="cifar10", arch="vgg16",
                    fgsm_curve=fgsm)
    new_cols = ("clean_acc_ci_low", "clean_acc_ci_high", "robust_acc_ci_low", "robust_acc_ci_high", "attacked_indices",
                "track_description", "track_differs", "cond_max_raw", "layer_kappa_raw", "layer_spectral_norm_raw",
                "layer_folded", "aa_n")
    old = {k: v for k, v in old.items() if k not in new_cols and v is not None}
    old["aa_curve"] = [{"norm": "Linf", "eps": 8 / 255, "acc": 0.2}]  # old struct: no version, no attacks
    pq.write_table(pa.Table.from_pylist([old]), d / "old-format.parquet")
    return {"dir": d, "ids": ids, "old": old["run_id"], "new_cols": new_cols}


def test_old_rows_without_the_new_columns_still_load(cifar_runs, capsys):
    import pyarrow.parquet as pq

    from bench.cli import main
    from leaderboard_app import data as lbd

    assert not set(cifar_runs["new_cols"]) & set(pq.read_schema(cifar_runs["dir"] / "old-format.parquet").names)
    loaded = lbd.load(cifar_runs["dir"])
    assert not loaded.skipped and len(loaded.runs) == 3
    old = loaded.runs[loaded.runs["run_id"] == cifar_runs["old"]].iloc[0]
    lb = lbd.leaderboard(loaded.runs).set_index("method")
    v = lb.loc["vanilla_lowrank"]
    assert np.isnan(v["cond_max_raw_mean"]) and v["seeds"] == 1
    # its clean interval comes from n_test (always recorded); no aa_n, so no robust interval
    assert not np.isnan(v["clean_acc_ci_low"]) and np.isnan(v["robust_acc_ci_low"])
    # never attacked, so no robust accuracy at all: the cell says so (an accuracy without its points: "")
    assert np.isnan(v["robust_acc_mean"])
    shown = lbd.display_table(lb.reset_index()).set_index("method")
    assert shown.loc["vanilla_lowrank", "robust 95% CI"] == "not evaluated"
    assert shown.loc["vanilla_lowrank", "trust"] == "not evaluated"
    layers = lbd.layer_frame(old)
    assert layers["kappa_raw"].isna().all() and layers["folded"].isna().all()
    assert lbd.folded_text(None) == "not recorded"
    assert lbd.curve_label(loaded.runs[loaded.runs["run_id"] == cifar_runs["old"]], "aa_linf") == \
        "AutoAttack (version not recorded) L∞"
    assert lbd.track_info(loaded.runs[loaded.runs["run_id"] == cifar_runs["old"]])["differs"] is None
    assert main(["show", "--results-dir", str(cifar_runs["dir"])]) == 0
    assert main(["show", "--all", "--results-dir", str(cifar_runs["dir"])]) == 0
    assert "vanilla_lowrank" in capsys.readouterr().out


def test_new_columns_are_shaped_for_display(cifar_runs):
    from leaderboard_app import data as lbd

    runs = lbd.load(cifar_runs["dir"]).runs
    new = runs[runs["run_id"] == cifar_runs["ids"][0]].iloc[0]
    layers = lbd.layer_frame(new)
    assert layers["kappa"].tolist() == [2.0, 1.5] and layers["kappa_raw"].tolist() == [9.0, 1.5]
    assert [lbd.folded_text(f) for f in layers["folded"]] == ["BatchNorm after + input normalisation", "nothing"]
    info = lbd.track_info(runs[runs["run_id"].isin(cifar_runs["ids"])])
    assert info == {"description": "CIFAR-10, VGG16", "reference": "CondLR paper, public code",
                    "differs": "10 epochs instead of 120", "variants": 1}
    lb = lbd.leaderboard(runs).set_index("method")
    assert lb.loc["robust_lowrank", "cond_max_mean"] == 2.0 and lb.loc["robust_lowrank", "cond_max_raw_mean"] == 9.0
    shown = lbd.display_table(lb.reset_index())
    assert shown.set_index("method").loc["robust_lowrank", "cond_max raw"] == 9.0


def test_paper_numbers_sit_beside_ours_and_never_in_the_ranking(cifar_runs):
    from leaderboard_app import data as lbd

    runs = lbd.load(cifar_runs["dir"]).runs
    ref = lbd.paper_rows(lbd.load_paper_reference(), runs)
    assert len(ref) == 27
    assert lbd.paper_rows(lbd.load_paper_reference(), runs.assign(dataset="mnist", arch="lenet5")).empty
    both = lbd.paper_beside_ours(ref, runs)
    condlr = both[(both["attack"] == "FGSM L∞") & both["paper setting"].str.startswith("CondLR")].set_index("eps")
    assert condlr.loc[0.006, lbd.PAPER_LABEL] == pytest.approx(0.5017)
    assert condlr.loc[0.006, "ours"] == pytest.approx(0.45) and condlr.loc[0.006, "seeds"] == 2
    assert condlr.loc[0.006, "our configuration"] == "robust_lowrank @ 0.50"
    pgd = both[(both["attack"] == "PGD L2") & both["paper setting"].str.startswith("CondLR")].iloc[0]
    assert pgd["ours"] == pytest.approx(0.5) and pgd[lbd.PAPER_LABEL] == pytest.approx(0.5458)
    cayley = both[both["paper setting"].str.startswith("Cayley")]
    assert len(cayley) == 4 and cayley["ours"].isna().all()  # no orthogonal_dense run here: ours empty
    rdlrt = both[both["paper setting"].str.startswith("RobustDLRT")]
    assert rdlrt["paper setting"].iloc[0] == "RobustDLRT, c.r. 94.35% (the paper's compression rate, rank-adaptive)"
    assert len(rdlrt) == 4 and rdlrt["ours"].isna().all()
    lb = lbd.leaderboard(runs)
    assert set(lb["method"]) == {"robust_lowrank", "vanilla_lowrank"} and lb["rank"].notna().all()
    pts = lbd.paper_curve_points(ref, "fgsm")
    assert len(pts) == 24 and pts["label"].str.startswith(lbd.PAPER_LABEL).all()


def test_app_shows_intervals_honest_labels_track_and_paper(cifar_runs, monkeypatch):
    at = _app(cifar_runs["dir"], monkeypatch)
    _no_exception(at)
    table = _table(at)
    assert set(table["method"]) == {"robust_lowrank", "vanilla_lowrank"}  # the paper's rows are not ranked
    rl = table[table["method"] == "robust_lowrank"].iloc[0]
    assert rl["robust 95% CI"] == "[36.0, 42.1]"  # 400 and 380 of 1,000 each -> 390 of 1,000: Wilson [0.3601, 0.4207]
    assert rl["attacked"] == 1000 and rl["cond_max raw"] == 9.0
    captions = " ".join(c.value for c in at.caption)
    assert "Robust accuracy: standard AutoAttack (APGD-CE, APGD-T, FAB-T, Square) at ε=8/255" in captions
    assert "Robust accuracy is AutoAttack's" not in captions
    sidebar = " ".join(c.value for c in at.sidebar.caption)
    assert "**Differs:** 10 epochs instead of 120" in sidebar and "Reproduces: CondLR paper" in sidebar
    paper = next(df.value for df in at.dataframe if "paper (reported)" in df.value.columns)
    assert len(paper) >= 19 and paper["paper (reported)"].max() == pytest.approx(89.97)
    assert any("never ranked" in c.value for c in at.caption)
    # the new rows ran the standard version at 8/255; the old row's point does not say what ran
    assert _curve_select(at).options == [
        "standard AutoAttack L∞ (AutoAttack (version not recorded) at ε=8/255)", "PGD L2", "FGSM"]
    at.checkbox(key="show_paper").uncheck().run()
    _no_exception(at)
    assert not any("paper (reported)" in df.value.columns for df in at.dataframe)
    at.selectbox(key="run").set_value(cifar_runs["ids"][0]).run()
    _no_exception(at)
    metrics = {m.label: m for m in at.metric}
    assert metrics["cond_max (folded)"].value == "2" and metrics["cond_max raw"].value == "9"
    # no stored interval in these rows: the run's own, from its 10,000 test / 1,000 attacked points
    assert metrics["clean acc"].delta == "95% CI [87.3, 88.6]" and metrics["robust acc (ε=8/255)"].delta == \
        "95% CI [37.0, 43.1]"
    layers = next(df.value for df in at.dataframe if "kappa_raw" in df.value.columns)
    assert layers["folded"].tolist() == ["BatchNorm after + input normalisation", "nothing"]
    at.selectbox(key="run").set_value(cifar_runs["old"]).run()
    _no_exception(at)


def test_objective_is_a_filter_never_ranked_together(real_runs, tmp_path, monkeypatch):
    """An adversarially trained row sits under its own objective; the default view is 'standard'."""
    for p in real_runs.glob("*.parquet"):
        shutil.copy(p, tmp_path)
    write_row(_handmade(real_runs, objective="pgd_at", objective_params=json.dumps({"eps": 0.1, "steps": 3}),
                        clean_acc=0.99), tmp_path)
    at = _app(tmp_path, monkeypatch)
    _no_exception(at)
    assert at.selectbox(key="objective::digits-cnn").value == "standard"
    assert (_table(at)["method"] == "dense").sum() == 1
    at.selectbox(key="objective::digits-cnn").set_value("pgd_at").run()
    _no_exception(at)
    assert list(_table(at)["method"]) == ["dense"]


def test_the_curve_chart_band_runs_from_certified_to_autoattack_per_configuration():
    """The main ε-chart's bracket: per configuration, the seed means of the certified and the AutoAttack
    curve at the ε where both exist (and nothing for a family without a certified counterpart)."""
    from leaderboard_app import data as lbd

    def run(seed, aa, cert):
        return {"run_id": f"r{seed}", "method": "robust_lowrank", "method_params": "{}", "compression_target": 0.5,
                "seed": seed, "robust_eps": 0.1, "label": "robust_lowrank @ 0.5",
                "aa_curve": [{"norm": "Linf", "eps": e, "acc": a, "version": "custom", "attacks": ["apgd-ce"]}
                             for e, a in aa],
                "certified_linf_curve": [{"eps": e, "acc": a} for e, a in cert]}

    runs = pd.DataFrame([run(0, [(0.05, 0.9), (0.1, 0.6)], [(0.05, 0.3), (0.1, 0.1), (0.2, 0.0)]),
                         run(1, [(0.05, 0.8), (0.1, 0.4)], [(0.05, 0.1), (0.1, 0.1), (0.2, 0.0)])])
    runs["label"] = [lbd.label_of(r) for _, r in runs.iterrows()]
    band = lbd.config_bracket_band(runs, "aa_linf")
    assert band["eps"].tolist() == [0.05, 0.1]  # 0.2 has no AutoAttack point
    assert np.allclose(band["attacked"], [0.85, 0.5]) and np.allclose(band["certified"], [0.2, 0.1])
    assert (band["certified"] <= band["attacked"]).all()
    assert lbd.config_bracket_band(runs, "aa_l2").empty and lbd.config_bracket_band(runs, "fgsm").empty
