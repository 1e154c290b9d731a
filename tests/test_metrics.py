"""The metrics against independent truth: matrices with known singular values, models whose
robustness is known in closed form, FLOPs counted by hand, Jacobians computed exactly."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import warnings

import pytest
import torch
import torch.nn.utils.prune
from torch import nn

from bench.metrics.attacks import attack_curve, fgsm, pgd
from bench.metrics.autoattack import AAStep, autoattack_curve, capture_flags, plan_curve
from bench.metrics.conditioning import (conditioning_summary, layer_conditioning, lowrank_singular_values,
                                        matrix_condition)
from bench.metrics.cost import flops_per_example, inference_form, latency_ms
from bench.metrics.sensitivity import jacobian_spectral_norm, relative_condition_numbers



pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def _with_singular_values(s, rows, cols, seed=0):
    g = torch.Generator().manual_seed(seed)
    q1 = torch.linalg.qr(torch.randn(rows, rows, generator=g, dtype=torch.float64)).Q
    q2 = torch.linalg.qr(torch.randn(cols, cols, generator=g, dtype=torch.float64)).Q
    d = torch.zeros(rows, cols, dtype=torch.float64)
    d[range(len(s)), range(len(s))] = torch.tensor(s, dtype=torch.float64)
    return q1 @ d @ q2.T


# -- conditioning ---------------------------------------------------------------------------------

@pytest.mark.parametrize("s, rows, cols, kappa", [
    ([5.0, 2.0, 0.5], 3, 3, 10.0),
    ([7.0, 7.0], 2, 6, 1.0),
    ([100.0, 3.0, 1e-3], 5, 3, 1e5),
    ([4.0, 2.0, 0.0, 0.0], 4, 4, 2.0),  # exact zeros (rank 2) are ignored, not infinite
])
def test_kappa_of_matrices_with_known_singular_values(s, rows, cols, kappa):
    assert matrix_condition(_with_singular_values(s, rows, cols)) == pytest.approx(kappa, rel=1e-6)


class TinyLowRank(nn.Module):
    """W = U S Vᵀ with a child Linear that the conditioning walk must not descend into."""

    def __init__(self, u, s, v):
        super().__init__()
        self.U, self.V = nn.Parameter(u.float()), nn.Parameter(v.float())
        self.S = None if s is None else nn.Parameter(s.float())
        self.decoy = nn.Linear(2, 2)

    def lowrank_factors(self):
        return self.U, self.S, self.V

    def forward(self, x):
        s = torch.eye(self.U.shape[1]) if self.S is None else self.S
        return x @ (self.U @ s @ self.V.T).T


def test_lowrank_kappa_is_kappa_of_S_for_orthonormal_factors_and_of_USVt_otherwise():
    g = torch.Generator().manual_seed(1)
    u = torch.linalg.qr(torch.randn(8, 3, generator=g, dtype=torch.float64)).Q
    v = torch.linalg.qr(torch.randn(6, 3, generator=g, dtype=torch.float64)).Q
    s = _with_singular_values([3.0, 1.5, 0.6], 3, 3, seed=2)
    sv = lowrank_singular_values(u, s, v)
    assert sv.max() / sv.min() == pytest.approx(5.0, rel=1e-9)
    # drifted, non-orthonormal factors: still the singular values of the product
    u2 = u @ torch.tensor([[2.0, 0.3, 0.0], [0.0, 1.0, 0.1], [0.0, 0.0, 0.5]], dtype=torch.float64)
    ref = torch.linalg.svdvals(u2 @ s @ v.T)[:3]
    assert torch.allclose(torch.sort(lowrank_singular_values(u2, s, v), descending=True).values, ref, rtol=1e-9)
    assert torch.allclose(lowrank_singular_values(u, None, v), torch.ones(3, dtype=torch.float64))


def test_layer_conditioning_walks_linear_conv_pruned_and_lowrank_layers():
    from bench.models import Normalize

    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 2, bias=False)
    w = _with_singular_values([4.0, 2.0, 1.0], 3, 8, seed=3).float()
    conv.weight.data = w.reshape(3, 2, 2, 2)
    lin = nn.Linear(4, 4)
    lin.weight.data = _with_singular_values([9.0, 3.0, 3.0, 1.0], 4, 4, seed=4).float()
    pruned = nn.Linear(3, 3)
    pruned.weight.data = torch.diag(torch.tensor([6.0, 2.0, 5.0]))
    torch.nn.utils.prune.custom_from_mask(pruned, "weight", torch.tensor([[1, 0, 0], [0, 0, 0], [0, 0, 1]]))
    g = torch.Generator().manual_seed(5)
    u = torch.linalg.qr(torch.randn(5, 2, generator=g, dtype=torch.float64)).Q
    v = torch.linalg.qr(torch.randn(4, 2, generator=g, dtype=torch.float64)).Q
    low = TinyLowRank(u, torch.diag(torch.tensor([8.0, 2.0], dtype=torch.float64)), v)
    model = nn.Sequential(Normalize([0.5, 0.5], [0.2, 0.2]), conv, nn.BatchNorm2d(3), nn.ReLU(),
                          nn.Sequential(lin, low), pruned)
    layers = layer_conditioning(model)
    assert [L.name for L in layers] == ["1", "4.0", "4.1", "5"]
    assert [L.kind for L in layers] == ["conv", "linear", "lowrank", "linear"]
    assert [L.kappa for L in layers] == pytest.approx([4.0, 9.0, 4.0, 6.0 / 5.0], rel=1e-5)
    assert [L.spectral_norm_raw for L in layers] == pytest.approx([4.0, 9.0, 8.0, 6.0], rel=1e-5)
    # the conv's folded matrix is diag(a)·W·diag(1/std): a fresh BN's a = 1/√(1 + ε), std = 0.2,
    # uniform scales that leave κ alone and multiply the norm
    scale = 5.0 / math.sqrt(1.0 + 1e-5)
    assert [L.folded for L in layers] == ["bn+input_norm", "", "", ""]
    assert [L.kappa_raw for L in layers] == pytest.approx([L.kappa for L in layers], rel=1e-9)
    assert [L.spectral_norm for L in layers] == pytest.approx([4.0 * scale, 9.0, 8.0, 6.0], rel=1e-5)
    assert [L.rank for L in layers] == [3, 4, 2, 2]  # the pruned-away diagonal entry is a zero singular value
    summary = conditioning_summary(layers)
    assert summary["cond_max"] == pytest.approx(9.0, rel=1e-5)
    assert summary["cond_max_raw"] == pytest.approx(9.0, rel=1e-5)
    assert summary["log10_cond_prod"] == pytest.approx(math.log10(4.0 * 9.0 * 4.0 * 1.2), rel=1e-5)
    assert summary["lipschitz_upper"] == pytest.approx(4.0 * scale * 9.0 * 8.0 * 6.0, rel=1e-5)
    assert summary["layer_spectral_norm_raw"] == pytest.approx([4.0, 9.0, 8.0, 6.0], rel=1e-5)
    assert summary["layer_folded"] == ["bn+input_norm", "", "", ""]
    assert summary["layer_names"] == ["1", "4.0", "4.1", "5"]
    assert all(isinstance(k, float) for k in summary["layer_kappa"])


from toy_models import identity_classifier, separable  # noqa: E402

CE = ("apgd-ce",)


def test_autoattack_keeps_every_point_below_the_margin_and_none_above_it():
    model = identity_classifier()
    x, y = separable()
    steps = [AAStep("Linf", 0.1, "custom", CE), AAStep("Linf", 0.3, "custom", CE),
             AAStep("L2", 0.1, "custom", CE), AAStep("L2", 0.5, "custom", CE)]
    res = autoattack_curve(model, x, y, steps, seed=0)
    assert [(p["norm"], p["eps"], p["acc"]) for p in res.points] == [
        ("Linf", 0.1, 1.0), ("Linf", 0.3, 0.0), ("L2", 0.1, 1.0), ("L2", 0.5, 0.0)]
    assert res.clean_acc == 1.0
    assert all(p["n"] == len(y) and p["attacks"] == "apgd-ce" for p in res.points)


def test_autoattack_curve_is_nested_monotone_and_counts_misclassified_points_as_broken():
    model = identity_classifier()
    x, y = separable()
    y = y.clone()
    y[0] = 3  # a point the model gets wrong before any attack
    steps = plan_curve(linf_eps=(0.3, 0.1, 0.2), headline_eps=0.1, curve_attacks=CE, headline_version="standard")
    assert [(s.eps, s.version) for s in steps] == [(0.1, "standard"), (0.2, "custom"), (0.3, "custom")]
    steps = [AAStep(s.norm, s.eps, "custom", CE) for s in steps]  # standard's Square is slow; CE suffices here
    res = autoattack_curve(model, x, y, steps)
    accs = [p["acc"] for p in res.points]
    assert res.clean_acc == pytest.approx(31 / 32)
    assert accs[0] == pytest.approx(31 / 32)  # ε = 0.1 is below every margin
    assert accs[-1] == 0.0
    assert all(a >= b for a, b in zip(accs, accs[1:])) and accs[0] <= res.clean_acc
    masks = [res.robust[("Linf", e)] for e in (0.1, 0.2, 0.3)]
    assert all(bool((later <= earlier).all()) for earlier, later in zip(masks, masks[1:]))
    assert res.points[1]["n_attacked"] == int(masks[0].sum())


def test_plan_curve_forced_version_and_validation():
    steps = plan_curve(linf_eps=(0.1,), l2_eps=(1.0, 0.5), headline_eps=0.05, force_version="plus")
    assert [(s.norm, s.eps, s.version) for s in steps] == [
        ("Linf", 0.05, "plus"), ("Linf", 0.1, "plus"), ("L2", 0.5, "plus"), ("L2", 1.0, "plus")]
    assert steps[0].attacks[:2] == ("apgd-ce", "apgd-dlr")
    with pytest.raises(ValueError):
        plan_curve(linf_eps=(0.1,), force_version="fast")
    with pytest.raises(ValueError):
        plan_curve(linf_eps=(0.1,), curve_attacks=("pgd",))
    with pytest.raises(ValueError):
        plan_curve(linf_eps=(0.1,), headline_eps=0.1, headline_version="fast")


def test_a_custom_headline_runs_the_curve_attacks_there_too():
    """The first-run track's protocol: no standard AutoAttack anywhere, and the protocol says so."""
    from bench.registry import TRACKS

    steps = plan_curve(linf_eps=(0.2,), headline_eps=0.1, curve_attacks=("apgd-ce", "apgd-t"),
                       headline_version="custom")
    assert [(s.eps, s.version, s.attacks) for s in steps] == [(0.1, "custom", ("apgd-ce", "apgd-t")),
                                                              (0.2, "custom", ("apgd-ce", "apgd-t"))]
    quick = TRACKS.get("digits-quick")
    assert quick.eval.headline_version == "custom" and "no Square" in quick.description
    assert (quick.arch, quick.epochs, quick.lr) == (TRACKS.get("digits-cnn").arch, TRACKS.get("digits-cnn").epochs,
                                                    TRACKS.get("digits-cnn").lr)
    with pytest.raises(ValueError, match="headline_version"):
        dataclasses.replace(quick.eval, headline_version="fast")


