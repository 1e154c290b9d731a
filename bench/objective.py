"""The contract between the trainer and a training objective (the loss a step descends).

The trainer owns the step (:func:`bench.train.train_step`): with an adversarial objective it
puts the model in eval mode, asks :meth:`Objective.generate` for the perturbed batch, puts the
model back in train mode, zeroes every parameter gradient, and only then calls
:meth:`Objective.loss` and backpropagates. So nothing the attack computes can reach the
optimizer or a method's ``post_step`` (docs/objectives.md says why eval mode).

An objective is one file in ``bench/objectives/`` (or a plugin under the entry-point group
``bench.objectives``): a subclass of :class:`Objective` with a frozen dataclass ``Params``
validated as a method's (:func:`bench.method.parse_params`). This module does not import torch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from bench.method import NoParams, ParamError, parse_params

#: the objective of every row written before objectives existed, and the default
DEFAULT_OBJECTIVE = "standard"


class Objective:
    """Base class of every training objective. Subclass, set ``Params``, register in OBJECTIVES."""

    name: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    #: True when :meth:`generate` perturbs the batch (an attack is generated every step)
    adversarial: ClassVar[bool] = False

    def __init__(self, params: Any | None = None):
        self.params = params if params is not None else self.Params()

    @property
    def eps(self) -> float | None:
        """The Linf radius of the training attack (None for a clean objective)."""
        return getattr(self.params, "eps", None)

    def generate(self, model, x, y):
        """The perturbed batch (detached), computed with gradients w.r.t. the input only; None when
        the objective trains on clean data. Called in eval mode, under ``torch.enable_grad()``."""
        return None

    def loss(self, model, x, y, x_adv):
        """The training loss of one batch (model in train mode); the trainer backpropagates it."""
        raise NotImplementedError

    def passes(self) -> tuple[int, int]:
        """(forward, backward) passes of the model over the batch in one step, generation included."""
        return 1, 1

    @classmethod
    def summary(cls) -> str:
        doc = (cls.__doc__ or "").strip().splitlines()
        return doc[0].strip() if doc else ""


def objective_spec(text: str) -> tuple[str, dict[str, str]]:
    """``"pgd_at[eps=0.3,steps=10]"`` -> ``("pgd_at", {"eps": "0.3", "steps": "10"})``."""
    from bench.method import parse_specs

    specs = parse_specs(text, "--objective")
    if len(specs) != 1:
        raise ParamError(f"--objective takes one objective, got {text!r} (bench sweep takes --objectives)")
    return specs[0]


def make_objective(name: str, params: dict | None, adv_eps: float | None = None) -> Objective:
    """The registered objective ``name`` with validated ``params``. An ``eps`` left unset takes
    ``adv_eps`` (the track's ε for adversarial training); a clear error when there is none."""
    from bench.registry import OBJECTIVES

    cls = OBJECTIVES.get(name)
    if not (isinstance(cls, type) and issubclass(cls, Objective)):
        raise TypeError(f"objective {name!r} is not a bench.objective.Objective subclass")
    raw = dict(params or {})
    fields = {f.name for f in dataclasses.fields(cls.Params)}
    if "eps" in fields and raw.get("eps") in (None, "", "None", "none"):
        if adv_eps is None:
            raise ParamError(f"objective {name!r} needs eps: give {name}[eps=...] (this track declares no adv_eps)")
        raw["eps"] = adv_eps
    try:
        return cls(parse_params(cls.Params, raw))
    except ParamError as exc:
        raise ParamError(f"objective {name!r}: {exc}") from None


def collapsed(curve: list[float], ratio: float = 0.3) -> bool:
    """Catastrophic overfitting: some epoch's PGD accuracy fell below ``ratio`` x the best before it."""
    best = 0.0
    for acc in curve:
        if best > 0 and acc < ratio * best:
            return True
        best = max(best, acc)
    return False
