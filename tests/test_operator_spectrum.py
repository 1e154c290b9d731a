"""The operator a layer applies (a convolution on its whole input, folds included) against the Jacobian of
the model's own forward pass, built independently in float64; the network Lipschitz bound against it."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bench.lowrank import LowRankConv2d
from bench.metrics.conditioning import (EXACT_SVD, FFT_CIRCULAR, POWER_ITERATION, conditioning_report,
                                        layer_conditioning, layer_operators)
from bench.models import Normalize

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def _randomise_bn(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                c = mod.num_features
                mod.running_var.copy_(torch.rand(c, generator=g) * 4.0 + 0.01)
                mod.running_mean.copy_(torch.randn(c, generator=g))
                mod.weight.copy_(torch.where(torch.rand(c, generator=g) < 0.2, -1.0, 1.0)
                                 * (torch.rand(c, generator=g) * 2.0 + 0.1))


def _jacobian_sv(f, shape) -> torch.Tensor:
    """Singular values of the Jacobian of ``f`` (one example of ``shape``), float64: the affine map's matrix."""
    x = torch.rand(1, *shape, dtype=torch.float64)
    j = torch.autograd.functional.jacobian(f, x).reshape(-1, math.prod(shape))
    return torch.linalg.svdvals(j)


def _stack(stride1, pad1, stride2, pad2):
    torch.manual_seed(stride1 * 10 + pad1)
    model = nn.Sequential(
        Normalize([0.4, 0.5, 0.6], [0.2, 0.3, 0.5]),
        nn.Conv2d(3, 4, 3, stride=stride1, padding=pad1), nn.BatchNorm2d(4), nn.LeakyReLU(),
        nn.Conv2d(4, 6, 3, stride=stride2, padding=pad2), nn.BatchNorm2d(6), nn.LeakyReLU(),
        nn.Flatten(), nn.LazyLinear(5))
    model(torch.rand(1, 3, 9, 9))  # materialise the Linear
    _randomise_bn(model)
    return model.eval().double()


@pytest.mark.parametrize("stride1,pad1,stride2,pad2", [(1, 1, 2, 0), (2, 0, 1, 1), (1, 0, 1, 1), (2, 1, 2, 1)])
def test_conv_operators_match_the_jacobian_of_the_forward_pass(stride1, pad1, stride2, pad2):
    model = _stack(stride1, pad1, stride2, pad2)
    x = torch.rand(1, 3, 9, 9, dtype=torch.float64)
    h1 = model[:4](x)
    # each conv's map with its BN (and, for the first, Normalize) as the network applies them
    maps = {"1": (lambda z: model[2](model[1](model[0](z))), (3, 9, 9)),
            "4": (lambda z: model[5](model[4](z)), tuple(h1.shape[1:]))}
    r = conditioning_report(model.float(), x.float())
    model.double()
    names = r["layer_names"]
    for name, (f, shape) in maps.items():
        i = names.index(name)
        sv = _jacobian_sv(f, shape)
        assert r["layer_operator_method"][i] == EXACT_SVD
        assert r["layer_operator_spectral_norm"][i] == pytest.approx(float(sv[0]), rel=1e-5)
        tol = max(sv.shape[0], sv.numel()) * 1e-7 * sv[0]
        kept = sv[sv > tol]
        assert r["layer_operator_kappa"][i] == pytest.approx(float(kept[0] / kept[-1]), rel=1e-4)
    # the operator differs from the reshaped kernel (which knows nothing of the input size)
    assert r["layer_operator_kappa"] != pytest.approx(r["layer_kappa"][:3], rel=1e-2)
    # the chain's bound is the product of its exact operator norms; no input direction grows faster
    assert r["operator_lipschitz_upper"] == pytest.approx(math.prod(r["layer_operator_norm_bound"]), rel=1e-9)
    jn = float(_jacobian_sv(lambda z: model(z), (3, 9, 9))[0])
    assert jn <= r["operator_lipschitz_upper"]


