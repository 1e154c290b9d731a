"""Every registered method, on CPU at tiny sizes, through the real trainer; the low-rank layers,
the rank plan, the CondLR invariants and the pruning masks."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.compression import inference_param_count
from bench.lowrank import (LowRankConv2d, LowRankLinear, classifier_name, layer_condition,
                           lowrank_layers, plan_ranks)
from bench.method import BuildContext, Method, NoParams, OptimHP, build_optimizer
from bench.metrics.cost import inference_form
from bench.models import build_model
from bench.registry import METHODS
from bench.train import Budget, train

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py
HP = OptimHP(lr=0.05, momentum=0.9, weight_decay=5e-4)


def _data(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def _build(name: str, compression: float, seed: int = 0, **params):
    cls = METHODS.get(name)
    method = cls(cls.Params(**params))
    torch.manual_seed(seed)
    dense = build_model("digits_cnn")
    n_dense = inference_param_count(dense)
    c = compression if cls.compresses else 0.0
    ctx = BuildContext(compression=c, example_input=torch.zeros(1, 1, 8, 8), total_steps=None, seed=seed)
    return method, method.build(dense, ctx), n_dense, c


@pytest.mark.parametrize("name", METHODS.names())
def test_method_trains_meets_the_count_and_round_trips(name):
    method, model, n_dense, c = _build(name, 0.8)
    x, y = _data()
    stats = train(model, method, x, y, hp=HP, budget=Budget(epochs=1), batch_size=16, device=CPU, progress=False)
    assert stats.steps == 3 and torch.isfinite(torch.tensor(stats.last_loss))
    method.finalize(model)
    target = round((1 - c) * n_dense)
    assert abs(inference_param_count(model) - target) <= 0.01 * target
    json.dumps(method.describe(model))

    # the state dict loads into a fresh model of the same method and gives the same function, the way
    # the model store reloads it (bench.reevaluate.load_stored_model): the method's state first (a
    # rank-changing method resizes its layers there), then the state dict
    other, fresh, _, _ = _build(name, 0.8, seed=1)
    other.finalize(fresh)
    other.restore_checkpoint_state(method.checkpoint_state(), fresh)
    fresh.load_state_dict(model.state_dict())
    model.eval(), fresh.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), fresh(x), atol=1e-6)


@pytest.mark.parametrize("compression", [0.0, 0.3, 0.5, 0.8, 0.9])
@pytest.mark.parametrize("arch", ["digits_cnn", "lenet5"])
def test_rank_plan_matches_the_count(arch, compression):
    model = build_model(arch)
    head = classifier_name(model)
    plan = plan_ranks(model, compression, keep_dense=[head])
    assert abs(plan.planned_params - plan.target) <= 0.01 * plan.target
    assert head not in plan.ranks and head in plan.kept_dense
    if compression == 0.0:
        assert plan.ranks == {}  # at full rank factorising saves nothing
    for name, r in plan.ranks.items():
        w = model.get_submodule(name).weight
        n, m = w.shape[0], w[0].numel()
        assert 1 <= r and r * (n + m) < n * m


def test_rank_plan_rejects_an_unreachable_target():
    with pytest.raises(ValueError, match="cannot be matched"):
        plan_ranks(build_model("digits_cnn"), 0.995, keep_dense=["9"])


@pytest.mark.parametrize("mode,kappa", [("approx_orth", 1.5), ("approx_orth", 1.1), ("mean", 1.5)])
def test_condlr_invariants_hold_after_every_step(mode, kappa):
    method, model, _, _ = _build("robust_lowrank", 0.5, mode=mode, kappa=kappa)
    bound = kappa if mode == "approx_orth" else 1.0
    opt = method.make_optimizer(model, OptimHP(lr=0.2, momentum=0.9, weight_decay=5e-4))
    for g in opt.param_groups:
        g["lr"] = 0.2
    layers = lowrank_layers(model)
    assert [n for n, _ in layers] == ["1", "3", "7", "9"]  # every weight layer, the classifier included
    x, y = _data(64)
    for step in range(20):
        opt.zero_grad()
        F.cross_entropy(model(x[step % 4 * 16:][:16]), y[step % 4 * 16:][:16]).backward()
        opt.step()
        for name, layer in layers:
            U, S, V = layer.lowrank_factors()
            eye = torch.eye(layer.rank)
            assert (U.t() @ U - eye).norm() < 1e-4, (step, name)
            assert (V.t() @ V - eye).norm() < 1e-4, (step, name)
            s = torch.linalg.svdvals(S.detach().double())
            assert s[0] / s[-1] <= bound * (1 + 1e-4), (step, name, float(s[0] / s[-1]))
    method.finalize(model)
    assert max(layer_condition(layer) for _, layer in layers) <= bound * (1 + 1e-5)
    # the network equals the dense network built from U S Vᵀ (= its merged inference form)
    merged = inference_form(model).eval()
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), merged(x), atol=1e-5)
    assert inference_param_count(merged) == inference_param_count(model)


@pytest.mark.parametrize("rank", [3, 9])  # 9 = full rank: one convolution with the kernel U S Vᵀ
@pytest.mark.parametrize("with_s", [True, False])
def test_factorised_conv_equals_the_dense_conv(rank, with_s):
    torch.manual_seed(0)
    conv = nn.Conv2d(5, 7, 3, stride=2, padding=1)
    conv2 = LowRankConv2d.from_dense(conv, min(rank, 7), with_s=with_s)
    with torch.no_grad():  # a full S, as training makes it, at the weights' usual scale
        for p in conv2.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(4, 5, 11, 11)
    dense = F.conv2d(x, conv2.dense_weight(), conv2.bias, stride=2, padding=1)
    with torch.no_grad():
        assert (conv2(x) - dense).abs().max() < 1e-5
        assert (conv2.merged()(x) - dense).abs().max() < 1e-5
    assert inference_param_count(conv2) == inference_param_count(conv2.merged())


def test_factorised_linear_equals_the_dense_linear():
    torch.manual_seed(0)
    lin = LowRankLinear.from_dense(nn.Linear(20, 12), 4)
    x = torch.randn(6, 20)
    U, S, V = lin.lowrank_factors()
    with torch.no_grad():
        ref = x @ (U @ S @ V.t()).t() + lin.bias
        assert (lin(x) - ref).abs().max() < 1e-5
        assert (lin.merged()(x) - ref).abs().max() < 1e-5
    assert inference_param_count(lin) == 4 * (20 + 12) + 12 == inference_param_count(lin.merged())


def test_pruning_masks_stay_applied_after_optimizer_steps():
    method, model, n_dense, _ = _build("pruning", 0.8)
    method.post_step(model, 1.0)  # the schedule's end: the final sparsity
    masked = [m for m in model.modules() if hasattr(m, "weight_mask")]
    assert masked and sum(int((m.weight_mask == 0).sum()) for m in masked) == method.to_remove
    opt = method.make_optimizer(model, HP)
    x, y = _data()
    for _ in range(5):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model(x)
    for m in masked:
        assert torch.all(m.weight[m.weight_mask == 0] == 0)
    assert inference_param_count(model) == round(0.2 * n_dense)


def test_pruning_schedule_is_gradual_and_monotone():
    method, _, _, _ = _build("pruning", 0.8)
    amounts = [method.amount_at(p / 100) for p in range(101)]
    assert amounts[0] == 0 and amounts[5] == 0  # dense warm-up (start = 0.1)
    assert amounts == sorted(amounts) and amounts[-1] == method.to_remove
    assert amounts[60] == method.to_remove and 0 < amounts[30] < method.to_remove  # done by end = 0.6


def test_svd_prune_switches_the_optimizer_to_the_factors():
    method, model, _, _ = _build("svd_prune", 0.8, switch=0.5)
    x, y = _data()
    opt = build_optimizer(method, model, HP)  # as the trainer does: the method gets it via attach_optimizer
    assert method.optimizer is opt
    method.post_step(model, 0.4)
    assert not lowrank_layers(model)
    method.post_step(model, 0.5)
    layers = lowrank_layers(model)
    assert [n for n, _ in layers] == sorted(method.plan.ranks)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_opt == {id(p) for p in model.parameters()}
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()


@pytest.mark.parametrize("name", METHODS.names())
def test_one_name_per_method(name):
    """The registered name is the class name in CamelCase (any capitals) and its parameters class is that + 'Params'."""
    cls = METHODS.get(name)
    assert cls.__name__.lower() == name.replace("_", "").lower(), cls.__name__
    assert cls.Params is NoParams or cls.Params.__name__ == cls.__name__ + "Params", cls.Params.__name__
    assert cls.summary(), "a method's docstring says what it is (bench list)"


def test_a_method_can_decline_a_track(tmp_path, capsys):
    """Method.skip(track): `bench run` stops before training with the reason; a sweep leaves it out."""
    from bench.cli import main
    from bench.config import RunConfig
    from bench.method import MethodSkipped
    from bench.prepare import prepare

    class NoDigits(Method):
        """Declines every digits track."""

        @classmethod
        def skip(cls, track):
            return "needs colour images" if track.dataset == "digits" else None

    METHODS.add("_no_digits", NoDigits)
    try:
        with pytest.raises(MethodSkipped, match="needs colour images"):
            prepare(RunConfig(method="_no_digits", track="digits-cnn", results_dir=str(tmp_path)))
        assert prepare(RunConfig(method="dense", track="digits-cnn", results_dir=str(tmp_path))).config_id()
        assert main(["run", "--method", "_no_digits", "--track", "digits-cnn", "--results-dir", str(tmp_path)]) == 2
        assert "needs colour images" in capsys.readouterr().err
        assert main(["sweep", "--track", "digits-cnn", "--methods", "dense,_no_digits", "--seeds", "0,1",
                     "--results-dir", str(tmp_path), "--dry-run"]) == 0
        out = capsys.readouterr().out
        assert "2 configurations" in out and out.count("left out:") == 1 and "needs colour images" in out
        assert not list(tmp_path.glob("*.parquet"))
    finally:
        METHODS._entries.pop("_no_digits", None)
