"""A stored model as the input of an evaluation: reload a run's trained model from the model store
(:mod:`bench.store`), find a row's dense parent (whose model the transfer attack crafts its examples
on, for ``bench run`` and ``bench eval`` alike), and re-evaluate a stored model without retraining
(``bench eval``: :func:`evaluate_stored`).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from bench import identity, store
from bench.build import build_for_track, load_dataset_for, model_kwargs_for, provenance, resolve_device
from bench.claims import Claim, RunBusy
from bench.config import Track
from bench.method import Method, parse_params
from bench.objective import DEFAULT_OBJECTIVE
from bench.prepare import eval_protocol_for
from bench.registry import METHODS, TRACKS
from bench.results import check_writable, new_run_id, write_row


def load_stored_model(parent: dict, results_dir, data, track: Track, *, device, log=print):
    """Rebuild the trained model of result row ``parent`` from the model store (checking its sha256)."""
    stored = store.read_model(parent, results_dir)
    resolved = json.loads(parent["config_json"])
    method_cls = METHODS.get(parent["method"])
    method: Method = method_cls(parse_params(method_cls.Params, resolved["method_params"]))
    model, _ = build_for_track(track, data, method, compression=float(resolved["compression_target"]),
                               seed=int(parent["seed"]), total_steps=None)
    method.restore_checkpoint_state(stored["method"], model)
    model.load_state_dict(stored["model"])
    return model.to(device).eval(), method


def dense_parent(results_dir, row: dict) -> dict | str:
    """The result row of the dense model of ``row``'s track and seed whose stored model is usable (status
    ok, ``model_path`` set, the file present with the row's sha256), or the reason there is none.
    Among several, the same sweep, then the same training budget, then an original run (not a `bench
    eval` row), then the latest is taken."""
    import hashlib

    from bench.results import read_results

    if row.get("method") == "dense":
        return "the row is the dense model itself"
    def objective(r) -> tuple:  # the parent is trained with the same objective (rows before objectives: standard)
        name, params = r.get("objective"), r.get("objective_params")
        return (DEFAULT_OBJECTIVE if _is_na(name) else name, "{}" if _is_na(params) or not params else params)

    where = f"dense run of track {row.get('track')} seed {row.get('seed')} objective {objective(row)[0]}"
    df = read_results(results_dir)
    records = df.to_dict("records") if not df.empty and "method" in df.columns else []
    cands = [plain_row(r) for r in records
             if r.get("method") == "dense" and r.get("track") == row.get("track") and r.get("status") == "ok"
             and not _is_na(r.get("seed")) and int(r["seed"]) == int(row.get("seed"))
             and objective(r) == objective(row)]
    if not cands:
        return f"no {where} in {results_dir} (a sweep trains dense first; `bench eval RUN_ID --transfer` adds it later)"

    def rank(r):
        return (r.get("sweep_id") is not None and r.get("sweep_id") == row.get("sweep_id"),
                (r.get("budget_epochs"), r.get("budget_seconds")) == (row.get("budget_epochs"),
                                                                      row.get("budget_seconds")),
                r.get("parent_run_id") is None, str(r.get("created_at") or ""))

    why = []
    for r in sorted(cands, key=rank, reverse=True):
        path = store.model_file(r, results_dir)
        if path is None:
            why.append(f"{r['run_id']}: no stored model")
            continue
        if not path.exists():
            why.append(f"{r['run_id']}: {path} missing")
        elif hashlib.sha256(path.read_bytes()).hexdigest() != r.get("model_sha256"):
            why.append(f"{r['run_id']}: {path} does not match its sha256")
        else:
            return r
    return f"no {where} with a usable stored model in {results_dir} ({'; '.join(why)})"


#: how long the transfer attack waits for a dense parent that another process is training right now
TRANSFER_WAIT_SECONDS = 1800.0


def parent_config_id(row: dict) -> str | None:
    """The ``config_id`` of the row's dense parent: the row's own configuration with method ``dense``
    (same track, seed, objective, budget); None when the row's configuration cannot be read."""
    from bench.config import RunConfig
    from bench.prepare import prepare

    try:
        run = dict(json.loads(row["config_json"])["run"])
        run.update(method="dense", method_params={})
        return prepare(RunConfig(**run)).config_id()
    except Exception:  # noqa: BLE001 - an unreadable configuration only means nothing to wait for
        return None


def _running_elsewhere(results_dir, config_id: str) -> Claim | None:
    """The live claim of another process on ``config_id`` in ``results_dir``, else None."""
    claim = Claim(results_dir, config_id)
    return claim if claim.held_elsewhere() else None