def test_standard_version_on_a_tiny_model():
    """The full standard set (APGD-CE, APGD-T, FAB-T, Square) runs through and agrees with the margin."""
    model = identity_classifier()
    x, y = separable(n_per_class=2)
    res = autoattack_curve(model, x, y, plan_curve(linf_eps=(0.3,), headline_eps=0.3), seed=0)
    (p,) = res.points
    assert (p["version"], p["attacks"], p["acc"]) == ("standard", "apgd-ce,apgd-t,fab-t,square", 0.0)


class _Probabilities(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = identity_classifier()

    def forward(self, x):
        return torch.softmax(self.net(x), dim=1)


def _dropout_in_train_mode():
    model = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(4, 4))
    with torch.no_grad():
        model[2].weight.copy_(torch.eye(4))
        model[2].bias.zero_()
    return model.train()


def _constant():
    model = identity_classifier()
    with torch.no_grad():
        model[1].weight.zero_()  # every logit 0: class 0 is "correct" for its points, with zero gradient
    return model


@pytest.mark.parametrize("make, expected", [
    (_dropout_in_train_mode, "randomized defense"),
    (_Probabilities, "probability distribution"),
    (_constant, "zero gradient"),
])
def test_pyautoattack_warnings_are_captured_as_flags(make, expected, caplog):
    model = make()
    x, y = separable(n_per_class=4)
    with caplog.at_level(logging.WARNING):
        # APGD-T's DLR loss is where pyautoattack checks for zero gradients
        res = autoattack_curve(model, x, y, [AAStep("Linf", 0.05, "custom", ("apgd-ce", "apgd-t"))], seed=0)
    hits = [f for f in res.flags if expected in f]
    assert hits, res.flags
    assert hits[0].startswith("Linf eps=0.05 custom: ")
    assert not [r for r in caplog.records if r.name == "auto-attack"]  # captured, not printed
    if make is _dropout_in_train_mode:
        assert any(f.startswith("model: in train mode") for f in res.flags)


