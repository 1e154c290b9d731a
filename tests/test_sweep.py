"""Grid expansion: method specs with parameters, seed-major order."""

import json
import re

import pytest

from bench.config import RunConfig
from bench.results import read_results
from bench.sweep import config_key, expand, parse_methods


def test_parse_methods_splits_on_commas_outside_brackets():
    assert parse_methods("dense, robust_lowrank[mode=mean,kappa=2],pruning") == [
        ("dense", {}), ("robust_lowrank", {"mode": "mean", "kappa": "2"}), ("pruning", {})]
    assert parse_methods("robust_lowrank[]") == [("robust_lowrank", {})]


@pytest.mark.parametrize("bad", ["dense]", "robust_lowrank[mode=mean", "robust_lowrank[mode]", ",", "a[b[c=1]]"])
def test_parse_methods_rejects_malformed_specs(bad):
    with pytest.raises(ValueError, match="--methods"):
        parse_methods(bad)


def test_expand_is_seed_major_and_carries_parameters():
    base = RunConfig(method="dense", track="digits-cnn")
    cfgs = expand(base, parse_methods("dense,robust_lowrank[mode=mean]"), [0.5, 0.8], [0, 1])
    assert [(c.seed, c.method, c.compression) for c in cfgs] == [
        (0, "dense", 0.5), (0, "dense", 0.8), (0, "robust_lowrank", 0.5), (0, "robust_lowrank", 0.8),
        (1, "dense", 0.5), (1, "dense", 0.8), (1, "robust_lowrank", 0.5), (1, "robust_lowrank", 0.8)]
    assert cfgs[2].method_params == {"mode": "mean"} and cfgs[0].method_params == {}
    # the parameters reach the key a sweep skips done runs by; the default value is the same run
    k_mean = config_key(cfgs[2])
    k_default = config_key(expand(base, ["robust_lowrank"], [0.5], [0])[0])
    k_explicit = config_key(expand(base, parse_methods("robust_lowrank[mode=approx_orth]"), [0.5], [0])[0])
    assert k_mean != k_default == k_explicit


def test_expand_runs_dense_first_within_each_seed():
    # the compressed rows of a seed take their transfer attack from that seed's stored dense model
    base = RunConfig(method="dense", track="digits-cnn")
    cfgs = expand(base, parse_methods("vanilla_lowrank,robust_lowrank,dense"), [0.5], [0, 1])
    assert [(c.seed, c.method) for c in cfgs] == [
        (0, "dense"), (0, "vanilla_lowrank"), (0, "robust_lowrank"),
        (1, "dense"), (1, "vanilla_lowrank"), (1, "robust_lowrank")]


def test_a_claim_is_exclusive_until_released_and_a_dead_owner_is_taken_over(tmp_path):
    import json
    import subprocess
    import sys

    from bench.claims import Claim

    key = ("digits-cnn", "dense", "{}", 0.0, 0, 30, None, 360, False)
    def other_process_acquires(k) -> bool:
        code = (f"import sys; from bench.claims import Claim; "
                f"sys.exit(0 if Claim({str(tmp_path)!r}, {k!r}).acquire() else 3)")
        rc = subprocess.run([sys.executable, "-c", code]).returncode
        assert rc in (0, 3), rc  # not a crash
        return rc == 0

    with Claim(tmp_path, key) as first:
        assert first.acquire()
        assert not other_process_acquires(key)  # held by a live process (this one)
        with Claim(tmp_path, key) as inner:  # re-entrant in the holding process (sweep -> runner)
            assert inner.acquire()
        assert first.path.exists()  # the inner release left the outer claim alone
        assert other_process_acquires(key[:-1] + (True,))  # another key is free (its owner has exited)
    assert not first.path.exists()
    again = Claim(tmp_path, key)
    assert again.acquire()
    # the owner dies without releasing: the claim is stale and taken over
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    owner = json.loads(again.path.read_text())
    again.path.write_text(json.dumps({**owner, "pid": int(dead.stdout)}))
    assert Claim(tmp_path, key).acquire()


