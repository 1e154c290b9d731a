"""A third-party bench method: random unstructured pruning at initialisation.

A useful sanity baseline: if magnitude pruning does no better than random
masks at the same parameter count, the comparison says little.
Installed as its own distribution; bench finds it through the entry point
``bench.methods`` (see this folder's pyproject.toml).
"""

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import prune

from bench.compression import inference_param_count
from bench.method import Method


@dataclass(frozen=True)
class RandomPruningParams:
    prune_biases: bool = False  # biases are few; keeping them dense is the common choice


class RandomPruning(Method):
    """Random unstructured pruning at initialisation to the target parameter count (sanity baseline)."""

    Params = RandomPruningParams

    def build(self, model, ctx):
        layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        names = ["weight", "bias"] if self.params.prune_biases else ["weight"]
        targets = [(m, n) for m in layers for n in names if getattr(m, n, None) is not None]
        prunable = sum(getattr(m, n).numel() for m, n in targets)
        to_remove = round(ctx.compression * inference_param_count(model))
        if to_remove > prunable:
            raise ValueError(f"compression {ctx.compression} needs {to_remove} zeros, only {prunable} prunable")
        if to_remove:
            gen_state = torch.random.get_rng_state()
            torch.manual_seed(ctx.seed)
            prune.global_unstructured(targets, pruning_method=prune.RandomUnstructured, amount=int(to_remove))
            torch.random.set_rng_state(gen_state)
        return model

    def describe(self, model):
        return {"sparsity": {name: float((m.weight == 0).float().mean())
                             for name, m in model.named_modules() if hasattr(m, "weight_mask")}}
