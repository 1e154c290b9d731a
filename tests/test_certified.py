"""Certified radii from the logit margin and the operator Lipschitz bound: no attack inside a point's radius
changes its prediction, on a small convolutional network trained for a second on the real digits data."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bench.data import load_dataset
from bench.metrics.attacks import pgd
from bench.metrics.certified import certified_curve, certified_radii, logit_margins
from bench.metrics.conditioning import conditioning_report
from bench.models import Normalize

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    data = load_dataset("digits")
    model = nn.Sequential(Normalize([0.3], [0.4]), nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.LeakyReLU(),
                          nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.LeakyReLU(),
                          nn.Flatten(), nn.Linear(8 * 2 * 2, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = data.x_train, data.y_train
    for step in range(80):
        idx = torch.randint(0, len(y), (64,))
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model, data.x_test[:24], data.y_test[:24]


def test_no_attack_inside_the_certified_radius_changes_a_prediction(trained):
    model, x, y = trained
    rep = conditioning_report(model, x[:1])
    lip = rep["operator_lipschitz_upper"]
    assert lip is not None and lip > 0
    radii = certified_radii(logit_margins(model, x, y), lip)
    certified = (radii > 0).nonzero().squeeze(1)
    assert len(certified) >= 12  # trained: most points are classified with a positive margin
    broken_outside = 0
    for i in certified.tolist():
        xi, yi = x[i:i + 1], y[i:i + 1]
        for seed in (0,):
            adv = pgd(model, xi, yi, 0.99 * float(radii[i]), norm="L2", steps=20,
                      generator=torch.Generator().manual_seed(seed))
            assert (adv - xi).flatten().norm() <= 0.99 * float(radii[i]) * (1 + 1e-5)
            assert int(model(adv).argmax(1)) == int(yi)
        # far outside the radius the same attack does break points: it is not the attack that is weak
        adv = pgd(model, xi, yi, 1.0, norm="L2", steps=20, generator=torch.Generator().manual_seed(0))
        broken_outside += int(model(adv).argmax(1)) != int(yi)
    assert broken_outside > 0
    # the curves: L∞ through √d, and never above the clean accuracy on the points
    d = math.prod(x.shape[1:])
    eps = float(radii.max()) / 2
    assert certified_curve(radii, [0.0, eps])[1]["acc"] == pytest.approx(float((radii > eps).double().mean()))
    assert certified_curve(radii, [eps / math.sqrt(d)], scale=math.sqrt(d))[0]["acc"] == \
        certified_curve(radii, [eps])[0]["acc"]
    clean = float((model(x).argmax(1) == y).double().mean())
    assert certified_curve(radii, [0.0])[0]["acc"] <= clean


def test_bad_lipschitz_bound_is_refused():
    with pytest.raises(ValueError, match="positive and finite"):
        certified_radii(torch.ones(3), 0.0)
