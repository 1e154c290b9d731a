"""DLRT: rank-adaptive low-rank training (augment–train–truncate), the unconditioned baseline of RobustDLRT."""

from __future__ import annotations

from dataclasses import dataclass

from bench.dlrt import DLRTMethod, IntegratorParams
from bench.registry import register_method


@dataclass(frozen=True)
class DLRTParams(IntegratorParams):
    """The integrator's parameters (:class:`bench.dlrt.IntegratorParams`); no conditioning."""


@register_method("dlrt")
class DLRT(DLRTMethod):
    """DLRT: U S Vᵀ layers whose ranks adapt during training (augment with the gradient, train S, truncate), Adam.

    Weight decay: the track's, decoupled (AdamW), on S, biases and BatchNorm; none on the bases U, V (moved only by augment/truncate).

    RobustDLRT's integrator (Schotthöfer, Yang, Schnake, NeurIPS 2025; public code
    ScSteffen/RobustDLRT) without its regulariser and clamp. Differences from the reference code:
    matrix format for convolutions (the reshaped out × in·kh·kw kernel, as every low-rank method
    here) instead of Tucker; the starting ranks are the shared rank plan's at ``--compression``
    (the reference starts at init_r = 150, capped by rmax); ``rank_mode=budget`` (default) picks the
    ranks at every truncation so the count meets the target within 1 % (the reference only has the
    tolerance rule, ``rank_mode=tolerance``); the track's piecewise-constant schedule scales Adam's
    lr (the reference: cosine annealing); float32 (the reference: bfloat16 autocast); the
    cycle runs on the global step count (the reference also truncates at an epoch's end); the
    clipped gradient norm leaves out ∂L/∂U, ∂L/∂V on the steps that do not augment (they are not
    computed there). See docs/dlrt.md.
    """

    Params = DLRTParams
