"""A run's identity (bench.identity): committed rows keep their ids; anything that changes the trained
weights changes the configuration id; a sweep at another batch size runs again."""

import dataclasses
import json

import pytest

from bench import identity
from bench.config import RunConfig
from bench.results import OutdatedResultsError, check_writable, read_results
from bench.prepare import prepare


def test_every_committed_row_keeps_its_config_id(repo_root):
    df = read_results(repo_root / "results")
    rows = df.to_dict("records")
    assert len(rows) >= 75 and all(isinstance(r["config_id"], str) for r in rows)  # migrated: every row has one
    for r in rows:
        assert identity.config_id(json.loads(r["config_json"])) == r["config_id"], r["source_file"]


def test_the_migration_fills_an_old_rows_ids_and_keeps_everything_else(repo_root, tmp_path):
    """scripts/migrate_results.py on a committed row as older code wrote it (no config_id, no objective)."""
    import pyarrow.parquet as pq
    from script_module import load_script  # tests/ is on sys.path

    migrate = load_script(repo_root / "scripts" / "migrate_results.py")
    assert migrate.main([str(repo_root / "results"), "--check"]) == 0  # the committed rows are current
    src = repo_root / "results" / "digits-cnn__dense__2e096bd318bc.parquet"
    current = pq.read_table(src)
    old = current.drop(["config_id", "objective", "objective_params"])
    pq.write_table(old, tmp_path / src.name)
    with pytest.raises(OutdatedResultsError, match="scripts/migrate_results.py"):  # one error, not a guess
        read_results(tmp_path)
    with pytest.raises(OutdatedResultsError):  # and before a run into that directory trains
        check_writable(tmp_path)
    assert migrate.main([str(tmp_path)]) == 0
    assert read_results(tmp_path)["config_id"].tolist() == [current.column("config_id")[0].as_py()]
    check_writable(tmp_path)
    again = pq.read_table(tmp_path / src.name)
    assert again.schema.metadata == current.schema.metadata
    assert all(again.column(c).equals(current.column(c)) for c in current.column_names)


BASE = RunConfig(method="robust_lowrank", track="digits-cnn")
#: one change of every field that changes the trained weights
CHANGES = {
    "method": dict(method="vanilla_lowrank"),
    "method params": dict(method_params={"mode": "mean"}),
    "compression": dict(compression=0.8),
    "seed": dict(seed=1),
    "epochs": dict(epochs=3),
    "budget seconds": dict(budget_seconds=60),
    "batch size": dict(batch_size=32),
    "objective": dict(objective="pgd_at"),
    "objective params": dict(objective="pgd_at", objective_params={"steps": 3}),
    "track": dict(track="mnist-lenet5"),
}


def test_configurations_that_train_different_weights_have_different_ids():
    ids = {name: prepare(dataclasses.replace(BASE, **change)).config_id() for name, change in CHANGES.items()}
    ids["base"] = prepare(BASE).config_id()
    assert len(set(ids.values())) == len(ids), ids
    trainings = {name: identity.training_id(prepare(dataclasses.replace(BASE, **change)).resolved())
                 for name, change in CHANGES.items()}
    assert len(set(trainings.values())) == len(trainings)


def test_the_defaults_spelled_out_are_the_same_configuration():
    same = [dict(batch_size=64), dict(compression=0.5), dict(objective="standard"),
            dict(method_params={"mode": "approx_orth"}), dict(epochs=30)]
    base = prepare(BASE).config_id()
    assert all(prepare(dataclasses.replace(BASE, **c)).config_id() == base for c in same)


def test_a_sweep_at_another_batch_size_runs_again(tmp_path, run_bench, shared_data_dir):
    """digits-cnn trains at batch size 64 by default: 64 is that configuration, 32 another one."""
    grid = ("sweep", "--methods", "dense", "--epochs", "0.05", "--no-attacks", "--threads", "1",
            "--data-dir", str(shared_data_dir), "--results-dir", str(tmp_path))
    first = run_bench(*grid)
    assert first.returncode == 0, first.stderr
    same = run_bench(*grid, "--batch-size", "64", "--dry-run")
    assert "1 already done, 0 to run" in same.stdout, same.stdout
    other = run_bench(*grid, "--batch-size", "32")
    assert other.returncode == 0 and "0 already done, 1 to run" in other.stdout, other.stdout + other.stderr
    df = read_results(tmp_path)
    assert len(df) == 2 and df["config_id"].nunique() == 2
    assert sorted(json.loads(c)["batch_size"] for c in df["config_json"]) == [32, 64]
