"""bench sweep --executor ray on a real local Ray instance (2 CPUs), tiny budgets."""

import pytest

from bench.results import read_results

ray = pytest.importorskip("ray")

ARGS = ("sweep", "--executor", "ray", "--methods", "dense,vanilla_lowrank", "--seeds", "0,1", "--epochs", "0.2",
        "--no-attacks")


def test_ray_sweep_writes_each_row_once_and_a_rerun_adds_none(tmp_path, run_bench):
    r = run_bench(*ARGS, "--results-dir", str(tmp_path), timeout=600)
    assert r.returncode == 0, r.stderr
    assert "executor: Ray (a local instance on 127.0.0.1)" in r.stdout and "4 to run" in r.stdout and "2 at a time" in r.stdout
    assert "progress: 4 done, 0 failed, 0 skipped (elsewhere), 0 running, 0 waiting" in r.stdout
    # results name the compression each run trained at (the track's 0.5; 0 for dense), not "None"
    assert "dense compression=0 seed=1: clean" in r.stdout and "vanilla_lowrank compression=0.5 seed=1: clean" in r.stdout
    df = read_results(tmp_path)
    assert len(df) == 4 and set(df["status"]) == {"ok"} and df["run_id"].is_unique and df["config_id"].is_unique
    assert sorted(zip(df["method"], df["seed"])) == [("dense", 0), ("dense", 1), ("vanilla_lowrank", 0),
                                                      ("vanilla_lowrank", 1)]
    assert df["sweep_id"].nunique() == 1
    again = run_bench(*ARGS, "--results-dir", str(tmp_path), timeout=600)
    assert again.returncode == 0 and "4 already done, 0 to run" in again.stdout
    assert len(read_results(tmp_path)) == 4


def test_a_failing_configuration_becomes_a_failed_row_while_the_rest_complete(tmp_path):
    import dataclasses

    from bench.config import RunConfig
    from bench.sweep import config_key, run_on_ray

    base = RunConfig(method="dense", epochs=0.2, skip_attacks=True, results_dir=str(tmp_path), progress=False)
    good = [dataclasses.replace(base, seed=0)]
    bad = dataclasses.replace(base, seed=2, device="cuda:7")  # no such device here: fails inside the task
    seen = []
    out = run_on_ray([(c, config_key(c)) for c in good + [bad]], tmp_path,  # starts and stops a local Ray
                     on_result=lambda cfg, s: seen.append((cfg.seed, s["status"])))
    assert not ray.is_initialized()
    assert sorted(seen) == [(0, "ok"), (2, "failed")] and len(out) == 2
    df = read_results(tmp_path).set_index("seed")
    assert df.loc[0, "status"] == "ok"
    assert df.loc[2, "status"] == "failed" and "cuda:7" in df.loc[2, "error"]
