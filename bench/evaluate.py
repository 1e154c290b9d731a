"""Evaluate a trained model: run every registered metric family and return the row's evaluation columns.

The model is evaluated once, after training, in eval mode. Attacks use the first ``n_eval``
points of the test split; clean accuracy uses the whole split. What each column means is declared
with it (``bench/metrics/families/``, one file per family) and listed in ``docs/columns.md``
(``bench list --columns``); this module only runs the families in order and checks what they return.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from bench.config import EvalProtocol


@dataclass
class EvalContext:
    device: torch.device
    n_eval: int
    aa_version: str | None = None  # None: the track's protocol; 'standard'|'plus' forces one version
    skip_attacks: bool = False
    state_dir: Path | None = None  # where AutoAttack keeps its resumable state (bench.metrics.autoattack)
    dense_factory: Callable[[], torch.nn.Module] | None = None  # a dense model of the same arch (latency baseline)
    progress: bool = True
    seed: int = 0


def evaluate(model: torch.nn.Module, data, protocol: EvalProtocol, ctx: EvalContext) -> dict[str, Any]:
    """Every metric family's columns for ``model`` (left in eval mode), plus ``eval_seconds``.

    A family returns only declared columns (anything else is an error naming it); the columns it
    leaves out hold their defaults ([] for lists, else null). When the attacks ran, the
    AutoAttack state is dropped afterwards: the row now holds what it would resume.
    """
    from bench.columns import EvalInputs, families
    from bench.metrics.autoattack import remove_state

    t_start = time.perf_counter()
    device = torch.device(ctx.device)
    model.eval()
    n_eval = max(0, min(int(ctx.n_eval), len(data.y_test)))
    row: dict[str, Any] = {}
    inputs = EvalInputs(model=model, data=data, protocol=protocol, ctx=ctx, device=device,
                        x_eval=data.x_test[:n_eval], y_eval=data.y_test[:n_eval], row=row)
    for family in families():
        row.update(family.run(inputs))
        model.eval()  # a family that switched modes does not change what the next one measures
    if inputs.attacking and ctx.state_dir is not None:
        remove_state(Path(ctx.state_dir))
    row["eval_seconds"] = time.perf_counter() - t_start
    return row
