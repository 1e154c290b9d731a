"""Fast adversarial training (Wong, Rice & Kolter, "Fast is better than free", ICLR 2020)."""

from __future__ import annotations

from dataclasses import dataclass

from bench.objectives._linf import check_eps_alpha
from bench.objectives.pgd_at import PgdAt
from bench.registry import OBJECTIVES


@dataclass(frozen=True)
class FgsmRsParams:
    """``eps`` (None: the track's adv_eps) and the step ``alpha`` (None: 1.25·ε, the paper's choice)."""

    eps: float | None = None
    alpha: float | None = None

    def __post_init__(self):
        check_eps_alpha(self, 1.25)


@OBJECTIVES.register("fgsm_rs")
class FgsmRs(PgdAt):
    """FGSM from a uniform random start in the ε-ball, one signed step of α = 1.25ε (Wong et al. 2020).

    pgd_at's ascent and loss with one step."""

    Params = FgsmRsParams

    def steps(self) -> int:
        return 1
