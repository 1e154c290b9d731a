"""benchmarks/eps_space.py: a stored model attacked with ε on pixels (must equal its row) and on
normalised inputs (ε·σ̄ on pixels)."""

import numpy as np
import pytest

from bench.results import read_results

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def es(repo_root):
    from script_module import load_script  # tests/ is on sys.path

    return load_script(repo_root / "benchmarks" / "eps_space.py")


@pytest.fixture(scope="module")
def attacked_run(tmp_path_factory):
    """A real digits run with the FGSM and PGD curves evaluated (20 points) and its model stored."""
    from bench.cli import main

    d = tmp_path_factory.mktemp("eps-space")
    assert main(["run", "--method", "dense", "--track", "digits-cnn", "--epochs", "1", "--n-eval", "20",
                 "--threads", "1", "--quiet", "--results-dir", str(d)]) == 0
    return d


def test_pixels_reproduce_the_row_and_normalised_scales_eps_by_the_mean_std(es, attacked_run, capsys):
    from bench.build import input_normalization, load_dataset_for
    from bench.registry import TRACKS

    (row,) = es.pick_rows(read_results(attacked_run), [], "digits-cnn", 0, attacked_run)
    res = es.attack_row(row, attacked_run, None)
    assert res["matches_row"], "the pixel-space attacks must give the row's own fgsm_curve and pgd_l2_curve"
    assert res["fgsm_pixels"] == [p["acc"] for p in row["fgsm_curve"]]
    track = TRACKS.get("digits-cnn")
    sigma = float(np.mean(input_normalization(track, load_dataset_for(track, None))[1]))
    assert res["sigma"] == pytest.approx(sigma) and 0 < sigma < 1  # digits-cnn normalises by the data's std
    assert res["fgsm_normalised"][0] == res["fgsm_pixels"][0]  # ε = 0: the clean accuracy on the points
    # the largest ε measured on normalised inputs, written out: one signed-gradient step of ε·σ on pixels
    # (digits have one channel, so σ̄ is its std exactly)
    import torch
    import torch.nn.functional as F

    from bench.reevaluate import load_stored_model

    data = load_dataset_for(track, None)
    model, _ = load_stored_model(row, attacked_run, data, track, device="cpu")
    idx = torch.as_tensor([int(i) for i in row["attacked_indices"]])
    x, y = data.x_test[idx].clone().requires_grad_(True), data.y_test[idx]
    logits = model(x)
    (g,) = torch.autograd.grad(F.cross_entropy(logits, y), x)
    eps = track.eval.fgsm_eps[-1] * sigma
    with torch.no_grad():
        adv = model((x + eps * g.sign()).clamp(0, 1)).argmax(1) == y
    expected = float(((logits.argmax(1) == y) & adv).float().mean())
    assert res["fgsm_normalised"][-1] == pytest.approx(expected)
    assert es.main([row["run_id"][:8], "--results-dir", str(attacked_run)]) == 0
    out = capsys.readouterr().out
    assert "| dense | 0 |" in out and "| yes |" in out and f"ε·{sigma:.4f}" in out


def test_bad_selections_are_refused_before_any_attack(es, attacked_run, capsys):
    df = read_results(attacked_run)
    for kw, why in ((dict(run_ids=["zzz"], track=None, seed=None), "matches 0 rows"),
                    (dict(run_ids=["a"], track="digits-cnn", seed=0), "not both"),
                    (dict(run_ids=[], track="digits-cnn", seed=None), "--track and --seed"),
                    (dict(run_ids=[], track="digits-cnn", seed=7), "no clean-trained row of digits-cnn seed 7")):
        with pytest.raises(ValueError, match=why):
            es.pick_rows(df, results_dir=attacked_run, **kw)
    assert len(es.pick_rows(df, [], "digits-cnn", 0, attacked_run)) == 1
    assert es.main(["--track", "digits-cnn", "--results-dir", str(attacked_run)]) == 2
    assert "--track and --seed" in capsys.readouterr().err
