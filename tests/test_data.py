import gzip
import struct

import numpy as np
import pytest

from bench.data import DEBIAN_FASHION_MNIST, DataError, load_dataset, resolve_data_dir


def _write_npz(path, n_train=40, n_test=10, shape=(28, 28), seed=0):
    rng = np.random.default_rng(seed)
    np.savez(path, x_train=rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
             y_train=rng.integers(0, 10, n_train), x_test=rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
             y_test=rng.integers(0, 10, n_test))


def test_digits_always_available_with_fixed_split():
    a = load_dataset("digits", val_fraction=0.2)
    b = load_dataset("digits", val_fraction=0.2)
    assert a.x_train.shape[1:] == (1, 8, 8)
    assert len(a.y_train) + len(a.y_val) + len(a.y_test) == 1797
    assert len(a.y_val) == round(0.2 * (1797 - 360))
    assert float(a.x_train.min()) >= 0.0 and float(a.x_train.max()) <= 1.0
    # the validation split is fixed: identical across loads, disjoint from training
    assert (a.x_val == b.x_val).all() and (a.y_val == b.y_val).all()
    tr = {row.numpy().tobytes() for row in a.x_train}
    assert sum(row.numpy().tobytes() in tr for row in a.x_val) < 5  # digits has a few duplicate images


def test_resolution_order_flag_then_env_then_cwd(tmp_path, monkeypatch):
    flag, env, cwd = tmp_path / "flag", tmp_path / "env", tmp_path / "cwd"
    for i, d in enumerate((flag, env, cwd / "data")):
        d.mkdir(parents=True)
        _write_npz(d / "mnist.npz", n_train=20 + 10 * i)
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("BENCH_DATA_DIR", str(env))
    assert resolve_data_dir(flag) == flag
    assert len(load_dataset("mnist", flag, val_fraction=0.0, download=False).y_train) == 20
    assert len(load_dataset("mnist", None, val_fraction=0.0, download=False).y_train) == 30
    monkeypatch.delenv("BENCH_DATA_DIR")
    assert len(load_dataset("mnist", None, val_fraction=0.0, download=False).y_train) == 40


def test_nhwc_npz_becomes_nchw(tmp_path):
    _write_npz(tmp_path / "cifar10.npz", shape=(32, 32, 3))
    d = load_dataset("cifar10", tmp_path, val_fraction=0.25, download=False)
    assert d.x_train.shape == (30, 3, 32, 32) and d.x_val.shape == (10, 3, 32, 32)
    assert d.x_train.is_contiguous()


def test_missing_dataset_error_names_places_and_remedy(tmp_path):
    with pytest.raises(DataError) as exc:
        load_dataset("cifar10", tmp_path, download=False)
    msg = str(exc.value)
    assert str(tmp_path / "cifar10.npz") in msg
    assert "--data-dir" in msg and "BENCH_DATA_DIR" in msg


def test_missing_dataset_via_cli(tmp_path, run_bench):
    r = run_bench("run", "--method", "dense", "--track", "cifar10-vgg16", "--data-dir", str(tmp_path),
                  "--results-dir", str(tmp_path / "res"), "--quiet")
    assert r.returncode == 2
    assert "not found" in r.stderr and "cifar10.npz" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "res").exists() or not list((tmp_path / "res").glob("*.parquet"))


def test_corrupt_npz_is_a_clear_error(tmp_path):
    (tmp_path / "mnist.npz").write_bytes(b"PK\x03\x04 this is not a zip archive")
    with pytest.raises(DataError, match=r"cannot read .*mnist\.npz"):
        load_dataset("mnist", tmp_path, download=False)


def test_npz_missing_arrays(tmp_path):
    np.savez(tmp_path / "mnist.npz", x_train=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DataError, match="lacks arrays y_train, x_test, y_test"):
        load_dataset("mnist", tmp_path, download=False)


def test_unknown_dataset_suggests():
    with pytest.raises(DataError, match="Did you mean: mnist"):
        load_dataset("mnsit")


def _write_idx(path, arr):
    arr = np.asarray(arr, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 8, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.tobytes())


def test_idx_folder(tmp_path):
    d = tmp_path / "fashion-mnist"
    d.mkdir()
    rng = np.random.default_rng(1)
    xtr = rng.integers(0, 256, (12, 28, 28))
    _write_idx(d / "train-images-idx3-ubyte.gz", xtr)
    _write_idx(d / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, 12))
    _write_idx(d / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (4, 28, 28)))
    _write_idx(d / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, 4))
    got = load_dataset("fashion_mnist", tmp_path, val_fraction=0.0, download=False)
    assert got.source == str(d)
    assert np.allclose(sorted(got.x_train.flatten().tolist())[:5], sorted((xtr / 255.0).flatten().tolist())[:5])


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_debian_fashion_mnist(tmp_path):
    d = load_dataset("fashion_mnist", tmp_path, val_fraction=0.25, download=False)
    assert d.source == str(DEBIAN_FASHION_MNIST)
    assert len(d.y_train) == 45000 and len(d.y_val) == 15000 and len(d.y_test) == 10000


def test_real_mnist(shared_data_dir):
    d = load_dataset("mnist", shared_data_dir, val_fraction=0.25)
    assert (len(d.y_train), len(d.y_val), len(d.y_test)) == (45000, 15000, 10000)
    mean, std = d.channel_stats()
    assert mean[0] == pytest.approx(0.1307, abs=0.003) and std[0] == pytest.approx(0.3081, abs=0.003)


def test_train_subset_is_the_first_images_of_each_class_and_stable_under_resubsetting(shared_data_dir, tmp_path):
    import numpy as np

    from bench.data import DataError, balanced_first, load_dataset

    with np.load(shared_data_dir / "mnist.npz") as z:
        y_all = z["y_train"].reshape(-1)
    idx = balanced_first(y_all, 1003)
    counts = np.bincount(y_all[idx], minlength=10)
    assert counts.tolist() == [101, 101, 101] + [100] * 7
    for c in range(10):  # the first images of the class, in file order
        assert idx[y_all[idx] == c].tolist() == np.flatnonzero(y_all == c)[:counts[c]].tolist()
    # a prepared subset file holds exactly those images: subsetting it again keeps all of them
    assert balanced_first(y_all[idx], 1003).tolist() == list(range(1003))
    data = load_dataset("mnist", shared_data_dir, val_fraction=0.2, train_subset=1003)
    assert len(data.y_train) + len(data.y_val) == 1003
    with pytest.raises(DataError, match="60000"):
        load_dataset("mnist", shared_data_dir, train_subset=60001)
