"""FGSM and PGD (Linf and L2) on [0, 1] pixel inputs: small, batched, pure implementations.

They attack the model in the mode it is in (callers use eval mode) and never touch its
parameters' gradients. Every adversarial input is clamped to [0, 1].

A point counts as broken if *any* iterate the attack visits misclassifies it, the clean
input included: ``fgsm`` and ``pgd`` return, per point, the first misclassified iterate
they met (the clean input when it is already misclassified), else the last iterate. The
logits of every iterate are those already computed for its gradient, so this costs one
forward pass per attack (the last iterate, and for PGD with a random start the clean input).

The curves are *raw*: each ε is attacked independently, as in the CondLR paper's FGSM
and PGD tables, so a curve may be non-monotone in ε where a larger step overshoots
(FGSM is one step and famously does that). The AutoAttack curve is the monotone one.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

Norm = Literal["Linf", "L2"]


def _input_grad(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(∇ₓ of the summed cross-entropy, the logits at x)."""
    x = x.detach().requires_grad_(True)
    logits = model(x)
    # summed, not averaged, so that a point's step does not depend on the batch size
    loss = F.cross_entropy(logits, y, reduction="sum")
    (g,) = torch.autograd.grad(loss, x)
    return g, logits.detach()


class _FirstBreak:
    """Keeps, per point, the first iterate that was misclassified."""

    def __init__(self, x: torch.Tensor):
        self.best = x.detach().clone()
        self.broken = torch.zeros(len(x), dtype=torch.bool, device=x.device)

    def see(self, x_iter: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        new = (logits.argmax(1) != y) & ~self.broken
        self.best = torch.where(new.view(-1, *([1] * (x_iter.dim() - 1))), x_iter.detach(), self.best)
        self.broken |= new

    def result(self, x_last: torch.Tensor) -> torch.Tensor:
        return torch.where(self.broken.view(-1, *([1] * (x_last.dim() - 1))), self.best, x_last.detach())


def _l2(t: torch.Tensor) -> torch.Tensor:
    """Per-example L2 norm, shaped to broadcast against ``t``."""
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.dim() - 1)))


def fgsm(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """Fast gradient sign method (Linf): x + ε·sign(∇ₓ CE), clamped to [0, 1].

    A point already misclassified clean is returned unchanged (see the module docstring).
    """
    if eps == 0:
        return x.detach().clone()
    g, logits = _input_grad(model, x, y)
    track = _FirstBreak(x)
    track.see(x, logits, y)
    return track.result((x + eps * g.sign()).clamp(0.0, 1.0).detach())


def pgd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, norm: Norm = "Linf",
        steps: int = 20, step_size: float | None = None, random_start: bool = True,
        generator: torch.Generator | None = None) -> torch.Tensor:
    """Projected gradient ascent on the cross-entropy inside the ε-ball of ``norm``, within [0, 1].

    ``step_size`` defaults to 2.5·ε/steps (Madry et al.), so the iterates can cross the ball.
    The random start is uniform in the Linf box, or a uniform direction at a uniform radius for L2.
    Returns per point the first misclassified iterate (clean input included), else the last.
    """
    if norm not in ("Linf", "L2"):
        raise ValueError(f"norm must be 'Linf' or 'L2', got {norm!r}")
    if eps == 0:
        return x.detach().clone()
    alpha = 2.5 * eps / steps if step_size is None else float(step_size)
    x = x.detach()
    track = _FirstBreak(x)
    delta = torch.zeros_like(x)
    if random_start:
        with torch.no_grad():
            track.see(x, model(x), y)
        r = torch.rand(x.shape, generator=generator).to(x.device)
        if norm == "Linf":
            delta = (2 * r - 1) * eps
        else:
            d = torch.randn(x.shape, generator=generator).to(x.device)
            radius = torch.rand(len(x), generator=generator).to(x.device).view(-1, *([1] * (x.dim() - 1)))
            delta = d / _l2(d) * eps * radius
        delta = (x + delta).clamp(0.0, 1.0) - x
    for _ in range(steps):
        g, logits = _input_grad(model, x + delta, y)
        track.see(x + delta, logits, y)
        if norm == "Linf":
            delta = (delta + alpha * g.sign()).clamp(-eps, eps)
        else:
            delta = delta + alpha * g / _l2(g)
            delta = delta * (eps / _l2(delta)).clamp(max=1.0)
        delta = (x + delta).clamp(0.0, 1.0) - x
    return track.result(x + delta)


def attack_masks(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps_list, *,
                 attack: Literal["fgsm", "pgd"], norm: Norm = "Linf", steps: int = 20,
                 device: torch.device | str = "cpu", batch_size: int = 250, seed: int = 0) -> list[torch.Tensor]:
    """Per ε of ``eps_list`` (raw, one independent attack per ε), the CPU bool mask of the points of
    ``x`` still classified correctly under ``attack`` (a point misclassified without attack is broken)."""
    if attack not in ("fgsm", "pgd"):
        raise ValueError(f"unknown attack {attack!r}")
    if attack == "fgsm" and norm != "Linf":
        raise ValueError("FGSM is a Linf attack")
    out = []
    n = len(y)
    for eps in eps_list:
        eps = float(eps)
        gen = torch.Generator().manual_seed(seed)
        parts = []
        for i in range(0, n, batch_size):
            xb = x[i:i + batch_size].to(device)
            yb = y[i:i + batch_size].to(device)
            if attack == "fgsm":
                xa = fgsm(model, xb, yb, eps)
            else:
                xa = pgd(model, xb, yb, eps, norm=norm, steps=steps, generator=gen)
            with torch.no_grad():
                parts.append((model(xa).argmax(1) == yb).cpu())
        out.append(torch.cat(parts) if parts else torch.zeros(0, dtype=torch.bool))
    return out


def curve_of(eps_list, masks: list[torch.Tensor]) -> list[dict]:
    """``[{"eps", "acc"}, ...]`` from :func:`attack_masks`' masks (accuracy over all points; 0.0 with none)."""
    return [{"eps": float(e), "acc": int(m.sum()) / len(m) if len(m) else 0.0} for e, m in zip(eps_list, masks)]


def attack_curve(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps_list, *,
                 attack: Literal["fgsm", "pgd"], norm: Norm = "Linf", steps: int = 20,
                 device: torch.device | str = "cpu", batch_size: int = 250, seed: int = 0) -> list[dict]:
    """Accuracy under ``attack`` at every ε (raw, one independent attack per ε).

    Returns ``[{"eps": float, "acc": float}, ...]`` in the order of ``eps_list``;
    accuracy is over all of ``x`` (points misclassified without attack count as broken).
    """
    masks = attack_masks(model, x, y, eps_list, attack=attack, norm=norm, steps=steps, device=device,
                         batch_size=batch_size, seed=seed)
    return curve_of(eps_list, masks)