def wait_for_parent(results_dir, row: dict, reason: str, *, wait_s: float = TRANSFER_WAIT_SECONDS,
                    poll_s: float = 30.0, log=None):
    """When the row has no dense parent yet (``reason``) because another process is training it right now
    (its configuration is claimed: two sweeps side by side, a Ray cluster), wait for its row, up to
    ``wait_s``. Returns the parent row, or the reason there is none, saying how long it waited."""
    import sys
    import time

    cid = parent_config_id(row)
    claim = _running_elsewhere(results_dir, cid) if cid else None
    if claim is None:
        return reason
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    log(f"transfer: the dense parent ({cid}) is being trained by {claim.holder()}; waiting for its row "
        f"(at most {wait_s / 60:.0f} min)")
    t0 = time.monotonic()
    while True:
        time.sleep(max(0.0, min(poll_s, wait_s - (time.monotonic() - t0))))
        got = dense_parent(results_dir, row)
        running = _running_elsewhere(results_dir, cid) is not None
        if not isinstance(got, str) or not running or time.monotonic() - t0 >= wait_s:
            break
    waited = time.monotonic() - t0
    if not isinstance(got, str):
        log(f"transfer: the dense parent's row landed after {waited:.0f} s")
        return got
    return (f"{got}; waited {waited:.0f} s for its configuration {cid}, "
            f"{'still running' if running else 'which ended without an ok row'}")


def transfer_source(results_dir, row: dict, data, track: Track, device, *, wait_s: float = TRANSFER_WAIT_SECONDS,
                    poll_s: float = 30.0):
    """``EvalContext.transfer_source`` for a row of ``results_dir``: a callable giving the
    :class:`bench.evaluate.TransferParent` of its dense parent (:func:`dense_parent`), or why there is none.
    A parent that another process is training right now is waited for (:func:`wait_for_parent`).
    Examples are cached in ``<results_dir>/.state/transfer``."""
    def source():
        from bench.evaluate import TransferParent

        parent = dense_parent(results_dir, row)
        if isinstance(parent, str):
            parent = wait_for_parent(results_dir, row, parent, wait_s=wait_s, poll_s=poll_s)
        if isinstance(parent, str):
            return parent

        def load():
            import numpy as np
            import torch

            # building a model reseeds the global RNGs: keep the evaluation's own sequence untouched
            devices = [device.index or 0] if getattr(device, "type", "cpu") == "cuda" else []
            py, np_state = random.getstate(), np.random.get_state()
            with torch.random.fork_rng(devices=devices):
                model, _ = load_stored_model(parent, results_dir, data, track, device=device)
            random.setstate(py)
            np.random.set_state(np_state)
            return model

        return TransferParent(run_id=str(parent["run_id"]), sha256=str(parent["model_sha256"]), load=load,
                              cache_dir=Path(results_dir) / ".state" / "transfer")

    return source


def plain_row(row) -> dict:
    """A result row (a pandas Series or dict) as a dict with its missing values as None."""
    items = row.to_dict() if hasattr(row, "to_dict") else dict(row)  # a Series' own conversion of its values
    return {k: (None if _is_na(v) else v) for k, v in items.items()}


def find_run(df, run_id: str, results_dir) -> dict:
    """The one row of ``df`` whose run id starts with ``run_id``, as :func:`plain_row`; a ValueError
    when none or several do."""
    hits = df[df["run_id"].astype(str).str.startswith(run_id)] if len(df) else df
    if len(hits) != 1:
        raise ValueError(f"run id {run_id!r} matches {len(hits)} rows in {results_dir}"
                         + (": give more characters" if len(hits) > 1 else ""))
    return plain_row(hits.iloc[0])