def test_power_iteration_and_its_dft_bound_bracket_the_exact_norm():
    model = _stack(2, 1, 1, 1).float()
    x = torch.rand(1, 3, 9, 9)
    layers = layer_conditioning(model)
    exact = layer_operators(model, x, layers)
    approx = layer_operators(model, x, layers, exact_max_side=8)
    for e, a in zip(exact, approx):
        if e.name == "8":  # the Linear: its matrix, exact either way
            assert a.method == EXACT_SVD
            continue
        assert a.method == POWER_ITERATION and a.kappa is None and e.method == EXACT_SVD
        assert e.spectral_norm * 0.98 <= a.spectral_norm <= e.spectral_norm * (1 + 1e-6)
        assert e.spectral_norm <= a.norm_bound <= e.spectral_norm * 1.25


def test_circular_padding_is_exact_by_dft_and_the_reference_figure():
    torch.manual_seed(1)
    conv = nn.Conv2d(4, 8, 3, padding=1, bias=False)
    # orthonormal reshaped rows: the reshaped kernel has κ = 1 (8 rows in 36 columns)
    q, _ = torch.linalg.qr(torch.randn(36, 8))
    with torch.no_grad():
        conv.weight.copy_(q.T.reshape(8, 4, 3, 3))
    r = conditioning_report(nn.Sequential(conv), torch.rand(1, 4, 8, 8))
    assert r["layer_kappa"][0] == pytest.approx(1.0, abs=1e-5)
    assert r["layer_operator_method"] == [EXACT_SVD]
    assert 4.0 < r["layer_operator_kappa"][0] < 7.0  # ≈ 5.3 for such kernels (dense operator SVD)
    circ = nn.Conv2d(4, 8, 3, padding=1, bias=False, padding_mode="circular")
    with torch.no_grad():
        circ.weight.copy_(conv.weight)
    rc = conditioning_report(nn.Sequential(circ), torch.rand(1, 4, 8, 8))
    sv = _jacobian_sv(lambda z: circ.double()(z), (4, 8, 8))
    assert rc["layer_operator_method"] == [FFT_CIRCULAR]
    assert rc["layer_operator_spectral_norm"][0] == pytest.approx(float(sv[0]), rel=1e-6)
    assert rc["layer_operator_kappa"][0] == pytest.approx(float(sv[0] / sv[-1]), rel=1e-5)


def test_lowrank_conv_operator_is_the_two_convolutions_composed():
    torch.manual_seed(2)
    layer = LowRankConv2d(3, 8, 3, 2, stride=2, padding=1)
    nn.init.normal_(layer.U), nn.init.normal_(layer.V), nn.init.normal_(layer.S)
    assert layer.factored()
    r = conditioning_report(nn.Sequential(layer), torch.rand(1, 3, 7, 7))
    sv = _jacobian_sv(lambda z: layer.double()(z), (3, 7, 7))
    assert r["layer_operator_spectral_norm"][0] == pytest.approx(float(sv[0]), rel=1e-5)
    kept = sv[sv > 1e-5 * sv[0]]
    assert r["layer_operator_kappa"][0] == pytest.approx(float(kept[0] / kept[-1]), rel=1e-4)


class _Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1, bias=False)
        self.fc = nn.Linear(2 * 5 * 5, 3)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.conv(x)) + x, 1))


def test_residual_bound_adds_the_branches_and_unknown_ops_give_none():
    torch.manual_seed(3)
    model = _Residual().eval()
    r = conditioning_report(model, torch.rand(1, 2, 5, 5))
    conv_n, fc_n = r["layer_operator_norm_bound"]
    assert r["operator_lipschitz_upper"] == pytest.approx((conv_n + 1.0) * fc_n, rel=1e-9)

    class Odd(_Residual):
        def forward(self, x):
            return self.fc(torch.flatten(torch.sigmoid(self.conv(x)), 1))

    r = conditioning_report(Odd().eval(), torch.rand(1, 2, 5, 5))
    assert r["operator_lipschitz_upper"] is None and "sigmoid" in r["operator_lipschitz_note"]
