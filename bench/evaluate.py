"""Evaluate a trained model: run every registered metric family and return the row's evaluation columns.

The model is evaluated once, after training, in eval mode. Attacks use ``n_eval`` points of the
test split chosen by the protocol's ``attack_points`` (:func:`attacked_indices`); clean accuracy
uses the whole split. What each column means is declared
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


def attacked_indices(protocol: EvalProtocol, n_test: int, n_eval: int) -> torch.Tensor:
    """The test-split indices the attacks use, ascending: the first ``n_eval`` ("first"), or the first
    ``n_eval`` of a permutation seeded by ``attack_points_seed`` ("permutation"). They depend on neither
    the method nor the run's seed, so every row of a track attacks the same points; a smaller ``n_eval``
    takes a subset of a larger one's points."""
    n_eval = max(0, min(int(n_eval), int(n_test)))
    if protocol.attack_points == "first":
        return torch.arange(n_eval)
    gen = torch.Generator().manual_seed(int(protocol.attack_points_seed))
    return torch.randperm(int(n_test), generator=gen)[:n_eval].sort().values


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
    idx = attacked_indices(protocol, len(data.y_test), ctx.n_eval)
    row: dict[str, Any] = {}
    inputs = EvalInputs(model=model, data=data, protocol=protocol, ctx=ctx, device=device,
                        x_eval=data.x_test[idx], y_eval=data.y_test[idx], indices=[int(i) for i in idx], row=row)
    for family in families():
        row.update(family.run(inputs))
        model.eval()  # a family that switched modes does not change what the next one measures
    if inputs.attacking and ctx.state_dir is not None:
        remove_state(Path(ctx.state_dir))
    row["eval_seconds"] = time.perf_counter() - t_start
    return row
