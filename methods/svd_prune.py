"""Train dense, truncate each layer's SVD to the low-rank ranks, fine-tune the factors.

This is *not* the CondLR paper's SVD-prune baseline, which trains with an orthogonality
regulariser and singular-value sparsification; it is the simpler post-hoc truncation.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.lowrank import LowRankMethod, lowrank_from_dense, replace_module
from bench.method import BuildContext
from bench.registry import register_method


@dataclass(frozen=True)
class SVDPruneParams:
    #: fraction of the budget trained dense before the truncation; the rest fine-tunes the factors
    switch: float = 0.5

    def __post_init__(self):
        if not 0.0 <= self.switch <= 1.0:
            raise ValueError(f"switch must be in [0, 1], got {self.switch}")


@register_method("svd_prune")
class SVDPrune(LowRankMethod):
    """Train dense, truncate the SVD to the low-rank ranks at `switch` of the budget, fine-tune (not the paper's SVD-prune).

    Weight decay: the track's, on every parameter (dense weights, then the factors).
    """

    Params = SVDPruneParams

    def __init__(self, params=None):
        super().__init__(params)
        self.truncated = False

    def build(self, model, ctx: BuildContext):
        # The rank plan now; the model stays dense until the switch. The trainer builds the optimizer
        # once (self.optimizer, attached before the first step); at the switch the dense weights
        # leave its parameter groups and the new factors join the same groups, so the trainer keeps
        # setting their lr (lr_scale stays as it was). Their momentum starts from zero.
        return super().build(model, ctx)

    def post_step(self, model, progress: float) -> None:
        if not self.truncated and progress >= self.params.switch:
            self.truncate(model)

    def finalize(self, model) -> None:
        if not self.truncated:  # a budget too short to reach the switch still ends compressed
            self.truncate(model)

    def truncate(self, model) -> None:
        """Replace every planned layer by the U√σ, V√σ factors of its truncated SVD."""
        for name, rank in self.plan.ranks.items():
            old = model.get_submodule(name)
            new = lowrank_from_dense(old, rank, with_s=False, split="balanced").train(model.training)
            replace_module(model, name, new)
            if self.optimizer is not None:
                _swap_params(self.optimizer, list(old.parameters()), list(new.parameters()))
        self.truncated = True

    def checkpoint_state(self) -> dict:
        return {"truncated": self.truncated}

    def restore_checkpoint_state(self, state: dict, model) -> None:
        if state.get("truncated") and not self.truncated:
            self.truncate(model)  # the factors' values come from the model state dict loaded next

    def describe(self, model) -> dict:
        d = super().describe(model)
        d["switch"] = self.params.switch
        return d


def _swap_params(opt, old: list, new: list) -> None:
    """Drop ``old`` from the optimizer (and its state); add ``new`` to the group that held old[0]."""
    ids = {id(p) for p in old}
    home = None
    for g in opt.param_groups:
        if any(id(p) in ids for p in g["params"]):
            home = home or g
            g["params"] = [p for p in g["params"] if id(p) not in ids]
    for p in old:
        opt.state.pop(p, None)
    (home or opt.param_groups[0])["params"].extend(new)
