"""One run: config -> data -> model -> method -> train -> evaluate -> one result row."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import platform
import random
import subprocess
import traceback
from pathlib import Path
from typing import Any

from bench import identity, store
from bench.claims import Claim
from bench.config import EvalProtocol, RunConfig, Track
from bench.method import BuildContext, Method, MethodSkipped, OptimHP, parse_params, params_id, params_to_dict
from bench.objective import DEFAULT_OBJECTIVE, make_objective
from bench.registry import METHODS, TRACKS
from bench.results import check_writable, new_run_id, write_row


class RunError(RuntimeError):
    """A run that failed after it started; a 'failed' row was written."""

    def __init__(self, msg: str, row: dict | None = None, path: Path | None = None):
        super().__init__(msg)
        self.row = row
        self.path = path


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
    headline AutoAttack ε becomes the training ε, the rest of the Linf curve around it kept."""
    if adv_eps is None:
        return track.eval
    import dataclasses as dc

    return dc.replace(track.eval, headline_eps=float(adv_eps),
                      linf_eps=tuple(sorted(set(track.eval.linf_eps) | {float(adv_eps)})))


def input_normalization(track: Track, data) -> tuple[list[float], list[float]]:
    """The (mean, std) per channel the model normalises its [0, 1] input with, as the track says."""
    if track.normalization == "data":
        return data.channel_stats()
    if track.normalization == "none":
        return [0.0] * data.in_channels, [1.0] * data.in_channels
    mean, std = (list(map(float, v)) for v in track.normalization)
    if len(mean) != data.in_channels:
        raise ValueError(f"track {track.name}: normalization has {len(mean)} channels, "
                         f"{track.dataset} has {data.in_channels}")
    return mean, std


def model_kwargs_for(track: Track, data) -> dict[str, Any]:
    """The model builder's keyword arguments for ``track`` on ``data``: classes, input shape, the
    track's input normalisation and its ``arch_kwargs``."""
    mean, std = input_normalization(track, data)
    return dict(num_classes=data.num_classes, in_channels=data.in_channels, image_size=data.image_size,
                mean=mean, std=std, **dict(track.arch_kwargs))


def build_for_track(track: Track, data, method: Method, *, compression: float, seed: int,
                    total_steps: int | None, device=None):
    """The one way a run's model is made (``bench run``, ``bench eval``, ``bench perf``, the benchmarks):
    the seeded dense model of the track's architecture, converted by ``method``. Returns (model, dense
    parameter count)."""
    from bench.compression import inference_param_count
    from bench.models import build_model

    seed_everything(seed)
    dense = build_model(track.arch, **model_kwargs_for(track, data))
    n_dense = inference_param_count(dense)
    example = data.x_train[:1] if device is None else data.x_train[:1].to(device)
    if device is not None:
        dense = dense.to(device)
    ctx = BuildContext(compression=compression if type(method).compresses else 0.0, example_input=example,
                       total_steps=total_steps, seed=seed)
    model = method.build(dense, ctx)
    return (model.to(device) if device is not None else model), n_dense


def resolve_device(name: str | None):
    import torch

    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    return dev


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def provenance(device) -> dict[str, Any]:
    import torch
    import torchvision

    try:
        from importlib.metadata import version

        aa_version = version("pyautoattack")
    except Exception:  # noqa: BLE001
        aa_version = None
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = f"cpu: {platform.processor() or platform.machine()} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    return {
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "python_version": platform.python_version(),
        "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__,
        "pyautoattack_version": aa_version,
        "device_name": device_name,
        "hostname": platform.node(),
    }


def git_commit() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return None
        commit = out.stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


class RunBusy(ValueError):
    """The same configuration is running in another process on the same results directory."""


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
    cands = [{k: (None if _is_na(v) else v) for k, v in r.items()} for r in records
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
        if not r.get("model_path"):
            why.append(f"{r['run_id']}: no stored model")
            continue
        path = Path(r["model_path"])
        path = path if path.is_absolute() else Path(results_dir) / path
        if not path.exists():
            why.append(f"{r['run_id']}: {path} missing")
        elif hashlib.sha256(path.read_bytes()).hexdigest() != r.get("model_sha256"):
            why.append(f"{r['run_id']}: {path} does not match its sha256")
        else:
            return r
    return f"no {where} with a usable stored model in {results_dir} ({'; '.join(why)})"


def transfer_source(results_dir, row: dict, data, track: Track, device):
    """``EvalContext.transfer_source`` for a row of ``results_dir``: a callable giving the
    :class:`bench.evaluate.TransferParent` of its dense parent (:func:`dense_parent`), or why there is none.
    Examples are cached in ``<results_dir>/.state/transfer``."""
    def source():
        from bench.evaluate import TransferParent

        parent = dense_parent(results_dir, row)
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

    df = read_results(results_dir)
    hits = df[df["run_id"].astype(str).str.startswith(run_id)] if len(df) else df
    if len(hits) != 1:
        raise ValueError(f"run id {run_id!r} matches {len(hits)} rows in {results_dir}"
                         + (": give more characters" if len(hits) > 1 else ""))
    parent = {k: (None if _is_na(v) else v) for k, v in hits.iloc[0].to_dict().items()}
    if parent["status"] != "ok":
        raise ValueError(f"run {parent['run_id']} failed; there is no trained model to evaluate")
    prior = indices = None
    if transfer_only:
        from bench.columns import families

        indices = [int(i) for i in (parent.get("attacked_indices") if parent.get("attacked_indices") is not None
                                    else [])]
        if not indices:
            raise ValueError(f"run {parent['run_id']} has no attacked_indices (written before they were recorded, "
                             f"or nothing was attacked); re-evaluate it in full with `bench eval {parent['run_id']}`")
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


def _is_na(v) -> bool:
    try:
        return v is None or (isinstance(v, float) and v != v)
    except Exception:  # noqa: BLE001
        return False


def load_dataset_for(track: Track, data_dir):
    from bench.data import load_dataset

    return load_dataset(track.dataset, data_dir, val_fraction=track.val_fraction, train_subset=track.train_subset)
