"""Compose the pure metrics of ``bench.metrics`` into the evaluation columns of one result row."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from bench.config import EvalProtocol
from bench.train import accuracy


@dataclass
class EvalContext:
    device: torch.device
    n_eval: int
    aa_version: str | None = None  # None: the track's protocol; 'standard'|'plus' forces one version
    skip_attacks: bool = False
    state_dir: Path | None = None  # where AutoAttack keeps its resumable state
    dense_factory: Callable[[], torch.nn.Module] | None = None  # a dense model of the same arch (latency baseline)
    progress: bool = True
    seed: int = 0


def evaluate(model: torch.nn.Module, data, protocol: EvalProtocol, ctx: EvalContext) -> dict[str, Any]:
    """All evaluation columns for ``model`` (left in eval mode)."""
    model.eval()
    row: dict[str, Any] = {
        "n_test": int(len(data.y_test)),
        "clean_acc": accuracy(model, data.x_test, data.y_test, device=ctx.device),
        "val_acc": accuracy(model, data.x_val, data.y_val, device=ctx.device) if len(data.y_val) else None,
    }
    return row
