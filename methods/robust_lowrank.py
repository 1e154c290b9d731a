"""CondLR (Savostianova et al., NeurIPS 2023): low-rank layers U S Vᵀ with orthonormal U, V and a
conditioned S, trained with a Riemannian momentum-SGD step (see bench.condlr.ManifoldSGD)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bench.condlr import ManifoldSGD, orthonormalize_layer_
from bench.lowrank import LowRankMethod, is_factorizable, lowrank_from_dense, lowrank_layers, replace_module
from bench.method import BuildContext, OptimHP
from bench.registry import register_method


@dataclass(frozen=True)
class RobustLowRankParams:
    #: approx_orth: κ(S) ≤ kappa after every step; mean: S = √a·(orthogonal), κ(S) = 1
    mode: Literal["approx_orth", "mean"] = "approx_orth"
    #: the bound κ̄ of approx_orth (the paper's τ ≈ κ̄ − 1); ignored by mean
    kappa: float = 1.5
    #: scale of the U, V step: inv_a (1/a, a = ‖S‖²_F/r, both modes; default) or reference (the
    #: paper's code: (σ_min/σ_max)² of S in approx_orth, 1/a of the initial S in mean); see
    #: bench.condlr.STEP_SCALES
    step_scale: Literal["inv_a", "reference"] = "inv_a"

    def __post_init__(self):
        if not self.kappa > 1.0:
            raise ValueError(f"kappa must be > 1, got {self.kappa}")


@register_method("robust_lowrank")
class RobustLowRank(LowRankMethod):
    """CondLR: orthonormal U, V and conditioned S (κ ≤ kappa) in every layer, classifier full rank.

    Weight decay: none on U, V (they stay orthonormal); the track's on S, biases and BatchNorm.
    The U, V step is scaled by 1/a (a = ‖S‖²_F/r) by default, so the trainer's lr moves U S Vᵀ
    about as much as it moves a dense W; ``step_scale=reference`` uses the paper code's scale.
    """

    Params = RobustLowRankParams

    def build(self, model, ctx: BuildContext):
        # Every Linear/Conv2d becomes U S Vᵀ under the constraint: the planned ones at their rank,
        # the rest (the classifier, layers where factorising saves nothing, layers under 1% of
        # the parameters) at full rank min(n, m). A full-rank layer merges back to one matrix, so
        # it counts as dense, and the bound κ ≤ kappa then holds for every weight layer of the
        # network, not only the compressed ones. (Grouped convolutions would stay unconstrained;
        # no built-in model has one.)
        super().build(model, ctx)  # the rank plan shared by every low-rank method
        for name, mod in list(model.named_modules()):
            if name and is_factorizable(mod):
                rank = self.plan.ranks.get(name, min(mod.weight.shape[0], mod.weight[0].numel()))
                new = lowrank_from_dense(mod, rank, with_s=True, split="usv", preserve_norm=True)
                orthonormalize_layer_(new, self.params.mode, self.params.kappa)
                replace_module(model, name, new)
        return model

    def make_optimizer(self, model, hp: OptimHP):
        return ManifoldSGD(model, [m for _, m in lowrank_layers(model)], lr=hp.lr, momentum=hp.momentum,
                           weight_decay=hp.weight_decay, nesterov=hp.nesterov, mode=self.params.mode,
                           kappa_bar=self.params.kappa, step_scale=self.params.step_scale)

    def finalize(self, model) -> None:
        # The step keeps the constraints to float32 accuracy; one exact QR/SVD pass at the end
        # removes even that drift (a change of order 1e-6 in the weights).
        for _, layer in lowrank_layers(model):
            orthonormalize_layer_(layer, self.params.mode, self.params.kappa)

    def describe(self, model) -> dict:
        d = super().describe(model)
        d.update(mode=self.params.mode, kappa_bar=self.params.kappa if self.params.mode == "approx_orth" else 1.0,
                 conditioned_layers=[n for n, _ in lowrank_layers(model)])
        return d
