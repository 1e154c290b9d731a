"""The trust verdict and the transfer attack on a real, tiny evaluation: a CNN trained for a second on the
digits, evaluated as it is ('ok') and behind a forward that detaches the input gradient ('suspect')."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.config import EvalProtocol
from bench.data import load_dataset
from bench.evaluate import EvalContext, TransferParent, evaluate
from bench.metrics.families.trust import slack, verdict
from bench.models import Normalize

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

#: the digits track's grids, cut down: 30 points, the standard AutoAttack at 0.1 (Square included)
PROTOCOL = EvalProtocol(
    n_eval=30, linf_eps=(0.1, 0.2), headline_eps=0.1, headline_version="standard", l2_eps=(),
    fgsm_eps=(0.0, 0.1), pgd_linf_eps=(0.1, 0.2), pgd_l2_eps=(0.5, 1.0), pgd_steps=10, sensitivity_points=8,
)


class DetachedInputGradient(nn.Module):
    """The same function as ``inner``, but no gradient reaches the input: x.detach() + 0·x is x in the
    forward pass and has a zero derivative, so every gradient-based attack stands still."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x.detach() + 0 * x)


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    data = load_dataset("digits")
    model = nn.Sequential(Normalize([0.3], [0.4]), nn.Conv2d(1, 8, 3, padding=1), nn.LeakyReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(8, 16, 3, padding=1), nn.LeakyReLU(), nn.Flatten(), nn.Linear(16 * 4 * 4, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(80):
        idx = torch.randint(0, len(data.y_train), (64,))
        loss = nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), data


def _evaluate(model, parent, data, tmp_path):
    source = lambda: TransferParent(run_id="dense-parent", sha256="0" * 64, load=lambda: parent,  # noqa: E731
                                    cache_dir=tmp_path / "transfer")
    ctx = EvalContext(device=torch.device("cpu"), n_eval=PROTOCOL.n_eval, progress=False, transfer_source=source)
    return evaluate(model, data, PROTOCOL, ctx)


def test_a_normal_model_is_ok_and_a_detached_gradient_is_suspect(trained, tmp_path):
    model, data = trained
    row = _evaluate(model, model, data, tmp_path)
    assert row["clean_acc_eval"] > 0.8  # it learned
    assert row["trust"] == "ok", row["trust"]
    assert set(row["trust_checks"]) >= {"aa_flags", "square", "transfer", "clean", "monotone", "progress"}
    # the transfer attack ran on the same points, from the given parent (here the model itself: white-box)
    assert row["transfer_source_run_id"] == "dense-parent" and row["transfer_n"] == 30
    assert row["transfer_acc"] <= row["clean_acc_eval"] and row["transfer_note"] == ""
    assert row["transfer_outcomes"][0]["attack"] == "transfer" and row["transfer_outcomes"][0]["n"] == 30
    cached = list((tmp_path / "transfer").glob("dense-parent_*.pt"))
    assert len(cached) == 1

    masked = DetachedInputGradient(model).eval()
    bad = _evaluate(masked, model, data, tmp_path)
    assert bad["clean_acc_eval"] == row["clean_acc_eval"]  # the same function
    assert bad["trust"].startswith("suspect: "), bad["trust"]
    reasons = bad["trust"].removeprefix("suspect: ")
    # the white-box attacks stand still; the black-box and transfer attacks do not
    assert bad["robust_acc"] > row["robust_acc"]
    assert "zero input gradient" in reasons and "Square (black-box) broke points" in reasons
    assert "transfer attack from the dense parent broke" in reasons and bad["transfer_acc"] < bad["robust_acc"]
    assert len(list((tmp_path / "transfer").glob("*.pt"))) == 1  # the parent was attacked once, then read back


def _row(**kw):
    base = {"clean_acc_eval": 0.9, "aa_curve": [{"norm": "Linf", "eps": 0.1, "acc": 0.5},
                                                {"norm": "Linf", "eps": 0.2, "acc": 0.1}],
            "pgd_linf_curve": [{"eps": 0.1, "acc": 0.5}, {"eps": 0.2, "acc": 0.1}], "aa_flags": []}
    return {**base, **kw}


def test_each_check_names_its_reason():
    n = 100
    assert verdict(_row(), n)[0] == "ok"
    assert slack(30) == 1 and slack(500) == 5
    cases = {
        "above AutoAttack's": _row(certified_linf_curve=[{"eps": 0.1, "acc": 0.6}]),
        "above the clean accuracy": _row(fgsm_curve=[{"eps": 0.0, "acc": 0.95}]),
        "AutoAttack L∞ accuracy rises": _row(aa_curve=[{"norm": "Linf", "eps": 0.1, "acc": 0.2},
                                                      {"norm": "Linf", "eps": 0.2, "acc": 0.21}]),
        "PGD L∞ accuracy rises": _row(pgd_linf_curve=[{"eps": 0.1, "acc": 0.2}, {"eps": 0.2, "acc": 0.3}]),
        "PGD L∞ broke 0 correctly classified": _row(pgd_linf_curve=[{"eps": 0.1, "acc": 0.9}, {"eps": 0.2, "acc": 0.9}]),
        "Square (black-box) broke points": _row(aa_flags=["Linf eps=0.1 standard: Square Attack has decreased the "
                                                          "robust accuracy of 3.00%. This might indicate ..."]),
        "transfer attack from the dense parent broke 20": _row(transfer_acc=0.3, transfer_eps=0.1),
    }
    for needle, row in cases.items():
        trust, _ = verdict(row, n)
        assert trust.startswith("suspect: ") and needle in trust, (needle, trust)
    # chance allowances: PGD may rise by 1 % of the points, a transfer may beat AutoAttack on 1 %
    assert verdict(_row(pgd_linf_curve=[{"eps": 0.1, "acc": 0.2}, {"eps": 0.2, "acc": 0.21}]), n)[0] == "ok"
    assert verdict(_row(transfer_acc=0.49, transfer_eps=0.1), n)[0] == "ok"
    # FGSM may rise (one step of size ε overshoots); a warning that is not about the model is no reason
    assert verdict(_row(fgsm_curve=[{"eps": 0.1, "acc": 0.3}, {"eps": 0.2, "acc": 0.5}],
                        aa_flags=["clean: UserWarning: something in a library"]), n)[0] == "ok"


def test_bench_eval_transfer_adds_the_columns_to_a_stored_row(real_runs, tmp_path, capsys):
    import shutil

    from bench.cli import main
    from bench.results import read_results

    d = tmp_path / "results"
    shutil.copytree(real_runs, d, ignore=shutil.ignore_patterns(".claims", ".state"))
    rows = read_results(d)
    lowrank = rows[rows["method"] == "vanilla_lowrank"].iloc[0]
    dense = rows[(rows["method"] == "dense") & (rows["seed"] == lowrank["seed"])].iloc[0]
    assert lowrank["transfer_acc"] != lowrank["transfer_acc"]  # NaN: written with --no-attacks
    threads = torch.get_num_threads()
    try:
        assert main(["eval", lowrank["run_id"], "--transfer", "--threads", "1", "--results-dir", str(d)]) == 0
        out = capsys.readouterr().out
        assert main(["eval", dense["run_id"], "--transfer", "--threads", "1", "--results-dir", str(d)]) == 0
        assert main(["eval", lowrank["run_id"], "--transfer", "--n-eval", "5", "--results-dir", str(d)]) == 2
        assert "--transfer keeps the run's attacked points" in capsys.readouterr().err
    finally:
        torch.set_num_threads(threads)
    rows = read_results(d)
    child = rows[rows["parent_run_id"] == lowrank["run_id"]].iloc[0]
    assert "transfer" in out and dense["run_id"] in out
    assert child["transfer_source_run_id"] == dense["run_id"] and child["transfer_n"] == len(lowrank["attacked_indices"])
    assert 0 <= child["transfer_acc"] <= child["clean_acc_eval"] and child["transfer_note"] == ""
    # the parent's evaluation is kept as it was, on the same points; nothing was retrained
    for c in ("clean_acc", "clean_acc_eval", "cond_max", "operator_cond_max", "train_seconds"):
        assert child[c] == lowrank[c], c
    assert list(child["attacked_indices"]) == list(lowrank["attacked_indices"])
    assert child["trust"] == "ok" and "clean" in list(child["trust_checks"])
    import pandas as pd

    from bench.export import export

    export(d, tmp_path / "table.csv", "csv")  # the exports carry the verdict (over the configuration's rows)
    table = pd.read_csv(tmp_path / "table.csv").set_index("method")
    assert table.loc["vanilla_lowrank", "trust"] == "ok" and table.loc["vanilla_lowrank", "transfer_acc_mean"] >= 0
    dense_child = rows[rows["parent_run_id"] == dense["run_id"]].iloc[0]
    assert dense_child["transfer_note"] == "the row is the dense model itself"
    assert dense_child["transfer_acc"] != dense_child["transfer_acc"]  # NaN


def test_rows_from_before_show_not_evaluated_on_the_leaderboard(real_runs, tmp_path):
    import pandas as pd

    from bench.results import read_results
    from leaderboard_app import data as lbd

    new = [c for c in read_results(real_runs).columns if c.startswith(("transfer", "trust", "certified"))]
    old = read_results(real_runs).drop(columns=new)
    old["robust_acc"], old["aa_n"] = 0.5, 100
    for i, r in old.iterrows():
        pd.DataFrame([r]).to_parquet(tmp_path / f"old-{i}.parquet", index=False)  # as written before the columns
    loaded = lbd.load(tmp_path)
    assert not loaded.skipped and loaded.runs["trust"].isna().all()
    shown = lbd.display_table(lbd.leaderboard(loaded.runs))
    assert (shown["trust"] == "not evaluated").all()
    assert (shown["transfer 95% CI"] == "not evaluated").all() and (shown["certified 95% CI"] == "not evaluated").all()
    assert shown["transfer acc"].isna().all()  # empty, not 0
    assert (shown["robust 95% CI"] != "not evaluated").all()
    # over seeds: suspect when any seed is
    runs = loaded.runs.copy()
    runs["trust"] = ["ok" if m == "vanilla_lowrank" or s == 0 else "suspect: a; b"
                     for m, s in zip(runs["method"], runs["seed"])]
    badges = lbd.display_table(lbd.leaderboard(runs)).set_index("method")["trust"]
    assert badges["dense"] == "⚠ suspect (1 of 2 seeds)" and badges["vanilla_lowrank"] == "ok"


def test_the_transfer_attack_waits_for_a_dense_parent_another_process_is_training(real_runs, tmp_path):
    """Two sweeps side by side: the compressed row reaches its transfer attack while the other process
    still trains its dense parent (its configuration is claimed). It waits for the parent's row, and
    only while that process lives."""
    import json
    import os
    import platform
    import shutil
    import subprocess
    import threading
    import time

    import pandas as pd

    from bench.claims import Claim
    from bench.reevaluate import dense_parent, parent_config_id, wait_for_parent
    from bench.results import read_results

    d = tmp_path / "results"
    d.mkdir()
    rows = read_results(real_runs)
    lowrank = rows[rows["method"] == "vanilla_lowrank"].iloc[0].to_dict()
    dense = rows[(rows["method"] == "dense") & (rows["seed"] == lowrank["seed"])].iloc[0].to_dict()
    assert parent_config_id(lowrank) == dense["config_id"]
    reason = dense_parent(d, lowrank)
    assert isinstance(reason, str) and reason.startswith("no dense run")
    assert wait_for_parent(d, lowrank, reason, wait_s=30, poll_s=0.1) == reason  # nobody trains it: no wait

    def hold(seconds: float) -> subprocess.Popen:  # another process holding the parent's claim
        proc = subprocess.Popen(["sleep", str(seconds)])
        claim = Claim(d, dense["config_id"])
        claim.path.parent.mkdir(parents=True, exist_ok=True)
        claim.path.write_text(json.dumps({"host": platform.node(), "pid": proc.pid}))
        threading.Thread(target=proc.wait, daemon=True).start()  # reaped when it ends, as its own parent would
        return proc

    # the parent's training ends without a row: the wait ends with the process, and says so
    proc = hold(1.0)
    t0 = time.monotonic()
    got = wait_for_parent(d, lowrank, reason, wait_s=30, poll_s=0.1, log=lambda m: None)
    assert isinstance(got, str) and "which ended without an ok row" in got and dense["config_id"] in got
    assert time.monotonic() - t0 < 20

    # the parent's row and model land while the compressed row waits: it gets the parent
    proc = hold(60.0)

    def land():
        time.sleep(1.0)
        shutil.copytree(real_runs / ".models", d / ".models", dirs_exist_ok=True)
        pd.DataFrame([dense]).to_parquet(tmp_path / "dense-parent.parquet", index=False)
        os.replace(tmp_path / "dense-parent.parquet", d / "dense-parent.parquet")  # whole, as write_row writes

    thread = threading.Thread(target=land)
    thread.start()
    try:
        logged = []
        got = wait_for_parent(d, lowrank, reason, wait_s=30, poll_s=0.1, log=logged.append)
    finally:
        thread.join()
        proc.kill()
    assert not isinstance(got, str) and got["run_id"] == dense["run_id"]
    assert "is being trained by host" in logged[0] and "landed after" in logged[-1]
