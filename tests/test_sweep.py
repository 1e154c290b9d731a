"""Grid expansion: method specs with parameters, seed-major order."""

import json

import pytest

from bench.config import RunConfig
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
