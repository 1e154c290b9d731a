"""`bench perf` through the real CLI, and the GPU check (benchmarks/gpu_check) in its CPU smoke mode."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from bench.cli import main
from bench.results import PROVENANCE_COLUMNS, read_results, write_row
from script_module import load_script  # tests/ is on sys.path

REPO = Path(__file__).resolve().parent.parent
GPU_CHECK = REPO / "benchmarks" / "gpu_check"
TABLE_HEAD = ("method", "compression", "img/s", "x dense", "x vanilla", "latency ms", "latency ratio", "FLOP ratio")


def _perf_files(results: Path) -> list[Path]:
    return sorted((results / "_perf").glob("*.parquet"))


def test_perf_cli_table_and_parquet(tmp_path, capsys, one_thread):
    import pandas as pd

    res = tmp_path / "res"
    rc = main(["perf", "--track", "digits-cnn", "--compression", "0.5", "0.8", "--steps", "2", "--warmup", "1",
               "--repeats", "2", "--aa-points", "8", "--aa-version", "apgd-ce", "--threads", "1",
               "--results-dir", str(res)])
    out = capsys.readouterr().out
    assert rc == 0, out
    lines = out.splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.startswith("method "))
    for col in TABLE_HEAD:
        assert col in lines[head]
    body = lines[head + 2:head + 9]
    names = [ln.split()[0] for ln in body]
    assert names == ["dense", "vanilla_lowrank", "vanilla_lowrank", "robust_lowrank", "robust_lowrank",
                     "pruning", "pruning"], out
    assert "device: cpu" in out and "1 threads" in out and "data: real" in out
    assert "AutoAttack overhead: bench" in out and "pyautoattack direct" in out and "goal <= 1.05" in out

    files = _perf_files(res)
    assert len(files) == 1 and not list(res.glob("*.parquet"))
    df = pd.read_parquet(files[0])
    assert len(df) == 7
    assert set(df["compression_target"]) == {0.0, 0.5, 0.8}
    dense = df[df.method == "dense"].iloc[0]
    assert dense["ratio_to_dense"] == pytest.approx(1.0) and dense["latency_ratio"] == pytest.approx(1.0)
    assert dense["flop_ratio"] == pytest.approx(1.0)
    assert (df["images_per_second"] > 0).all() and (df["latency_ms"] > 0).all()
    assert all(len(r) == 2 for r in df["images_per_second_rounds"])
    low = df[df.method.str.endswith("lowrank")]
    assert (low["flop_ratio"] < 1).all()
    # matched compression, as bench run builds it: the inference-form count is within 1% of the target
    comp = df[df.method != "dense"]
    assert ((comp["compression"] - comp["compression_target"]).abs() < 0.01).all()
    van = df[df.method == "vanilla_lowrank"]
    assert (van["ratio_to_vanilla_lowrank"] == 1.0).all()
    assert df[df.method == "robust_lowrank"]["ratio_to_vanilla_lowrank"].notna().all()
    assert (df["threads"] == 1).all() and (df["data_source"].str.startswith("real")).all()
    assert (df["step_variant"] == "eager").all() and not df["step_graph_captured"].any()
    assert (df["aa_overhead_ratio"] > 0).all() and (df["aa_points"] == 8).all()
    for c in PROVENANCE_COLUMNS:
        if c != "config_json":
            assert c in df.columns, c

    # Perf rows are never read as runs: not by read_results, not by pandas over the whole folder.
    assert read_results(res).empty
    write_row({"run_id": "abc", "status": "ok", "method": "dense", "track": "digits-cnn"}, res)
    assert len(read_results(res)) == 1
    assert list(pd.read_parquet(res)["run_id"]) == ["abc"]


def test_perf_synthetic_fallback_and_errors(tmp_path, capsys, one_thread):
    import pandas as pd

    empty = tmp_path / "no-data"
    empty.mkdir()
    res = tmp_path / "res"
    rc = main(["perf", "--track", "mnist-lenet5", "--methods", "dense", "--steps", "1", "--warmup", "0",
               "--repeats", "1", "--batch-size", "16", "--no-aa", "--data-dir", str(empty), "--results-dir", str(res)])
    out = capsys.readouterr().out
    assert rc == 0 and "synthetic" in out and "mnist not found" in out
    df = pd.read_parquet(_perf_files(res)[0])
    assert list(df.method) == ["dense"] and df["data_source"].iloc[0].startswith("synthetic")
    assert "aa_overhead_ratio" not in df.columns

    assert main(["perf", "--methods", "dense,no_such_method", "--no-aa", "--no-write"]) == 2
    assert "no_such_method" in capsys.readouterr().err
    assert main(["perf", "--compression", "1.5", "--no-aa", "--no-write"]) == 2
    assert main(["perf", "--device", "cpu", "--cuda-graph", "--no-aa", "--no-write"]) == 2
    err = capsys.readouterr().err
    assert "--cuda-graph" in err and "needs a CUDA device" in err


def _load_prepare():
    return load_script(GPU_CHECK / "prepare.py", "gpu_check_prepare")


def test_prepare_slims_a_wheel(tmp_path):
    prep = _load_prepare()
    src = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(src, "w") as z:
        z.writestr("pkg/__init__.py", "x = 1\n")
        z.writestr("pkg/examples/run.py", "print(1)\n")
        z.writestr("pkg/examples/model.pt", b"\0" * 10000)
        z.writestr("pkg-1.0.dist-info/RECORD", "pkg/__init__.py,,\npkg/examples/model.pt,,\n")
    dst = tmp_path / "out.whl"
    assert prep.slim_wheel(src, dst) == ["pkg/examples/model.pt"]
    with zipfile.ZipFile(dst) as z:
        names = z.namelist()
        record = z.read("pkg-1.0.dist-info/RECORD").decode()
    assert "pkg/examples/model.pt" not in names and "pkg/examples/run.py" in names
    assert "model.pt" not in record and "pkg/__init__.py,sha256=" in record


def _cifar_source() -> Path:
    for cand in (os.environ.get("BENCH_DATA_DIR"), REPO.parent / "shared" / "data"):
        if cand and (Path(cand) / "cifar10.npz").exists():
            return Path(cand) / "cifar10.npz"
    pytest.skip("no real CIFAR-10 (../shared/data/cifar10.npz or $BENCH_DATA_DIR/cifar10.npz): "
                "the GPU-check smoke run prepares its data from it")


@pytest.mark.slow
def test_gpu_check_smoke_runs_for_real(tmp_path):
    """prepare.py + run.sh --smoke: bench perf and four real runs on a CIFAR-10 subset, on the CPU."""
    import numpy as np
    import pandas as pd

    source = _cifar_source()
    payload = tmp_path / "payload"
    out = tmp_path / "check"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHON=sys.executable)
    env.pop("BENCH_RESULTS_DIR", None)
    r = subprocess.run([sys.executable, str(GPU_CHECK / "prepare.py"), "--source", str(source), "--out", str(payload),
                        "--n-train", "200", "--n-test", "2", "--no-wheels"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    with np.load(payload / "cifar10.npz") as z:
        assert z["x_train"].shape == (200, 32, 32, 3) and z["x_train"].dtype == np.uint8
        assert np.bincount(z["y_train"]).tolist() == [20] * 10 and z["x_test"].shape == (2, 32, 32, 3)

    # --budget: the smoke default (240 s) fits an idle 2-core machine; a busy one (a grid beside the suite) needs more
    r = subprocess.run(["bash", str(GPU_CHECK / "run.sh"), "--smoke", "--payload", str(payload),
                        "--results-dir", str(out), "--budget", "480"], capture_output=True, text=True, env=env,
                       timeout=560, cwd=tmp_path)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-6000:]
    stages = log[log.index("== stages"):]
    for name in ("bench perf", "condlr step", "run dense", "run robust_lowrank", "run vanilla_lowrank", "run pruning",
                 "bench show"):
        assert name in stages, stages
    assert "FAILED" not in stages and "TIMEOUT" not in stages and "SKIPPED" not in stages, stages
    assert "AutoAttack overhead: bench" in log and "latency ratio" in log
    assert "stage times (ms), current step" in log and "retract" in log  # benchmarks/condlr_step.py
    assert "conditioner newton_schulz" in log and "eigh/newton_schulz" in log  # --conditioner both
    assert "cuda graph stages: not run with --smoke" in log

    runs = read_results(out / "results")
    assert sorted(runs["method"]) == ["dense", "pruning", "robust_lowrank", "vanilla_lowrank"]
    assert (runs["status"] == "ok").all() and (runs["track"] == "cifar10-vgg16").all()
    assert (runs["n_train"] == 150).all() and (runs["n_test"] == 2).all()
    perf = pd.read_parquet(_perf_files(out / "results")[0])
    assert sorted(perf["method"]) == ["dense", "pruning", "robust_lowrank", "vanilla_lowrank"]
    assert (out / "log.txt").read_text().count("== stages") == 1
