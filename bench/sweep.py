"""Grids of runs: methods × compressions × seeds on one track, skipping what is already done."""

from __future__ import annotations

import dataclasses
import itertools
import json
from typing import Iterable

from bench.claims import Claim  # noqa: F401 - bench.sweep.Claim, as before
from bench.config import RunConfig
from bench.method import parse_specs
from bench.plan import expand, row_states  # noqa: F401 - bench.sweep.expand, as before


MethodSpec = tuple[str, dict]


def parse_methods(text: str) -> list[MethodSpec]:
    """``"dense,robust_lowrank[mode=mean,kappa=2]"`` -> ``[("dense", {}), ("robust_lowrank", {...})]``.

    Commas inside ``[...]`` separate parameters, commas outside separate methods. Values stay
    strings; the method's ``Params`` parses and validates them (as for ``--param``).
    """
    return parse_specs(text, "--methods")


#: the flags a sweep file may give as a TOML list (joined with commas)
LIST_KEYS = ("methods", "tracks", "compressions", "seeds", "objectives")


def load_sweep_file(path, parser) -> dict:
    """A sweep file (TOML) as ``bench sweep`` defaults: its keys are the sweep's long flags (``-`` or
    ``_``), lists allowed where the flag takes a comma-separated list::

        tracks = ["digits-cnn", "mnist-lenet5-e10"]
        methods = ["dense", "vanilla_lowrank", "robust_lowrank[mode=mean]"]
        compressions = [0.5, 0.8]
        seeds = [0, 1, 2]
        objectives = ["standard", "pgd_at[eps=0.3,steps=10]"]
        threads = 1
        data-dir = "data"

    Each key is parsed as its flag by ``parser`` (the sweep's flags, built with
    ``exit_on_error=False``), so a file accepts exactly what the command line does. An unknown key
    or a value of the wrong kind is a ``ValueError`` naming it.
    """
    import argparse
    import tomllib

    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"sweep file {path}: not valid TOML: {exc}") from exc
    out = {}
    for key, value in raw.items():
        flag, dest = "--" + key.replace("_", "-"), key.replace("-", "_")
        try:
            known = flag not in parser.parse_known_args([flag])[1]
        except argparse.ArgumentError:  # it wants a value: it exists
            known = True
        if not known or dest == "file":
            raise ValueError(f"sweep file {path}: unknown key {key!r} (the keys are `bench sweep`'s flags)")
        if isinstance(value, list):
            if dest not in LIST_KEYS:
                raise ValueError(f"sweep file {path}: {key!r} takes one value, got a list")
            if not value:
                raise ValueError(f"sweep file {path}: {key!r} is an empty list")
            value = ",".join(str(v) for v in value)
        if isinstance(value, dict):
            raise ValueError(f"sweep file {path}: {key!r} takes a value, got {value!r}")
        argv = [flag] if isinstance(value, bool) else [flag, str(value)]
        try:
            ns, extra = parser.parse_known_args(argv)
        except argparse.ArgumentError as exc:
            what = "takes a value" if isinstance(value, bool) else exc.message
            raise ValueError(f"sweep file {path}: {key!r}: {what}") from None
        if extra:
            raise ValueError(f"sweep file {path}: {key!r} is true or false, got {value!r}")
        out[dest] = value if isinstance(value, bool) else getattr(ns, dest)
    return out


def config_key(cfg: RunConfig) -> str:
    """The ``config_id`` a config's row will have (after the runner resolves the track's defaults)."""
    from bench.prepare import prepare

    return prepare(cfg).config_id()


