"""What a run is built from, and where: the track's data set, the model (the one way it is made),
the seed, the device and the provenance columns. ``bench run``, ``bench eval``, ``bench perf`` and
the benchmarks all build through :func:`build_for_track`.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import random
import subprocess
from pathlib import Path
from typing import Any

from bench.config import Track
from bench.method import BuildContext, Method


def load_dataset_for(track: Track, data_dir):
    """The track's data set from ``data_dir``, with its validation split and training subset."""
    from bench.data import load_dataset

    return load_dataset(track.dataset, data_dir, val_fraction=track.val_fraction, train_subset=track.train_subset)


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
