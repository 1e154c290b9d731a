"""Parameter counting in the *inference form* of a model, the unit of matched compression.

A module class may define ``inference_param_count() -> int`` (low-rank layers count
n·r + r·m + bias, with U·S merged); the count then does not recurse into it. The method is
looked up on the class, so a child module that happens to be *named*
``inference_param_count`` is never mistaken for it.
A pruned weight (``torch.nn.utils.prune`` leaves ``<name>_orig`` and a
``<name>_mask``) counts its non-zero mask entries. Everything else counts its
parameters' elements.
"""

from __future__ import annotations

import torch
from torch import nn


def inference_param_count(model: nn.Module) -> int:
    total = 0

    def visit(mod: nn.Module) -> None:
        nonlocal total
        if callable(getattr(type(mod), "inference_param_count", None)):
            total += int(mod.inference_param_count())
            return
        masks = {n[:-5]: b for n, b in mod.named_buffers(recurse=False) if n.endswith("_mask")}
        for pname, p in mod.named_parameters(recurse=False):
            base = pname[:-5] if pname.endswith("_orig") else pname
            if base in masks:
                total += int(torch.count_nonzero(masks[base]))
            else:
                total += p.numel()
        for child in mod.children():
            visit(child)

    visit(model)
    return total


def nonzero_param_count(model: nn.Module) -> int:
    """Non-zero entries of the effective parameters (masks applied)."""
    total = 0
    for mod in model.modules():
        masks = {n[:-5]: b for n, b in mod.named_buffers(recurse=False) if n.endswith("_mask")}
        for pname, p in mod.named_parameters(recurse=False):
            base = pname[:-5] if pname.endswith("_orig") else pname
            w = p.detach() * masks[base] if base in masks else p.detach()
            total += int(torch.count_nonzero(w))
    return total


def compression_of(n_params: int, n_params_dense: int) -> float:
    return 1.0 - n_params / n_params_dense
