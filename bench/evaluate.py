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
from typing import Any, Callable, Sequence

import torch

from bench.config import EvalProtocol


@dataclass
class TransferParent:
    """The dense parent whose adversarial examples the transfer family evaluates a compressed model on
    (bench/metrics/families/transfer.py): its run id, its stored weights' sha256, ``load()`` building
    it (only called when its examples are not cached), and where the examples are cached."""

    run_id: str
    sha256: str
    load: Callable[[], torch.nn.Module]
    cache_dir: Path | None = None


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
    #: the dense parent for the transfer attack, or the reason there is none (a str); None: not looked up
    #: (evaluated outside a run, without a results directory)
    transfer_source: Callable[[], TransferParent | str] | None = None


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


def evaluate(model: torch.nn.Module, data, protocol: EvalProtocol, ctx: EvalContext, *,
             only: Sequence[str] | None = None, prior: dict[str, Any] | None = None,
             indices: Sequence[int] | None = None) -> dict[str, Any]:
    """Every metric family's columns for ``model`` (left in eval mode), plus ``eval_seconds``.

    A family returns only declared columns (anything else is an error naming it); the columns it
    leaves out hold their defaults ([] for lists, else null). When the attacks ran, the
    AutoAttack state is dropped afterwards: the row now holds what it would resume.

    ``only`` (family names) runs just those families on top of ``prior``, the evaluation columns an
    earlier evaluation of the same model wrote (which the families read through ``EvalInputs.row``),
    on that evaluation's ``indices`` (its ``attacked_indices``): ``bench eval --transfer``. The
    result then holds ``prior`` with those families' columns replaced, and ``eval_seconds`` adds
    this call's time to the prior one.
    """
    from bench.columns import EvalInputs, families
    from bench.metrics.autoattack import remove_state

    t_start = time.perf_counter()
    device = torch.device(ctx.device)
    model.eval()
    chosen = families()
    if only is not None:
        unknown = sorted(set(only) - {f.name for f in chosen})
        if unknown:
            raise ValueError(f"unknown metric famil{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}; "
                             f"known: {', '.join(f.name for f in chosen)}")
        chosen = [f for f in chosen if f.name in set(only)]
    if indices is None:
        idx = attacked_indices(protocol, len(data.y_test), ctx.n_eval)
    else:
        idx = torch.as_tensor([int(i) for i in indices], dtype=torch.long)
        if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= len(data.y_test)):
            raise ValueError(f"attacked indices outside the test split of {len(data.y_test)} points")
    row: dict[str, Any] = dict(prior or {})
    inputs = EvalInputs(model=model, data=data, protocol=protocol, ctx=ctx, device=device,
                        x_eval=data.x_test[idx], y_eval=data.y_test[idx], indices=[int(i) for i in idx], row=row)
    for family in chosen:
        row.update(family.run(inputs))
        model.eval()  # a family that switched modes does not change what the next one measures
    if inputs.attacking and ctx.state_dir is not None:
        remove_state(Path(ctx.state_dir))
    before = (prior or {}).get("eval_seconds") if only is not None else None
    row["eval_seconds"] = (before or 0.0) + time.perf_counter() - t_start
    return row
