"""End to end through the real `bench` console script, in subprocesses."""

import json

import pytest

from bench.results import PROVENANCE_COLUMNS, REQUIRED_COLUMNS, read_results


def _bench_cmd(args: list[str], results) -> tuple[list[str], dict]:
    """The command line of `bench ARGS --results-dir RESULTS` and its environment (BENCH_RESULTS_DIR unset)."""
    import os

    from tests.conftest import _bench_exe

    return (_bench_exe() + args + ["--results-dir", str(results)],
            {k: v for k, v in os.environ.items() if k != "BENCH_RESULTS_DIR"})


def _bench(args: list[str], results, timeout: float = 600):
    """`bench ARGS --results-dir RESULTS` to completion."""
    import subprocess

    cmd, env = _bench_cmd(args, results)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def _start_until(args: list[str], results, ready, *, timeout: float, what: str):
    """Start `bench ARGS --results-dir RESULTS` and return it, still running, once ``ready()`` is true."""
    import subprocess
    import time

    cmd, env = _bench_cmd(args, results)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + timeout
    while not ready() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before {what}: make it longer"
    return proc


def test_list_methods_and_tracks(run_bench):
    r = run_bench("list")
    assert r.returncode == 0 and "dense" in r.stdout
    r = run_bench("list", "--tracks")
    for t in ("digits-cnn", "mnist-lenet5", "fashion-lenet5", "cifar10-vgg16", "cifar10-wrn16-4"):
        assert t in r.stdout


def test_run_dense_writes_one_row_with_provenance(tmp_path, run_bench):
    out = tmp_path / "res"
    r = run_bench("run", "--method", "dense", "--epochs", "3", "--no-attacks", "--results-dir", str(out))
    assert r.returncode == 0, r.stderr
    assert "clean acc" in r.stdout and "written" in r.stdout
    files = list(out.glob("*.parquet"))
    assert len(files) == 1
    df = read_results(out)
    row = df.iloc[0]
    for c in REQUIRED_COLUMNS + PROVENANCE_COLUMNS:
        assert c in df.columns
    assert row["status"] == "ok" and row["method"] == "dense" and row["track"] == "digits-cnn"
    assert row["clean_acc"] > 0.5  # 3 epochs on digits already learn a lot
    assert row["n_test"] == 360 and row["compression"] == 0.0 and row["epochs"] == 3.0
    assert row["train_seconds"] > 0 and row["images_per_second"] > 0
    for c in ("created_at", "python_version", "torch_version", "device_name", "config_json"):
        assert row[c]
    cfg = json.loads(row["config_json"])
    assert cfg["track"]["name"] == "digits-cnn" and cfg["epochs"] == 3.0

    shown = run_bench("show", "--results-dir", str(out))
    assert shown.returncode == 0 and "dense" in shown.stdout


def test_bad_param_and_bad_budget_are_clean_errors(tmp_path, run_bench):
    r = run_bench("run", "--method", "dense", "--param", "rank=3", "--results-dir", str(tmp_path))
    assert r.returncode == 2 and "unknown parameter 'rank'" in r.stderr and "Traceback" not in r.stderr
    r = run_bench("run", "--method", "dense", "--epochs", "-1", "--results-dir", str(tmp_path))
    assert r.returncode == 2 and "--epochs must be > 0" in r.stderr
    r = run_bench("run", "--method", "dense", "--track", "mnist-lenet", "--results-dir", str(tmp_path))
    assert r.returncode == 2 and "Did you mean: mnist-lenet5" in r.stderr
    assert not list(tmp_path.glob("*.parquet"))


def test_seconds_budget(tmp_path, run_bench):
    r = run_bench("run", "--method", "dense", "--budget-seconds", "1", "--no-attacks", "--results-dir", str(tmp_path),
                  "--quiet")
    assert r.returncode == 0, r.stderr
    row = read_results(tmp_path).iloc[0]
    assert row["stopped_by"] == "seconds" and 1.0 <= row["train_seconds"] < 3.0


def test_mnist_lenet5_with_real_data(tmp_path, run_bench, shared_data_dir):
    r = run_bench("run", "--method", "dense", "--track", "mnist-lenet5", "--epochs", "0.1", "--no-attacks",
                  "--results-dir", str(tmp_path), "--quiet", env={"BENCH_DATA_DIR": str(shared_data_dir)})
    assert r.returncode == 0, r.stderr
    row = read_results(tmp_path).iloc[0]
    assert row["dataset"] == "mnist" and row["arch"] == "lenet5" and row["n_test"] == 10000
    assert row["n_params_dense"] == 431_080
    assert row["clean_acc"] > 0.6  # a tenth of an epoch of LeNet5 on raw MNIST pixels, the paper's SGD: 0.73


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"]])
def test_help(run_bench, args):
    r = run_bench(*args)
    assert r.returncode == 0 and "usage" in r.stdout


