"""What a sweep will do, decided before anything runs: :func:`plan` turns a grid into the
configurations to run, those already done, those that failed and those a method declined.

A failed configuration failed either by itself (an exception in training or evaluation, a
diverged loss: rerunning it gives the same failure, so a sweep skips it unless asked to retry) or
by the machinery around it (a Ray node or raylet died, a worker was killed past its retries, the
run was interrupted): nothing is known against the configuration, and the next sweep reruns it.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Iterable

from bench.config import RunConfig

#: error types (the first word of a ``failed`` row's ``error``) of a failure of the machinery, not of
#: the configuration: Ray's system errors, and a run stopped by SIGTERM (bench.method.Interrupted)
MACHINERY_ERRORS = frozenset({
    "LocalRayletDiedError", "WorkerCrashedError", "NodeDiedError", "ActorDiedError", "RaySystemError",
    "ObjectLostError", "ObjectFetchTimedOutError", "OwnerDiedError", "OutOfMemoryError", "Interrupted",
})


def machinery_failure(error) -> bool:
    """True when a ``failed`` row's ``error`` (``"Type: message"``) names a failure of the machinery."""
    return isinstance(error, str) and error.split(":", 1)[0].strip() in MACHINERY_ERRORS


@dataclasses.dataclass
class Planned:
    cfg: RunConfig
    config_id: str
    compression: float  # resolved (the track's when the grid leaves it out; 0 for methods that do not compress)


@dataclasses.dataclass
class Plan:
    configs: list[Planned]  # every distinct configuration of the grid, seed-major
    todo: list[Planned]  # what runs, each with the grid's sweep_id
    done: list[Planned]  # has an ok row
    failed: list[Planned]  # failed by itself before (in todo only with retry_failed)
    interrupted: list[Planned]  # failed by the machinery before: in todo
    declined: list[str]  # why a method does not run on a track (Method.skip), once per method and track
    sweep_id: str
    n_tracks: int


def expand(base: RunConfig, methods: Iterable[str | tuple[str, dict]], compressions: Iterable[float | None],
           seeds: Iterable[int], objectives: Iterable[tuple[str, dict]] | None = None) -> list[RunConfig]:
    """The grid, seed-major: every objective, method and compression of seed 0, then of seed 1, ...
    (``objectives`` None: the base config's).

    So a sweep stopped midway leaves whole seeds, comparable across methods, not all seeds of
    the first methods and none of the rest. Within a seed ``dense`` runs first, wherever it is
    listed: the compressed rows of that seed take their transfer attack from its stored model.
    """
    specs = [(m, {}) if isinstance(m, str) else m for m in methods]
    specs.sort(key=lambda spec: spec[0] != "dense")  # stable: the other methods keep their order
    objs = list(objectives) if objectives is not None else [(base.objective, base.objective_params)]
    return [dataclasses.replace(base, method=m, method_params=dict(p), compression=c, seed=s, objective=o,
                                objective_params=dict(op))
            for s, (o, op), (m, p), c in itertools.product(seeds, objs, specs, compressions)]


def grid(base: RunConfig, tracks: list[str], methods, compressions, seeds, objectives) -> list[RunConfig]:
    """Every configuration, seed-major across tracks too: a grid stopped midway leaves whole seeds of every track."""
    return [c for s in seeds for t in tracks
            for c in expand(dataclasses.replace(base, track=t), methods, compressions, [s], objectives)]


def plan(configs: Iterable[RunConfig], results_dir, *, rerun: bool = False, retry_failed: bool = False) -> Plan:
    """Validate every configuration (before the first run starts), drop duplicates (dense ignores the
    compression target) and sort them against the rows already in ``results_dir``."""
    from bench.identity import sweep_id
    from bench.method import MethodSkipped
    from bench.prepare import prepare

    planned, keys, seen, declined = [], [], set(), {}
    tracks = set()
    for cfg in configs:
        tracks.add(cfg.track)
        try:
            p = prepare(cfg)
        except MethodSkipped as exc:
            declined.setdefault((cfg.method, cfg.track), str(exc))
            continue
        cid = p.config_id()
        if cid not in seen:
            seen.add(cid)
            planned.append(Planned(cfg, cid, p.compression))
            keys.append(p.key())
    sid = sweep_id(keys)
    have = {"ok": set(), "failed": set(), "interrupted": set()} if rerun else row_states(results_dir)
    skip = have["ok"] | (set() if retry_failed else have["failed"])
    todo = [dataclasses.replace(q, cfg=dataclasses.replace(q.cfg, sweep_id=sid)) for q in planned
            if q.config_id not in skip]
    return Plan(planned, todo, *([q for q in planned if q.config_id in have[s]] for s in ("ok", "failed", "interrupted")),
                list(declined.values()), sid, len(tracks))


def row_states(results_dir) -> dict[str, set[str]]:
    """``config_id`` sets: ``ok`` (has an ok row), ``failed`` (no ok row, and one of its failed rows is
    its own failure), ``interrupted`` (no ok row, every failed row a failure of the machinery)."""
    from bench.results import read_results

    df = read_results(results_dir)
    out = {"ok": set(), "failed": set(), "interrupted": set()}
    for r in df.to_dict("records"):
        cid = r.get("config_id")
        if not isinstance(cid, str) or not cid:  # every row bench writes has one (scripts/migrate_results.py)
            continue
        if r.get("status") == "ok":
            out["ok"].add(cid)
        elif r.get("status") == "failed":
            out["interrupted" if machinery_failure(r.get("error")) else "failed"].add(cid)
    out["failed"] -= out["ok"]
    out["interrupted"] -= out["ok"] | out["failed"]
    return out