def test_a_failure_of_the_machinery_is_rerun_and_a_configurations_own_failure_is_not(tmp_path):
    """A sweep's plan: the rows a Ray raylet death or an interrupted run leave are rerun by the next
    sweep; a configuration that failed by itself is skipped (unless retried)."""
    from bench.plan import grid, plan
    from bench.sweep import write_failed_row

    base = RunConfig(method="dense", track="digits-cnn", results_dir=str(tmp_path), epochs=0.05, skip_attacks=True)
    cfgs = grid(base, ["digits-cnn"], [("dense", {})], [None], [0, 1, 2, 3], [("standard", {})])
    first = plan(cfgs, tmp_path)
    assert len(first.todo) == 4 and not first.failed and not first.interrupted
    by_seed = {q.cfg.seed: q for q in first.configs}
    write_failed_row(by_seed[0].cfg, by_seed[0].config_id,
                     "LocalRayletDiedError: The task's local raylet died. Check raylet.out for more information.")
    write_failed_row(by_seed[1].cfg, by_seed[1].config_id, "Interrupted: stopped by SIGTERM")
    write_failed_row(by_seed[2].cfg, by_seed[2].config_id, "ValueError: --device cuda:7: CUDA is not available")
    again = plan(cfgs, tmp_path)
    assert [q.cfg.seed for q in again.interrupted] == [0, 1] and [q.cfg.seed for q in again.failed] == [2]
    assert [q.cfg.seed for q in again.todo] == [0, 1, 3]
    assert [q.cfg.seed for q in plan(cfgs, tmp_path, retry_failed=True).todo] == [0, 1, 2, 3]
    # a failed row's configuration can be recomputed from its config_json
    from bench.identity import config_id
    from bench.results import read_results

    assert all(config_id(json.loads(c)) == i for c, i in zip(*read_results(tmp_path)[["config_json", "config_id"]].T.values))


# ---- --deadline: a configuration starts only when its expected duration fits ----------------------
def test_deadline_forms_and_errors():
    import datetime as dt

    from bench.sweep import parse_deadline

    now = dt.datetime(2026, 12, 5, 22, 30).timestamp()
    assert parse_deadline("+90m", now) == now + 5400
    assert parse_deadline("+1h30m", now) == now + 5400 and parse_deadline("+45s", now) == now + 45
    assert parse_deadline("23:15", now) == dt.datetime(2026, 12, 5, 23, 15).timestamp()
    assert parse_deadline("00:10", now) == dt.datetime(2026, 12, 6, 0, 10).timestamp()  # the next one: tomorrow
    assert parse_deadline("2026-12-06T00:30", now) == dt.datetime(2026, 12, 6, 0, 30).timestamp()
    for bad in ("90m", "+90x", "+", "+1h 30m", "25:00", "tomorrow"):
        with pytest.raises(ValueError, match="--deadline"):
            parse_deadline(bad, now)
    with pytest.raises(ValueError, match="has passed"):
        parse_deadline("2026-12-05T22:00", now)


def test_expected_durations_come_from_the_committed_rows(repo_root):
    """The committed CIFAR-10 rows: seed 2 of a configuration is expected to take the median of its
    other seeds' training + evaluation seconds; an unseen compression falls back to the method's rows on
    the track; a track without rows has no estimate."""
    import statistics

    from bench.plan import plan
    from bench.sweep import Durations

    res = repo_root / "results"
    df = read_results(res)
    ok = df[(df["track"] == "cifar10-vgg16q-e25") & (df["method"] == "dense") & (df["status"] == "ok")
            & (df["objective"] == "standard")]
    if ok["seed"].nunique() < 2:
        pytest.skip("fewer than two committed dense seeds on cifar10-vgg16q-e25")
    durations = Durations(res)

    def planned(**kw):
        cfg = RunConfig(**{"track": "cifar10-vgg16q-e25", "method": "dense", "seed": 7, "results_dir": str(res), **kw})
        return plan([cfg], res).configs[0]

    secs, basis = durations.expected(planned())
    assert secs == pytest.approx(statistics.median(ok["train_seconds"] + ok["eval_seconds"]))
    assert basis == f"median of {len(ok)} rows of this configuration"
    lr = df[(df["track"] == "cifar10-vgg16q-e25") & (df["method"] == "robust_lowrank") & (df["status"] == "ok")
            & (df["objective"] == "standard")]
    secs, basis = durations.expected(planned(method="robust_lowrank", compression=0.3))
    assert secs == pytest.approx(statistics.median(lr["train_seconds"] + lr["eval_seconds"]))
    assert basis == f"median of {len(lr)} robust_lowrank rows on cifar10-vgg16q-e25"
    assert durations.expected(planned(track="cifar10-wrn16-4")) == (None, "no row to estimate it from")


