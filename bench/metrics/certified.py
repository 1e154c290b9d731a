"""Certified L2 (and, through it, L∞) accuracy from the logit margin and a Lipschitz upper bound.

Tsuzuku, Sato & Sugiyama (NeurIPS 2018): if every logit is L-Lipschitz in L2 jointly (L bounds the
spectral norm of the input-to-logit Jacobian), a difference of two logits is √2·L-Lipschitz, so a point
whose margin f_y(x) − max_{j≠y} f_j(x) exceeds √2·L·ε keeps its label for every ‖δ‖₂ ≤ ε. Its certified
radius is r = margin / (√2·L) (0 when it is misclassified). An L∞ ball of radius ε lies in the L2 ball of
radius √d·ε (d the input dimension), so a point is L∞-certified at ε when r > √d·ε. The clamp to [0, 1]
pixels only shrinks the set of inputs, so the certificate holds for the attacks here too.
"""

from __future__ import annotations

import math

import torch


def logit_margins(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, device="cpu",
                  batch_size: int = 500) -> torch.Tensor:
    """f_y(x) − max_{j≠y} f_j(x) per point (float64 on the CPU; negative when misclassified)."""
    out = []
    with torch.no_grad():
        for i in range(0, len(y), batch_size):
            z = model(x[i:i + batch_size].to(device)).detach().to("cpu", torch.float64)
            yb = y[i:i + batch_size].to("cpu", torch.long)
            true = z.gather(1, yb[:, None]).squeeze(1)
            other = z.scatter(1, yb[:, None], float("-inf")).max(1).values
            out.append(true - other)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def certified_radii(margins: torch.Tensor, lipschitz: float) -> torch.Tensor:
    """Certified L2 radius per point: margin/(√2·L), 0 where the margin is not positive."""
    if not lipschitz > 0 or not math.isfinite(lipschitz):
        raise ValueError(f"the Lipschitz bound must be positive and finite, got {lipschitz}")
    return margins.clamp_min(0.0) / (math.sqrt(2.0) * lipschitz)


def certified_curve(radii, eps_list, *, scale: float = 1.0) -> list[dict]:
    """[{eps, acc}]: the fraction of points with radius > scale·ε, per ε (scale √d for L∞)."""
    r = torch.as_tensor(list(radii), dtype=torch.float64)
    n = len(r)
    return [{"eps": float(e), "acc": float((r > scale * float(e)).sum()) / n if n else 0.0} for e in eps_list]
