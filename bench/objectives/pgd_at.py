"""PGD adversarial training (Madry et al., "Towards deep learning models resistant to adversarial
attacks", ICLR 2018)."""

from __future__ import annotations

from dataclasses import dataclass

from bench.objective import Objective
from bench.objectives._linf import LinfParams, ascend, uniform_start
from bench.registry import OBJECTIVES


@dataclass(frozen=True)
class PgdAtParams(LinfParams):
    """``eps`` (None: the track's adv_eps), ``steps``, ``alpha`` (None: 2.5·ε/steps)."""


@OBJECTIVES.register("pgd_at")
class PgdAt(Objective):
    """Cross-entropy at a PGD point: uniform start, k signed steps of α (default 2.5ε/k) (Madry et al. 2018)."""

    Params = PgdAtParams
    adversarial = True

    def steps(self) -> int:
        return self.params.steps

    def generate(self, model, x, y):
        import torch.nn.functional as F

        p = self.params
        return ascend(lambda xa: F.cross_entropy(model(xa), y), x, uniform_start(x, p.eps),
                      eps=p.eps, alpha=p.alpha, steps=self.steps())

    def loss(self, model, x, y, x_adv):
        import torch.nn.functional as F

        return F.cross_entropy(model(x_adv), y)

    def passes(self) -> tuple[int, int]:
        return self.steps() + 1, self.steps() + 1
