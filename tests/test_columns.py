"""Declared columns: every view derives from the declarations, and a metric family is a one-file change."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from bench import columns
from bench.columns import Column, EvalInputs, MetricFamily
from bench.registry import METRIC_FAMILIES
from script_module import load_script  # tests/ is on sys.path

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def test_docs_column_reference_is_current():
    """docs/columns.md is generated (`bench list --columns`); regenerate it when a declaration changes."""
    committed = (ROOT / "docs" / "columns.md").read_text()
    assert committed.strip() == columns.reference_markdown().strip(), \
        "docs/columns.md is stale: run `bench list --columns > docs/columns.md`"


def test_every_declared_column_has_one_owner_and_the_schema_covers_them():
    from bench.results import schema_types

    names = [c.name for c in columns.all_columns()]
    assert len(names) == len(set(names))
    assert set(schema_types()) == set(names)
    for c in columns.all_columns():
        assert c.description, c.name
    # the columns bench show and the leaderboard average are exactly the declared "mean" ones
    from bench.summary import metrics

    assert metrics() == columns.aggregated("mean")
    assert {"clean_acc", "robust_acc", "cond_max", "compression"} <= set(metrics())


def test_declarations_are_checked():
    with pytest.raises(ValueError, match="type 'float32'"):
        Column("x", "float32", "d")
    with pytest.raises(ValueError, match="norm"):
        Column("c", "curve", "d")
    with pytest.raises(ValueError, match="unknown view"):
        Column("x", "float", "d", views=("table",))
    with pytest.raises(ValueError, match="more than once"):
        MetricFamily("f", "F", (Column("x", "float", "d"), Column("x", "int", "d")), compute=lambda i: {})


def _inputs(model, n=8):
    from toy_models import separable

    from bench.config import EvalProtocol
    from bench.data import DataSplits
    from bench.evaluate import EvalContext

    x, y = separable(n_per_class=4, seed=1)
    data = DataSplits(name="toy", source="test", x_train=x, y_train=y, x_val=x[:0], y_val=y[:0], x_test=x, y_test=y,
                      num_classes=4)
    protocol = EvalProtocol(n_eval=n, linf_eps=(0.1,), headline_eps=0.1, sensitivity_points=4)
    ctx = EvalContext(device=torch.device("cpu"), n_eval=n, skip_attacks=True, progress=False)
    return data, protocol, ctx


def test_a_family_that_returns_an_undeclared_column_is_an_error():
    fam = MetricFamily("f", "F", (Column("x", "float", "d"),), compute=lambda i: {"x": 1.0, "y": 2.0})
    with pytest.raises(ValueError, match="undeclared column.*y"):
        fam.run(None)
    ok = MetricFamily("g", "G", (Column("x", "float", "d"), Column("l", "list<int>", "d")), compute=lambda i: {})
    assert ok.run(None) == {"x": None, "l": []}


@pytest.fixture
def margin_family():
    """The README's worked example (examples/metric_margin.py), registered as dropping it into
    bench/metrics/families/ would, and unregistered afterwards."""
    columns.families()  # load the built-ins first
    mod = load_script(ROOT / "examples" / "metric_margin.py", "metric_margin_example")
    try:
        yield mod.FAMILY
    finally:
        METRIC_FAMILIES._entries.pop("margin", None)
        sys.modules.pop("metric_margin_example", None)


def test_a_new_metric_family_reaches_every_view(margin_family, tmp_path):
    from toy_models import identity_classifier

    from bench.report import format_summary
    from bench.evaluate import evaluate
    from bench.results import read_results, schema_types, write_row
    from bench.summary import aggregate, summary_table
    from leaderboard_app import data as lbd

    data, protocol, ctx = _inputs(identity_classifier())
    assert "margin" in [f.name for f in columns.families()]
    rows = []
    for seed, scale in ((0, 1.0), (1, 2.0)):
        model = identity_classifier()
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(scale)
        cols = evaluate(model, data, protocol, ctx)
        rows.append({"run_id": f"r{seed}", "status": "ok", "method": "dense", "method_params": "{}", "track": "toy",
                     "seed": seed, "compression_target": 0.0, "compression": 0.0, "method_id": "dense", **cols})
        write_row(rows[-1], tmp_path)
    # identity logits on separable points: the margin is positive and scales with the weights
    assert rows[0]["logit_margin"] > 0 and rows[1]["logit_margin"] == pytest.approx(2 * rows[0]["logit_margin"])
    assert str(schema_types()["logit_margin"]) == "double"

    df = read_results(tmp_path)
    assert df["logit_margin"].dtype == "float64"
    agg = aggregate(df)
    assert agg.loc[0, "logit_margin_mean"] == pytest.approx(1.5 * rows[0]["logit_margin"])
    assert "margin" in summary_table(df).columns and "logit_margin" in summary_table(df, per_run=True).columns
    board = lbd.display_table(lbd.leaderboard(df))
    assert board.loc[0, "margin"] == pytest.approx(agg.loc[0, "logit_margin_mean"])
    assert lbd.sorts()["logit margin"] == ("logit_margin_mean", False)
    assert "margin" in format_summary(rows[0], tmp_path / "x.parquet")
    assert "`logit_margin`" in columns.reference_markdown()


def test_rows_written_before_the_declarations_still_load():
    """The committed results were written before this module existed; they read and aggregate the same."""
    from bench.results import read_results
    from bench.summary import aggregate

    df = read_results(ROOT / "results")
    if df.empty:
        pytest.skip("no committed results")
    agg = aggregate(df)
    assert agg["clean_acc_mean"].notna().all() and (agg["seeds"] >= 1).all()
    assert agg["robust_acc_ci_low"].notna().any() and agg["method_id"].notna().all()
