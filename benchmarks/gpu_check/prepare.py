"""Build ``gpu_payload/`` for benchmarks/gpu_check/run.sh: what the offline GPU machine lacks.

The GPU machine gets a copy of the working tree (at most 64 MiB with the carried, git-ignored
folders), has torch, torchvision, pandas and pyarrow, but no internet, no pyautoattack and no
data. This script (run here, on the CPU, with internet) writes into ``gpu_payload/``:

* ``cifar10.npz``: a CIFAR-10 subset in the project's npz format (``x_train, y_train,
  x_test, y_test``, uint8, NHWC), stratified (the first ``n/10`` images of each class, in their
  original order) from the full file, plus the first ``--n-test`` test images (default: all of
  them, 1,000 in the shared offline copy); ``np.savez_compressed``;
* ``wheels/``: pyautoattack and tqdm wheels (``pip download --no-deps``) for an offline
  install. pyautoattack 0.2.0's wheel is 42 MB, 41.6 MB of it a ``.pt`` and a ``.h5`` file of
  its examples folder that nothing imports: they are left out of the copied wheel (its RECORD
  is rewritten to match), and the slim wheel is test-installed into a temporary folder;
* ``MANIFEST.txt``: what is there, sizes and counts.

It fails when the folder would exceed ``--max-mib`` (default 50).

    python benchmarks/gpu_check/prepare.py                        # ../shared/data/cifar10.npz, 15,000 images
    python benchmarks/gpu_check/prepare.py --source /data/cifar10.npz --n-train 10000
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
WHEELS = ("pyautoattack", "tqdm")


def default_source() -> Path:
    env = os.environ.get("BENCH_DATA_DIR")
    if env and (Path(env) / "cifar10.npz").exists():
        return Path(env) / "cifar10.npz"
    return REPO.parent / "shared" / "data" / "cifar10.npz"


def stratified_first(y: np.ndarray, n: int) -> np.ndarray:
    """The subset track's images: :func:`bench.data.balanced_first` (the first of each class)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from bench.data import DataError, balanced_first

    try:
        return balanced_first(y, n)
    except DataError as exc:
        raise SystemExit(str(exc)) from exc


