"""Data sets by name, as in-memory tensors with a fixed, seeded validation split.

Where a data set is looked for, in order, inside the data directory
(``--data-dir``, else ``$BENCH_DATA_DIR``, else ``./data``):

1. ``<name>.npz`` with ``x_train, y_train, x_test, y_test`` (uint8 images,
   NHWC or NHW; the layout of the project's shared offline data);
2. torchvision's own folder layout under the data directory, then a
   torchvision download into it (``download=True``) where the internet is reachable;
3. for ``fashion_mnist`` also Debian's ``/usr/share/datasets/fashion-mnist`` IDX files.

``digits`` (scikit-learn's 8x8 digits) is always available offline.
Images are float32 in [0, 1], NCHW; labels int64.
"""

from __future__ import annotations

import gzip
import os
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "svhn")
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
#: the validation split does not depend on the run's seed: every run holds out the same images
SPLIT_SEED = 20231
_NUM_CLASSES = {"digits": 10, "mnist": 10, "fashion_mnist": 10, "cifar10": 10, "cifar100": 100, "svhn": 10}


class DataError(RuntimeError):
    """A data set that cannot be found, downloaded or read; the message says how to provide it."""


@dataclass
class DataSplits:
    name: str
    source: str
    x_train: "object"
    y_train: "object"
    x_val: "object"
    y_val: "object"
    x_test: "object"
    y_test: "object"
    num_classes: int

    @property
    def in_channels(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.x_train.shape[-1])

    def channel_stats(self) -> tuple[list[float], list[float]]:
        x = self.x_train
        mean = x.mean(dim=(0, 2, 3))
        std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
        return [float(v) for v in mean], [float(v) for v in std]


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    if data_dir:
        return Path(data_dir).expanduser()
    env = os.environ.get("BENCH_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return Path("data")


def balanced_first(y, n: int, *, what: str = "the training split"):
    """Indices of the first images of each class, ``n`` in total (as even as possible: the first
    ``n mod classes`` classes get one more), in file order. A subset track's images; applied to
    a split that already is such a subset of size ``n`` it returns all of it, so a prepared
    subset file (``benchmarks/gpu_check/prepare.py``) and the full data set give the same images."""
    import numpy as np

    y = np.asarray(y).reshape(-1)
    if not 0 < n <= len(y):
        raise DataError(f"{what}: {n} images wanted, the split has {len(y)}")
    classes = np.unique(y)
    per, extra = divmod(n, len(classes))
    idx = []
    for i, c in enumerate(classes):
        k = per + (1 if i < extra else 0)
        got = np.flatnonzero(y == c)[:k]
        if len(got) < k:
            raise DataError(f"{what}: class {c} has {len(got)} images, {k} wanted")
        idx.append(got)
    return np.sort(np.concatenate(idx))


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, *, val_fraction: float = 0.25,
                 download: bool = True, train_subset: int | None = None) -> DataSplits:
    """Load data set ``name`` and split off a fixed validation set from its training split.

    ``train_subset``: keep only N images of the official training split, the first of each class
    (:func:`balanced_first`), before the validation split; an error when the split holds fewer.
    """
    import torch

    if name not in DATASETS:
        import difflib

        close = difflib.get_close_matches(name, DATASETS, n=2)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise DataError(f"unknown data set {name!r}.{hint} Known data sets: {', '.join(DATASETS)}.")
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    root = resolve_data_dir(data_dir)
    if name == "digits":
        xtr, ytr, xte, yte, source = _digits()
    else:
        xtr, ytr, xte, yte, source = _find(name, root, download)
    if train_subset is not None:
        idx = balanced_first(ytr, train_subset, what=f"{name} (train_subset={train_subset})")
        xtr, ytr = xtr[idx], ytr[idx]
    xtr_t, ytr_t = _to_tensors(xtr, ytr)
    xte_t, yte_t = _to_tensors(xte, yte)
    n_val = int(round(len(ytr_t) * val_fraction))
    g = torch.Generator().manual_seed(SPLIT_SEED)
    perm = torch.randperm(len(ytr_t), generator=g)
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    return DataSplits(
        name=name, source=source,
        x_train=xtr_t[train_idx], y_train=ytr_t[train_idx],
        x_val=xtr_t[val_idx], y_val=ytr_t[val_idx],
        x_test=xte_t, y_test=yte_t, num_classes=_NUM_CLASSES[name],
    )