def test_sweep_runs_a_grid_and_skips_what_is_done(tmp_path, run_bench):
    args = ("sweep", "--methods", "dense,vanilla_lowrank", "--compressions", "0.5,0.8", "--seeds", "0",
            "--epochs", "0.5", "--no-attacks", "--results-dir", str(tmp_path))
    r = run_bench(*args)
    assert r.returncode == 0, r.stderr
    # dense ignores the compression target: one dense run, two low-rank runs
    assert "3 configurations, 0 already done, 3 to run" in r.stdout
    df = read_results(tmp_path)
    assert sorted(df["method"]) == ["dense", "vanilla_lowrank", "vanilla_lowrank"]
    assert sorted(df["compression_target"]) == [0.0, 0.5, 0.8]
    # every row names the grid; the progress line counts what is done and left
    assert df["sweep_id"].nunique() == 1 and df["sweep_id"].iloc[0].startswith("sw-")
    assert f"bench sweep {df['sweep_id'].iloc[0]}:" in r.stdout
    assert "progress: 1 done, 0 failed, 0 skipped (elsewhere), 0 running, 2 waiting" in r.stdout and "ETA" in r.stdout
    # each run is announced at the compression it trains at, not the grid's target it ignored
    assert "[1/3] dense compression=0 seed=0" in r.stdout and "[3/3] vanilla_lowrank compression=0.8 seed=0" in r.stdout
    assert df["config_id"].str.startswith("cfg-").all() and df["config_id"].is_unique
    again = run_bench(*args)
    assert again.returncode == 0 and "3 already done, 0 to run" in again.stdout
    assert f"bench sweep {df['sweep_id'].iloc[0]}:" in again.stdout  # the same grid, the same id
    assert len(read_results(tmp_path)) == 3


def test_an_unwritable_results_dir_is_found_before_training(tmp_path, run_bench):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    # 50 epochs would take minutes: the check must come first (timeout 60 s)
    for cmd in (["run", "--method", "dense", "--quiet"], ["sweep", "--methods", "dense"]):
        r = run_bench(*cmd, "--epochs", "50", "--results-dir", str(blocker / "results"), timeout=60)
        assert r.returncode == 2, r.stderr
        assert "is not writable" in r.stderr and "a_file" in r.stderr


def test_deterministic_is_applied_per_run_and_recorded(tmp_path):
    import torch

    from bench.cli import main

    args = ["run", "--method", "dense", "--epochs", "0.1", "--no-attacks", "--quiet", "--threads", "1",
            "--results-dir", str(tmp_path)]
    threads = torch.get_num_threads()
    try:
        assert main(args + ["--deterministic"]) == 0
        assert torch.are_deterministic_algorithms_enabled()
        assert main(args + ["--seed", "1"]) == 0  # the next run of the same process is not
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
        torch.set_num_threads(threads)
    rows = read_results(tmp_path).sort_values("seed")
    assert rows["deterministic"].tolist() == [True, False]
    assert [json.loads(c)["run"]["deterministic"] for c in rows["config_json"]] == [True, False]


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM"])
def test_a_killed_bench_run_resumes_from_its_checkpoint_to_the_same_result(tmp_path, sig):
    import signal

    args = ["run", "--method", "robust_lowrank", "--epochs", "12", "--no-attacks", "--threads", "1", "--quiet"]
    assert _bench(args, tmp_path / "whole").returncode == 0
    cut = tmp_path / "cut"
    proc = _start_until(args, cut, lambda: list((cut / ".ckpt").glob("[!.]*.pt")), timeout=300,
                        what="its first checkpoint")
    proc.send_signal(getattr(signal, sig))
    out, err = proc.communicate(timeout=120)
    if sig == "SIGTERM":  # a checkpoint at the next step, a clear message, no row
        assert proc.returncode == 143 and "run the same command again to resume" in err
    else:
        assert proc.returncode == -signal.SIGKILL
    assert list((cut / ".ckpt").glob("[!.]*.pt")) and not list(cut.glob("*.parquet"))
    r = _bench(args, cut)
    assert r.returncode == 0, r.stderr
    assert "resumed training from the checkpoint" in r.stdout
    whole, resumed = read_results(tmp_path / "whole").iloc[0], read_results(cut).iloc[0]
    assert resumed["resumed_from_step"] > 0 and whole["resumed_from_step"] == 0
    for c in ("final_train_loss", "clean_acc", "val_acc", "cond_max", "log10_cond_prod", "lipschitz_upper"):
        assert resumed[c] == whole[c], c  # the same weights, bit for bit
    assert not (cut / ".ckpt").exists()  # dropped once the row is written