def evaluate_stored(run_id: str, results_dir="results", *, n_eval: int | None = None, aa_version: str | None = None,
                    skip_attacks: bool = False, device: str | None = None, data_dir: str | None = None,
                    num_threads: int | None = None, progress: bool = False, transfer_only: bool = False,
                    log=print) -> tuple[dict, Path]:
    """Re-evaluate the stored model of run ``run_id`` (a unique prefix will do) with the track's
    *current* protocol, without retraining; writes a new row whose ``parent_run_id`` names it and
    which keeps the parent's training columns. Returns (row, path).

    ``transfer_only`` (``bench eval --transfer``) keeps the parent's evaluation columns and its
    attacked points, and runs only the transfer attack and the trust verdict on top of them."""
    if transfer_only and (n_eval is not None or aa_version is not None or skip_attacks):
        raise ValueError("--transfer keeps the run's attacked points and attacks; it takes no --n-eval, "
                         "--aa-version or --no-attacks")
    import torch

    from bench.evaluate import EvalContext, evaluate
    from bench.metrics.autoattack import state_dir_for
    from bench.models import build_model
    from bench.results import read_results

    parent = find_run(read_results(results_dir), run_id, results_dir)
    if parent["status"] != "ok":
        raise ValueError(f"run {parent['run_id']} failed; there is no trained model to evaluate")
    prior = indices = None
    if transfer_only:
        from bench.columns import families

        indices = [int(i) for i in (parent.get("attacked_indices") if parent.get("attacked_indices") is not None
                                    else [])]
        if not indices:
            raise ValueError(f"run {parent['run_id']} has no attacked_indices (nothing was attacked); "
                             f"re-evaluate it in full with `bench eval {parent['run_id']}`")
        prior = {c.name: parent.get(c.name, c.default()) for f in families() for c in f.columns}
        prior = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in prior.items()}
        prior["eval_seconds"] = parent.get("eval_seconds")
    check_writable(results_dir)
    track: Track = TRACKS.get(parent["track"])
    dev = resolve_device(device)
    if num_threads:
        torch.set_num_threads(int(num_threads))
    resolved = json.loads(parent["config_json"])
    data = load_dataset_for(track, data_dir)
    model, _ = load_stored_model(parent, results_dir, data, track, device=dev, log=log)
    n = len(indices) if transfer_only else track.eval.n_eval if n_eval is None else int(n_eval)
    row = {k: v for k, v in parent.items() if k in _TRAINING_COLUMNS}
    row.update(run_id=new_run_id(), status="ok", error=None, parent_run_id=parent["run_id"],
               track_description=track.summary(), track_differs=track.differs, device=str(dev))
    resolved["evaluated_from"] = parent["run_id"]
    if transfer_only:
        resolved["evaluated_only"] = list(_TRANSFER_FAMILIES)
    resolved["n_eval"], resolved["run"]["aa_version"], resolved["run"]["skip_attacks"] = n, aa_version, skip_attacks
    row["config_json"] = json.dumps(resolved, sort_keys=True, default=str)
    row["config_id"] = identity.config_id(resolved)
    row.update(provenance(dev))
    kwargs = model_kwargs_for(track, data)
    state_dir = state_dir_for(results_dir, f"eval__{parent['run_id']}")
    ectx = EvalContext(device=dev, n_eval=n, aa_version=aa_version, skip_attacks=skip_attacks, state_dir=state_dir,
                       dense_factory=lambda: build_model(track.arch, **kwargs), progress=progress,
                       seed=int(parent["seed"]), transfer_source=transfer_source(results_dir, parent, data, track, dev))
    with Claim(results_dir, ("eval", parent["run_id"])) as claim:  # the state folder is per parent run
        if not claim.acquire():
            raise RunBusy(f"run {parent['run_id']} is already being re-evaluated on this results directory "
                          f"({claim.holder()}); wait for it")
        adv = resolved.get("objective", DEFAULT_OBJECTIVE) != DEFAULT_OBJECTIVE
        protocol = eval_protocol_for(track, resolved["objective_params"].get("eps") if adv else None)
        row.update(evaluate(model, data, protocol, ectx, only=_TRANSFER_FAMILIES if transfer_only else None,
                            prior=prior, indices=indices))
        return row, write_row(row, results_dir)


#: what ``bench eval --transfer`` runs on top of the parent's evaluation
_TRANSFER_FAMILIES = ("transfer", "trust")


#: the columns a re-evaluation keeps from its parent: what training produced, not what evaluation measured
_TRAINING_COLUMNS = (
    "method", "method_params", "method_id", "track", "dataset", "arch", "seed", "compression_target",
    "compression", "n_params", "n_params_dense", "budget_epochs", "budget_seconds", "deterministic", "epochs",
    "steps", "train_seconds", "images_per_second", "stopped_by", "final_train_loss", "resumed_from_step",
    "method_details", "data_source", "n_train", "n_val", "model_path", "model_sha256",
    "objective", "objective_params", "train_forward_passes", "train_backward_passes", "train_pgd_curve",
    "catastrophic_overfitting",
)


def _is_na(v) -> bool:
    try:
        return v is None or (isinstance(v, float) and v != v)
    except Exception:  # noqa: BLE001
        return False
