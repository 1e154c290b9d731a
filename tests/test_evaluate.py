"""evaluate() composes the metrics into row columns that survive the parquet round trip with stable types."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from bench.config import EvalProtocol
from bench.data import DataSplits
from bench.evaluate import EvalContext, evaluate
from bench.results import read_results, write_row


from toy_models import identity_classifier, separable  # noqa: E402  (tests/ is on sys.path)


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


PROTOCOL = EvalProtocol(
    n_eval=16, linf_eps=(0.1, 0.3), headline_eps=0.3, headline_version="standard", curve_attacks=("apgd-ce",),
    l2_eps=(0.5,), fgsm_eps=(0.0, 0.1), pgd_linf_eps=(0.1, 0.3), pgd_l2_eps=(0.5,), pgd_steps=5,
    sensitivity_points=8,
)


def _data():
    x, y = separable(n_per_class=6, seed=1)
    xv, yv = separable(n_per_class=2, seed=2)
    return DataSplits(name="toy", source="test", x_train=xv, y_train=yv, x_val=xv, y_val=yv, x_test=x, y_test=y,
                      num_classes=4)


def _row(cols):
    return {"run_id": "r1", "status": "ok", "method": "dense", "track": "toy", **cols}


def test_evaluate_columns_round_trip_through_parquet(tmp_path):
    state = tmp_path / ".state" / "r1"
    ctx = EvalContext(device=torch.device("cpu"), n_eval=16, state_dir=state, dense_factory=identity_classifier,
                      progress=False)
    cols = evaluate(identity_classifier(), _data(), PROTOCOL, ctx)
    assert not state.exists() and not state.parent.exists()  # state removed after success
    write_row(_row(cols), tmp_path)
    r = read_results(tmp_path).iloc[0]

    assert r["n_test"] == 24 and r["clean_acc"] == 1.0 and r["aa_n"] == 16
    # headline: standard version at ε = 0.3, above every margin
    assert (r["robust_eps"], r["robust_acc"], r["aa_headline_version"]) == (0.3, 0.0, "standard")
    assert r["robust_acc"] <= r["clean_acc"]
    curve = list(r["aa_curve"])
    assert [(p["norm"], p["eps"], p["acc"], p["version"]) for p in curve] == [
        ("Linf", 0.1, 1.0, "custom"), ("Linf", 0.3, 0.0, "standard"), ("L2", 0.5, 0.0, "custom")]
    assert curve[1]["attacks"] == "apgd-ce,apgd-t,fab-t,square" and curve[0]["n"] == 16
    assert list(r["aa_flags"]) == []
    assert [p["acc"] for p in r["fgsm_curve"]] == [1.0, 1.0]
    assert [p["acc"] for p in r["pgd_linf_curve"]] == [1.0, 0.0]
    assert [p["acc"] for p in r["pgd_l2_curve"]] == [0.0]

    assert list(r["layer_names"]) == ["1"] and list(r["layer_kappa"]) == pytest.approx([1.0])
    assert list(r["layer_ranks"]) == [4]
    assert r["cond_max"] == pytest.approx(1.0) and r["log10_cond_prod"] == pytest.approx(0.0)
    assert r["flops_per_example"] == 2 * 4 * 4
    assert r["n_nonzero"] == 4  # the identity's diagonal; the bias is zero
    assert r["latency_ms_per_batch"] > 0 and r["dense_latency_ms_per_batch"] > 0 and r["latency_batch_size"] == 24
    # f(x) = x: ‖J‖ = 1 and ‖f(x)‖ = ‖x‖, so the relative condition number is exactly 1
    assert r["sensitivity_rel_cond"] == pytest.approx(1.0, rel=1e-4) and r["sensitivity_points"] == 8

    for c in ("clean_acc", "robust_acc", "cond_max", "log10_cond_prod", "lipschitz_upper", "latency_ms_per_batch",
              "sensitivity_rel_cond", "aa_seconds", "eval_seconds"):
        assert pd.api.types.is_float_dtype(type(r[c])) or isinstance(r[c], float), c
    for c in ("flops_per_example", "n_nonzero", "aa_n", "latency_batch_size"):
        assert isinstance(r[c], (int,)) or pd.api.types.is_integer(r[c]), c


def test_skip_attacks_keeps_conditioning_and_cost(tmp_path):
    ctx = EvalContext(device=torch.device("cpu"), n_eval=16, skip_attacks=True, progress=False)
    cols = evaluate(identity_classifier(), _data(), PROTOCOL, ctx)
    assert cols["robust_acc"] is None and cols["aa_curve"] == [] and cols["aa_flags"] == []
    assert cols["cond_max"] == pytest.approx(1.0) and cols["flops_per_example"] == 32
    assert cols["dense_latency_ms_per_batch"] is None


def test_format_summary_shows_the_evaluation(tmp_path):
    from bench.report import format_summary

    ctx = EvalContext(device=torch.device("cpu"), n_eval=16, dense_factory=identity_classifier, progress=False)
    cols = evaluate(identity_classifier(), _data(), PROTOCOL, ctx)
    cols["aa_flags"] = ["Linf eps=0.1 custom: something odd"]
    row = {"method_id": "dense", "track": "toy", "seed": 0, "n_params": 20, "n_params_dense": 20, **cols}
    text = format_summary(row, tmp_path / "x.parquet")
    for expected in ("robust acc  0.0000 at Linf eps 0.3", "AA Linf     0.1: 1.000  0.3: 0.000*", "AA L2",
                     "FGSM", "PGD L2", "cond_max    1", "32 FLOPs/example", "AA flags    1:", "something odd"):
        assert expected in text, (expected, text)
