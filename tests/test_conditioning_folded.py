"""Condition numbers with BatchNorm and input normalisation folded into the weight layers, against
hand computations in float64 on real models (and, where cheap, against the model's own forward pass)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.lowrank import LowRankConv2d
from bench.metrics.conditioning import UNTRACED, conditioning_summary, layer_conditioning
from bench.models import Normalize, build_model

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def _randomise_bn(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial running statistics and γ (both signs) in every BatchNorm."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                c = mod.num_features
                mod.running_var.copy_(torch.rand(c, generator=g) * 4.0 + 0.01)
                mod.running_mean.copy_(torch.randn(c, generator=g))
                sign = torch.where(torch.rand(c, generator=g) < 0.2, -1.0, 1.0)
                mod.weight.copy_(sign * (torch.rand(c, generator=g) * 2.0 + 0.1))
                mod.bias.copy_(torch.randn(c, generator=g))


def _bn_scale(bn: nn.BatchNorm2d) -> torch.Tensor:
    return bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)


def _mat(layer: nn.Module) -> torch.Tensor:
    w = layer.weight.detach().double()
    return w.reshape(w.shape[0], -1)


def _kappa_norm(m: torch.Tensor) -> tuple[float, float]:
    s = torch.linalg.svdvals(m)
    return float(s[0] / s[-1]), float(s[0])


def _by_name(layers):
    return {L.name: L for L in layers}


def test_conv_then_batchnorm_folds_the_bn_scale_into_the_rows():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
    model = nn.Sequential(conv, bn, nn.LeakyReLU()).eval()
    _randomise_bn(model)
    wf = _bn_scale(bn)[:, None] * _mat(conv)
    # diag(a)·W is the linear part of x ↦ BN(conv(x)) at inference
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    conv64, bn64 = conv.double(), bn.double()
    lin_part = bn64(conv64(x)) - bn64(conv64(torch.zeros_like(x)))
    assert torch.allclose(lin_part, F.conv2d(x, wf.reshape(8, 3, 3, 3), padding=1), atol=1e-10)
    model.float()

    (L,) = layer_conditioning(model)
    kappa, norm = _kappa_norm(wf)
    kappa_raw, norm_raw = _kappa_norm(_mat(conv))
    assert L.folded == "bn"
    assert L.kappa == pytest.approx(kappa, rel=1e-9) and L.spectral_norm == pytest.approx(norm, rel=1e-9)
    assert L.kappa_raw == pytest.approx(kappa_raw, rel=1e-9) and L.spectral_norm_raw == pytest.approx(norm_raw, rel=1e-9)
    assert abs(L.kappa / L.kappa_raw - 1.0) > 0.05
    s = conditioning_summary([L])
    assert s["cond_max"] == pytest.approx(kappa, rel=1e-9) and s["cond_max_raw"] == pytest.approx(kappa_raw, rel=1e-9)
    assert s["layer_kappa"] == pytest.approx([kappa], rel=1e-9)
    assert s["layer_kappa_raw"] == pytest.approx([kappa_raw], rel=1e-9)
    assert s["layer_spectral_norm_raw"] == pytest.approx([norm_raw], rel=1e-9)
    assert s["layer_folded"] == ["bn"]
    assert s["lipschitz_upper"] == pytest.approx(norm, rel=1e-9)
    assert s["log10_cond_prod"] == pytest.approx(math.log10(kappa), rel=1e-9)


def test_normalize_before_a_conv_scales_its_columns_by_one_over_std():
    torch.manual_seed(1)
    norm, conv = Normalize([0.4, 0.5, 0.6], [0.2, 0.4, 0.5]), nn.Conv2d(3, 6, 3)
    model = nn.Sequential(norm, conv, nn.ReLU(), nn.Conv2d(6, 4, 1)).eval()
    assert torch.allclose(norm.std.double().reshape(-1), torch.tensor([0.2, 0.4, 0.5], dtype=torch.float64))
    b = (1.0 / norm.std.double().reshape(-1)).repeat_interleave(9)  # (in, kh, kw) columns; std as stored (float32)
    wf = _mat(conv) * b[None, :]
    x = torch.rand(2, 3, 4, 4)
    lin_part = conv(norm(x)) - conv(norm(torch.zeros_like(x)))
    assert torch.allclose(lin_part.double(), F.conv2d(x.double(), wf.reshape(6, 3, 3, 3)), atol=1e-5)

    first, second = layer_conditioning(model)
    kappa, nrm = _kappa_norm(wf)
    assert first.folded == "input_norm"
    assert first.kappa == pytest.approx(kappa, rel=1e-9) and first.spectral_norm == pytest.approx(nrm, rel=1e-9)
    assert first.kappa != pytest.approx(first.kappa_raw, rel=1e-3)
    assert second.folded == "" and second.kappa == second.kappa_raw  # behind a conv: nothing to fold


def test_lowrank_conv_between_normalize_and_batchnorm_equals_the_dense_computation():
    torch.manual_seed(2)
    low = LowRankConv2d.from_dense(nn.Conv2d(3, 8, 3, padding=1), rank=4)
    with torch.no_grad():  # drifted, non-orthonormal factors
        low.U.mul_(torch.linspace(0.5, 2.0, 4))
    bn = nn.BatchNorm2d(8)
    model = nn.Sequential(Normalize([0.5] * 3, [0.2, 0.4, 0.5]), low, bn, nn.LeakyReLU()).eval()
    _randomise_bn(model, seed=3)
    u, s, v = (t.detach().double() for t in low.lowrank_factors())
    b = (1.0 / model[0].std.double().reshape(-1)).repeat_interleave(9)
    wf = _bn_scale(bn)[:, None] * (u @ s @ v.T) * b[None, :]
    sv = torch.linalg.svdvals(wf)[:4]  # rank 4: the other singular values are round-off
    sv_raw = torch.linalg.svdvals(u @ s @ v.T)[:4]

    (L,) = layer_conditioning(model)
    assert L.kind == "lowrank" and L.folded == "bn+input_norm" and L.rank == 4
    assert L.kappa == pytest.approx(float(sv[0] / sv[-1]), rel=1e-8)
    assert L.spectral_norm == pytest.approx(float(sv[0]), rel=1e-8)
    assert L.kappa_raw == pytest.approx(float(sv_raw[0] / sv_raw[-1]), rel=1e-8)


def test_a_model_without_bn_or_normalize_is_unchanged():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5)).eval()
    layers = layer_conditioning(model)
    assert [L.folded for L in layers] == ["", ""]
    assert [L.kappa for L in layers] == [L.kappa_raw for L in layers]
    assert [L.spectral_norm for L in layers] == [L.spectral_norm_raw for L in layers]
    assert [L.kappa for L in layers] == pytest.approx([_kappa_norm(_mat(model[0]))[0], _kappa_norm(_mat(model[3]))[0]],
                                                      rel=1e-9)
    s = conditioning_summary(layers)
    assert s["cond_max"] == s["cond_max_raw"] and s["layer_kappa"] == s["layer_kappa_raw"]


def test_bn_not_directly_after_the_layer_folds_forward_through_pooling_and_flatten():
    """conv → act → BN: the BN is not the conv's; it scales the Linear's columns channel-major."""
    torch.manual_seed(5)
    conv, bn, fc = nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.Linear(3 * 2 * 2, 4)
    model = nn.Sequential(conv, nn.LeakyReLU(), bn, nn.LeakyReLU(), nn.MaxPool2d(2), nn.Flatten(), fc).eval()
    _randomise_bn(model, seed=6)
    conv_l, fc_l = layer_conditioning(model)
    assert conv_l.folded == "" and conv_l.kappa == conv_l.kappa_raw
    b = _bn_scale(bn).abs().repeat_interleave(4)  # each channel's 2×2 positions, channel-major
    kappa, nrm = _kappa_norm(_mat(fc) * b[None, :])
    assert fc_l.folded == "bn_in"
    assert fc_l.kappa == pytest.approx(kappa, rel=1e-9) and fc_l.spectral_norm == pytest.approx(nrm, rel=1e-9)


def test_vgg16_folds_bn_and_normalize_into_all_16_weight_layers():
    model = build_model("vgg16", num_classes=10).eval()
    _randomise_bn(model, seed=7)
    layers = layer_conditioning(model)
    assert len(layers) == 16
    assert [L.folded for L in layers] == ["bn+input_norm"] + ["bn"] * 12 + [""] * 3
    for L in layers:
        assert math.isfinite(L.kappa) and math.isfinite(L.spectral_norm) and L.kappa >= 1.0
        assert math.isfinite(L.kappa_raw) and math.isfinite(L.spectral_norm_raw)
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    bns = [m for m in model if isinstance(m, nn.BatchNorm2d)]
    kappa, nrm = _kappa_norm(_bn_scale(bns[1])[:, None] * _mat(convs[1]))
    assert layers[1].kappa == pytest.approx(kappa, rel=1e-8) and layers[1].spectral_norm == pytest.approx(nrm, rel=1e-8)
    b = (1.0 / model[0].std.double().reshape(-1)).repeat_interleave(9)
    kappa, nrm = _kappa_norm(_bn_scale(bns[0])[:, None] * _mat(convs[0]) * b[None, :])
    assert layers[0].kappa == pytest.approx(kappa, rel=1e-8) and layers[0].spectral_norm == pytest.approx(nrm, rel=1e-8)
    s = conditioning_summary(layers)
    assert len(s["layer_kappa_raw"]) == len(s["layer_spectral_norm_raw"]) == len(s["layer_folded"]) == 16
    assert s["cond_max"] == pytest.approx(max(L.kappa for L in layers))
    assert s["cond_max_raw"] == pytest.approx(max(L.kappa_raw for L in layers))


def test_wrn16_4_folds_the_pre_activation_bn_into_the_following_convs():
    model = build_model("wrn16_4", num_classes=10).eval()
    _randomise_bn(model, seed=8)
    L = _by_name(layer_conditioning(model))
    assert len(L) == 17

    # blocks.1 (identity shortcut): bn1 → act → conv1 → bn2 → act → conv2, then + x
    blk = model.blocks[1]
    b = _bn_scale(blk.bn1).abs().repeat_interleave(9)
    kappa, nrm = _kappa_norm(_bn_scale(blk.bn2)[:, None] * _mat(blk.conv1) * b[None, :])
    assert L["blocks.1.conv1"].folded == "bn+bn_in"
    assert L["blocks.1.conv1"].kappa == pytest.approx(kappa, rel=1e-8)
    assert L["blocks.1.conv1"].spectral_norm == pytest.approx(nrm, rel=1e-8)
    # conv2's input BN (bn2) is already folded into conv1, and its output goes into the residual sum
    assert L["blocks.1.conv2"].folded == "" and L["blocks.1.conv2"].kappa == L["blocks.1.conv2"].kappa_raw

    # blocks.2 (projection shortcut): the pre-activated input feeds conv1 and the shortcut
    blk = model.blocks[2]
    kappa, nrm = _kappa_norm(_mat(blk.shortcut) * _bn_scale(blk.bn1).abs()[None, :])  # 1×1 kernel
    assert L["blocks.2.shortcut"].folded == "bn_in"
    assert L["blocks.2.shortcut"].kappa == pytest.approx(kappa, rel=1e-8)
    assert L["blocks.2.conv1"].folded == "bn+bn_in"

    # the stem conv is followed directly by blocks.0.bn1 and preceded by Normalize
    b = (1.0 / model.norm.std.double().reshape(-1)).repeat_interleave(9)
    kappa, _ = _kappa_norm(_bn_scale(model.blocks[0].bn1)[:, None] * _mat(model.conv1) * b[None, :])
    assert L["conv1"].folded == "bn+input_norm" and L["conv1"].kappa == pytest.approx(kappa, rel=1e-8)
    # the final BN reaches fc through act, global average pooling and flatten
    kappa, _ = _kappa_norm(_mat(model.fc) * _bn_scale(model.bn).abs()[None, :])
    assert L["fc"].folded == "bn_in" and L["fc"].kappa == pytest.approx(kappa, rel=1e-8)


class _Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            x = -x
        return self.bn(self.conv(x))


def test_an_untraceable_model_falls_back_to_the_raw_numbers():
    model = _Untraceable().eval()
    _randomise_bn(model, seed=9)
    with pytest.warns(UserWarning, match="could not be traced"):
        (L,) = layer_conditioning(model)
    assert L.folded == UNTRACED and L.kappa == L.kappa_raw and L.spectral_norm == L.spectral_norm_raw
