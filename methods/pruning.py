"""Global unstructured magnitude pruning with the gradual cubic schedule of Zhu & Gupta (2017)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import prune

from bench.compression import inference_param_count
from bench.method import BuildContext, Method
from bench.registry import register_method


@dataclass(frozen=True)
class PruningParams:
    #: fraction of the budget trained dense before the first pruning step
    start: float = 0.1
    #: fraction of the budget at which the final sparsity is reached; fine-tuning after it
    end: float = 0.6
    #: number of pruning steps between start and end
    steps: int = 10

    def __post_init__(self):
        if not 0.0 <= self.start <= self.end <= 1.0:
            raise ValueError(f"need 0 <= start <= end <= 1, got start={self.start}, end={self.end}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")


def _prunable(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


@register_method("pruning")
class Pruning(Method):
    """Global magnitude pruning of all Linear/Conv2d weights, gradual cubic schedule, then fine-tuning.

    Weight decay: the track's, on every parameter.
    """

    Params = PruningParams

    def build(self, model, ctx: BuildContext):
        # Biases (and any other parameters) stay: the count includes them, so the weights lose
        # exactly dense − target entries and the non-zero count lands on the target.
        dense = inference_param_count(model)
        self.target = round((1.0 - ctx.compression) * dense)
        self.layers = _prunable(model)
        n_weights = sum(m.weight.numel() for _, m in self.layers)
        self.to_remove = dense - self.target
        if self.to_remove > n_weights:
            raise ValueError(f"compression {ctx.compression:g} needs {self.to_remove} zeros but the model has only "
                             f"{n_weights} prunable weights")
        for _, m in self.layers:
            prune.identity(m, "weight")  # weight = weight_orig * weight_mask, the mask re-applied every forward
        self.done_steps = 0
        return model

    def amount_at(self, progress: float) -> int:
        """Weights pruned by the cubic schedule after the step that ends at ``progress``."""
        p = self.params
        if progress < p.start:
            return 0
        # steps happen at start + i/steps * (end - start), i = 1..steps (the last at `end`)
        span = max(p.end - p.start, 1e-12)
        i = min(p.steps, int((progress - p.start) / span * p.steps + 1e-9))
        t = i / p.steps
        return round(self.to_remove * (1.0 - (1.0 - t) ** 3))

    def post_step(self, model, progress: float) -> None:
        k = self.amount_at(progress)
        if k > self.pruned():
            self.prune_to(k)

    def finalize(self, model) -> None:
        # The masks stay (no prune.remove): the inference count reads the non-zeros of the masks.
        if self.pruned() < self.to_remove:
            self.prune_to(self.to_remove)
        with torch.no_grad():
            for _, m in self.layers:
                m.weight_orig.mul_(m.weight_mask)
                m.weight = m.weight_orig * m.weight_mask

    def pruned(self) -> int:
        return sum(int((m.weight_mask == 0).sum()) for _, m in self.layers)

    @torch.no_grad()
    def prune_to(self, k: int) -> None:
        """Masks with exactly ``k`` zeros in total: the smallest |w| over all layers (pruned stay pruned)."""
        # a pruned weight scores -1, below every kept one, so it is never revived
        scores = torch.cat([torch.where(m.weight_mask > 0, m.weight_orig.abs(), -1.0).flatten()
                            for _, m in self.layers])
        keep = torch.zeros_like(scores)
        n_keep = scores.numel() - k
        keep[torch.topk(scores, n_keep, sorted=False).indices] = 1.0
        start = 0
        for _, m in self.layers:
            n = m.weight_mask.numel()
            m.weight_mask.copy_(keep[start:start + n].view_as(m.weight_mask))
            m.weight = m.weight_orig * m.weight_mask  # the effective weight is current before the next forward
            start += n

    def describe(self, model) -> dict:
        sparsity = {n: float((m.weight_mask == 0).float().mean()) for n, m in self.layers}
        n_weights = sum(m.weight_mask.numel() for _, m in self.layers)
        return {"sparsity": sparsity, "weight_sparsity": self.pruned() / n_weights, "pruned_weights": self.pruned(),
                "target_params": self.target}
