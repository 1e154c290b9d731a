"""One run: config -> data -> model -> method -> train -> evaluate -> one result row.

The run pipeline lives here (:func:`run`); its parts have modules of their own: validating the
configuration in :mod:`bench.prepare`, building the data and model in :mod:`bench.build`, stored
models and ``bench eval`` in :mod:`bench.reevaluate`. Their public names are re-exported below
(``from bench.runner import prepare`` and the like keep working); new code imports them from
their own module.
"""

from __future__ import annotations

import dataclasses
import json
import os
import traceback
from pathlib import Path
from typing import Any

from bench import identity, store
from bench.build import build_for_track, load_dataset_for, model_kwargs_for, provenance, resolve_device
from bench.claims import Claim, RunBusy
from bench.config import RunConfig
from bench.method import Method, OptimHP, params_id, params_to_dict
from bench.prepare import Prepared, prepare
from bench.reevaluate import transfer_source
from bench.results import check_writable, new_run_id, write_row

# Re-exports: these lived in bench.runner before it was split; scripts may still import them from here.
from bench.build import git_commit, input_normalization, seed_everything  # noqa: E402,F401
from bench.prepare import eval_protocol_for  # noqa: E402,F401
from bench.reevaluate import dense_parent, evaluate_stored, load_stored_model  # noqa: E402,F401

class RunError(RuntimeError):
    """A run that failed after it started; a 'failed' row was written."""

    def __init__(self, msg: str, row: dict | None = None, path: Path | None = None):
        super().__init__(msg)
        self.row = row
        self.path = path


def run(cfg: RunConfig, *, prepared: Prepared | None = None, log=print) -> tuple[dict, Path]:
    """Run one configuration and write its row. Returns (row, path). Raises RunError after writing a failed row.

    Holds the configuration's claim (``<results_dir>/.claims``) while it runs: its checkpoint and
    AutoAttack state are keyed by the configuration, so an identical run started beside it would
    share and delete them; that second run stops at once with :class:`RunBusy` instead.
    """
    p = prepared or prepare(cfg)
    check_writable(cfg.results_dir)  # before hours of training, not after
    with Claim(cfg.results_dir, p.config_id()) as claim:
        if not claim.acquire():
            raise RunBusy(f"the same configuration ({p.config_id()}) is already running on this results directory "
                          f"({claim.holder()}); wait for it, or change the seed or the results directory")
        return _run(cfg, p, log)


