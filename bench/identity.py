"""A run's identity: the keys that say two runs are the same, all from one hash (:func:`digest`).

Everything is computed from the *resolved* configuration, the dict a row stores as ``config_json``
(:meth:`bench.prepare.Prepared.resolved`), so a written row's ids can always be recomputed from it.

* :func:`config_id` (``cfg-`` + 12 hex digits): the ``config_id`` column, and the name of a
  configuration's checkpoint, AutoAttack state and claim. Two runs with the same id are the same
  configuration: a sweep skips the second one.
* :func:`training_id`: everything that decides the trained weights (the track's definition
  included), stored in a checkpoint, which is resumed only under the same id.
* :func:`sweep_id`: a grid, from its configurations' keys in any order.

A field added to the key after rows were written enters it only when it differs from the value
those rows had implicitly (the objective when not ``standard``, the batch size when not the
track's), so every committed row keeps the id it was written with (tests/test_identity.py).
This module does not import torch.
"""

from __future__ import annotations

import hashlib
import json

DEFAULT_OBJECTIVE = "standard"  # bench.objective.DEFAULT_OBJECTIVE (not imported: no cycle, no import cost)


def digest(obj, n: int) -> str:
    """The first ``n`` hex digits of the SHA-256 of ``obj`` as canonical JSON: the one hash of every id."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def config_key(resolved: dict) -> tuple:
    """What makes two runs the same configuration: track, method and parameters after defaults,
    compression, seed, budget, evaluation size, attacks on or off; the objective and its parameters
    when not ``standard``; the batch size when not the track's."""
    run, track = resolved["run"], resolved["track"]
    compression = resolved.get("compression_target")
    key = (track["name"], run["method"], json.dumps(resolved.get("method_params") or {}, sort_keys=True),
           round(float(compression), 6) if compression is not None else None, int(run["seed"]),
           resolved.get("epochs"), resolved.get("budget_seconds"), resolved.get("n_eval"),
           bool(run.get("skip_attacks", False)))
    objective = resolved.get("objective", DEFAULT_OBJECTIVE)
    if objective != DEFAULT_OBJECTIVE:
        key += (objective, json.dumps(resolved.get("objective_params") or {}, sort_keys=True))
    batch_size = resolved.get("batch_size")
    if batch_size is not None and int(batch_size) != int(track["batch_size"]):
        key += (("batch_size", int(batch_size)),)
    return key


def config_id(resolved: dict) -> str:
    """``cfg-`` and 12 hex digits of :func:`config_key`: the ``config_id`` column of every row."""
    return "cfg-" + digest(config_key(resolved), 12)


def training_id(resolved: dict) -> str:
    """16 hex digits of everything that decides the trained weights: the track's definition (its
    ``adv_eps`` acts only through an objective's parameters), method and parameters, compression,
    seed, budget, batch size, and the objective when not ``standard``."""
    run = resolved["run"]
    ident = {k: resolved[k] for k in ("track", "method_params", "epochs", "budget_seconds", "compression_target",
                                      "batch_size")}
    ident["track"] = {k: v for k, v in ident["track"].items() if k != "adv_eps"}
    ident.update(method=run["method"], seed=run["seed"])
    if resolved.get("objective", DEFAULT_OBJECTIVE) != DEFAULT_OBJECTIVE:
        ident.update(objective=resolved["objective"], objective_params=resolved["objective_params"])
    return digest(ident, 16)


def sweep_id(keys) -> str:
    """``sw-`` and 10 hex digits of a grid (its configurations' :func:`config_key`, in any order): the
    same grid rerun to continue it, or run by a second process beside the first, has the same id."""
    return "sw-" + digest(sorted(json.dumps(k, default=str) for k in keys), 10)


def claim_name(key) -> str:
    """The file name of the claim on ``key`` (a configuration id, or any JSON-able key)."""
    return digest(key, 16) + ".claim"
