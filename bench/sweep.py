"""Grids of runs: methods × compressions × seeds on one track, skipping what is already done."""

from __future__ import annotations

import dataclasses
import itertools
import json
from typing import Iterable

from bench.config import RunConfig


def expand(base: RunConfig, methods: Iterable[str], compressions: Iterable[float | None],
           seeds: Iterable[int]) -> list[RunConfig]:
    return [dataclasses.replace(base, method=m, compression=c, seed=s)
            for m, c, s in itertools.product(methods, compressions, seeds)]


def done_keys(results_dir) -> set[tuple]:
    """Keys of the successful runs already in ``results_dir``."""
    from bench.results import read_results

    df = read_results(results_dir)
    keys = set()
    for r in df[df["status"] == "ok"].to_dict("records"):
        try:
            cfg = json.loads(r.get("config_json") or "{}")
        except json.JSONDecodeError:
            continue
        keys.add(_key(r["track"], r["method"], cfg.get("method_params", {}), r["compression_target"], r["seed"],
                      cfg.get("epochs"), cfg.get("budget_seconds"), cfg.get("n_eval"),
                      cfg.get("run", {}).get("skip_attacks", False)))
    return keys


def _key(track, method, params, compression, seed, epochs, budget_seconds, n_eval, skip_attacks) -> tuple:
    return (track, method, json.dumps(params or {}, sort_keys=True),
            round(float(compression), 6) if compression is not None else None, int(seed),
            epochs, budget_seconds, n_eval, bool(skip_attacks))


def config_key(cfg: RunConfig) -> tuple:
    """The key a config's row will have (after the runner resolves the track's defaults)."""
    from bench.method import params_to_dict
    from bench.runner import prepare

    p = prepare(cfg)
    return _key(p.track.name, cfg.method, params_to_dict(p.params), p.compression, cfg.seed, p.epochs,
                p.budget_seconds, p.n_eval, cfg.skip_attacks)