def test_rows_written_since_the_sweep_started_set_the_pace(repo_root, tmp_path):
    """The committed dense and robust_lowrank@0.5 CIFAR-10 rows of seeds 0 and 1 as history, dense seed 2
    (trained later, on a slower machine) as written since the sweep started: its seconds against the
    history's median are the pace, which scales every estimate that rests on the history, robust_lowrank's
    too."""
    import datetime as dt
    import shutil
    import statistics

    from bench.plan import plan
    from bench.sweep import Durations

    df = read_results(repo_root / "results")
    df = df[(df["track"] == "cifar10-vgg16q-e25") & (df["status"] == "ok") & (df["objective"] == "standard")
            & (df["parent_run_id"].isna()) & df["seed"].isin([0, 1, 2])]
    dense = df[df["method"] == "dense"]
    lr = df[(df["method"] == "robust_lowrank") & (df["compression"].round(2) == 0.5) & df["seed"].isin([0, 1])]
    if sorted(dense["seed"]) != [0, 1, 2] or sorted(lr["seed"]) != [0, 1]:
        pytest.skip("the committed CIFAR-10 rows this test reads are not all there")
    res = tmp_path / "res"
    res.mkdir()
    for run_id in list(dense["run_id"]) + list(lr["run_id"]):
        (src,) = (repo_root / "results").glob(f"*__{run_id}.parquet")
        shutil.copy(src, res / src.name)
    secs = dict(zip(dense["seed"], dense["train_seconds"] + dense["eval_seconds"]))
    since = dt.datetime.fromisoformat(dense[dense["seed"] == 2]["created_at"].iloc[0]).timestamp()
    history = statistics.median([secs[0], secs[1]])

    def planned(**kw):
        cfg = RunConfig(**{"track": "cifar10-vgg16q-e25", "method": "dense", "seed": 7, "results_dir": str(res), **kw})
        return plan([cfg], res).configs[0]

    durations = Durations(res, since=since)
    assert durations.pace == pytest.approx(secs[2] / history) and durations.pace_n == 1
    est, basis = durations.expected(planned())
    assert est == pytest.approx(secs[2])  # history × pace, with one row since: that row
    assert basis == (f"median of 2 rows of this configuration, ×{secs[2] / history:.2f}: the pace of the 1 row "
                     "written since this sweep started")
    est, basis = durations.expected(planned(method="robust_lowrank", compression=0.5))
    assert est == pytest.approx(statistics.median(lr["train_seconds"] + lr["eval_seconds"]) * secs[2] / history)
    # without ``since`` every row is history and nothing is scaled
    plain = Durations(res)
    assert plain.pace is None
    assert plain.expected(planned()) == (pytest.approx(statistics.median(secs.values())), "median of 3 rows of this configuration")
    # a sweep that started after every row: no row since, no pace
    assert Durations(res, since=since + 10**6).pace is None


def test_a_sweep_with_a_deadline_starts_only_what_fits(tmp_path, run_bench, shared_data_dir):
    """Seed 0 runs (no row to estimate it from); then seed 1, expected to take what seed 0 took, does
    not fit a one-second deadline and is left for the next sweep, which runs it."""
    res = tmp_path / "res"
    grid = ("sweep", "--methods", "dense", "--epochs", "0.05", "--no-attacks", "--threads", "1",
            "--data-dir", str(shared_data_dir), "--results-dir", str(res))
    first = run_bench(*grid, "--seeds", "0", "--deadline", "+1h")
    assert first.returncode == 0, first.stderr
    dry = run_bench(*grid, "--seeds", "0,1", "--dry-run")
    # minutes as measured (a loaded machine takes longer), the basis as planned
    assert re.search(r"seed=1  ~\d+ min \(median of 1 row of this configuration\)\n", dry.stdout), dry.stdout
    assert re.search(r"expected: \d+\.\d h of runs for the 1 of 1 with an estimate", dry.stdout), dry.stdout
    late = run_bench(*grid, "--seeds", "0,1", "--deadline", "+1s")
    assert late.returncode == 0, late.stderr
    assert "[1/1] dense compression=0 seed=1: not started: " in late.stdout
    assert "deadline: 1 configuration not started; rerun the command to continue" in late.stdout
    assert sorted(read_results(res)["seed"]) == [0]
    again = run_bench(*grid, "--seeds", "0,1", "--deadline", "+2h")
    assert again.returncode == 0 and sorted(read_results(res)["seed"]) == [0, 1]


@pytest.mark.parametrize("extra, message", [(("--deadline", "soon"), "--deadline: expected"),
                                            (("--deadline", "+1h", "--executor", "ray"), "local executor")])
def test_a_bad_deadline_is_a_clear_error_before_any_run(tmp_path, run_bench, extra, message):
    r = run_bench("sweep", "--methods", "dense", "--results-dir", str(tmp_path / "res"), *extra)
    assert r.returncode == 2 and message in r.stderr and not (tmp_path / "res").exists()