def write_subset(source: Path, out: Path, n_train: int, n_test: int | None) -> dict:
    with np.load(source, allow_pickle=False) as z:
        missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in z.files]
        if missing:
            raise SystemExit(f"{source} lacks {', '.join(missing)}")
        y_train = z["y_train"].reshape(-1)
        if n_train > len(y_train):
            raise SystemExit(f"--n-train {n_train} > {len(y_train)} training images in {source}")
        idx = stratified_first(y_train, n_train)
        x_train = z["x_train"][idx]
        y_train = y_train[idx]
        x_test, y_test = z["x_test"], z["y_test"].reshape(-1)
    if n_test is not None:
        x_test, y_test = x_test[:n_test], y_test[:n_test]
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    for k, a in arrays.items():
        if a.dtype != np.uint8:
            raise SystemExit(f"{source}: {k} is {a.dtype}, the project's npz format is uint8")
    if x_train.ndim != 4 or x_train.shape[-1] != 3:
        raise SystemExit(f"{source}: x_train has shape {x_train.shape}, expected N x 32 x 32 x 3 (NHWC)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(".tmp-" + out.name)
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    os.replace(tmp, out)
    return {k: a.shape for k, a in arrays.items()} | {"classes": np.bincount(y_train).tolist()}


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def slim_wheel(src: Path, dst: Path) -> list[str]:
    """Copy wheel ``src`` to ``dst`` without the non-Python files of an ``examples/`` folder; RECORD rewritten."""
    dropped = []
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        record_name = next(n for n in zin.namelist() if n.endswith(".dist-info/RECORD"))
        keep_records = []
        for info in zin.infolist():
            name = info.filename
            if "/examples/" in name and not name.endswith(".py"):
                dropped.append(name)
                continue
            if name == record_name:
                continue
            data = zin.read(name)
            zout.writestr(info, data)
            keep_records.append(f"{name},{_record_hash(data)},{len(data)}")
        keep_records.append(f"{record_name},,")
        zout.writestr(record_name, "\n".join(keep_records) + "\n")
    return dropped


def fetch_wheels(wheel_dir: Path) -> list[str]:
    notes = []
    wheel_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-d", tmp, *WHEELS]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise SystemExit(f"pip download failed ({' '.join(cmd)}):\n{r.stdout}\n{r.stderr}")
        for whl in sorted(Path(tmp).glob("*.whl")):
            for old in wheel_dir.glob(whl.name.split("-")[0] + "-*.whl"):
                old.unlink()
            dropped = slim_wheel(whl, wheel_dir / whl.name)
            notes.append(f"{whl.name}: {whl.stat().st_size / 2**20:.1f} MiB downloaded, "
                         f"{(wheel_dir / whl.name).stat().st_size / 2**20:.2f} MiB kept"
                         + (f" (left out: {', '.join(dropped)})" if dropped else ""))
    # The slim wheels must install offline and import (pyautoattack imports torch: a few seconds).
    with tempfile.TemporaryDirectory() as target:
        r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--find-links",
                            str(wheel_dir), "--target", target, "--quiet", *WHEELS],
                           capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise SystemExit(f"the slim wheels do not install:\n{r.stdout}\n{r.stderr}")
        env = dict(os.environ, PYTHONPATH=target)
        r = subprocess.run([sys.executable, "-c", "import pyautoattack, tqdm; from pyautoattack import AutoAttack; "
                            "print(pyautoattack.__file__)"], capture_output=True, text=True, env=env, timeout=300,
                           cwd=target)
        if r.returncode != 0 or not r.stdout.strip().startswith(target):
            raise SystemExit(f"the slim pyautoattack does not import from the test install:\n{r.stdout}\n{r.stderr}")
    notes.append("wheels test-installed offline (--no-index) and imported: ok")
    return notes


def dir_size(d: Path) -> int:
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=None,
                    help="the full CIFAR-10 npz (default: $BENCH_DATA_DIR/cifar10.npz, else ../shared/data/cifar10.npz)")
    ap.add_argument("--out", type=Path, default=REPO / "gpu_payload", help="default: <repo>/gpu_payload")
    ap.add_argument("--n-train", type=int, default=15000, help="training images kept, stratified (default 15,000)")
    ap.add_argument("--n-test", type=int, default=None, help="first test images kept (default: all)")
    ap.add_argument("--no-wheels", action="store_true", help="data only (no download; for the CPU smoke test)")
    ap.add_argument("--max-mib", type=float, default=50.0, help="fail above this total size (default 50)")
    args = ap.parse_args(argv)

    source = args.source or default_source()
    if not source.exists():
        print(f"error: {source} not found; pass --source PATH/cifar10.npz", file=sys.stderr)
        return 2
    if args.n_train < 10:
        print("error: --n-train must be >= 10", file=sys.stderr)
        return 2
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"source: {source}"]
    shapes = write_subset(source, out / "cifar10.npz", args.n_train, args.n_test)
    lines.append(f"cifar10.npz: {(out / 'cifar10.npz').stat().st_size / 2**20:.1f} MiB, "
                 + ", ".join(f"{k} {v}" for k, v in shapes.items()))
    if not args.no_wheels:
        lines += fetch_wheels(out / "wheels")
    total = dir_size(out)
    lines.append(f"total: {total / 2**20:.1f} MiB (limit {args.max_mib:g} MiB)")
    (out / "MANIFEST.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if total > args.max_mib * 2**20:
        print(f"error: {out} holds {total / 2**20:.1f} MiB, over --max-mib {args.max_mib:g}; lower --n-train",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