# --------------------------------------------------------------------------------------------
# executors: one configuration after another here, or one Ray task per configuration
# --------------------------------------------------------------------------------------------
def run_one(cfg: RunConfig, key: str, results_dir, rerun: bool = False, *, stop_on_interrupt: bool = False) -> dict:
    """Claim ``cfg``, skip it when done or running elsewhere, else run it. Returns a summary dict:
    ``{"status": "ok" | "failed" | "skipped", "run_id", "clean_acc", "robust_acc", "cond_max", "error", "file"}``.

    A run stopped by SIGTERM (:class:`bench.method.Interrupted`, its checkpoint written) gets a
    ``failed`` row the next sweep reruns; with ``stop_on_interrupt`` (a local sweep: the signal was
    for the whole process) it is raised instead, so the sweep stops rather than start the next run."""
    from bench import runner
    from bench.method import Interrupted

    with Claim(results_dir, key) as claim:
        if not claim.acquire() or (not rerun and key in row_states(results_dir)["ok"]):
            return {"status": "skipped"}
        try:
            row, path = runner.run(cfg)
        except Interrupted:
            if stop_on_interrupt:
                raise
            path = write_failed_row(cfg, key, f"Interrupted: SIGTERM; the checkpoint stays for the rerun")
            return {"status": "failed", "error": "Interrupted", "file": str(path)}
        except runner.RunError as exc:
            return {"status": "failed", "error": str(exc), "file": str(exc.path) if exc.path else None}
        except Exception as exc:  # noqa: BLE001 - failed before the runner could write a row: write one here
            path = write_failed_row(cfg, key, f"{type(exc).__name__}: {exc}")
            return {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "file": str(path)}
    return {"status": "ok", "run_id": row["run_id"], "clean_acc": row.get("clean_acc"),
            "robust_acc": row.get("robust_acc"), "cond_max": row.get("cond_max"), "file": str(path)}


def write_failed_row(cfg: RunConfig, key: str, error: str):
    """A ``failed`` row for configuration ``key`` (its ``config_id``) that failed outside the runner
    (a crashed worker, a bad device)."""
    from bench.results import new_run_id, write_row
    from bench.prepare import prepare

    try:  # the resolved configuration when there is one: its config_id can be recomputed from it
        resolved = prepare(cfg).resolved()
    except Exception:  # noqa: BLE001 - the row is written either way
        resolved = {"run": json.loads(cfg.to_json())}
    return write_row({"run_id": new_run_id(), "status": "failed", "error": error, "method": cfg.method,
                      "method_params": json.dumps(cfg.method_params, sort_keys=True), "track": cfg.track,
                      "seed": cfg.seed, "compression_target": cfg.compression, "sweep_id": cfg.sweep_id,
                      "objective": cfg.objective, "objective_params": json.dumps(cfg.objective_params, sort_keys=True),
                      "config_id": key,
                      "config_json": json.dumps(resolved, sort_keys=True, default=str)},
                     cfg.results_dir)


def execute(todo, results_dir, *, executor: str = "local", rerun: bool = False, on_begin=None, on_result=None,
            should_start=None, **ray_options) -> list[dict]:
    """Run a plan's ``todo`` (:class:`bench.plan.Planned`) here, one after another (``on_begin(i, cfg)``
    before each), or on Ray (``ray_options``: :func:`run_on_ray`'s); ``on_result(cfg, summary)`` as
    each ends. ``should_start(i, planned)`` (local only; a deadline): a configuration it declines is
    left for a later sweep. Returns the summaries of what ran."""
    pairs = [(q.cfg, q.config_id) for q in todo]
    if executor == "ray":
        if should_start is not None:
            raise ValueError("a deadline (should_start) is for the local executor; Ray schedules the runs itself")
        return run_on_ray(pairs, results_dir, rerun=rerun, on_result=on_result, **ray_options) if pairs else []
    out = []
    for i, (q, (cfg, key)) in enumerate(zip(todo, pairs), 1):
        if should_start is not None and not should_start(i, q):
            continue
        if on_begin is not None:
            on_begin(i, cfg)
        out.append(run_one(cfg, key, results_dir, rerun, stop_on_interrupt=True))
        if on_result is not None:
            on_result(cfg, out[-1])
    return out


def _ray_task(cfg_dict: dict, key: str, results_dir: str, rerun: bool) -> dict:
    return run_one(RunConfig(**cfg_dict), key, results_dir, rerun)


