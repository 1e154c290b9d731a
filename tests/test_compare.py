"""Per-point outcomes (bench.outcomes), attacked points by a seeded permutation, and `bench compare`
(McNemar per seed, paired bootstrap over points and seeds; the seed-level fallback for older rows)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from bench.compare import compare, mcnemar_exact, paired_bootstrap, parse_spec, sign_flip_p, t_quantile
from bench.outcomes import decode, encode, entry, mask_at, row_outcomes
from bench.results import read_results

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

TRACK = "digits-compare-test"


# ------------------------------------------------------------------ statistics by hand

def test_mcnemar_exact_against_hand_computed_values():
    # 1 vs 6 discordant: P(X <= 1 | Bin(7, 1/2)) = (1 + 7) / 128, doubled
    assert mcnemar_exact(1, 6) == pytest.approx(16 / 128)
    assert mcnemar_exact(6, 1) == mcnemar_exact(1, 6)
    # 2 vs 8: (1 + 10 + 45) / 1024, doubled
    assert mcnemar_exact(2, 8) == pytest.approx(112 / 1024)
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)
    assert mcnemar_exact(3, 3) == 1.0 and mcnemar_exact(0, 0) == 1.0


def test_paired_bootstrap_contains_the_observed_difference_and_is_deterministic():
    rng = np.random.default_rng(3)
    a = rng.random((3, 200)) < 0.6
    b = rng.random((3, 200)) < 0.5
    first = paired_bootstrap(a, b, resamples=2000)
    assert first == paired_bootstrap(a, b, resamples=2000)  # fixed generator seed
    diff, low, high = first
    assert diff == pytest.approx(a.mean() - b.mean())
    assert low < diff < high and high - low < 0.3
    # identical configurations: the difference is 0 in every resample
    assert paired_bootstrap(a, a, resamples=100) == (0.0, 0.0, 0.0)


def test_t_quantile_and_sign_flip_test():
    for df, q in ((1, 12.7062), (2, 4.30265), (4, 2.77645), (30, 2.04227)):  # textbook t_{0.975}
        assert t_quantile(0.975, df) == pytest.approx(q, rel=1e-4)
    p, patterns, exact = sign_flip_p([0.1, 0.2, 0.15])
    assert (p, patterns, exact) == (0.25, 8, True)  # only all-plus and all-minus are as extreme
    assert sign_flip_p([0.1, -0.1])[0] == 1.0


def test_outcomes_encode_decode_round_trip():
    rng = np.random.default_rng(0)
    for n in (0, 1, 7, 8, 9, 500):
        mask = rng.random(n) < 0.5
        assert np.array_equal(decode(encode(mask), n), mask)
    e = entry("pgd", "L2", 0.5, mask)
    assert e["n"] == 500 and len(e["bits"]) == 84
    assert np.array_equal(row_outcomes({"attack_outcomes": [e]})[("pgd", "L2", 0.5)], mask)
    with pytest.raises(ValueError, match="bytes"):
        decode(encode(mask), 100)
    with pytest.raises(ValueError, match="outcome attack"):
        entry("square", "Linf", 0.1, mask)


def test_parse_spec_resolves_defaults_and_rejects_bad_input():
    s = parse_spec("robust_lowrank[mode=mean]@0.5")
    assert s.method_id.startswith("robust_lowrank[") and "mode=mean" in s.method_id and s.compression == 0.5
    assert parse_spec("dense").compression == 0.0
    with pytest.raises(ValueError, match="must be a number"):
        parse_spec("vanilla_lowrank@half")
    with pytest.raises(ValueError, match="does not compress"):
        parse_spec("dense@0.5")
    with pytest.raises(Exception, match="nosuchmethod"):
        parse_spec("nosuchmethod@0.5")


# ------------------------------------------------------------------ committed rows: the seed-level fallback

def test_bench_compare_on_committed_mnist_rows_falls_back_to_the_seed_level_test(repo_root, capsys):
    from bench.cli import main

    assert main(["compare", "robust_lowrank@0.5", "vanilla_lowrank@0.5", "--track", "mnist-lenet5-e10",
                 "--results-dir", str(repo_root / "results")]) == 0
    out = capsys.readouterr().out
    assert "no per-point outcomes: seed-level test" in out and "McNemar" not in out
    assert "seeds 0, 1, 2" in out and "sign-flip permutation test exact p = 0.25" in out
    df = read_results(repo_root / "results")
    cmp = compare(df, "robust_lowrank@0.5", "vanilla_lowrank@0.5", track="mnist-lenet5-e10")
    robust = cmp.metrics[0]
    ok = df[(df["track"] == "mnist-lenet5-e10") & (df["status"] == "ok") & (df["compression_target"] == 0.5)
            & (df["objective"] == "standard")]  # the pgd_at rows of the same configurations are not compared
    rl = ok[ok["method_id"] == cmp.a.method_id].set_index("seed")["robust_acc"]
    vl = ok[ok["method_id"] == cmp.b.method_id].set_index("seed")["robust_acc"]
    assert len(rl) == len(vl) == 3 and robust.diff == pytest.approx((rl - vl).mean())
    assert robust.low < robust.diff < robust.high


def test_bench_compare_names_what_exists_when_a_configuration_has_no_rows(repo_root, capsys):
    from bench.cli import main

    assert main(["compare", "robust_lowrank@0.3", "vanilla_lowrank@0.5", "--track", "mnist-lenet5-e10",
                 "--results-dir", str(repo_root / "results")]) == 2
    err = capsys.readouterr().err
    assert "no successful rows of robust_lowrank@0.3" in err and "vanilla_lowrank[form=uv]@0.5" in err


# ------------------------------------------------------------------ tiny real runs with outcomes

@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """dense and vanilla_lowrank@0.5, seeds 0 and 1, one epoch on the digits, 30 attacked points drawn by a
    seeded permutation; and dense trained with fgsm_rs at ε = 0.3, seed 0. The test track keeps AutoAttack cheap on two cores: APGD-CE alone along the curve
    and the standard version at ε = 0.3, where a one-epoch model keeps few points."""
    import torch

    from bench.cli import main
    from bench.config import EvalProtocol
    from bench.registry import TRACKS

    base = TRACKS.get("digits-cnn")
    track = dataclasses.replace(base, name=TRACK, eval=EvalProtocol(
        n_eval=30, linf_eps=(0.05,), headline_eps=0.3, curve_attacks=("apgd-ce",), fgsm_eps=(0.0, 0.1),
        pgd_linf_eps=(0.1,), pgd_l2_eps=(0.5,), pgd_steps=5, sensitivity_points=4, attack_points="permutation",
        attack_points_seed=7))
    d = tmp_path_factory.mktemp("compare-runs")
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(TRACKS._entries, TRACK, track)
        for method in ("dense", "vanilla_lowrank"):
            for seed in ("0", "1"):
                assert main(["run", "--track", TRACK, "--method", method, "--compression", "0.5", "--seed", seed,
                             "--epochs", "1", "--n-eval", "30", "--threads", "1", "--quiet",
                             "--results-dir", str(d)]) == 0
        # written last, with outcomes: a fast-AT dense run at the track's headline eps, seed 0
        assert main(["run", "--track", TRACK, "--method", "dense", "--objective", "fgsm_rs[eps=0.3]", "--seed", "0",
                     "--epochs", "1", "--n-eval", "30", "--threads", "1", "--quiet", "--results-dir", str(d)]) == 0
    torch.set_num_threads(threads)
    return d


@pytest.mark.slow
def test_attacked_points_are_one_seeded_permutation_for_every_row(tiny_runs):
    import torch

    df = read_results(tiny_runs)
    assert len(df) == 5  # the fgsm_rs row too: the points do not depend on the objective
    idx = [list(map(int, v)) for v in df["attacked_indices"]]
    assert all(i == idx[0] for i in idx) and len(idx[0]) == 30
    expected = sorted(torch.randperm(360, generator=torch.Generator().manual_seed(7))[:30].tolist())
    assert idx[0] == expected and idx[0] != list(range(30))


@pytest.mark.slow
def test_decoded_outcomes_match_every_accuracy_of_the_row(tiny_runs):
    for _, r in read_results(tiny_runs).iterrows():
        out = row_outcomes(r)
        n = len(r["attacked_indices"])
        assert all(len(m) == n for m in out.values())
        checks = [(("clean", "", 0.0), r["clean_acc_eval"]), (("autoattack", "Linf", r["robust_eps"]), r["robust_acc"])]
        checks += [(("autoattack", p["norm"], p["eps"]), p["acc"]) for p in r["aa_curve"]]
        for col, attack, norm in (("fgsm_curve", "fgsm", "Linf"), ("pgd_linf_curve", "pgd", "Linf"),
                                  ("pgd_l2_curve", "pgd", "L2")):
            checks += [((attack, norm, p["eps"]), p["acc"]) for p in r[col]]
        adversarial = r["objective"] != "standard"  # its training eps 0.3 joins the PGD-50 curve (eval_protocol_for)
        assert len(checks) == 2 + 2 + 2 + (2 if adversarial else 1) + 1
        assert (0.3 in [p["eps"] for p in r["pgd_linf_curve"]]) == adversarial
        for key, acc in checks:
            mask = mask_at(out, *key)
            assert mask is not None, key
            assert mask.mean() == pytest.approx(acc, abs=1e-12), key
        # robust implies correct: AutoAttack counts a misclassified point as broken
        assert not (mask_at(out, "autoattack", "Linf", 0.05) & ~mask_at(out, "clean")).any()


@pytest.mark.slow
def test_bench_compare_on_rows_with_outcomes_runs_mcnemar_per_seed(tiny_runs, capsys):
    from bench.cli import main

    assert main(["compare", "dense", "vanilla_lowrank@0.5", "--results-dir", str(tiny_runs)]) == 0
    out = capsys.readouterr().out
    assert "per-point outcomes on the same 30 attacked points" in out and "McNemar p" in out
    assert "seed-level" not in out and f"track {TRACK}" in out and "bootstrap interval" in out

    cmp = compare(read_results(tiny_runs), "dense", "vanilla_lowrank@0.5")
    assert cmp.per_point and cmp.seeds == [0, 1] and cmp.n_points == 30
    df = read_results(tiny_runs)
    df = df[df["objective"] == "standard"]  # the fixture's fgsm_rs dense row is not part of this comparison
    for metric, key in zip(cmp.metrics, (("autoattack", "Linf", 0.3), ("clean", "", 0.0))):
        for line in metric.seeds:
            ra = df[(df["method"] == "dense") & (df["seed"] == line.seed)].iloc[0]
            rb = df[(df["method"] == "vanilla_lowrank") & (df["seed"] == line.seed)].iloc[0]
            ma, mb = mask_at(row_outcomes(ra), *key), mask_at(row_outcomes(rb), *key)
            assert (line.only_a, line.only_b) == (int((ma & ~mb).sum()), int((mb & ~ma).sum()))
            assert line.p == mcnemar_exact(line.only_a, line.only_b)
        assert metric.low <= metric.diff <= metric.high
    clean = cmp.metrics[1]
    assert clean.diff == pytest.approx(np.mean([s.acc_a - s.acc_b for s in clean.seeds]))
    assert not math.isnan(clean.low)


def _paired_table(repo_root):
    from script_module import load_script  # tests/ is on sys.path

    return load_script(repo_root / "benchmarks" / "paired_table.py")


def test_paired_table_lines_are_bench_compare_results(tiny_runs, repo_root):
    """benchmarks/paired_table.py (REPRODUCTION.md's paired readings): each line carries the numbers of
    `bench compare` for its pair; a pair without rows becomes a line saying why; a malformed pair or an
    unknown method is refused before any comparison runs."""
    pt = _paired_table(repo_root)
    df = read_results(tiny_runs)
    out = pt.table(df, ["dense:vanilla_lowrank@0.5", "vanilla_lowrank@0.3:dense"]).splitlines()
    assert out[0].startswith("| A | B | seeds |") and len(out) == 4
    cmp = compare(df, "dense", "vanilla_lowrank@0.5")
    robust, clean = cmp.metrics
    cells = [c.strip() for c in out[2].strip("|").split("|")]
    assert cells[:3] == ["dense@0", "vanilla_lowrank@0.5", "0, 1"]

    def pts(v):
        return f"{100 * v:+.1f}".replace("-", "−")

    assert cells[3] == f"{pts(robust.diff)} [{pts(robust.low)}, {pts(robust.high)}]"
    for line in robust.seeds:
        p = f"{line.p:.3g}" if line.p >= 0.001 else f"{line.p:.1e}"
        assert f"s{line.seed}: {p} ({line.only_a} / {line.only_b})" in cells[4]
    assert cells[5] == f"{pts(clean.diff)} [{pts(clean.low)}, {pts(clean.high)}]"
    assert "not compared: no track has rows of both vanilla_lowrank@0.3" in out[3]
    for bad, why in (("dense", "a pair is A:B"), ("dense:nosuchmethod@0.5", "nosuchmethod"),
                     ("dense:vanilla_lowrank@half", "must be a number")):
        with pytest.raises(ValueError, match=why):
            pt.table(df, ["dense:vanilla_lowrank@0.5", bad])


def test_paired_table_says_when_it_falls_back_to_the_seed_level_test(repo_root):
    pt = _paired_table(repo_root)
    out = pt.table(read_results(repo_root / "results"), ["robust_lowrank@0.5:vanilla_lowrank@0.5"],
                   track="mnist-lenet5-e10").splitlines()[2]
    assert "| 0, 1, 2 |" in out and "seed-level sign-flip p = 0.25" in out and "(whole test split)" in out
    assert "McNemar" not in out


@pytest.mark.slow
def test_leaderboard_compares_two_configurations_picked_in_the_table(tiny_runs, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("BENCH_RESULTS_DIR", str(tiny_runs))
    at = AppTest.from_file(str(__import__("pathlib").Path(__file__).resolve().parent.parent / "leaderboard_app"
                               / "app.py"), default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    a, b = at.selectbox(key="compare_a"), at.selectbox(key="compare_b")
    assert {a.value, b.value} and a.value != b.value
    text = at.code[0].value
    assert "McNemar p" in text and "per-point outcomes on the same 30 attacked points" in text
    expected = compare(read_results(tiny_runs), "dense", "vanilla_lowrank@0.5")
    # the app shows what `bench compare` prints, for whichever order the boxes hold; only the names in the
    # first line differ: the app, which loads no method code, names configurations by their full id
    swapped = compare(read_results(tiny_runs), "vanilla_lowrank@0.5", "dense")
    head, body = text.split("\n", 1)
    assert body in (expected.text().split("\n", 1)[1], swapped.text().split("\n", 1)[1])
    assert "vanilla_lowrank[form=uv]@0.5" in head and "vanilla_lowrank@0.5" in expected.text().split("\n", 1)[0]


def test_rows_without_attacks_compare_on_clean_outcomes_only(real_runs):
    cmp = compare(read_results(real_runs), "dense", "vanilla_lowrank@0.5")  # --no-attacks runs, seed 0 paired
    assert cmp.per_point and cmp.seeds == [0] and [m.title for m in cmp.metrics] == ["clean acc on the attacked points"]
    assert any("AutoAttack did not run" in n for n in cmp.notes) and "McNemar p" in cmp.text()


@pytest.mark.slow
def test_rows_of_another_objective_are_never_mixed_in(tiny_runs):
    """The fgsm_rs dense row (seed 0, newer, with outcomes) must not stand in for the clean-trained seed 0;
    across objectives only when asked, and then said in the header."""
    df = read_results(tiny_runs)
    standard = df[(df["method"] == "dense") & (df["objective"] == "standard") & (df["seed"] == 0)].iloc[0]
    adv = df[(df["method"] == "dense") & (df["objective"] == "fgsm_rs")].iloc[0]
    assert adv["created_at"] > standard["created_at"] and adv["robust_eps"] == standard["robust_eps"]

    cmp = compare(df, "dense", "vanilla_lowrank@0.5")
    assert (cmp.objective_a, cmp.objective_b) == ("standard", "standard") and cmp.seeds == [0, 1]
    assert cmp.metrics[0].seeds[0].acc_a == pytest.approx(standard["robust_acc"])
    assert "trained with" not in cmp.text().splitlines()[0]

    with pytest.raises(ValueError, match=r"no rows of vanilla_lowrank@0.5 .* trained with 'fgsm_rs'; its objectives there: standard"):
        compare(df, "dense", "vanilla_lowrank@0.5", objective="fgsm_rs")
    across = compare(df, "dense", "dense", objective="fgsm_rs", objective_b="standard")
    assert across.per_point and across.seeds == [0]
    assert across.metrics[0].seeds[0].acc_a == pytest.approx(adv["robust_acc"])
    assert across.metrics[0].seeds[0].acc_b == pytest.approx(standard["robust_acc"])
    assert "A trained with fgsm_rs[alpha=0.375,eps=0.3], B with standard" in across.text().splitlines()[0]
    alone = df[df["objective"] == "fgsm_rs"]  # no standard rows: the one objective both have is picked
    assert compare(alone, "dense", "dense").objective_a == "fgsm_rs[alpha=0.375,eps=0.3]"


def test_bench_compare_takes_the_objective_flags(tiny_runs, capsys):
    from bench.cli import main

    assert main(["compare", "dense", "dense", "--objective", "fgsm_rs", "--objective-b", "standard",
                 "--results-dir", str(tiny_runs)]) == 0
    assert "A trained with fgsm_rs" in capsys.readouterr().out
    assert main(["compare", "dense", "vanilla_lowrank@0.5", "--objective", "trades", "--results-dir", str(tiny_runs)]) == 2
    assert "trained with 'trades'" in capsys.readouterr().err
