"""dlrt and robust_dlrt (bench/dlrt.py): ranks that change during training, the matched count, the
conditioning, and the contract (checkpoint, model store) with layers whose shapes change."""

from __future__ import annotations

import json

import pytest
import torch

from bench.compression import inference_param_count
from bench.dlrt import budget_ranks, clamp_singular_values, tolerance_rank
from bench.method import BuildContext, OptimHP, build_optimizer
from bench.metrics.conditioning import layer_conditioning
from bench.models import build_model
from bench.registry import METHODS
from bench.results import read_results
from bench.train import Budget, train

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")
HP = OptimHP(lr=0.05, momentum=0.9, weight_decay=5e-4)


def _data(n=96, seed=0):
    # real digits would be slower to load than these tests take; the integrator does not care
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def _trained(name, compression=0.5, epochs=4, seed=0, **params):
    cls = METHODS.get(name)
    method = cls(cls.Params(**params))
    torch.manual_seed(seed)
    dense = build_model("digits_cnn")
    n_dense = inference_param_count(dense)
    model = method.build(dense, BuildContext(compression=compression, example_input=torch.zeros(1, 1, 8, 8),
                                             total_steps=None, seed=seed))
    x, y = _data()
    train(model, method, x, y, hp=HP, budget=Budget(epochs=epochs), batch_size=16, seed=seed, device=CPU,
          progress=False)
    method.finalize(model)
    return method, model, n_dense


def test_ranks_change_during_training_and_the_optimizer_follows():
    method, model, _ = _trained("dlrt", rank_mode="tolerance", tau=0.3, num_local_iter=3)
    d = method.describe(model)
    history = d["rank_history"]
    assert history[0]["step"] == 0 and history[0]["ranks"] == d["planned_ranks"]
    assert len({json.dumps(h["ranks"], sort_keys=True) for h in history}) > 1  # the ranks did move
    assert d["ranks"] != d["planned_ranks"] and d["truncations"] == 24 // 3 and not d["compression_matched"]
    # every parameter of the model is in the optimizer exactly once, at its current shape
    in_opt = [p for g in method.optimizer.param_groups for p in g["params"]]
    assert {id(p) for p in in_opt} == {id(p) for p in model.parameters()} and len(in_opt) == len(set(map(id, in_opt)))
    for _, layer in method.layers:  # the bases stay orthonormal through augmentation and truncation
        for B in (layer.U, layer.V):
            assert (B.t() @ B - torch.eye(layer.rank)).abs().max() < 1e-4
        st = method.optimizer.state[layer.S]
        assert st["exp_avg"].shape == layer.S.shape == (layer.rank, layer.rank)


@pytest.mark.parametrize("name,compression", [("dlrt", 0.5), ("robust_dlrt", 0.8)])
def test_budget_mode_meets_the_target_after_every_truncation(name, compression):
    method, model, n_dense = _trained(name, compression, num_local_iter=4)
    target = round((1 - compression) * n_dense)
    assert abs(inference_param_count(model) - target) <= 0.01 * target
    d = method.describe(model)
    assert d["compression_matched"] and d["truncations"] == 24 // 4
    for h in d["rank_history"]:
        assert abs(h["params"] - target) <= 0.01 * target, h


def test_conditioning_keeps_kappa_below_dlrt():
    beta = 0.075
    kappas = {}
    for name in ("dlrt", "robust_dlrt"):
        method, model, _ = _trained(name, num_local_iter=4, seed=1)
        adaptive = {n for n, _ in method.layers}
        kappas[name] = {c.name: c.kappa_raw for c in layer_conditioning(model) if c.name in adaptive}
        assert len(kappas[name]) == len(adaptive) == 2
    for layer, k in kappas["robust_dlrt"].items():
        assert k <= (1 + beta) * (1 + 1e-4), (layer, k)
        assert k < kappas["dlrt"][layer], (layer, k, kappas["dlrt"][layer])


def test_the_integrator_pieces():
    d = torch.tensor([4.0, 2.0, 1.0, 0.1])
    assert tolerance_rank(d, 0.05, 1, 10) == 3 and tolerance_rank(d, 0.5, 1, 10) == 1
    assert tolerance_rank(d, 0.5, 2, 10) == 2 and tolerance_rank(d, 0.01, 1, 2) == 2  # rmin, rmax
    c = clamp_singular_values(torch.tensor([10.0, 1.0, 0.5]), 0.2)
    assert float(c.max() / c.min()) == pytest.approx(1.2)
    # the budget keeps the singular values largest relative to their layer, and spends it
    spectra = {"a": torch.tensor([1.0, 0.9, 0.8, 0.7]), "b": torch.tensor([100.0, 1.0, 0.5, 0.1])}
    ranks = budget_ranks(spectra, {"a": (10, 10), "b": (10, 10)}, 100, floor={"a": 1, "b": 1},
                         cap={"a": 4, "b": 4})
    assert ranks == {"a": 4, "b": 1}


def test_model_store_and_bench_eval_reload_the_changed_ranks(tmp_path):
    from bench.cli import main

    threads = torch.get_num_threads()
    try:
        assert main(["run", "--method", "robust_dlrt", "--epochs", "1", "--no-attacks", "--quiet", "--threads", "1",
                     "--param", "num_local_iter=3", "--param", "rank_mode=tolerance", "--param", "tau=0.3", "--results-dir", str(tmp_path)]) == 0
        parent = read_results(tmp_path).iloc[0]
        details = json.loads(parent["method_details"])
        assert details["ranks"] != details["planned_ranks"]  # the stored model's shapes differ from a fresh build
        assert main(["eval", parent["run_id"], "--no-attacks", "--threads", "1", "--results-dir", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    rows = read_results(tmp_path)
    child = rows[rows["parent_run_id"] == parent["run_id"]].iloc[0]
    for c in ("clean_acc", "val_acc", "cond_max", "cond_max_raw", "n_params", "compression"):
        assert child[c] == parent[c], c
