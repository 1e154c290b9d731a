"""The files a run keeps beside its row: the trained model (``bench eval`` reloads it) and the
training checkpoint (a rerun resumes from it).

A trained model is first stored as ``<models dir>/.pending-<config_id>.pt``, named by the
configuration like its checkpoint, and renamed to ``<run_id>.pt`` just before the row is written
(:func:`publish_model`): a run killed in between leaves one pending file, which its rerun
overwrites, not one orphan model per attempt.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def models_dir(results_dir, models_dir_arg: str | None = None) -> Path:
    """The model store: ``models_dir_arg`` (``--models-dir``), else ``<results_dir>/.models`` (git-ignored)."""
    return Path(models_dir_arg) if models_dir_arg else Path(results_dir) / ".models"


def pending_model_path(models: Path, config_id: str) -> Path:
    return Path(models) / f".pending-{config_id}.pt"


def store_model(model, method, *, results_dir, models: Path, config_id: str, run_id: str) -> dict:
    """Keep the trained model (state dict + the method's state, for ``torch.load(weights_only=True)``)
    as the configuration's pending file; the row's ``model_path`` (``<run_id>.pt``, relative to the
    results directory when inside it) and ``model_sha256``."""
    import torch

    from bench.train import _save_checkpoint

    pending = pending_model_path(models, config_id)
    _save_checkpoint(pending, {"model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                               "method": method.checkpoint_state(), "torch_version": str(torch.__version__)})
    final = (Path(models) / f"{run_id}.pt").resolve()
    try:
        shown = final.relative_to(Path(results_dir).resolve())
    except ValueError:
        shown = final
    return {"model_path": str(shown), "model_sha256": sha256_of(pending)}


def publish_model(models: Path, config_id: str, run_id: str) -> None:
    """Rename the configuration's pending model to ``<run_id>.pt`` (atomic; nothing when there is none)."""
    pending = pending_model_path(models, config_id)
    if pending.exists():
        os.replace(pending, Path(models) / f"{run_id}.pt")


def model_file(row: dict, results_dir) -> Path | None:
    """Where result row ``row``'s stored model is (``model_path``, relative to ``results_dir`` unless
    absolute); None when the row has none. The file itself may be missing."""
    if not row.get("model_path"):
        return None
    path = Path(row["model_path"])
    return path if path.is_absolute() else Path(results_dir) / path


def read_model(row: dict, results_dir) -> dict:
    """The stored state of result row ``row`` (``{"model", "method", ...}``), its sha256 checked."""
    import torch

    path = model_file(row, results_dir)
    if path is None:
        raise ValueError(f"run {row['run_id']} has no stored model (it was written before the model store "
                         f"existed); rerun it with bench run to get one")
    if not path.exists():
        raise ValueError(f"run {row['run_id']}: its model {path} is missing")
    if sha256_of(path) != row.get("model_sha256"):
        raise ValueError(f"run {row['run_id']}: {path} does not match the row's model_sha256 (changed or corrupt)")
    return torch.load(path, map_location="cpu", weights_only=True)


def sha256_of(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def checkpoint_path(results_dir, config_id: str) -> Path:
    """``<results_dir>/.ckpt/<config_id>.pt``: named by the configuration id, like its claim, its
    AutoAttack state and its row's ``config_id``, so a rerun with the same flags finds it."""
    return Path(results_dir) / ".ckpt" / f"{config_id}.pt"


def drop_checkpoint(results_dir, config_id: str) -> None:
    """Delete the configuration's checkpoint (and partial files a writer killed mid-save left)."""
    path = checkpoint_path(results_dir, config_id)
    path.unlink(missing_ok=True)
    for partial in path.parent.glob(f".{path.name}.*.partial"):
        partial.unlink(missing_ok=True)
    try:
        path.parent.rmdir()  # only when empty
    except OSError:
        pass
