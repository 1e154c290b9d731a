"""TRADES (Zhang et al., "Theoretically principled trade-off between robustness and accuracy", ICML 2019)."""

from __future__ import annotations

from dataclasses import dataclass

from bench.objective import Objective
from bench.objectives._linf import LinfParams, ascend
from bench.registry import OBJECTIVES


@dataclass(frozen=True)
class TradesParams(LinfParams):
    """The ascent's ``eps``, ``steps``, ``alpha`` (as pgd_at) and the weight ``beta`` of the KL term."""

    beta: float = 6.0

    def __post_init__(self):
        super().__post_init__()
        if not self.beta >= 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")


def _kl(logits_adv, p_clean):
    """KL(p_clean ‖ softmax(logits_adv)), summed over classes, averaged over the batch."""
    import torch.nn.functional as F

    return F.kl_div(F.log_softmax(logits_adv, dim=1), p_clean, reduction="batchmean")


@OBJECTIVES.register("trades")
class Trades(Objective):
    """CE(f(x), y) + β·KL(f(x) ‖ f(x')), x' by PGD on the KL term from x + 0.001·N(0, 1) (Zhang et al. 2019)."""

    Params = TradesParams
    adversarial = True

    def generate(self, model, x, y):
        import torch
        import torch.nn.functional as F

        p = self.params
        with torch.no_grad():
            p_clean = F.softmax(model(x), dim=1)
        # the reference code's start: a small Gaussian step off x (the KL's gradient is 0 at x' = x)
        return ascend(lambda xa: _kl(model(xa), p_clean), x, 0.001 * torch.randn_like(x),
                      eps=p.eps, alpha=p.alpha, steps=p.steps)

    def loss(self, model, x, y, x_adv):
        import torch.nn.functional as F

        logits = model(x)
        return F.cross_entropy(logits, y) + self.params.beta * _kl(model(x_adv), F.softmax(logits, dim=1))

    def passes(self) -> tuple[int, int]:
        # generation: the clean target, then k forward+backward; training: clean and x' (two graphs)
        return self.params.steps + 3, self.params.steps + 2
