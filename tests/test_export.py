"""bench export: RobustBench model-info JSON files and the aggregated table, from the committed rows."""

import json
from pathlib import Path

import pandas as pd
import pytest

from bench.cli import main
from bench.export import eps_text
from bench.results import read_results, with_objective

RESULTS = Path(__file__).resolve().parent.parent / "results"
# the fields of RobustBench's own model_info files (e.g. model_info/cifar10/Linf/Standard.json)
ROBUSTBENCH_FIELDS = {"link": str, "name": str, "authors": str, "additional_data": bool, "number_forward_passes": int,
                      "dataset": str, "venue": str, "architecture": str, "eps": str, "clean_acc": str,
                      "reported": str, "autoattack_acc": str, "footnote": str, "unreliable": bool}


def test_eps_is_written_the_robustbench_way():
    assert (eps_text(8 / 255), eps_text(2 / 255), eps_text(0.1), eps_text(0.2), eps_text(0.3)) == (
        "8/255", "2/255", "0.1", "0.2", "0.3")


def test_robustbench_export_has_one_file_per_configuration_with_its_numbers(tmp_path, capsys):
    runs = read_results(RESULTS)
    ok = runs[(runs["status"] == "ok") & (runs["aa_headline_version"] == "standard")]
    if ok.empty:
        pytest.skip("no committed rows with a standard-AutoAttack headline")
    assert main(["export", "--out", str(tmp_path), "--results-dir", str(RESULTS)]) == 0
    files = sorted(tmp_path.glob("model_info/*/Linf/*.json"))
    ok = with_objective(ok)
    configs = ok.groupby(["track", "objective", "objective_params", "method", "method_params", "compression_target"])
    assert len(files) == configs.ngroups and f"{len(files)} file(s)" in capsys.readouterr().out
    assert (ok["objective"] != "standard").any()  # an adversarially trained configuration is a file of its own
    for path in files:
        info = json.loads(path.read_text())
        for field, typ in ROBUSTBENCH_FIELDS.items():
            assert isinstance(info[field], typ), (path.name, field)
        assert path.parent.parent.name == info["dataset"]
        g = ok[(ok["track"] == info["track"]) & (ok["method"] == info["method"])
               & (ok["method_params"].map(json.loads) == [info["method_params"]] * len(ok))
               & (ok["objective"] == info["objective"])
               & (ok["objective_params"].map(json.loads) == [info["objective_params"]] * len(ok))
               & (ok["compression_target"] == info["compression_target"])]
        assert sorted(g["run_id"]) == info["run_ids"] and sorted(g["seed"]) == info["seeds"]
        assert info["clean_acc"] == f"{100 * g['clean_acc'].mean():.2f}"
        assert info["autoattack_acc"] == f"{100 * g['robust_acc'].mean():.2f}" == info["reported"]
        assert float(info["eps"].split("/")[0]) / (255 if "/" in info["eps"] else 1) == pytest.approx(
            g["robust_eps"].iloc[0])
        assert info["aa_points"] == g["aa_n"].max()
        permuted = list(g["attacked_indices"].iloc[0]) != list(range(info["aa_points"]))
        assert (f"{info['aa_points']} test points drawn by a fixed seeded permutation" if permuted
                else f"first {info['aa_points']} test points") in info["footnote"]
        assert f"n = {int(g['n_test'].iloc[0]):,} test images" in info["footnote"]
        assert "whole test split" not in info["footnote"]
        lo, hi = map(float, info["autoattack_acc_ci95"])
        assert lo <= float(info["autoattack_acc"]) <= hi


def test_table_export_reads_back_and_bad_requests_are_clear(tmp_path, capsys):
    for fmt, reader in (("csv", pd.read_csv), ("parquet", pd.read_parquet)):
        out = tmp_path / f"table.{fmt}"
        assert main(["export", "--format", fmt, "--out", str(out), "--results-dir", str(RESULTS)]) == 0
        table = reader(out)
        assert {"clean_acc_mean", "robust_acc_ci_low", "seeds"} <= set(table.columns) and len(table) > 0
    assert main(["export", "--out", str(tmp_path / "x"), "--results-dir", str(tmp_path / "empty")]) == 2
    assert "no result rows" in capsys.readouterr().err
