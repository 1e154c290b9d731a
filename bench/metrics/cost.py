"""Inference cost: FLOPs per example and measured latency.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` on one example; it counts
matmuls and convolutions (2 FLOPs per multiply-add), not element-wise ops. The count is
of the operations the model's forward actually runs, so a low-rank layer run as two
thin products counts fewer FLOPs, while an unstructured-pruned layer still runs a dense
kernel with zeros and counts dense FLOPs: sparsity shows up in ``n_nonzero``, not here.
"""

from __future__ import annotations

import statistics
import time

import torch


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
