"""benchmarks/paper_table.py: the papers' published numbers beside the committed CIFAR-10 rows."""

import math

import numpy as np
import pytest

from bench.results import read_results

TRACK = "cifar10-vgg16q-e25"


@pytest.fixture(scope="module")
def pt(repo_root):
    from script_module import load_script  # tests/ is on sys.path

    return load_script(repo_root / "benchmarks" / "paper_table.py")


@pytest.fixture(scope="module")
def runs(repo_root):
    df = read_results(repo_root / "results")
    if not (df["track"] == TRACK).any():
        pytest.skip(f"no committed rows on {TRACK}")
    return df


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _ours(runs, method: str, compression: float, eps: float) -> tuple[float, int]:
    """Our mean FGSM accuracy at eps over the standard-objective rows of one configuration, read
    directly from the rows' fgsm_curve."""
    rows = runs[(runs["track"] == TRACK) & (runs["method"] == method) & (runs["status"] == "ok")
                & np.isclose(runs["compression_target"].astype(float), compression)
                & (runs["objective"].fillna("standard") == "standard")]
    accs = [p["acc"] for curve in rows["fgsm_curve"] for p in curve if math.isclose(p["eps"], eps, abs_tol=1e-12)]
    return float(np.mean(accs)), len(accs)


def test_paper_numbers_stand_beside_our_means_at_the_same_eps(pt, runs):
    out = pt.table(runs, TRACK, pt.parse_also(["robust_lowrank=robust_lowrank_paper"])).splitlines()
    assert out[0].startswith("| paper setting (as published) |")
    lines = {(c[0], c[1], c[4]): c for c in map(_cells, out[2:])}
    condlr = "CondLR (tau=0.5), c.r. 50% (rank fraction removed per layer)"
    for method in ("robust_lowrank", "robust_lowrank_paper"):  # the paper's CondLR rows, and again via --also
        cells = lines[(condlr, "FGSM L∞", f"{method} @ 0.50")]
        assert cells[2] == "0 / 0.002 / 0.004 / 0.006"
        assert cells[3] == "89.97 / 72.25 / 60.19 / 50.17"  # leaderboard_app/paper_reference.csv
        mean, n = _ours(runs, method, 0.5, 0.002)
        assert cells[5] == str(n) and n >= 1
        assert cells[6].split(" / ")[1] == f"{100 * mean:.1f}"
    # the paper's L2-PGD number of CondLR sits beside our L2-PGD at the same eps, not beside FGSM
    l2 = lines[("CondLR (tau=0.1), c.r. 50% (rank fraction removed per layer)", "PGD L2", "robust_lowrank @ 0.50")]
    assert l2[2] == "0.3" and l2[3] == "54.58"
    # without --also, the preset gets no line of the paper's CondLR
    plain = pt.table(runs, TRACK)
    assert "robust_lowrank_paper" not in plain and "robust_lowrank @ 0.50" in plain


def test_bad_input_is_refused_with_the_reason(pt, runs, repo_root, capsys):
    for bad, why in (("robust_lowrank", "A=B"), ("robust_lowrank=nosuch", "unknown method 'nosuch'"),
                     ("=dense", "A=B")):
        with pytest.raises(ValueError, match=why):
            pt.parse_also([bad])
    with pytest.raises(ValueError, match="no published numbers"):
        pt.table(runs, "mnist-lenet5-e10")  # the reference file holds VGG16 / CIFAR-10 numbers only
    with pytest.raises(ValueError, match="no rows on track"):
        pt.table(runs.iloc[0:0], TRACK)
    assert pt.main(["--track", TRACK, "--also", "x", "--results-dir", str(repo_root / "results")]) == 2
    assert "A=B" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        pt.main(["--track", "no-such-track"])
    assert "unknown track 'no-such-track'" in capsys.readouterr().err
