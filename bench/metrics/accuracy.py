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


from bench.stats import Z95, wilson_interval  # noqa: E402,F401 - re-exported (one definition, torch-free)