def run_on_ray(todo: list[tuple[RunConfig, str]], results_dir, *, address: str | None = None,
               cpus_per_run: float = 1, gpus_per_run: float = 0, rerun: bool = False,
               on_result=None, on_start=None) -> list[dict]:
    """One Ray task per configuration, each asking for ``cpus_per_run`` CPUs and ``gpus_per_run`` GPUs.

    ``address`` joins a running cluster (``ray start --head`` …; the results directory must be on a
    file system every node sees); without it a local Ray instance is started and stopped here. A
    task whose worker dies is retried (twice) and resumes from its checkpoint; a configuration that
    still fails gets a ``failed`` row. ``on_result(cfg, summary)`` is called as results arrive;
    ``on_start(n, where)`` once Ray is up, with how many runs the cluster's resources hold at a time.
    """
    import os
    import sys

    if address is None and "ray" not in sys.modules:
        # A local instance listens on loopback only. Ray resolves 127.0.0.1 to the node's address on
        # Linux unless cluster mode is off, and reads this switch when it is first imported.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    started = False
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            # Ray starts its workers at niceness 15, which starves every run on a machine that is
            # doing anything else; a local benchmark instance runs them at normal priority.
            os.environ.setdefault("RAY_worker_niceness", "0")
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        started = True
    try:
        if on_start is not None:
            res = ray.cluster_resources()
            fits = [res.get("CPU", 0) / cpus_per_run] if cpus_per_run > 0 else []
            fits += [res.get("GPU", 0) / gpus_per_run] if gpus_per_run > 0 else []
            where = address or f"a local instance on {ray.util.get_node_ip_address()}"
            on_start(int(min(fits)) if fits else len(todo), where)
        task = ray.remote(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=2)(_ray_task)
        refs = {}
        for cfg, key in todo:
            if cfg.num_threads is None and cfg.device in (None, "cpu"):
                cfg = dataclasses.replace(cfg, num_threads=max(1, int(cpus_per_run)))
            refs[task.remote(dataclasses.asdict(cfg), key, str(results_dir), rerun)] = (cfg, key)
        out = []
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            cfg, key = refs[ready[0]]
            try:
                summary = ray.get(ready[0])
            except Exception as exc:  # noqa: BLE001 - the worker died even after the retries
                msg = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                summary = {"status": "failed", "error": msg, "file": str(write_failed_row(cfg, key, msg))}
            out.append(summary)
            if on_result is not None:
                on_result(cfg, summary)
        return out
    finally:
        if started:
            ray.shutdown()


# --------------------------------------------------------------------------------------------
# a deadline: start a configuration only when its expected duration fits before it
# --------------------------------------------------------------------------------------------
_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_deadline(text: str, now: float | None = None) -> float:
    """``--deadline`` as a POSIX time: ``+90m``, ``+2h``, ``+1h30m``, ``+45s`` (from now); ``HH:MM``
    (the next such local time, today or tomorrow); or a local ISO date-time ``2026-12-06T00:30``
    (an offset such as ``+01:00`` is honoured). Anything else, or a date-time already past, is a
    ValueError naming the forms."""
    import datetime as dt
    import re
    import time

    now = time.time() if now is None else now
    forms = "+90m, +2h, +1h30m, HH:MM or 2026-12-06T00:30"
    s = str(text).strip()
    if s.startswith("+"):
        parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", s[1:])
        if not parts or "".join(n + u for n, u in parts) != s[1:]:
            raise ValueError(f"--deadline: expected {forms}, got {text!r}")
        return now + sum(float(n) * _UNITS[u] for n, u in parts)
    m = re.fullmatch(r"(\d{1,2}):(\d{2})", s)
    if m:
        h, mi = int(m.group(1)), int(m.group(2))
        if h > 23 or mi > 59:
            raise ValueError(f"--deadline: {text!r} is not a time of day")
        base = dt.datetime.fromtimestamp(now)
        at = base.replace(hour=h, minute=mi, second=0, microsecond=0)
        if at.timestamp() <= now:
            at += dt.timedelta(days=1)
        return at.timestamp()
    try:
        at = dt.datetime.fromisoformat(s)
    except ValueError:
        raise ValueError(f"--deadline: expected {forms}, got {text!r}") from None
    when = at.timestamp()  # naive: local time
    if when <= now:
        raise ValueError(f"--deadline {text!r} has passed (now {dt.datetime.fromtimestamp(now):%Y-%m-%d %H:%M})")
    return when


