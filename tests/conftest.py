"""Shared fixtures. Tests never use absolute data paths: real data sets are found through
BENCH_DATA_DIR or the repository's sibling folder ../shared/data, and skipped when absent."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _bench_exe() -> list[str]:
    exe = Path(sys.executable).parent / "bench"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "bench.cli"]


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from a second thread, and on a shared CPU each parallel region can stall."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """A folder holding the real mnist.npz / cifar10.npz (skips the test when there is none)."""
    for cand in (os.environ.get("BENCH_DATA_DIR"), REPO.parent / "shared" / "data"):
        if cand and (Path(cand) / "mnist.npz").exists():
            return Path(cand)
    pytest.skip("no real MNIST found: set BENCH_DATA_DIR to a folder with mnist.npz")


@pytest.fixture(scope="session")
def run_bench():
    """Run the real `bench` console script in a subprocess; returns CompletedProcess (text)."""

    def _run(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 600):
        full_env = dict(os.environ)
        full_env.pop("BENCH_RESULTS_DIR", None)
        if env:
            full_env.update(env)
        return subprocess.run(_bench_exe() + list(args), capture_output=True, text=True, env=full_env,
                              cwd=str(cwd or REPO), timeout=timeout)

    return _run


@pytest.fixture(scope="session")
def real_runs(tmp_path_factory) -> Path:
    """Tiny real runs made once per session: dense with two seeds and vanilla_lowrank at 0.5, no attacks.

    Shared by the leaderboard and browser tests.
    """
    from bench.cli import main

    d = tmp_path_factory.getbasetemp() / "leaderboard-real-runs"
    d.mkdir(parents=True, exist_ok=True)
    common = ["--epochs", "1", "--no-attacks", "--quiet", "--results-dir", str(d)]
    for args in (["--method", "dense", "--seed", "0"], ["--method", "dense", "--seed", "1"],
                 ["--method", "vanilla_lowrank", "--seed", "0", "--compression", "0.5"]):
        assert main(["run", *args, *common]) == 0, f"bench run {' '.join(args)} failed"
    return d
