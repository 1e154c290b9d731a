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
        "robust_acc": acc0 - 0.3, "robust_eps": 0.1, "aa_headline_version": "standard",
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
    if not row.get("layer_kappa"):  # rows from before the conditioning metrics: supply the lists
        row.update(layer_names=["conv1", "fc1"], layer_kappa=[3.5, 12.0], layer_spectral_norm=[1.2, 2.5],
                   layer_ranks=[8, 40], cond_max=12.0)
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
    assert lbd.curve_families(runs) == ["AutoAttack L∞", "PGD L∞", "PGD L2", "FGSM"]
    pts = lbd.curve_points(runs, "AutoAttack L∞")
    assert sorted(pts["eps"]) == [0.05, 0.1, 0.2] and set(pts["run_id"]) == {mixed_runs["ids"]["full"]}
    assert pts["attacks"].str.contains("apgd-ce").all()
    mean = lbd.mean_curves(pts)
    assert list(mean.columns[:4]) == ["label", "method", "eps", "acc"]
    one = runs[runs["run_id"] == mixed_runs["ids"]["full"]].iloc[0]
    assert set(lbd.run_curves(one)["norm"]) == {"L∞", "L2"}


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

    at.multiselect(key="methods::digits-cnn").unselect("dense").run()
    _no_exception(at)
    assert "dense" not in set(_table(at)["method"])
    at.multiselect(key="methods::digits-cnn").select("dense").run()

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
    from bench import cli

    def no_exec(*a, **k):  # never replace the test process with a server
        raise AssertionError("cmd_leaderboard tried to start the server on a busy port")

    monkeypatch.setattr(cli.os, "execve", no_exec)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert cli.main(["leaderboard", "--results-dir", str(tmp_path), "--port", str(port)]) == 2
    assert "--port" in capsys.readouterr().err


def test_app_tolerates_a_minimal_old_row(real_runs, tmp_path, monkeypatch):
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
