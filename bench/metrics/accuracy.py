"""Clean correctness, batched, in whatever mode the model is in (callers put it in eval mode)."""

from __future__ import annotations

import torch


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, *, device: torch.device | str, batch_size: int = 500) -> torch.Tensor:
    """Predicted labels of ``x`` (on the CPU)."""
    out = []
    for i in range(0, len(x), batch_size):
        out.append(model(x[i:i + batch_size].to(device)).argmax(1).cpu())
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def correct_mask(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, device: torch.device | str,
                 batch_size: int = 500) -> torch.Tensor:
    """Boolean mask (CPU) of the points that ``model`` classifies correctly."""
    return predict(model, x, device=device, batch_size=batch_size) == y.cpu()


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, device: torch.device | str,
             batch_size: int = 500) -> float:
    """Top-1 accuracy; 0.0 on an empty set."""
    if len(y) == 0:
        return 0.0
    return float(correct_mask(model, x, y, device=device, batch_size=batch_size).float().mean())


#: two-sided 95% normal quantile
Z95 = 1.959963984540054


def wilson_interval(successes: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``successes / n`` (95% by default).

    Unlike the normal approximation it stays inside [0, 1] and is not degenerate at 0 or 1
    (with 500 attacked points and 0 survivors it is [0, 0.0076]). Returns (nan, nan) for n = 0.
    ``successes`` may be fractional (an accuracy times n, rounded by the caller or not).
    """
    import math

    if not n or n <= 0:
        return float("nan"), float("nan")
    p = min(max(successes / n, 0.0), 1.0)
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    low = 0.0 if p == 0.0 else max(0.0, centre - half)
    high = 1.0 if p == 1.0 else min(1.0, centre + half)
    return low, high
