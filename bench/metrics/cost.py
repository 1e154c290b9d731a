"""Inference cost: FLOPs per example and measured latency, of the model's inference form.

The inference form (:func:`inference_form`) replaces every module that offers
``merged()`` next to ``lowrank_factors()`` (the low-rank layers) by the plain modules
it returns, with U·S multiplied once: the form whose parameters ``n_params`` counts.
Measuring the training form instead would charge every forward pass with rebuilding
U·S (for LeNet5's 800→500 layer at rank 155 that is 24 MFLOPs, five times the whole
dense network at batch size 1).

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` on one example; it counts
matmuls and convolutions (2 FLOPs per multiply-add), not element-wise ops. The count is
of the operations the forward pass actually runs, so a low-rank layer run as two thin
products counts fewer FLOPs, while an unstructured-pruned layer still runs a dense
kernel with zeros and counts dense FLOPs: sparsity shows up in ``n_nonzero``, not here.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch


def _mergeable(mod: torch.nn.Module) -> bool:
    return callable(getattr(mod, "merged", None)) and callable(getattr(mod, "lowrank_factors", None))


@torch.no_grad()
def inference_form(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` itself when nothing merges, else a copy with every mergeable layer replaced by ``merged()``."""
    if _mergeable(model):
        return model.merged().train(model.training)
    if not any(_mergeable(m) for m in model.modules()):
        return model
    out = copy.deepcopy(model)
    outer: list[str] = []
    for name, mod in out.named_modules():
        if _mergeable(mod) and not any(name.startswith(n + ".") for n in outer):
            outer.append(name)
    for name in outer:
        parent_name, _, child = name.rpartition(".")
        parent = out.get_submodule(parent_name) if parent_name else out
        setattr(parent, child, getattr(parent, child).merged())
    return out.train(model.training)


def flops_per_example(model: torch.nn.Module, example: torch.Tensor) -> int:
    """Forward FLOPs of ``model`` on one example (``example`` may be a batch; its first item is used)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = example[:1]
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    return int(counter.get_total_flops())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def latency_ms(model: torch.nn.Module, batch: torch.Tensor, *, warmup: int = 3, min_repeats: int = 5,
               max_repeats: int = 50, max_seconds: float = 2.0) -> dict:
    """Median wall-clock milliseconds of one forward pass of ``batch`` (already on the model's device).

    Repeats until ``max_repeats`` or until ``max_seconds`` have passed (but at least
    ``min_repeats``), so a large model on a CPU does not cost minutes. CUDA work is
    synchronised before each clock read. Returns ``{"ms": median, "repeats": n}``.
    """
    device = batch.device
    for _ in range(warmup):
        model(batch)
    _sync(device)
    times = []
    t_start = time.perf_counter()
    while len(times) < max_repeats and (len(times) < min_repeats or time.perf_counter() - t_start < max_seconds):
        t0 = time.perf_counter()
        model(batch)
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return {"ms": float(statistics.median(times)), "repeats": len(times)}
