"""Per-layer condition numbers and spectral norms of the *effective* weight matrices.

Which layers: every ``nn.Linear`` and ``nn.Conv2d`` (weight reshaped from
(out, in, kh, kw) to out × (in·kh·kw)), and every module that exposes
``lowrank_factors() -> (U, S, V)`` (duck-typed; ``S`` may be ``None`` for the
identity), whose effective weight is U S Vᵀ; the walk does not descend into such a
module. Normalisation and BatchNorm are not weights of this kind and are skipped.
For a pruned layer (``torch.nn.utils.prune``) ``module.weight`` already is the
masked weight, so its zeros count.

κ of a matrix is σ_max/σ_min over the singular values above the tolerance
``max(rows, cols) · eps(float32) · σ_max`` (numpy's ``matrix_rank`` rule at float32,
the precision the weights are trained in), so exact zeros from a low rank or from
pruning are ignored instead of making κ infinite. ``rank`` is the number of singular
values above that tolerance. The singular values are computed in float64.

For U S Vᵀ the singular values are those of the small matrix R_U S R_Vᵀ, with
U = Q_U R_U and V = Q_V R_V thin QR factorisations; this equals κ(S) when U and V
are orthonormal and stays right when they drifted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

#: relative tolerance unit: float32 machine epsilon (weights are trained in float32)
REL_TOL_UNIT = float(torch.finfo(torch.float32).eps)


@dataclass(frozen=True)
class LayerCond:
    name: str
    kind: str  # 'lowrank' | 'linear' | 'conv'
    shape: tuple[int, int]  # effective matrix: out × (in·kh·kw)
    kappa: float
    spectral_norm: float
    rank: int


def singular_values(m: torch.Tensor) -> torch.Tensor:
    """Singular values (float64, descending) of a 2-D tensor."""
    return torch.linalg.svdvals(m.detach().to("cpu", torch.float64))


def kappa_from_singular_values(s: torch.Tensor, shape: tuple[int, int]) -> tuple[float, int]:
    """(κ, numerical rank) from singular values of a ``shape`` matrix; κ is NaN for a zero matrix."""
    if s.numel() == 0:
        return float("nan"), 0
    smax = float(s.max())
    tol = max(shape) * REL_TOL_UNIT * smax
    kept = s[s > tol]
    if smax == 0.0 or kept.numel() == 0:
        return float("nan"), 0
    return smax / float(kept.min()), int(kept.numel())


def matrix_condition(m: torch.Tensor) -> float:
    """κ(m) = σ_max/σ_min over singular values above the tolerance (see the module docstring)."""
    return kappa_from_singular_values(singular_values(m), tuple(m.shape))[0]


def lowrank_singular_values(u: torch.Tensor, s: torch.Tensor | None, v: torch.Tensor) -> torch.Tensor:
    """Singular values of U S Vᵀ (U: n×r, S: r×q or None, V: m×q) via QR of U and V."""
    u = u.detach().to("cpu", torch.float64).reshape(u.shape[0], -1)
    v = v.detach().to("cpu", torch.float64).reshape(v.shape[0], -1)
    ru = torch.linalg.qr(u, mode="reduced").R
    rv = torch.linalg.qr(v, mode="reduced").R
    mid = ru @ rv.T if s is None else ru @ s.detach().to("cpu", torch.float64) @ rv.T
    return torch.linalg.svdvals(mid)


def _is_lowrank(mod: nn.Module) -> bool:
    return callable(getattr(mod, "lowrank_factors", None))


def layer_conditioning(model: nn.Module) -> list[LayerCond]:
    """One :class:`LayerCond` per weight layer, in module order."""
    out: list[LayerCond] = []

    def visit(mod: nn.Module, prefix: str) -> None:
        if _is_lowrank(mod):
            u, s, v = mod.lowrank_factors()
            sv = lowrank_singular_values(u, s, v)
            shape = (int(u.shape[0]), int(v.shape[0]))
            k, r = kappa_from_singular_values(sv, shape)
            out.append(LayerCond(prefix, "lowrank", shape, k, float(sv.max()) if sv.numel() else float("nan"), r))
            return
        if isinstance(mod, (nn.Linear, nn.Conv2d)):
            w = mod.weight.detach().reshape(mod.weight.shape[0], -1)
            sv = singular_values(w)
            shape = (int(w.shape[0]), int(w.shape[1]))
            k, r = kappa_from_singular_values(sv, shape)
            kind = "linear" if isinstance(mod, nn.Linear) else "conv"
            out.append(LayerCond(prefix, kind, shape, k, float(sv.max()) if sv.numel() else float("nan"), r))
            return
        for name, child in mod.named_children():
            visit(child, f"{prefix}.{name}" if prefix else name)

    visit(model, "")
    return out


def conditioning_summary(layers: list[LayerCond]) -> dict:
    """Network-level numbers from the per-layer list.

    * ``cond_max``: the largest κ;
    * ``log10_cond_prod``: log10 ∏κ_l, the weight part of the paper's bound on the
      network's relative condition number (κ(σ) of ReLU is not included);
    * ``lipschitz_upper``: ∏‖W_l‖₂ over the reshaped weights. It is the Lipschitz bound
      of the weight layers for 1-Lipschitz activations and pooling, in the normalised
      input space and without BatchNorm; for a convolution the operator norm can exceed
      the reshaped matrix's by up to sqrt(kh·kw), so treat it as the paper's proxy, not a
      certificate.

    NaN (a zero layer) is left out of the max and the products. Lists follow layer order.
    """
    kappas = [L.kappa for L in layers if not math.isnan(L.kappa)]
    norms = [L.spectral_norm for L in layers if not math.isnan(L.spectral_norm)]
    return {
        "layer_names": [L.name for L in layers],
        "layer_kappa": [float(L.kappa) for L in layers],
        "layer_spectral_norm": [float(L.spectral_norm) for L in layers],
        "layer_ranks": [int(L.rank) for L in layers],
        "layer_shapes": [f"{L.shape[0]}x{L.shape[1]}" for L in layers],
        "layer_kinds": [L.kind for L in layers],
        "cond_max": float(max(kappas)) if kappas else None,
        "log10_cond_prod": float(sum(math.log10(k) for k in kappas)) if kappas else None,
        "lipschitz_upper": float(math.prod(norms)) if norms else None,
    }