def _seedless(key: tuple) -> tuple:
    """A :func:`bench.identity.config_key` without its seed: the configuration every seed of it shares."""
    return key[:4] + key[5:]


class Durations:
    """What a configuration is expected to take (training and evaluation, wall seconds), from the ok rows
    of ``results_dir``: the median over the rows of the same configuration at other seeds; else over
    the rows of the same track, method and objective; else unknown. The rows were timed under whatever
    load their machine had, so this is an estimate, and it says what it rests on.

    ``since`` (a POSIX time, the sweep's start): the rows written from then on, by this sweep or one
    beside it, measure the machine as it is now. Each is set against what the rows before ``since``
    expected of it, and the median of those ratios (the pace) scales every estimate that rests on the
    earlier rows. A machine half as fast as the one that wrote the history then stops starting runs
    that the deadline will cut off."""

    def __init__(self, results_dir, since: float | None = None):
        self.results_dir = results_dir
        self.since = since
        self.refresh()

    @staticmethod
    def _written_at(row) -> float | None:
        import datetime as dt

        try:
            return dt.datetime.fromisoformat(str(row.get("created_at"))).timestamp()
        except (TypeError, ValueError):
            return None

    def refresh(self) -> None:
        from bench import identity
        from bench.results import read_results

        df = read_results(self.results_dir)
        # {seedless configuration key: [secs]}, {(track, method, objective): [secs]}: rows written before ``since`` and from it on
        self._before, self._after, self.pace, self.pace_n = ({}, {}), ({}, {}), None, 0
        if df.empty or "train_seconds" not in df:
            return
        recent = []
        for r in df[df["status"] == "ok"].to_dict("records"):
            t, e = r.get("train_seconds"), r.get("eval_seconds")
            if t is None or t != t:  # a row without timing (NaN)
                continue
            secs = float(t) + (float(e) if e is not None and e == e else 0.0)
            try:
                key = _seedless(identity.config_key(json.loads(r["config_json"])))
            except Exception:  # noqa: BLE001 - a row whose configuration cannot be keyed only loses the exact match
                key = None
            mkey = (r.get("track"), r.get("method"), r.get("objective") or "standard")
            when = self._written_at(r)
            is_recent = self.since is not None and when is not None and when >= self.since
            same, method = self._after if is_recent else self._before
            if key is not None:
                same.setdefault(key, []).append(secs)
            method.setdefault(mkey, []).append(secs)
            if is_recent:
                recent.append((key, mkey, secs))
        ratios = [secs / base for key, mkey, secs in recent
                  if (base := self._median(self._before, key, mkey)[0])]
        if ratios:
            import statistics

            self.pace, self.pace_n = statistics.median(ratios), len(ratios)

    @staticmethod
    def _median(rows, key, mkey) -> tuple[float | None, str]:
        import statistics

        same, method = rows
        if key is not None and same.get(key):
            xs = same[key]
            return statistics.median(xs), f"median of {len(xs)} row{'s' * (len(xs) > 1)} of this configuration"
        if method.get(mkey):
            xs = method[mkey]
            return statistics.median(xs), f"median of {len(xs)} {mkey[1]} row{'s' * (len(xs) > 1)} on {mkey[0]}"
        return None, "no row to estimate it from"

    def expected(self, q) -> tuple[float | None, str]:
        """(seconds or None, what the estimate rests on) for a :class:`bench.plan.Planned`: from the rows
        before the sweep started, scaled by the pace when there is one; else from the rows since."""
        from bench import identity
        from bench.prepare import prepare

        key = _seedless(identity.config_key(prepare(q.cfg).resolved()))
        mkey = (q.cfg.track, q.cfg.method, q.cfg.objective or "standard")
        secs, basis = self._median(self._before, key, mkey)
        if secs is None:
            return self._median(self._after, key, mkey)
        if self.pace is None:
            return secs, basis
        return secs * self.pace, (f"{basis}, ×{self.pace:.2f}: the pace of the {self.pace_n} "
                                  f"row{'s' * (self.pace_n > 1)} written since this sweep started")
