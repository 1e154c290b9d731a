"""Frozen configuration dataclasses: a Track (the benchmark setting) and a RunConfig (one run).

Configuration flows one way: CLI flags -> RunConfig -> runner. The resolved
config is saved as JSON with every result row.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class EvalProtocol:
    """How a track evaluates a trained model. ε are on the [0, 1] pixel scale.

    AutoAttack runs ``headline_version`` at ``headline_eps`` (Linf) and the cheaper
    ``curve_attacks`` (with the standard version's settings) at every other ε of
    ``linf_eps`` and ``l2_eps``; ``--aa-version`` forces one version everywhere. See
    ``bench.metrics.autoattack`` for the nested, monotone curve.
    """

    n_eval: int = 200  # test points attacked (AutoAttack, FGSM, PGD); clean accuracy uses the whole test split
    #: which test points are attacked: "first" (the first n_eval of the split) or "permutation" (the first
    #: n_eval of a permutation of the split seeded by attack_points_seed, the same for every method and seed;
    #: recorded in the attacked_indices column)
    attack_points: str = "first"
    attack_points_seed: int = 0
    linf_eps: tuple[float, ...] = (0.02, 0.05, 0.1)  # AutoAttack Linf curve (headline_eps is added if missing)
    headline_eps: float = 0.05  # the Linf ε reported as robust_acc / robust_eps
    #: AutoAttack at the headline ε: 'standard' | 'plus', or 'custom' (``curve_attacks`` there too: a
    #: cheaper protocol that must say so, e.g. the first-run track)
    headline_version: str = "standard"
    curve_attacks: tuple[str, ...] = ("apgd-ce", "apgd-t")  # the rest of the curve (version 'custom')
    l2_eps: tuple[float, ...] = ()  # optional AutoAttack L2 curve (curve_attacks)
    fgsm_eps: tuple[float, ...] = (0.0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06)  # paper grid
    pgd_linf_eps: tuple[float, ...] = (0.01, 0.02, 0.05, 0.1)
    pgd_l2_eps: tuple[float, ...] = (0.1, 0.3, 0.5, 1.0)
    # 50: on MNIST/LeNet5 (500 points, any-iterate counting) 50 -> 100 steps changed no accuracy by
    # more than 1 point, 20 -> 100 by up to 1.4 (benchmarks/pgd_steps.py)
    pgd_steps: int = 50
    sensitivity_points: int = 64  # first test points for the empirical relative condition number

    def __post_init__(self):
        if self.headline_version not in ("standard", "plus", "custom"):
            raise ValueError(f"headline_version must be 'standard', 'plus' or 'custom', got {self.headline_version!r}")
        known = ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t")
        if not self.curve_attacks or any(a not in known for a in self.curve_attacks):
            raise ValueError(f"curve_attacks must be a non-empty subset of {known}, got {self.curve_attacks}")
        if not self.headline_eps > 0 or any(not e > 0 for e in self.linf_eps + self.l2_eps):
            raise ValueError("AutoAttack ε must be > 0")
        if self.attack_points not in ("first", "permutation"):
            raise ValueError(f"attack_points must be 'first' or 'permutation', got {self.attack_points!r}")
        if self.n_eval < 0 or self.pgd_steps < 1 or self.sensitivity_points < 0:
            raise ValueError("n_eval and sensitivity_points must be >= 0 and pgd_steps >= 1")


@dataclass(frozen=True)
class Track:
    """A named benchmark setting: data + model + budget + compression target + evaluation."""

    name: str
    dataset: str
    arch: str
    description: str = ""
    epochs: float = 10
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    # piecewise-constant schedule on the fraction of the budget spent: lr *= gamma at each milestone
    lr_milestones: tuple[float, ...] = (0.583, 0.833)  # the paper's epochs 70 and 100 of 120
    lr_gamma: float = 0.3
    augment: Literal["none", "crop_flip"] = "none"
    val_fraction: float = 0.25  # the paper holds out 25% of the training set
    compression: float = 0.5
    eval: EvalProtocol = field(default_factory=EvalProtocol)
    #: the model's input normalisation: "data" (the training split's channel mean/std), "none"
    #: (inputs used as [0, 1] pixels), or explicit ((mean per channel), (std per channel))
    normalization: str | tuple[tuple[float, ...], tuple[float, ...]] = "data"
    #: extra keyword arguments of the model builder, as (name, value) pairs (e.g. (("width", 0.25),))
    arch_kwargs: tuple[tuple[str, Any], ...] = ()
    #: keep only N images of the official training split, the first of each class in file order
    #: (bench.data.balanced_first), before the validation split
    train_subset: int | None = None
    #: the published setting this track reproduces ("" for none), and what it changes from it
    #: ("" = nothing: architecture, initialisation, optimizer, schedule and split are the paper's)
    reference: str = ""
    differs: str = ""
    #: the Linf ε of the track's adversarially trained variants (the training attack's default ε and
    #: their headline AutoAttack ε); None: the track declares none (give the objective an eps)
    adv_eps: float | None = None

    def __post_init__(self):
        if isinstance(self.normalization, str):
            if self.normalization not in ("data", "none"):
                raise ValueError(f"track {self.name}: normalization must be 'data', 'none' or (mean, std), "
                                 f"got {self.normalization!r}")
        elif len(self.normalization) != 2 or len(self.normalization[0]) != len(self.normalization[1]):
            raise ValueError(f"track {self.name}: normalization must be ((mean, ...), (std, ...))")
        if self.adv_eps is not None and not 0 < self.adv_eps <= 1:
            raise ValueError(f"track {self.name}: adv_eps must be in (0, 1], got {self.adv_eps}")
        if self.train_subset is not None and self.train_subset < 1:
            raise ValueError(f"track {self.name}: train_subset must be >= 1")

    def summary(self) -> str:
        """One line: the description, then what differs from the reference setting."""
        text = self.description
        if self.reference:
            text += f" [{self.reference}" + (f"; differs: {self.differs}]" if self.differs else ", exactly]")
        elif self.differs:
            text += f" [{self.differs}]"
        return text

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines one run. Fields left None take the track's value."""

    method: str
    track: str = "digits-cnn"
    seed: int = 0
    method_params: dict[str, Any] = field(default_factory=dict)
    epochs: float | None = None
    budget_seconds: float | None = None
    compression: float | None = None
    device: str | None = None
    data_dir: str | None = None
    results_dir: str = "results"
    n_eval: int | None = None
    aa_version: str | None = None  # None: the track's mix; 'standard' or 'plus' forces one version everywhere
    skip_attacks: bool = False  # clean metrics only (fast smoke runs)
    batch_size: int | None = None
    num_threads: int | None = None
    #: torch.use_deterministic_algorithms(True) for the run (and CUBLAS_WORKSPACE_CONFIG on CUDA)
    deterministic: bool = False
    progress: bool = True
    #: the model store (default <results_dir>/.models)
    models_dir: str | None = None
    #: the grid this run belongs to (set by bench sweep; see bench.sweep.sweep_id)
    sweep_id: str | None = None
    #: the training objective (bench list --objectives) and its parameters (validated by its Params)
    objective: str = "standard"
    objective_params: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True, default=str)
