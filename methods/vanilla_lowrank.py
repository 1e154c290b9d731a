"""Plain low-rank factorisation (the paper's LoRA-style baseline): W = U Vᵀ (or U S Vᵀ), no constraint."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bench.lowrank import LowRankMethod, lowrank_from_dense, replace_module
from bench.method import BuildContext
from bench.registry import register_method


@dataclass(frozen=True)
class VanillaLowRankParams:
    #: uv: W = U Vᵀ (initialised U√σ, V√σ from the SVD of the initial weight); usv: U S Vᵀ, S free
    form: Literal["uv", "usv"] = "uv"


@register_method("vanilla_lowrank")
class VanillaLowRank(LowRankMethod):
    """Factorised layers U Vᵀ trained directly by SGD, the same ranks as robust_lowrank.

    Weight decay: the track's, on every parameter, the factors U, V (and S) included.
    """

    Params = VanillaLowRankParams

    def build(self, model, ctx: BuildContext):
        super().build(model, ctx)  # the rank plan shared by every low-rank method
        usv = self.params.form == "usv"
        for name, rank in self.plan.ranks.items():
            new = lowrank_from_dense(model.get_submodule(name), rank, with_s=usv, split="usv" if usv else "balanced",
                                     preserve_norm=True)
            replace_module(model, name, new)
        return model

    def describe(self, model) -> dict:
        d = super().describe(model)
        d["form"] = self.params.form
        return d
