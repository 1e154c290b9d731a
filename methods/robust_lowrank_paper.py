"""CondLR exactly as the paper's public code runs it (Savostianova et al., NeurIPS 2023;
COMPiLELab/CondLR), beside our default ``robust_lowrank``.

What the code does and this preset does too (where the paper's text and its code differ, this
follows the code):

* every Linear and Conv2d but the classifier is U S Vᵀ at the planned rank, the first
  convolution included (our default leaves layers under 1 % of the parameters at full rank); the
  classifier is U S Vᵀ at full rank, conditioned;
* U and V start as random orthonormal matrices (left singular vectors of Gaussian matrices), S as
  the diagonal of |N(0, 1)| sorted in decreasing order; the layers are rebuilt with their own
  default initialisation, so a model's initialisation scheme (VGG16's Kaiming weights, uniform
  [0, 1) biases) does not reach U, S, V, and biases are PyTorch's default uniform(±1/√fan_in);
* the step of U and V: the momentum buffer b ← μ·b + g is projected onto the tangent space,
  b ← (σ_min(S)/σ_max(S))²·(I − XXᵀ)·b, and *stored back*, so the scale compounds in the buffer
  from step to step; X ← X − lr·b, then the Q factor of a QR (sign-fixed) retracts X; S and every
  other parameter take a plain momentum-SGD step; then S is conditioned (κ(S) ≤ κ̄; the clamp of
  its singular values around their mean). The scale uses S before the step.

What is ours: the ranks come from the benchmark's rank plan (matched parameter count, like every
method), not from the code's rank fraction c.r. (REPRODUCTION.md gives the c.r. they correspond
to); the trainer's schedule, data order and budget are the benchmark's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from bench.condlr import condition_s_exact, householder_qr, project_tangent
from bench.lowrank import (LowRankMethod, is_factorizable, lowrank_from_dense, lowrank_layers, plan_compression,
                           replace_module)
from bench.method import BuildContext, OptimHP
from bench.registry import register_method


@dataclass(frozen=True)
class RobustLowRankPaperParams:
    #: the bound κ̄ on κ(S) (the code's scripts run 1.1 and 1.5; the paper's τ = κ̄ − 1)
    kappa: float = 1.5

    def __post_init__(self):
        if not self.kappa > 1.0:
            raise ValueError(f"kappa must be > 1, got {self.kappa}")


@torch.no_grad()
def paper_init_(layer, gen: torch.Generator) -> None:
    """The code's initialisation of a U S Vᵀ layer: random orthonormal U, V; S = diag(sorted |N(0,1)|);
    bias uniform(±1/√fan_in) (its ``reset_parameters``)."""
    n, m, r = layer.n, layer.m, layer.rank
    layer.U.copy_(torch.linalg.svd(torch.randn(n, r, generator=gen), full_matrices=False)[0])
    layer.V.copy_(torch.linalg.svd(torch.randn(m, r, generator=gen), full_matrices=False)[0])
    layer.S.copy_(torch.diag(torch.randn(r, generator=gen).abs().sort(descending=True).values))
    if layer.bias is not None:
        bound = 1.0 / math.sqrt(m)
        layer.bias.copy_(torch.rand(n, generator=gen) * 2 * bound - bound)
    layer.orthonormal = True


class PaperCondLRSGD(torch.optim.SGD):
    """The paper code's step, one layer at a time (no batching: this is the reference, not the fast path)."""

    def __init__(self, model: nn.Module, layers: list, *, lr: float, momentum: float, weight_decay: float,
                 kappa_bar: float):
        self.layers = list(layers)
        self.kappa_bar = kappa_bar
        stiefel = [p for l in self.layers for p in (l.U, l.V)]
        ids = {id(p) for p in stiefel}
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
        super().__init__([{"params": rest}, {"params": stiefel, "weight_decay": 0.0}],
                         lr=lr, momentum=momentum, weight_decay=weight_decay)

    @torch.no_grad()
    def step(self, closure=None):
        rest, stiefel = self.param_groups
        scales = {}
        for layer in self.layers:  # S before the step
            s = torch.linalg.svdvals(layer.S.detach().double())
            scales[id(layer)] = float((s[-1] / s[0]) ** 2)
        # plain momentum SGD on everything but U, V
        stiefel_params = stiefel["params"]
        stiefel["params"] = []
        super().step()
        stiefel["params"] = stiefel_params
        mu, lr = stiefel["momentum"], stiefel["lr"]
        for layer in self.layers:
            for X in (layer.U, layer.V):
                if X.grad is None:
                    continue
                st = self.state[X]
                buf = st.get("momentum_buffer")
                buf = X.grad.clone() if buf is None else buf.mul_(mu).add_(X.grad)
                buf = project_tangent(X, buf).mul_(scales[id(layer)])
                st["momentum_buffer"] = buf  # stored back: the scale compounds in the buffer
                X.copy_(householder_qr(X - lr * buf))  # the Q factor, diag(R) ≥ 0
            layer.S.copy_(condition_s_exact(layer.S, "approx_orth", self.kappa_bar))


@register_method("robust_lowrank_paper")
class RobustLowRankPaper(LowRankMethod):
    """CondLR as the paper's code runs it: random orthonormal init, compounding scaled momentum, every conv compressed.

    Weight decay: none on U, V; the track's on S, biases and BatchNorm.

    The module docstring lists every difference from our default ``robust_lowrank``.
    """

    Params = RobustLowRankPaperParams

    def build(self, model, ctx: BuildContext):
        # min_share=0: the first convolution is compressed too, as in the paper's code
        self.plan = plan_compression(model, ctx.compression, min_share=0.0)
        gen = torch.Generator().manual_seed(ctx.seed)
        for name, mod in list(model.named_modules()):
            if name and is_factorizable(mod):
                rank = self.plan.ranks.get(name, min(mod.weight.shape[0], mod.weight[0].numel()))
                new = lowrank_from_dense(mod, rank, with_s=True, split="usv")
                paper_init_(new, gen)  # S is conditioned by the first step, as in the code
                replace_module(model, name, new)
        return model

    def make_optimizer(self, model, hp: OptimHP):
        return PaperCondLRSGD(model, [m for _, m in lowrank_layers(model)], lr=hp.lr, momentum=hp.momentum,
                              weight_decay=hp.weight_decay, kappa_bar=self.params.kappa)

    def describe(self, model) -> dict:
        d = super().describe(model)
        d.update(mode="approx_orth", kappa_bar=self.params.kappa, preset="paper code",
                 conditioned_layers=[n for n, _ in lowrank_layers(model)])
        return d
