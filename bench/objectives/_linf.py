"""Linf ascent shared by the adversarial objectives: a start in the ε-ball, signed-gradient steps of
size α on a loss of the input, each projected back onto the ball and onto [0, 1] pixels."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LinfParams:
    """ε-ball ascent: radius ``eps`` (None: the track's ``adv_eps``), ``steps`` steps of ``alpha``
    (None: 2.5·ε/steps, Madry et al.'s rule, so the iterates can cross the ball)."""

    eps: float | None = None
    steps: int = 10
    alpha: float | None = None

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        check_eps_alpha(self, 2.5 / self.steps)


def check_eps_alpha(params, default_alpha_per_eps: float) -> None:
    """Validate a frozen params' ``eps`` and ``alpha``, and resolve ``alpha`` None to ``default_alpha_per_eps``·ε
    now, so rows and ids carry the number."""
    if params.eps is not None and not 0 < params.eps <= 1:
        raise ValueError(f"eps must be in (0, 1] (pixels in [0, 1]), got {params.eps}")
    if params.alpha is not None and not params.alpha > 0:
        raise ValueError(f"alpha must be > 0, got {params.alpha}")
    if params.alpha is None and params.eps is not None:
        object.__setattr__(params, "alpha", default_alpha_per_eps * params.eps)


def ascend(loss_of, x, delta, *, eps: float, alpha: float, steps: int):
    """``steps`` signed steps on ``loss_of(x + delta)`` from ``delta``; returns the detached x + δ.

    The gradient is taken with ``torch.autograd.grad`` w.r.t. the input only, so no parameter's
    ``.grad`` is touched.
    """
    import torch

    x = x.detach()
    delta = ((x + delta).clamp(0.0, 1.0) - x).detach()
    for _ in range(steps):
        delta.requires_grad_(True)
        (g,) = torch.autograd.grad(loss_of(x + delta), delta)
        delta = (delta.detach() + alpha * g.sign()).clamp(-eps, eps)
        delta = (x + delta).clamp(0.0, 1.0) - x
    return (x + delta).detach()


def uniform_start(x, eps: float):
    """δ uniform in the Linf ball (torch's global RNG: a checkpoint keeps it, so a resumed run continues alike)."""
    import torch

    return (torch.rand_like(x) * 2 - 1) * eps