def _run(cfg: RunConfig, p: Prepared, log) -> tuple[dict, Path]:
    """One run, read top to bottom: set up, describe, load the data, build, train, evaluate, write."""
    from bench.train import Interrupted

    device = _set_up(cfg)
    row, resolved = _describe(cfg, p, device)
    data = load_dataset_for(p.track, cfg.data_dir)  # a data set that cannot be found is a set-up error: no row
    try:
        model, method, model_kwargs = _build(cfg, p, data, device, row)
        _train(cfg, p, model, method, data, device, resolved, row, log)
        row.update(_evaluate(cfg, p, model, data, device, model_kwargs, row))
    except (KeyboardInterrupt, Interrupted):
        raise  # no row: the checkpoint (and AutoAttack state) stay for the rerun
    except Exception as exc:  # noqa: BLE001 - recorded as a failed row, then re-raised for the caller
        row.update(status="failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        path = _write(cfg, row)
        raise RunError(row["error"], row, path) from exc
    return row, _write(cfg, row)


def _set_up(cfg: RunConfig):
    """The device; threads and deterministic algorithms as the config asks (set either way: a sweep runs many)."""
    import torch

    device = resolve_device(cfg.device)
    if cfg.num_threads:
        torch.set_num_threads(int(cfg.num_threads))
    if cfg.deterministic:
        # cuBLAS needs this before its first call to be deterministic; harmless elsewhere
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(bool(cfg.deterministic))
    return device


def _describe(cfg: RunConfig, p: Prepared, device) -> tuple[dict[str, Any], dict]:
    """The row's identity and provenance columns, and the resolved configuration (``config_json``)."""
    track = p.track
    resolved = {**p.resolved(), "device": str(device)}
    if p.objective.adversarial:  # the protocol this run is evaluated with replaces the track's
        resolved["eval_protocol"] = dataclasses.asdict(p.eval_protocol)
    row: dict[str, Any] = {
        "run_id": new_run_id(), "status": "ok", "error": None,
        "method": cfg.method, "method_params": json.dumps(params_to_dict(p.params), sort_keys=True),
        "method_id": params_id(cfg.method, p.params),
        "track": track.name, "track_description": track.summary(), "track_differs": track.differs,
        "dataset": track.dataset, "arch": track.arch, "seed": cfg.seed,
        "compression_target": p.compression, "device": str(device),
        "budget_epochs": p.epochs, "budget_seconds": p.budget_seconds, "deterministic": bool(cfg.deterministic),
        "sweep_id": cfg.sweep_id, "config_id": p.config_id(),
        "objective": cfg.objective, "objective_params": json.dumps(params_to_dict(p.objective.params), sort_keys=True),
        "config_json": json.dumps(resolved, sort_keys=True, default=str),
    }
    row.update(provenance(device))
    return row, resolved


def _build(cfg: RunConfig, p: Prepared, data, device, row: dict):
    """The seeded dense model, converted by the method: (model, method, the architecture's kwargs)."""
    from bench.train import total_steps_of

    row.update(data_source=data.source, n_train=int(len(data.y_train)), n_val=int(len(data.y_val)))
    method: Method = p.method_cls(p.params)
    total_steps = total_steps_of(len(data.y_train), p.batch_size, p.epochs) if p.budget_seconds is None else None
    model, row["n_params_dense"] = build_for_track(p.track, data, method, compression=p.compression, seed=cfg.seed,
                                                   total_steps=total_steps, device=device)
    return model, method, model_kwargs_for(p.track, data)


def _train(cfg: RunConfig, p: Prepared, model, method: Method, data, device, resolved: dict, row: dict, log) -> None:
    """Train (resuming from the configuration's checkpoint), finalise, store the model; the training columns."""
    from bench.compression import compression_of, inference_param_count
    from bench.train import Budget, Checkpointing, train

    track = p.track
    hp = OptimHP(lr=track.lr, momentum=track.momentum, weight_decay=track.weight_decay, nesterov=track.nesterov)
    ckpt_path = store.checkpoint_path(cfg.results_dir, p.config_id())
    # the catastrophic-overfitting monitor needs the attack's ε (an objective without one has none)
    eps = p.objective.eps if p.objective.adversarial else None
    monitor = pgd_monitor(data, eps, device, cfg.seed) if eps is not None else None
    stats = train(model, method, data.x_train, data.y_train, hp=hp,
                  budget=Budget(epochs=p.epochs, seconds=p.budget_seconds), batch_size=p.batch_size,
                  lr_milestones=track.lr_milestones, lr_gamma=track.lr_gamma, augment=track.augment,
                  seed=cfg.seed, device=device, progress=cfg.progress,
                  checkpoint=Checkpointing(ckpt_path, identity=identity.training_id(resolved)),
                  objective=p.objective, monitor=monitor)
    if stats.resumed_from_step:
        log(f"  resumed training from the checkpoint at step {stats.resumed_from_step} ({ckpt_path.name})")
    method.finalize(model)
    model.eval()
    row.update(store.store_model(model, method, results_dir=cfg.results_dir, models=_models(cfg),
                                 config_id=row["config_id"], run_id=row["run_id"]))
    row.update(epochs=stats.epochs, steps=stats.steps, train_seconds=stats.train_seconds,
               images_per_second=stats.images_per_second, stopped_by=stats.stopped_by,
               final_train_loss=stats.last_loss, resumed_from_step=stats.resumed_from_step,
               train_forward_passes=stats.forward_passes, train_backward_passes=stats.backward_passes)
    if stats.monitor_curve is not None:
        from bench.objective import collapsed

        row.update(train_pgd_curve=stats.monitor_curve, catastrophic_overfitting=collapsed(stats.monitor_curve))
    row["n_params"] = inference_param_count(model)
    row["compression"] = compression_of(row["n_params"], row["n_params_dense"])
    details = method.describe(model)
    if details:
        row["method_details"] = json.dumps(details, sort_keys=True, default=float)


def _evaluate(cfg: RunConfig, p: Prepared, model, data, device, model_kwargs: dict, row: dict) -> dict:
    """Every metric family's columns. The AutoAttack state is keyed by the configuration id, not the
    run id: an interrupted `bench run` repeated with the same flags retrains to the same weights
    (seeded) and AutoAttack resumes from the finished ε. The transfer attack's dense parent is looked
    up in the results directory (:func:`transfer_source`)."""
    from bench.evaluate import EvalContext, evaluate
    from bench.metrics.autoattack import state_dir_for
    from bench.models import build_model

    ectx = EvalContext(device=device, n_eval=p.n_eval, aa_version=cfg.aa_version, skip_attacks=cfg.skip_attacks,
                       state_dir=state_dir_for(cfg.results_dir, p.config_id()),
                       dense_factory=lambda: build_model(p.track.arch, **model_kwargs),
                       progress=cfg.progress, seed=cfg.seed,
                       transfer_source=transfer_source(cfg.results_dir, row, data, p.track, device))
    return evaluate(model, data, p.eval_protocol, ectx)


def _write(cfg: RunConfig, row: dict) -> Path:
    """Name the stored model by the run, write the row (atomically); then the checkpoint has served
    its purpose."""
    store.publish_model(_models(cfg), row["config_id"], row["run_id"])
    path = write_row(row, cfg.results_dir)
    store.drop_checkpoint(cfg.results_dir, row["config_id"])
    return path


def _models(cfg: RunConfig) -> Path:
    return store.models_dir(cfg.results_dir, cfg.models_dir)


#: held-out validation points the catastrophic-overfitting monitor attacks after every epoch
MONITOR_POINTS = 256
MONITOR_STEPS = 10


def pgd_monitor(data, eps: float, device, seed: int):
    """PGD accuracy (Linf ``eps``, 10 steps of 2.5ε/10, random start) on the first 256 validation
    points (the test points when there is no validation split): the per-epoch curve that shows
    catastrophic overfitting (Wong et al. 2020), where FGSM training's PGD accuracy collapses."""
    from bench.metrics.attacks import attack_curve

    x, y = (data.x_val, data.y_val) if len(data.y_val) else (data.x_test, data.y_test)
    x, y = x[:MONITOR_POINTS], y[:MONITOR_POINTS]
    return lambda model: attack_curve(model, x, y, [eps], attack="pgd", steps=MONITOR_STEPS, device=device,
                                      seed=seed)[0]["acc"]
