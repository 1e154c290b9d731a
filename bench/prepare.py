"""Validate a run's configuration before anything expensive happens, and resolve it.

:func:`prepare` turns a :class:`bench.config.RunConfig` into a :class:`Prepared`: the track, the
method class and its parsed parameters, the objective, the budget, compression and evaluation size,
each checked (a bad value is an error here, before data is loaded or a model built). Every id of
the run is computed from :meth:`Prepared.resolved` (:mod:`bench.identity`).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from bench import identity
from bench.config import EvalProtocol, RunConfig, Track
from bench.method import Method, MethodSkipped, parse_params, params_to_dict
from bench.objective import make_objective
from bench.registry import METHODS, TRACKS


@dataclasses.dataclass
class Prepared:
    cfg: RunConfig
    track: Track
    method_cls: type
    params: Any
    epochs: float | None
    budget_seconds: float | None
    compression: float
    n_eval: int
    objective: Any = None  # a bench.objective.Objective, its parameters resolved (eps from the track)

    @property
    def batch_size(self) -> int:
        return self.cfg.batch_size or self.track.batch_size

    @property
    def eval_protocol(self) -> EvalProtocol:
        return eval_protocol_for(self.track, self.objective.eps if self.objective.adversarial else None)

    def resolved(self) -> dict:
        """The resolved configuration (the row's ``config_json``, less the device and evaluation
        protocol): every id of the run is computed from it (:mod:`bench.identity`)."""
        return {
            "run": json.loads(self.cfg.to_json()),
            "track": self.track.to_dict(),
            "method_params": params_to_dict(self.params),
            "epochs": self.epochs, "budget_seconds": self.budget_seconds,
            "compression_target": self.compression, "n_eval": self.n_eval,
            "batch_size": self.batch_size,
            "objective": self.cfg.objective, "objective_params": params_to_dict(self.objective.params),
        }

    def key(self) -> tuple:
        return identity.config_key(self.resolved())

    def config_id(self) -> str:
        return identity.config_id(self.resolved())


def prepare(cfg: RunConfig) -> Prepared:
    """Validate a config before anything expensive happens (names, parameters, ranges)."""
    track: Track = TRACKS.get(cfg.track)
    method_cls = METHODS.get(cfg.method)
    if not (isinstance(method_cls, type) and issubclass(method_cls, Method)):
        raise TypeError(f"method {cfg.method!r} is not a bench.method.Method subclass")
    params = parse_params(method_cls.Params, cfg.method_params)
    objective = make_objective(cfg.objective, cfg.objective_params, track.adv_eps)
    reason = method_cls.skip(track)
    if reason:
        raise MethodSkipped(f"method {cfg.method!r} does not run on track {track.name!r}: {reason}")
    compression = track.compression if cfg.compression is None else float(cfg.compression)
    if not 0.0 <= compression < 1.0:
        raise ValueError(f"--compression must be in [0, 1), got {compression}")
    if not method_cls.compresses:
        compression = 0.0
    epochs = cfg.epochs
    budget_seconds = cfg.budget_seconds
    if epochs is None and budget_seconds is None:
        epochs = track.epochs
    if epochs is not None and not epochs > 0:
        raise ValueError(f"--epochs must be > 0, got {epochs}")
    if budget_seconds is not None and not budget_seconds > 0:
        raise ValueError(f"--budget-seconds must be > 0, got {budget_seconds}")
    n_eval = track.eval.n_eval if cfg.n_eval is None else int(cfg.n_eval)
    if n_eval < 0:
        raise ValueError(f"--n-eval must be >= 0, got {n_eval}")
    if cfg.aa_version not in (None, "standard", "plus"):
        raise ValueError(f"--aa-version must be 'standard' or 'plus', got {cfg.aa_version!r}")
    return Prepared(cfg, track, method_cls, params, epochs, budget_seconds, compression, n_eval, objective)


def eval_protocol_for(track: Track, adv_eps: float | None) -> EvalProtocol:
    """The track's protocol; for an adversarially trained model (``adv_eps``: its training ε) the
    headline AutoAttack ε becomes the training ε, which also joins the AutoAttack and the PGD-50 Linf
    curves (the rest of each curve kept around it), so the row has PGD beside AutoAttack at the ε
    it was trained for."""
    if adv_eps is None:
        return track.eval
    eps = float(adv_eps)
    return dataclasses.replace(track.eval, headline_eps=eps,
                               linf_eps=tuple(sorted(set(track.eval.linf_eps) | {eps})),
                               pgd_linf_eps=tuple(sorted(set(track.eval.pgd_linf_eps) | {eps})))