def test_a_sigterm_stops_a_local_sweep_instead_of_starting_the_next_run(tmp_path):
    """SIGTERM is for the whole sweep: the run in flight keeps its checkpoint, nothing else starts, and
    the next `bench sweep` resumes it."""
    import signal

    args = ["sweep", "--methods", "dense,robust_lowrank", "--epochs", "12", "--no-attacks", "--threads", "1"]
    proc = _start_until(args, tmp_path, lambda: list((tmp_path / ".ckpt").glob("[!.]*.pt")), timeout=300,
                        what="its first checkpoint")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "run the same command again to resume" in err, out + err
    assert "[2/2]" not in out and not list(tmp_path.glob("*.parquet"))  # the second run never started
    r = _bench(args, tmp_path)
    assert r.returncode == 0, r.stderr
    assert sorted(read_results(tmp_path)["status"]) == ["ok", "ok"]
    assert "resumed training from the checkpoint" in r.stdout


@pytest.mark.parametrize("method", ["svd_prune", "pruning"])  # the two that change structure
def test_bench_eval_reevaluates_the_stored_model_without_training(tmp_path, method, capsys):
    import torch

    from bench.cli import main

    threads = torch.get_num_threads()
    try:
        assert main(["run", "--method", method, "--epochs", "2", "--no-attacks", "--quiet", "--threads", "1",
                     "--results-dir", str(tmp_path)]) == 0
        parent = read_results(tmp_path).iloc[0]
        assert (tmp_path / parent["model_path"]).exists() and len(parent["model_sha256"]) == 64
        assert main(["eval", parent["run_id"][:6], "--n-eval", "12", "--threads", "1",
                     "--results-dir", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    rows = read_results(tmp_path)
    child = rows[rows["parent_run_id"] == parent["run_id"]].iloc[0]
    assert "re-evaluated run" in capsys.readouterr().out
    # the same weights: every clean and weight metric equal; now attacked, with no training done
    for c in ("clean_acc", "val_acc", "cond_max", "n_params", "compression", "train_seconds", "final_train_loss"):
        assert child[c] == parent[c], c
    assert pd_notna(child["robust_acc"]) and child["aa_n"] == 12 and not pd_notna(parent["robust_acc"])
    # the columns added since gain values too: a verdict, and why there is no transfer attack here
    assert child["trust"].startswith(("ok", "suspect: ")) and not pd_notna(parent["trust"])
    assert child["transfer_note"].startswith("no dense run of track digits-cnn seed 0")
    assert child["run_id"] != parent["run_id"] and json.loads(child["config_json"])["evaluated_from"] == parent["run_id"]

    path = tmp_path / parent["model_path"]
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))  # a changed model file is refused
    assert main(["eval", parent["run_id"], "--no-attacks", "--results-dir", str(tmp_path)]) == 2
    assert "does not match the row's model_sha256" in capsys.readouterr().err
    assert main(["eval", "nosuchrun", "--results-dir", str(tmp_path)]) == 2
    assert "matches 0 rows" in capsys.readouterr().err


def pd_notna(v) -> bool:
    import pandas as pd

    return bool(pd.notna(v))