def _to_tensors(x: np.ndarray, y: np.ndarray):
    import torch

    x = np.asarray(x)
    if x.ndim == 3:  # N H W
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):  # NHWC
        x = x.transpose(0, 3, 1, 2)
    if x.dtype == np.uint8:
        xt = torch.from_numpy(np.ascontiguousarray(x)).float().div_(255.0)
    else:
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    yt = torch.from_numpy(np.asarray(y).astype(np.int64).reshape(-1))
    if len(xt) != len(yt):
        raise DataError(f"images and labels differ in length ({len(xt)} vs {len(yt)})")
    return xt.contiguous(), yt


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)  # 8x8, 17 grey levels 0..16
    y = d.target.astype(np.int64)
    rng = np.random.default_rng(SPLIT_SEED)
    perm = rng.permutation(len(y))
    n_test = 360  # a fixed 20% test split: the data set ships without one
    te, tr = perm[:n_test], perm[n_test:]
    return x[tr], y[tr], x[te], y[te], "sklearn.datasets.load_digits"


def _find(name: str, root: Path, download: bool):
    searched: list[str] = []
    npz = root / f"{name}.npz"
    searched.append(str(npz))
    if npz.exists():
        return (*_read_npz(npz), str(npz))
    if name == "fashion_mnist":
        for d in (root / "fashion-mnist", root / "fashion_mnist", DEBIAN_FASHION_MNIST):
            searched.append(f"{d} (IDX files)")
            got = _read_idx_dir(d)
            if got is not None:
                return (*got, str(d))
    searched.append(f"{root} (torchvision layout)")
    got, err = _torchvision(name, root, download=False)
    if got is not None:
        return (*got, f"torchvision:{root}")
    dl_err = None
    if download:
        got, dl_err = _torchvision(name, root, download=True)
        if got is not None:
            return (*got, f"torchvision:{root}")
        searched.append(f"torchvision download into {root} failed: {dl_err}")
    raise DataError(
        f"data set {name!r} not found. Looked in: " + "; ".join(searched) + ". "
        f"Provide it with --data-dir DIR or BENCH_DATA_DIR=DIR pointing at a folder holding {name}.npz "
        f"(arrays x_train, y_train, x_test, y_test) or torchvision's {name} files, or run once with internet "
        f"access so torchvision can download it into {root}."
        + (" For fashion_mnist, `apt-get install dataset-fashion-mnist` also works." if name == "fashion_mnist" else "")
    )


def _read_npz(path: Path):
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in z.files]
            if missing:
                raise DataError(f"{path} lacks arrays {', '.join(missing)} (has {', '.join(z.files) or 'none'})")
            return z["x_train"], z["y_train"], z["x_test"], z["y_test"]
    except DataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"cannot read {path}: {type(exc).__name__}: {exc}. Is the file complete? "
                        f"Replace it or remove it so the data set can be looked for elsewhere.") from exc


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file")
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    return arr.reshape(dims).copy()  # frombuffer is read-only; torch wants writable memory


def _read_idx_dir(d: Path):
    if not d.is_dir():
        return None
    names = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
             "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}
    found = {}
    for key, stem in names.items():
        for cand in (d / stem, d / f"{stem}.gz"):
            if cand.exists():
                found[key] = _read_idx(cand)
                break
        else:
            return None
    return found["x_train"], found["y_train"], found["x_test"], found["y_test"]


def _torchvision(name: str, root: Path, download: bool):
    try:
        import torchvision.datasets as tvd
    except Exception as exc:  # noqa: BLE001
        return None, f"torchvision unavailable: {exc}"
    try:
        if name in ("mnist", "fashion_mnist", "cifar10", "cifar100"):
            cls = {"mnist": tvd.MNIST, "fashion_mnist": tvd.FashionMNIST,
                   "cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100}[name]
            tr = cls(str(root), train=True, download=download)
            te = cls(str(root), train=False, download=download)
            xtr, ytr = np.asarray(tr.data), np.asarray(tr.targets)
            xte, yte = np.asarray(te.data), np.asarray(te.targets)
        else:  # svhn: data is NCHW already
            tr = tvd.SVHN(str(root / "svhn"), split="train", download=download)
            te = tvd.SVHN(str(root / "svhn"), split="test", download=download)
            xtr, ytr, xte, yte = tr.data, tr.labels, te.data, te.labels
        return (xtr, ytr, xte, yte), None
    except Exception as exc:  # noqa: BLE001 - not there / no internet: reported by the caller
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
