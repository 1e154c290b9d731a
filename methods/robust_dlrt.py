"""RobustDLRT (Schotthöfer, Yang, Schnake, NeurIPS 2025): DLRT with a conditioned core."""

from __future__ import annotations

from dataclasses import dataclass

from bench.dlrt import DLRTMethod, IntegratorParams
from bench.registry import register_method


@dataclass(frozen=True)
class RobustDLRTParams(IntegratorParams):
    #: weight of the regulariser β‖S Sᵀ − (‖S‖²_F/r) I‖_F per layer (reference example 0.075)
    beta: float = 0.075
    #: also clamp S's singular values into [s̄ − ε, s̄ + ε], ε = β s̄/(2 + β), so κ(S) ≤ 1 + β
    #: (the reference's projection; its training script applies the regulariser alone: clamp=false)
    clamp: bool = True

    def __post_init__(self):
        super().__post_init__()
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0 (beta=0 is the dlrt method), got {self.beta}")


@register_method("robust_dlrt")
class RobustDLRT(DLRTMethod):
    """RobustDLRT: DLRT's rank-adaptive U S Vᵀ layers with a conditioned core (regulariser + clamp, κ(S) ≤ 1 + β), Adam.

    Weight decay: the track's, decoupled (AdamW), on S, biases and BatchNorm; none on the bases U, V (moved only by augment/truncate).

    Differences from the reference code (ScSteffen/RobustDLRT), besides those of ``dlrt``: the
    regulariser's gradient is added to S's before the step instead of the loss (the same update; the
    logged loss leaves it out); the clamp of S's singular values is applied after every truncation
    and every step on a non-augmented core (default ``clamp=true``; the reference's training script
    uses the regulariser alone), so the final layers have κ ≤ 1 + β. See docs/dlrt.md.
    """

    Params = RobustDLRTParams

    @property
    def beta(self) -> float:
        return self.params.beta

    @property
    def clamp_beta(self) -> float | None:
        return self.params.beta if self.params.clamp else None