def test_capture_flags_collects_python_warnings_and_restores_the_logger():
    logger = logging.getLogger("auto-attack")
    before = (logger.level, logger.propagate, list(logger.handlers))
    sink: list[str] = []
    with capture_flags("L2 eps=1", sink):
        warnings.warn("something odd", UserWarning)
        logger.warning("twice")
        logger.warning("twice")
        logger.debug("progress, not a flag")
    assert sink == ["L2 eps=1: twice (x2)", "L2 eps=1: UserWarning: something odd"]
    assert (logger.level, logger.propagate, list(logger.handlers)) == before


class _Counting(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


def test_interrupted_curve_resumes_from_the_state_files(tmp_path):
    model = _Counting(identity_classifier()).eval()
    x, y = separable()
    steps = [AAStep("Linf", 0.1, "custom", ("apgd-ce", "apgd-t")), AAStep("Linf", 0.3, "custom", CE)]

    def interrupt_at_second_step(msg):
        if "eps=0.3" in msg:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        autoattack_curve(model, x, y, steps, state_dir=tmp_path, progress=interrupt_at_second_step)
    assert len(list(tmp_path.glob("aa_Linf_eps0.1_*.json"))) == 1

    calls_at_step = []
    model.calls = 0
    res = autoattack_curve(model, x, y, steps, state_dir=tmp_path,
                           progress=lambda msg: calls_at_step.append(model.calls))
    # the finished ε = 0.1 is read back: no forward pass between its start and the next step's
    assert calls_at_step[1] == calls_at_step[0]
    assert [p["acc"] for p in res.points] == [1.0, 0.0]
    # the per-point masks (the row's aa_outcomes) of the read-back ε are those of an uninterrupted run
    whole = autoattack_curve(model, x, y, steps)
    assert all(torch.equal(res.robust[k], whole.robust[k]) for k in whole.robust)

    # the same evaluation again: every ε is read back, only the clean pass runs the model
    model.calls = 0
    again = autoattack_curve(model, x, y, steps, state_dir=tmp_path)
    assert [p["acc"] for p in again.points] == [1.0, 0.0]
    assert model.calls <= 2


def test_half_finished_state_runs_only_the_remaining_attacks(tmp_path):
    model = identity_classifier()
    x, y = separable()
    step = AAStep("Linf", 0.1, "custom", ("apgd-ce", "apgd-t"))
    autoattack_curve(model, x, y, [step], state_dir=tmp_path)
    (path,) = tmp_path.glob("*.json")
    state = json.loads(path.read_text())
    assert sorted(state["_run_attacks"]) == ["apgd-ce", "apgd-t"]
    # pretend the run stopped after APGD-CE, which had broken points 0 and 5
    state["_run_attacks"] = ["apgd-ce"]
    state["_robust_flags"][0] = state["_robust_flags"][5] = False
    path.write_text(json.dumps(state))
    res = autoattack_curve(model, x, y, [step], state_dir=tmp_path)
    assert res.points[0]["acc"] == pytest.approx(30 / 32)
    assert not res.robust[("Linf", 0.1)][[0, 5]].any()
    assert sorted(json.loads(path.read_text())["_run_attacks"]) == ["apgd-ce", "apgd-t"]
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # the remainder's own state is gone


def test_a_state_from_another_model_is_never_reused(tmp_path):
    x, y = separable()
    step = AAStep("Linf", 0.3, "custom", CE)
    autoattack_curve(identity_classifier(), x, y, [step], state_dir=tmp_path)
    other = identity_classifier()
    with torch.no_grad():
        other[1].weight.mul_(2.0)
    autoattack_curve(other, x, y, [step], state_dir=tmp_path)
    assert len(list(tmp_path.glob("*.json"))) == 2


# -- FGSM / PGD -----------------------------------------------------------------------------------

def test_fgsm_and_pgd_against_the_known_margin():
    model = identity_classifier()
    x, y = separable()
    assert attack_curve(model, x, y, (0.0, 0.1, 0.3), attack="fgsm") == [
        {"eps": 0.0, "acc": 1.0}, {"eps": 0.1, "acc": 1.0}, {"eps": 0.3, "acc": 0.0}]
    assert [p["acc"] for p in attack_curve(model, x, y, (0.1, 0.3), attack="pgd", norm="Linf", steps=10)] == [1.0, 0.0]
    assert [p["acc"] for p in attack_curve(model, x, y, (0.1, 0.5), attack="pgd", norm="L2", steps=10)] == [1.0, 0.0]


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_pgd_stays_in_the_ball_and_the_box(norm):
    model = identity_classifier()
    x, y = separable()
    x[0, 0, 0, 0] = 0.0
    eps = 0.2
    xa = pgd(model, x, y, eps, norm=norm, steps=5, generator=torch.Generator().manual_seed(0))
    d = (xa - x).flatten(1)
    size = d.abs().max(1).values if norm == "Linf" else d.norm(dim=1)
    assert bool((size <= eps + 1e-6).all()) and xa.min() >= 0 and xa.max() <= 1
    xf = fgsm(model, x, y, eps)
    assert (xf - x).abs().max() <= eps + 1e-6 and xf.min() >= 0


class _FlipsOnCall(nn.Module):
    """Wraps a classifier; on the forward calls numbered in ``flip`` it swaps the two logits
    (so that iterate is misclassified) and records every input it saw."""

    def __init__(self, inner, flip):
        super().__init__()
        self.inner, self.flip, self.seen = inner, set(flip), []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        out = self.inner(x)
        return out.flip(1) if len(self.seen) in self.flip else out


def test_pgd_counts_a_point_broken_when_any_iterate_misclassifies_it():
    x, y = separable()
    x, y = x[:1], y[:1]
    # call 1 is the clean check (random start), calls 2.. the iterates; the 3rd is misclassified,
    # the last one is not: the attack must return the 3rd call's input
    model = _FlipsOnCall(identity_classifier(), flip={3})
    xa = pgd(model, x, y, 0.1, steps=5, generator=torch.Generator().manual_seed(0))
    assert len(model.seen) == 6
    assert torch.equal(xa, model.seen[2])
    assert not torch.equal(xa, model.seen[-1])
    # a point never misclassified ends at the last iterate
    model = _FlipsOnCall(identity_classifier(), flip=set())
    xa = pgd(model, x, y, 0.1, steps=5, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(xa, model.seen[2]) and (xa - x).abs().max() <= 0.1 + 1e-6


def test_fgsm_keeps_a_point_misclassified_clean():
    x, y = separable()
    model = _FlipsOnCall(identity_classifier(), flip={1})  # the clean gradient pass: all misclassified
    assert torch.equal(fgsm(model, x, y, 0.3), x)
    model = _FlipsOnCall(identity_classifier(), flip=set())
    assert not torch.equal(fgsm(model, x, y, 0.3), x)


# -- cost -----------------------------------------------------------------------------------------

def test_flops_of_known_layers_by_hand():
    conv = nn.Conv2d(3, 4, 3)  # 8x8 -> 6x6
    lin = nn.Linear(4 * 6 * 6, 5)
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), lin).eval()
    by_hand = 2 * (4 * 6 * 6) * (3 * 3 * 3) + 2 * (4 * 6 * 6) * 5  # 2 FLOPs per multiply-add
    assert flops_per_example(model, torch.rand(7, 3, 8, 8)) == by_hand



