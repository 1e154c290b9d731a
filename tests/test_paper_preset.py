"""The paper-code preset of CondLR (methods/robust_lowrank_paper.py) against a step written from the
facts of the paper's public code, independently of the preset's own implementation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.lowrank import lowrank_layers
from bench.method import BuildContext, OptimHP, build_optimizer
from bench.models import build_model
from bench.registry import METHODS

KAPPA = 1.5


def _naive_step(layers, grads, bufs, lr, mu, kappa):
    """From the facts: b <- mu*b + g; b <- (smin/smax)^2 (I - X X^T) b, stored; X <- qr(X - lr b);
    S <- plain momentum SGD, then its singular values clamped around their mean."""
    out = []
    for i, (U, S, V) in enumerate(layers):
        s = torch.linalg.svdvals(S.double())
        scale = float((s[-1] / s[0]) ** 2)
        new = []
        for j, X in enumerate((U, V)):
            g = grads[i][j]
            b = g.clone() if bufs.get((i, j)) is None else mu * bufs[(i, j)] + g
            b = scale * (b - X @ (X.T @ b))
            bufs[(i, j)] = b
            Q, R = torch.linalg.qr(X - lr * b)
            new.append(Q * torch.sign(torch.diagonal(R)))
        gS = grads[i][2]
        bS = gS.clone() if bufs.get((i, 2)) is None else mu * bufs[(i, 2)] + gS
        bufs[(i, 2)] = bS
        S2 = (S - lr * bS).double()
        P, sv, Qh = torch.linalg.svd(S2)
        m = sv.mean()
        e = m * (kappa - 1) / (kappa + 1)
        sv = sv.clamp(m - e, m + e)
        out.append((new[0], (P * sv) @ Qh, new[1]))
    return out


def test_paper_preset_steps_equal_a_step_written_from_the_facts():
    cls = METHODS.get("robust_lowrank_paper")
    method = cls(cls.Params(kappa=KAPPA))
    torch.manual_seed(0)
    model = method.build(build_model("digits_cnn"), BuildContext(0.5, torch.zeros(1, 1, 8, 8), None, seed=0))
    layers = [m for _, m in lowrank_layers(model)]
    # every weight layer is U S V^T, the first convolution at a reduced rank
    assert len(layers) == 4 and layers[0].rank < min(layers[0].n, layers[0].m)
    for l in layers:  # the code's initialisation: orthonormal U, V; S diagonal, decreasing, positive
        assert torch.allclose(l.U.T @ l.U, torch.eye(l.rank), atol=1e-5)
        d = torch.diagonal(l.S)
        assert torch.equal(l.S, torch.diag(d)) and (d > 0).all() and (d[:-1] >= d[1:]).all()
    hp = OptimHP(lr=0.05, momentum=0.45, weight_decay=0.0)
    opt = build_optimizer(method, model, hp)
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)
    ref = [(l.U.detach().double().clone(), l.S.detach().double().clone(), l.V.detach().double().clone())
           for l in layers]
    bufs: dict = {}
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        grads = [(l.U.grad.double(), l.V.grad.double(), l.S.grad.double()) for l in layers]
        opt.step()
        ref = _naive_step(ref, grads, bufs, hp.lr, hp.momentum, KAPPA)
        for l, (U, S, V) in zip(layers, ref):
            assert torch.allclose(l.U.double(), U, atol=1e-4)
            assert torch.allclose(l.V.double(), V, atol=1e-4)
            assert torch.allclose(l.S.double(), S, atol=1e-4)
        # keep the comparison on the preset's trajectory (float32 vs float64 rounding)
        ref = [(l.U.detach().double().clone(), l.S.detach().double().clone(), l.V.detach().double().clone())
               for l in layers]
        for l in layers:
            s = torch.linalg.svdvals(l.S.double())
            assert s[0] / s[-1] <= KAPPA * (1 + 1e-4)
    # the compounding buffer: the stored buffer of U is the projected, scaled one
    X = layers[0].U
    b = opt.state[X]["momentum_buffer"]
    assert torch.allclose(X.T @ b, torch.zeros_like(X.T @ b), atol=1e-3)
