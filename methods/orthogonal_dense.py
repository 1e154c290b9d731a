"""Uncompressed, every layer a full-rank U S Vᵀ kept a *scaled* orthogonal matrix (κ = 1).

The CondLR paper's orthogonal baselines keep W itself on the Stiefel manifold at unit scale
(projected SGD with QR retraction, and Cayley SGD); this method keeps W = √a·(orthogonal) with
a free per-layer scale a, which is CondLR's own step at compression 0; ``mode=unit`` keeps the
scale at 1 (W on the Stiefel manifold, projected SGD with a Cholesky-QR retraction: the paper's
projected-SGD baseline up to the retraction). Cayley SGD is not implemented.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bench.method import BuildContext
from bench.registry import register_method
from methods.robust_lowrank import RobustLowRank, RobustLowRankParams


@dataclass(frozen=True)
class OrthogonalDenseParams(RobustLowRankParams):
    #: mean: W = √a·(U Q Vᵀ), a scaled orthogonal matrix, κ = 1 (a free per layer); unit: W = U Q Vᵀ,
    #: every singular value 1 (W on the Stiefel manifold, as the paper's orthogonal baselines);
    #: approx_orth: κ(W) ≤ kappa
    mode: Literal["mean", "unit", "approx_orth"] = "mean"


@register_method("orthogonal_dense")
class OrthogonalDense(RobustLowRank):
    """Uncompressed, every layer kept a scaled orthogonal matrix √a·Q (mode=unit: Q) by projected Riemannian SGD.

    Weight decay: none on U, V; the track's on S (hence on the scale a), biases and BatchNorm.
    """

    Params = OrthogonalDenseParams
    compresses = False

    def build(self, model, ctx: BuildContext):
        # CondLR's step at compression 0: the rank plan factorises nothing, so every Linear/Conv2d
        # is a full-rank U S Vᵀ with orthonormal U, V and S = √a·(orthogonal). This is projected
        # (not Cayley) SGD on the Stiefel manifold, with a free per-layer scale a.
        return super().build(model, BuildContext(compression=0.0, example_input=ctx.example_input,
                                                 total_steps=ctx.total_steps, seed=ctx.seed))
