"""The clean cross-entropy: what every row written before objectives existed was trained with."""

from __future__ import annotations

from bench.objective import Objective
from bench.registry import OBJECTIVES


@OBJECTIVES.register("standard")
class Standard(Objective):
    """Cross-entropy on the clean batch (the default)."""

    def loss(self, model, x, y, x_adv):
        import torch.nn.functional as F

        return F.cross_entropy(model(x), y)