def test_sweep_file_tracks_flags_that_override_it_and_failed_configurations(tmp_path, run_bench, shared_data_dir):
    """A TOML grid over two tracks; a flag on the command line beats the file; a configuration that
    failed is skipped on the next sweep unless --retry-failed; --dry-run runs nothing."""
    res = tmp_path / "res"
    grid = tmp_path / "grid.toml"
    grid.write_text(f"""
tracks = ["digits-cnn", "mnist-lenet5"]
methods = ["dense"]
seeds = [0, 1]
epochs = 0.02
no-attacks = true
data-dir = "{shared_data_dir}"
results-dir = "{res}"
""")
    dry = run_bench("sweep", "--file", str(grid), "--seeds", "0", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "2 configurations on 2 tracks, 0 already done, 2 to run" in dry.stdout
    assert "digits-cnn dense" in dry.stdout and "mnist-lenet5 dense" in dry.stdout and not res.exists()
    r = run_bench("sweep", "--file", str(grid), "--seeds", "0")  # the flag wins over the file's [0, 1]
    assert r.returncode == 0, r.stderr
    df = read_results(res)
    assert sorted(zip(df["track"], df["seed"])) == [("digits-cnn", 0), ("mnist-lenet5", 0)]
    assert set(df["status"]) == {"ok"} and df["sweep_id"].nunique() == 1

    # a configuration that fails (no such device) is written as failed, then skipped, then retried
    bad = ("sweep", "--methods", "dense", "--seeds", "5", "--epochs", "0.02", "--no-attacks", "--device", "cuda:7",
           "--results-dir", str(res))
    first = run_bench(*bad)
    assert first.returncode == 1 and "failed" in first.stderr
    again = run_bench(*bad)
    assert again.returncode == 0 and "1 failed before (skipped; --retry-failed reruns them), 0 to run" in again.stdout
    retry = run_bench(*bad, "--retry-failed")
    assert retry.returncode == 1 and "1 failed before (rerun), 1 to run" in retry.stdout
    df = read_results(res)
    assert (df["status"] == "failed").sum() == 2 and df.loc[df["status"] == "failed", "config_id"].nunique() == 1


@pytest.mark.parametrize("text, message", [
    ('methods = ["dense"]\nseed = [0]\n', "unknown key 'seed'"),
    ('methods = ["dense"]\nepochs = "many"\n', "'epochs'"),
    ('methods = ["dense"]\nexecutor = "slurm"\n', "invalid choice: 'slurm'"),
    ('methods = ["dense"\n', "not valid TOML"),
])
def test_a_bad_sweep_file_is_a_clear_error_and_runs_nothing(tmp_path, run_bench, text, message):
    grid = tmp_path / "grid.toml"
    grid.write_text(text)
    r = run_bench("sweep", "--file", str(grid), "--results-dir", str(tmp_path / "res"))
    assert r.returncode == 2 and message in r.stderr and not (tmp_path / "res").exists()


def test_an_identical_run_beside_a_running_one_stops_at_once_and_loses_nothing(tmp_path):
    """Checkpoints and AutoAttack state are keyed by the configuration: a second identical
    `bench run` on the same results directory must not share them; it stops with a clear error."""
    args = ["run", "--method", "dense", "--epochs", "8", "--no-attacks", "--threads", "1", "--quiet"]
    first = _start_until(args, tmp_path, lambda: list((tmp_path / ".claims").glob("*.claim")), timeout=120,
                         what="the second could start")
    second = _bench(args, tmp_path, timeout=120)
    assert second.returncode == 2 and "already running" in second.stderr and f"pid {first.pid}" in second.stderr
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    df = read_results(tmp_path)
    assert len(df) == 1 and df["status"].iloc[0] == "ok"
    assert not list((tmp_path / ".claims").glob("*.claim"))  # released


@pytest.mark.slow
def test_a_bench_run_killed_during_autoattack_resumes_from_its_state_to_the_same_result(tmp_path):
    """SIGKILL once AutoAttack has written its first state: the rerun retrains to the same weights,
    resumes the attack from the state (tests/test_metrics.py checks that finished attacks are read
    back, not rerun) and writes the same row as an uninterrupted run."""
    import signal
    import time

    args = ["run", "--method", "vanilla_lowrank", "--epochs", "5", "--n-eval", "60", "--threads", "1", "--quiet"]
    assert _bench(args, tmp_path / "whole", timeout=900).returncode == 0
    cut = tmp_path / "cut"
    proc = _start_until(args, cut, lambda: list((cut / ".state").rglob("aa_*.json")), timeout=600,
                        what="its first AutoAttack state (give it more points)")
    time.sleep(0.5)  # let the state file be completely written
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert not list(cut.glob("*.parquet")) and list((cut / ".state").rglob("aa_*.json"))
    r = _bench(args, cut, timeout=900)
    assert r.returncode == 0, r.stderr
    whole, resumed = read_results(tmp_path / "whole").iloc[0], read_results(cut).iloc[0]
    assert resumed["robust_acc"] == whole["robust_acc"] and resumed["clean_acc"] == whole["clean_acc"]
    assert [(p["eps"], p["acc"]) for p in resumed["aa_curve"]] == [(p["eps"], p["acc"]) for p in whole["aa_curve"]]
    assert not (cut / ".state").exists()
