"""Fast adversarial training (Wong, Rice & Kolter, "Fast is better than free", ICLR 2020)."""

from __future__ import annotations

from dataclasses import dataclass

from bench.objective import Objective
from bench.objectives._linf import ascend, uniform_start
from bench.registry import OBJECTIVES


@dataclass(frozen=True)
class FgsmRsParams:
    """``eps`` (None: the track's adv_eps) and the step ``alpha`` (None: 1.25·ε, the paper's choice)."""

    eps: float | None = None
    alpha: float | None = None

    def __post_init__(self):
        if self.eps is not None and not 0 < self.eps <= 1:
            raise ValueError(f"eps must be in (0, 1] (pixels in [0, 1]), got {self.eps}")
        if self.alpha is not None and not self.alpha > 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")
        if self.alpha is None and self.eps is not None:
            object.__setattr__(self, "alpha", 1.25 * self.eps)


@OBJECTIVES.register("fgsm_rs")
class FgsmRs(Objective):
    """FGSM from a uniform random start in the ε-ball, one signed step of α = 1.25ε (Wong et al. 2020)."""

    Params = FgsmRsParams
    adversarial = True

    def generate(self, model, x, y):
        import torch.nn.functional as F

        p = self.params
        return ascend(lambda xa: F.cross_entropy(model(xa), y), x, uniform_start(x, p.eps),
                      eps=p.eps, alpha=p.alpha, steps=1)

    def loss(self, model, x, y, x_adv):
        import torch.nn.functional as F

        return F.cross_entropy(model(x_adv), y)

    def passes(self) -> tuple[int, int]:
        return 2, 2