class TinyMergeable(TinyLowRank):
    """A low-rank layer that rebuilds U·S every forward (as training forms do) and merges for inference."""

    def forward(self, x):
        us = self.U if self.S is None else self.U @ self.S
        return (x @ self.V) @ us.T

    def merged(self):
        first = nn.Linear(self.V.shape[0], self.V.shape[1], bias=False)
        second = nn.Linear(self.U.shape[1], self.U.shape[0], bias=False)
        with torch.no_grad():
            first.weight.copy_(self.V.T)
            second.weight.copy_(self.U if self.S is None else self.U @ self.S)
        return nn.Sequential(first, second)


def test_flops_are_counted_on_the_inference_form():
    n, m, r = 30, 40, 5
    g = torch.Generator().manual_seed(0)
    low = TinyMergeable(torch.randn(n, r, generator=g), torch.randn(r, r, generator=g), torch.randn(m, r, generator=g))
    model = nn.Sequential(nn.Flatten(), low).eval()
    deployed = inference_form(model)
    x = torch.rand(3, 1, 4, 10)
    assert torch.allclose(deployed(x), model(x), atol=1e-4)
    assert isinstance(model[1], TinyMergeable)  # the model itself is untouched
    assert flops_per_example(deployed, x) == 2 * (m * r + r * n)  # U·S is not recomputed per pass
    assert flops_per_example(model, x) == 2 * (m * r + r * n) + 2 * n * r * r
    plain = nn.Sequential(nn.Flatten(), nn.Linear(4, 4))
    assert inference_form(plain) is plain

def test_latency_is_a_median_of_repeats():
    out = latency_ms(nn.Linear(16, 16).eval(), torch.rand(8, 16), min_repeats=3, max_repeats=6, max_seconds=0.0)
    assert out["repeats"] == 3 and out["ms"] > 0


# -- sensitivity ----------------------------------------------------------------------------------

def test_relative_condition_number_of_a_linear_map():
    torch.manual_seed(0)
    w = _with_singular_values([5.0, 2.0, 1.0, 0.5, 0.1], 5, 6, seed=7).float()
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 5, bias=False)).eval()
    model[1].weight.data = w
    x = torch.rand(4, 1, 2, 3)
    assert jacobian_spectral_norm(model, x, iters=50) == pytest.approx([5.0] * 4, rel=1e-4)
    expected = 5.0 * x.flatten(1).norm(dim=1) / (x.flatten(1) @ w.T).norm(dim=1)
    got = relative_condition_numbers(model, x, iters=50, batch_size=3)
    assert got.tolist() == pytest.approx(expected.double().tolist(), rel=1e-4)
