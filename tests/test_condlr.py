"""The CondLR step (bench.condlr): batched, one code path for every device, no host sync.

Everything here runs on CPU through the code path a GPU takes (there is no device branch left).
The previous per-layer implementation is kept below as ``_OldManifoldSGD``: the new step must
follow its trajectory on a well-conditioned problem.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench import condlr
from bench.condlr import (ManifoldSGD, cholesky_qr, condition_s, condition_s_exact, effective_bound,
                          householder_qr)
from bench.condlr.experimental import GraphedStep
from bench.lowrank import LowRankConv2d, LowRankLinear, lowrank_layers
from bench.method import BuildContext, OptimHP
from bench.models import build_model
from bench.registry import METHODS

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py
F64 = torch.float64


# --------------------------------------------------------------------------------------------
# the previous implementation (bench.lowrank.ManifoldSGD before the move), as the reference
# --------------------------------------------------------------------------------------------
def _old_cholesky_qr(X):
    G = X.transpose(-1, -2) @ X
    L, info = torch.linalg.cholesky_ex(G)
    if bool(info.any()):
        Q, R = torch.linalg.qr(X)
        return Q * torch.sign(torch.diagonal(R, dim1=-2, dim2=-1)).unsqueeze(-2)
    return torch.linalg.solve_triangular(L.transpose(-1, -2), X, upper=True, left=False)


def _old_clamp(s, kappa_bar):
    k = effective_bound(kappa_bar)
    mean = s.mean(dim=-1, keepdim=True)
    e = mean * (k - 1.0) / (k + 1.0)
    return torch.minimum(torch.maximum(s, mean - e), mean + e)


def _old_condition_exact(S, mode, kappa_bar):
    P, s, Qh = torch.linalg.svd(S)
    if mode == "mean":
        return (P @ Qh) * (s.square().sum() / s.numel()).sqrt()
    return (P * _old_clamp(s, kappa_bar)) @ Qh


@torch.no_grad()
def _old_condition_(S, mode, kappa_bar):
    r = S.shape[-1]
    if mode == "mean":
        a = S.square().sum() / r
        Q = _old_cholesky_qr(S)
        if not bool(torch.isfinite(Q).all()):
            S.copy_(_old_condition_exact(S, mode, kappa_bar))
            return
        S.copy_(Q * a.sqrt())
        return
    lam, Q = torch.linalg.eigh(S.t() @ S)
    if not bool(lam[0] > lam[-1] * 1e-2):
        S.copy_(_old_condition_exact(S, mode, kappa_bar))
        return
    s = lam.clamp_min(torch.finfo(lam.dtype).tiny).sqrt()
    S.copy_((S @ (Q * (_old_clamp(s, kappa_bar) / s))) @ Q.t())


class _OldManifoldSGD(torch.optim.SGD):
    def __init__(self, model, layers, *, lr, momentum, weight_decay, nesterov=False, mode="approx_orth",
                 kappa_bar=1.5, step_scale="inv_a"):
        self.layers = list(layers)
        self.mode, self.kappa_bar, self.step_scale = mode, kappa_bar, step_scale
        self._inv_a0 = [float(l.rank / l.S.detach().square().sum()) for l in self.layers]
        stiefel = [p for l in self.layers for p in (l.U, l.V)]
        ids = {id(p) for p in stiefel}
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
        super().__init__([{"params": rest}, {"params": stiefel, "weight_decay": 0.0}], lr=lr, momentum=momentum,
                         weight_decay=weight_decay, nesterov=nesterov and momentum > 0)

    def _scale(self, i, l):
        if self.step_scale == "inv_a":
            return float(l.rank / l.S.square().sum())
        if self.mode == "mean":
            return self._inv_a0[i]
        lam = torch.linalg.eigvalsh(l.S.t() @ l.S)
        return float(lam[0] / lam[-1])

    @torch.no_grad()
    def step(self, closure=None):
        for i, l in enumerate(self.layers):
            inv_a = self._scale(i, l)
            for X in (l.U, l.V):
                if X.grad is not None:
                    X.grad.addmm_(X, X.t() @ X.grad, beta=inv_a, alpha=-inv_a)
        super().step()
        for l in self.layers:
            l.U.copy_(_old_cholesky_qr(l.U))
            l.V.copy_(_old_cholesky_qr(l.V))
            _old_condition_(l.S, self.mode, self.kappa_bar)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _smooth(model):
    """The same network with tanh for the rectifiers and average for max pooling: a kink or a
    pooling tie turns a rounding difference into a different gradient, so only a smooth network
    lets two implementations of one step be compared over many steps."""
    for name, mod in list(model.named_modules()):
        new = (nn.Tanh() if isinstance(mod, (nn.ReLU, nn.LeakyReLU)) else
               nn.AvgPool2d(mod.kernel_size) if isinstance(mod, nn.MaxPool2d) else None)
        if new is not None:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, new)
    return model


def _model(arch="digits_cnn", compression=0.5, seed=0, smooth=False, **params):
    cls = METHODS.get("robust_lowrank")
    method = cls(cls.Params(**params))
    torch.manual_seed(seed)
    size = 8 if arch == "digits_cnn" else 28
    dense = _smooth(build_model(arch)) if smooth else build_model(arch)
    model = method.build(dense, BuildContext(compression=compression,
                                                         example_input=torch.zeros(1, 1, size, size),
                                                         total_steps=None, seed=seed))
    return method, model, size


def _batches(size, n=4, batch=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(batch, 1, size, size, generator=g), torch.randint(0, 10, (batch,), generator=g))
            for _ in range(n)]


def _train(model, opt, data, steps):
    for step in range(steps):
        x, y = data[step % len(data)]
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()


def _orth_error(X):
    X = X.detach().to(F64)
    return float((X.transpose(-1, -2) @ X - torch.eye(X.shape[-1], dtype=F64)).norm())


def _kappa(S):
    s = torch.linalg.svdvals(S.detach().to(F64))
    return float(s[..., 0].max() / s[..., -1].min()) if s.dim() == 1 else (s[..., 0] / s[..., -1]).max().item()


def _assert_on_constraint_set(model, bound, where=""):
    for name, layer in lowrank_layers(model):
        U, S, V = layer.lowrank_factors()
        for t in (U, S, V):
            assert torch.isfinite(t).all(), (where, name)
        assert _orth_error(U) <= 1e-5, (where, name, "U", _orth_error(U))
        assert _orth_error(V) <= 1e-5, (where, name, "V", _orth_error(V))
        assert _kappa(S) <= bound * (1 + 1e-4), (where, name, _kappa(S))


def _dense_twin(model):
    """The same network with every low-rank layer replaced by a dense layer of weight U S Vᵀ."""
    twin = copy.deepcopy(model)
    for name, layer in lowrank_layers(twin):
        if isinstance(layer, LowRankLinear):
            dense = nn.Linear(layer.m, layer.n, bias=layer.bias is not None)
        else:
            assert isinstance(layer, LowRankConv2d)
            dense = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                              padding=layer.padding, dilation=layer.dilation, bias=layer.bias is not None)
        with torch.no_grad():
            dense.weight.copy_(layer.dense_weight())
            if layer.bias is not None:
                dense.bias.copy_(layer.bias)
        parent, _, child = name.rpartition(".")
        setattr(twin.get_submodule(parent) if parent else twin, child, dense)
    return twin


def _with_kappa(n, r, kappa, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    P = torch.linalg.qr(torch.randn(n, r, generator=g, dtype=F64))[0]
    Q = torch.linalg.qr(torch.randn(r, r, generator=g, dtype=F64))[0]
    s = torch.logspace(0, -torch.log10(torch.tensor(float(kappa), dtype=F64)).item(), r, dtype=F64)
    return ((P * s) @ Q.t()).to(dtype)


# --------------------------------------------------------------------------------------------
# the step follows the previous implementation
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode,step_scale,nesterov", [("approx_orth", "inv_a", False),
                                                      ("approx_orth", "reference", True),
                                                      ("mean", "inv_a", False), ("mean", "reference", False)])
def test_same_trajectory_as_the_previous_step(mode, step_scale, nesterov):
    method, model, size = _model("lenet5", 0.5, smooth=True, mode=mode, step_scale=step_scale)
    old_model = copy.deepcopy(model)
    hp = dict(lr=0.1, momentum=0.3, weight_decay=5e-4, nesterov=nesterov, mode=mode, kappa_bar=1.5,
              step_scale=step_scale)
    new = ManifoldSGD(model, [l for _, l in lowrank_layers(model)], **hp)
    old = _OldManifoldSGD(old_model, [l for _, l in lowrank_layers(old_model)], **hp)
    data = _batches(size, batch=32)
    _train(model, new, data, 20)
    _train(old_model, old, data, 20)
    state, old_state = model.state_dict(), old_model.state_dict()
    for name, b in old_state.items():
        rel = float((state[name] - b).abs().max() / b.abs().max())
        assert rel <= 1e-4, (name, rel)
    assert any(not torch.equal(state[k], old_state[k]) for k in state)  # two implementations, not one


@pytest.mark.parametrize("arch", ["lenet5", "digits_cnn"])
def test_projection_from_the_core_gradient_equals_the_explicit_one(arch):
    """UᵀG_U = G_S Sᵀ and VᵀG_V = G_Sᵀ S for W = U S Vᵀ: the projected, scaled gradients and a
    whole training run agree with the explicit (I − XXᵀ)G, padded buckets included (a smooth
    network: with kinks, float32 rounding differences flip an argmax and the runs part)."""
    _, model, size = _model(arch, 0.5, smooth=True)
    explicit = copy.deepcopy(model)
    hp = dict(lr=0.1, momentum=0.3, weight_decay=5e-4)
    opt = ManifoldSGD(model, [l for _, l in lowrank_layers(model)], **hp)
    ref = ManifoldSGD(explicit, [l for _, l in lowrank_layers(explicit)], core_gradient=False, **hp)
    assert any(not b.single for b, _ in opt._buckets)
    x, y = _batches(size, n=1, batch=32)[0]
    grads = []
    for m, o in ((model, opt), (explicit, ref)):
        F.cross_entropy(m(x), y).backward()
        scales = o._direction_scales()
        for bucket, members in o._buckets:
            params = [getattr(o.layers[i], w) for i, w in members]
            bucket.snapshot_(params)
            bucket.project_(params, [p.grad for p in params], torch.stack([scales[i] for i, _ in members]),
                            core=o._core_operands(members))
        grads.append([p.grad.clone() for _, l in lowrank_layers(m) for p in (l.U, l.V)])
    assert opt._core_operands(opt._buckets[0][1]) is not None and ref._core_operands(ref._buckets[0][1]) is None
    for a, b in zip(*grads):
        assert float((a - b).norm()) <= 1e-4 * float(b.norm()) + 1e-7
    for m in (model, explicit):
        m.zero_grad(set_to_none=True)
    _train(model, opt, _batches(size, batch=32), 10)
    _train(explicit, ref, _batches(size, batch=32), 10)
    for name, b in explicit.state_dict().items():
        assert torch.allclose(model.state_dict()[name], b, rtol=0, atol=1e-5 * float(b.abs().max())), name


def test_padded_buckets_equal_one_call_per_shape(monkeypatch):
    """Factors (and cores) padded into one bucket give what each gives alone (a smooth network,
    so that float32 rounding differences do not flip an argmax)."""
    _, model, size = _model("lenet5", 0.5, smooth=True)
    alone = copy.deepcopy(model)
    hp = dict(lr=0.1, momentum=0.3, weight_decay=5e-4)
    opt = ManifoldSGD(model, [l for _, l in lowrank_layers(model)], **hp)
    assert any(not b.exact for b, _ in opt._buckets) and any(not b.exact for b, _ in opt._core_buckets)
    monkeypatch.setattr(ManifoldSGD, "bucket_slack", 0.0)
    monkeypatch.setattr(ManifoldSGD, "bucket_align", 1)
    opt_alone = ManifoldSGD(alone, [l for _, l in lowrank_layers(alone)], **hp)
    assert all(b.exact for b, _ in opt_alone._buckets) and all(b.exact for b, _ in opt_alone._core_buckets)
    data = _batches(size, batch=32)
    _train(model, opt, data, 5)
    _train(alone, opt_alone, data, 5)
    state = model.state_dict()
    for name, b in alone.state_dict().items():
        assert torch.allclose(state[name], b, rtol=0, atol=1e-5 * float(b.abs().max())), name


# --------------------------------------------------------------------------------------------
# the invariants after every step
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode,kappa,step_scale", [("approx_orth", 1.5, "inv_a"), ("approx_orth", 1.1, "reference"),
                                                   ("mean", 1.5, "inv_a"), ("mean", 1.5, "reference")])
def test_invariants_after_every_step(mode, kappa, step_scale):
    method, model, size = _model("digits_cnn", 0.5, mode=mode, kappa=kappa, step_scale=step_scale)
    bound = kappa if mode == "approx_orth" else 1.0
    opt = method.make_optimizer(model, OptimHP(lr=0.2, momentum=0.9, weight_decay=5e-4))
    data = _batches(size)
    for step in range(20):
        _train(model, opt, data[step % 4:][:1], 1)
        _assert_on_constraint_set(model, bound, f"step {step}")
    x = torch.cat([x for x, _ in data])
    model.eval()
    twin = _dense_twin(model).eval()
    with torch.no_grad():
        assert torch.allclose(model(x), twin(x), atol=1e-5)


# --------------------------------------------------------------------------------------------
# deliberately bad steps end on the constraint set
# --------------------------------------------------------------------------------------------
def _corrupt(model, what):
    layers = [l for _, l in lowrank_layers(model)]
    big = max(layers, key=lambda l: l.rank)
    with torch.no_grad():
        if what.startswith("S_kappa"):
            for l in layers:
                l.S.copy_(_with_kappa(l.rank, l.rank, float(what.split("=")[1]), seed=l.rank) * 2.0)
        elif what == "factor_kappa=100":
            big.U.copy_(_with_kappa(big.n, big.rank, 100.0))
            big.V.copy_(_with_kappa(big.m, big.rank, 100.0, seed=1))
        elif what == "rank_deficient":
            big.U[:, 1] = big.U[:, 0]
            big.U[:, -1] = 0.0
            big.V[:, 2] = 0.5 * big.V[:, 3]
        elif what == "rank_deficient_small":  # factors that share a padded bucket with others
            for l in layers:
                if l is not big:
                    l.U[:, 1] = l.U[:, 0]
                    l.V[:, -1] = 0.0
        elif what == "S_singular":
            for l in layers:
                l.S[:, 0] = l.S[:, 1]


@pytest.mark.parametrize("mode,conditioner,retraction", [("approx_orth", "eigh", "householder"),
                                                         ("approx_orth", "eigh", "cholesky_qr2"),
                                                         ("approx_orth", "newton_schulz", "cholesky_qr2"),
                                                         ("mean", "eigh", "householder"),
                                                         ("mean", "eigh", "cholesky_qr2")])
@pytest.mark.parametrize("what,lr", [("S_kappa=1e3", 0.1), ("S_kappa=1e4", 0.1), ("factor_kappa=100", 0.1),
                                     ("rank_deficient", 0.1), ("rank_deficient_small", 0.1), ("S_singular", 0.1),
                                     ("lr", 10.0)])
def test_a_bad_step_ends_on_the_constraint_set(mode, conditioner, retraction, what, lr):
    method, model, size = _model("lenet5", 0.5, mode=mode)
    bound = 1.5 if mode == "approx_orth" else 1.0
    _corrupt(model, what)
    opt = method.make_optimizer(model, OptimHP(lr=lr, momentum=0.9, weight_decay=5e-4))
    opt.conditioner, opt.retraction = conditioner, retraction
    big = max((l for _, l in lowrank_layers(model)), key=lambda l: l.rank)
    for step, (x, y) in enumerate(_batches(size, n=3, batch=32)):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        if what.startswith("rank_deficient") and step == 0:  # SGD leaves U, V as they are: the
            for _, l in lowrank_layers(model):  # retraction gets the rank-deficient factors themselves
                l.U.grad = l.V.grad = None
        opt.step()
        _assert_on_constraint_set(model, bound, f"{what}, step {step}")


@pytest.mark.parametrize("retraction", ["householder", "cholesky_qr2"])
def test_a_factor_whose_step_is_not_finite_keeps_its_value(retraction):
    """The retraction's certificate fails for a non-finite step: that factor (alone or in a padded
    bucket) keeps its value from before the step; every other factor moves; all stay orthonormal."""
    method, model, size = _model("lenet5", 0.5)
    opt = method.make_optimizer(model, OptimHP(lr=0.1, momentum=0.9, weight_decay=5e-4))
    opt.retraction = retraction
    layers = [l for _, l in lowrank_layers(model)]
    big = max(layers, key=lambda l: l.rank)
    small = min(layers, key=lambda l: l.rank)
    x, y = _batches(size, n=1, batch=32)[0]
    F.cross_entropy(model(x), y).backward()
    before = {id(p): p.detach().clone() for l in layers for p in (l.U, l.V)}
    big.U.grad[0, 0] = float("inf")
    small.V.grad[:, 0] = float("nan")
    opt.step()
    assert torch.equal(big.U, before[id(big.U)]) and torch.equal(small.V, before[id(small.V)])
    moved = [p for l in layers for p in (l.U, l.V) if p is not big.U and p is not small.V]
    assert moved and all(not torch.equal(p, before[id(p)]) for p in moved)
    for l in layers:
        assert _orth_error(l.U) <= 1e-5 and _orth_error(l.V) <= 1e-5


# --------------------------------------------------------------------------------------------
# no host synchronisation inside step()
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode,step_scale,conditioner", [("approx_orth", "inv_a", "eigh"),
                                                         ("approx_orth", "reference", "eigh"),
                                                         ("approx_orth", "inv_a", "newton_schulz"),
                                                         ("mean", "inv_a", "eigh"), ("mean", "reference", "eigh")])
@pytest.mark.parametrize("retraction", ["householder", "cholesky_qr2"])
def test_step_reads_no_tensor_value_on_the_host(monkeypatch, mode, step_scale, conditioner, retraction):
    """Every Python-level way to read a tensor value raises during step(): no .item(), no
    float()/int()/bool() of a tensor, no Python branch on one, no .cpu()/.tolist()/.numpy()."""
    method, model, size = _model("lenet5", 0.5, mode=mode, step_scale=step_scale)
    opt = method.make_optimizer(model, OptimHP(lr=0.1, momentum=0.3, weight_decay=5e-4))
    opt.conditioner, opt.retraction = conditioner, retraction
    x, y = _batches(size, n=1)[0]
    for _ in range(2):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()

        def sync(*_a, **_k):
            raise AssertionError("host synchronisation inside ManifoldSGD.step")

        with monkeypatch.context() as m:
            for attr in ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__",
                         "__complex__"):
                m.setattr(torch.Tensor, attr, sync)
            with pytest.raises(AssertionError, match="host synchronisation"):  # the patch is live
                bool(torch.ones(()))
            opt.step()
    _assert_on_constraint_set(model, 1.5 if mode == "approx_orth" else 1.0)


# --------------------------------------------------------------------------------------------
# the building blocks
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("qr", [cholesky_qr, householder_qr])
@pytest.mark.parametrize("n,r", [(800, 155), (500, 15), (25, 20), (10, 10)])
@pytest.mark.parametrize("kappa", [1.0, 10.0, 1e2, 1e3, 1e4])
def test_qr_is_the_q_factor_to_float32_accuracy(qr, n, r, kappa):
    X = _with_kappa(n, r, kappa, seed=n + r)
    Q = qr(X)
    assert Q.dtype == X.dtype and _orth_error(Q) <= 1e-5
    if kappa <= 1e2:
        Qh, Rh = torch.linalg.qr(X.to(F64))
        Qh = Qh * torch.sign(torch.diagonal(Rh))
        # the Q factor of a float32 matrix is itself known to about eps·κ
        assert float((Q.to(F64) - Qh).norm()) <= 2e-6 * max(kappa, 10.0)
    # beyond, float32 may treat X as rank-deficient: then span(Q) nearly contains span(X)
    P = Q.to(F64)
    resid = X.to(F64) - P @ (P.t() @ X.to(F64))
    assert float(resid.norm()) <= 1e-2 * float(X.norm())


@pytest.mark.parametrize("qr", [cholesky_qr, householder_qr])
def test_qr_keeps_float64_accuracy_for_float64_input(qr):
    X = _with_kappa(300, 40, 1e4, seed=3).to(F64)
    Q = qr(X)
    assert Q.dtype == F64
    Qh, Rh = torch.linalg.qr(X)
    Qh = Qh * torch.sign(torch.diagonal(Rh))
    assert float((Q - Qh).norm()) <= 1e-9 and _orth_error(Q) <= 1e-12


@pytest.mark.parametrize("qr", [cholesky_qr, householder_qr])
def test_qr_returns_the_fallback_where_it_cannot_certify(qr):
    X = torch.randn(3, 50, 6, generator=torch.Generator().manual_seed(0))
    X[1] = float("inf")
    keep = torch.linalg.qr(torch.randn(3, 50, 6, generator=torch.Generator().manual_seed(1)))[0]
    Q = qr(X, fallback=keep)
    assert torch.equal(Q[1], keep[1])
    for b in (0, 2):
        assert _orth_error(Q[b]) <= 1e-5 and not torch.equal(Q[b], keep[b])


@pytest.mark.parametrize("qr", [cholesky_qr, householder_qr])
def test_qr_of_a_rank_deficient_or_broken_factor_is_orthonormal(qr):
    torch.manual_seed(0)
    X = torch.randn(3, 200, 12)
    X[0, :, 1] = X[0, :, 0]  # two equal columns
    X[1, :, 5] = 0.0  # a zero column
    X[2] = float("nan")
    Q = qr(X)
    assert torch.isfinite(Q).all()
    for b in range(3):
        assert _orth_error(Q[b]) <= 1e-5
    for b in range(2):  # span(Q) is close to containing span(X): the Q factor of X + τ[I; 0], τ ~ 1e-3
        P = Q[b].to(F64)
        resid = X[b].to(F64) - P @ (P.t() @ X[b].to(F64))
        assert float(resid.norm()) <= 1e-2 * float(X[b].norm())
    # the batch does not mix: a healthy element next to broken ones is its own Q factor
    Y = torch.randn(200, 12)
    both = qr(torch.stack([Y, X[2]]))
    assert torch.equal(both[0], qr(Y.unsqueeze(0))[0])


@pytest.mark.parametrize("r", [10, 155])
@pytest.mark.parametrize("kappa", [1.2, 1e3, 1e4])
@pytest.mark.parametrize("kappa_bar", [1.1, 1.5])
def test_condition_s_meets_the_bound_and_matches_the_svd_route(r, kappa, kappa_bar):
    S = _with_kappa(r, r, kappa, seed=r) * 3.0
    out = condition_s(S, "approx_orth", kappa_bar)
    assert out.dtype == S.dtype and _kappa(out) <= kappa_bar * (1 + 1e-4)
    exact = condition_s_exact(S.to(F64), "approx_orth", kappa_bar)
    assert float((out.to(F64) - exact).norm() / exact.norm()) <= 1e-5
    mean = condition_s(S, "mean", kappa_bar)
    assert _kappa(mean) <= 1 + 1e-4
    assert abs(float(mean.to(F64).norm() / S.to(F64).norm()) - 1) <= 1e-5  # ‖S‖_F kept: √a · orthogonal


def test_condition_s_of_a_singular_or_broken_core_is_on_the_constraint_set():
    torch.manual_seed(0)
    S = torch.randn(3, 20, 20)
    S[0, :, 1] = S[0, :, 0]
    S[1, 3] = 0.0
    S[2, 0, 0] = float("nan")
    for mode, bound, retraction in (("approx_orth", 1.5, "cholesky_qr2"), ("mean", 1.0, "cholesky_qr2"),
                                    ("mean", 1.0, "householder"), ("unit", 1.0, "householder")):
        out = condition_s(S, mode, 1.5, retraction=retraction)
        assert torch.isfinite(out).all()
        for b in range(3):
            assert _kappa(out[b]) <= bound * (1 + 1e-4), (mode, retraction, b)


@pytest.mark.parametrize("mode,retraction", [("approx_orth", "cholesky_qr2"), ("mean", "cholesky_qr2"),
                                             ("mean", "householder")])
def test_condition_s_with_padding_gives_the_core_its_own_result(mode, retraction):
    torch.manual_seed(0)
    S = torch.randn(7, 7)
    c = S.to(F64).norm() / 7 ** 0.5
    P = torch.zeros(12, 12)
    P[:7, :7] = S
    P[7:, 7:] = torch.eye(5) * float(c)
    padded = condition_s(P.unsqueeze(0), mode, 1.3, padding=(torch.tensor([5.0], dtype=F64), c.reshape(1)),
                         retraction=retraction)
    alone = condition_s(S, mode, 1.3, retraction=retraction)
    assert torch.allclose(padded[0, :7, :7], alone, atol=1e-6)


# --------------------------------------------------------------------------------------------
# conditioner="newton_schulz": the approx_orth map without eigh
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("r", [10, 59, 155])
@pytest.mark.parametrize("kappa", [1.01, 1.6, 3.0, 10.0, 100.0])
@pytest.mark.parametrize("kappa_bar", [1.1, 1.5])
def test_newton_schulz_conditioner_matches_eigh(r, kappa, kappa_bar):
    S = torch.stack([_with_kappa(r, r, kappa, seed=r + k) * (3.0 - k) for k in range(2)])
    ns = condition_s(S, "approx_orth", kappa_bar, conditioner="newton_schulz")
    eig = condition_s(S, "approx_orth", kappa_bar)
    assert ns.dtype == S.dtype and _kappa(ns) <= kappa_bar * (1 + 1e-4)
    assert float((ns - eig).abs().max() / eig.abs().max()) <= 2e-6


@pytest.mark.parametrize("kappa", [1e4, 1e7])
def test_newton_schulz_conditioner_beyond_its_range_or_broken_is_on_the_constraint_set(kappa):
    """Where the fixed iterations cannot converge (κ(S) ≫ 1e3), S is singular or not finite, the
    certificate fails and S becomes m·Q_S (κ = 1); the other cores of the batch are unaffected."""
    torch.manual_seed(0)
    S = torch.stack([_with_kappa(20, 20, kappa, seed=1) * 2.0, torch.randn(20, 20), torch.randn(20, 20),
                     _with_kappa(20, 20, 1.3, seed=2)])
    S[1, :, 1] = S[1, :, 0]
    S[2, 0, 0] = float("nan")
    out = condition_s(S, "approx_orth", 1.5, conditioner="newton_schulz")
    assert torch.isfinite(out).all()
    for b in range(4):
        assert _kappa(out[b]) <= 1.5 * (1 + 1e-4), b
    assert _kappa(out[0]) <= 1 + 1e-4  # the fallback, not a half-converged iterate
    assert torch.allclose(out[3], condition_s(S[3], "approx_orth", 1.5), atol=1e-6)


def test_newton_schulz_conditioner_with_padding_gives_the_core_its_own_result():
    torch.manual_seed(0)
    S = _with_kappa(7, 7, 2.0, seed=3) * 2.0
    c = S.to(F64).norm() / 7 ** 0.5
    P = torch.zeros(12, 12)
    P[:7, :7] = S
    P[7:, 7:] = torch.eye(5) * float(c)
    padded = condition_s(P.unsqueeze(0), "approx_orth", 1.3, padding=(torch.tensor([5.0], dtype=F64), c.reshape(1)),
                         conditioner="newton_schulz")
    assert torch.allclose(padded[0, :7, :7], condition_s(S, "approx_orth", 1.3), atol=1e-6)


def test_newton_schulz_step_follows_the_eigh_step():
    """Training with either conditioner gives the same network (smooth, so rounding flips no
    argmax), every step on the constraint set and without reading a tensor on the host."""
    _, model, size = _model("lenet5", 0.5, smooth=True)
    twin = copy.deepcopy(model)
    hp = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)
    opt = ManifoldSGD(model, [l for _, l in lowrank_layers(model)], **hp)
    opt_ns = ManifoldSGD(twin, [l for _, l in lowrank_layers(twin)], conditioner="newton_schulz", **hp)
    data = _batches(size, batch=32)
    for step in range(6):
        _train(model, opt, data[step % 4:][:1], 1)
        _train(twin, opt_ns, data[step % 4:][:1], 1)
        _assert_on_constraint_set(twin, 1.5, f"step {step}")
    for name, b in twin.state_dict().items():
        a = model.state_dict()[name]
        assert torch.allclose(a, b, rtol=0, atol=1e-5 * float(a.abs().max())), name
    with pytest.raises(ValueError, match="conditioner"):
        ManifoldSGD(model, [l for _, l in lowrank_layers(model)], conditioner="svd", **hp)


def test_worker_threads_take_the_serial_step():
    """With experimental "cpu_workers" and torch at 2 threads on the CPU the buckets run on worker
    threads (ManifoldSGD._each); the steps equal the one-after-another steps of the default
    optimizer, grad mode stays off in the workers, the caller's thread count is restored, and an
    error in a worker reaches the caller."""
    _, model, size = _model("lenet5", 0.5, smooth=True)
    twin = copy.deepcopy(model)
    hp = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)
    serial = ManifoldSGD(model, [l for _, l in lowrank_layers(model)], **hp)  # the default: no workers
    workers = ManifoldSGD(twin, [l for _, l in lowrank_layers(twin)], experimental="cpu_workers", **hp)
    assert workers._plan.work < workers._workers.min_work  # LeNet5's step is mostly small ops: serial even so
    workers._workers.min_work = 0.0
    assert len(workers._buckets) + len(workers._core_buckets) >= 3
    data = _batches(size, batch=32)
    torch.set_num_threads(2)
    try:
        for step in range(4):
            _train(model, serial, data[step % 4:][:1], 1)
            _train(twin, workers, data[step % 4:][:1], 1)
            assert torch.get_num_threads() == 2
        assert workers._workers.pool is not None and serial._workers is None  # the workers did run
        # float32 rounding apart: LAPACK's Householder QR rounds differently at 1 and 2 threads (about
        # 1e-6 of max |value| per step here; Cholesky-QR2 agrees to 1e-11)
        for name, b in twin.state_dict().items():
            a = model.state_dict()[name]
            assert torch.allclose(a, b, rtol=0, atol=1e-5 * float(a.abs().max())), name
        _assert_on_constraint_set(twin, 1.5)
        def boom(params, retraction):
            raise RuntimeError("boom in a worker")

        workers._buckets[-1][0].retract_ = boom  # an error in one task reaches the caller
        with pytest.raises(RuntimeError, match="boom in a worker"):
            workers.step()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)


# --------------------------------------------------------------------------------------------
# experimental "cuda_graph": the step a CUDA graph captures (static gradients, tensor lr), run eagerly here
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode,nesterov,weight_decay", [("approx_orth", False, 5e-4), ("approx_orth", True, 5e-4),
                                                        ("mean", True, 0.0)])
def test_static_step_takes_the_eager_step(mode, nesterov, weight_decay):
    """GraphedStep.static_step (what experimental "cuda_graph" captures: momentum SGD from static
    gradient buffers and 0-dim lr tensors) takes the same steps as the eager step, through a changing lr,
    with the gradients of a new backward copied in each step (zero_grad(set_to_none=True))."""
    _, model, size = _model("lenet5", 0.5, smooth=True, mode=mode)
    twin = copy.deepcopy(model)
    hp = dict(lr=0.1, momentum=0.9, weight_decay=weight_decay, nesterov=nesterov, mode=mode,
              conditioner="newton_schulz")
    opt = ManifoldSGD(model, [l for _, l in lowrank_layers(model)], **hp)
    static = ManifoldSGD(twin, [l for _, l in lowrank_layers(twin)], **hp)
    graph = GraphedStep(static)  # on the CPU: only run eagerly, never captured
    data = _batches(size, batch=32)
    start = copy.deepcopy(twin.state_dict())
    for step in range(5):
        for o, m in ((opt, model), (static, twin)):
            for g in o.param_groups:
                g["lr"] = 0.1 / (1 + step)
            o.zero_grad(set_to_none=True)
            x, y = data[step % 4]
            F.cross_entropy(m(x), y).backward()
        opt.step()
        if step == 0:
            assert not graph.prepare()  # no momentum buffer yet: the first step is eager
            static.step()
            continue
        if step == 1:
            assert graph.prepare()
        else:
            graph.load_inputs()
        assert all(p.grad is g for p, g in zip(graph.params(), graph.static_grads))
        with torch.no_grad():
            graph.static_step()
        _assert_on_constraint_set(twin, 1.5 if mode == "approx_orth" else 1.0, f"step {step}")
        for name, b in twin.state_dict().items():
            a = model.state_dict()[name]
            assert torch.allclose(a, b, rtol=0, atol=1e-5 * float(a.abs().max())), f"step {step}: {name}"
    assert max(float((twin.state_dict()[n] - a).abs().max()) for n, a in start.items()) > 1e-2  # it trained


def test_cuda_graph_is_refused_where_it_cannot_work():
    """Experimental "cuda_graph" needs a step without host synchronisation and parameters on a CUDA
    device ("cpu_workers" the CPU); anything else, an unknown feature included, is a clear error at
    construction, not a failed capture later."""
    _, model, _ = _model("lenet5", 0.5)
    layers = [l for _, l in lowrank_layers(model)]
    hp = dict(lr=0.1, momentum=0.9, weight_decay=5e-4, experimental=("cuda_graph",))
    with pytest.raises(ValueError, match="newton_schulz"):
        ManifoldSGD(model, layers, **hp)  # approx_orth with eigh
    with pytest.raises(ValueError, match="newton_schulz"):
        ManifoldSGD(model, layers, conditioner="newton_schulz", step_scale="reference", **hp)
    for kw in (dict(conditioner="newton_schulz"), dict(mode="mean")):
        with pytest.raises(ValueError, match="CUDA device"):
            ManifoldSGD(model, layers, **kw, **hp)
    opt = ManifoldSGD(model, layers, lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    assert not opt.experimental and not opt.graph_captured and opt._graph is None and opt._workers is None
    for g in opt.param_groups:  # as the trainer's schedule leaves them
        g["lr"], g["lr_scale"] = 0.02, 0.5
    ns = opt.with_options(conditioner="newton_schulz")  # what bench perf --cuda-graph builds, on the CPU
    assert ns.conditioner == "newton_schulz" and ns.mode == opt.mode and ns.layers == opt.layers
    assert [{k: g[k] for k in ("lr", "lr_scale", "weight_decay", "nesterov", "momentum")} for g in ns.param_groups] == \
        [{k: g[k] for k in ("lr", "lr_scale", "weight_decay", "nesterov", "momentum")} for g in opt.param_groups]
    with pytest.raises(ValueError, match="CUDA device"):
        ns.with_options(experimental="cuda_graph")
    with pytest.raises(ValueError, match="Householder"):
        ns.with_options(experimental="cuda_graph", retraction="householder")
    with pytest.raises(ValueError, match="experimental features are"):
        ns.with_options(experimental=("cuda_graphs",))
    assert ns.with_options(experimental="cpu_workers")._workers is not None  # on the CPU: allowed


def test_retraction_is_householder_on_the_cpu_unless_asked_otherwise():
    """retraction='auto' (the default) is LAPACK's Householder QR on the CPU for the cores and all but
    very tall factor buckets (CUDA: Cholesky-QR2); both take the same step up to float32 rounding; a
    bad name is an error."""
    _, model, size = _model("lenet5", 0.5, smooth=True)
    twin = copy.deepcopy(model)
    hp = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)
    auto = ManifoldSGD(model, [l for _, l in lowrank_layers(model)], **hp)
    chol = ManifoldSGD(twin, [l for _, l in lowrank_layers(twin)], retraction="cholesky_qr2", **hp)
    assert auto.retraction == "auto" and auto.bucket_retraction(None) == "householder"
    assert [auto.bucket_retraction(k) for k in range(len(auto._buckets))] == [
        "householder" if b.N <= condlr._HOUSEHOLDER_ASPECT * b.R or len(b.shapes) * b.N * b.R ** 2 <= condlr._HOUSEHOLDER_SMALL
        else "cholesky_qr2" for b, _ in auto._buckets]
    assert "householder" in {auto.bucket_retraction(k) for k in range(len(auto._buckets))}
    assert {chol.bucket_retraction(k) for k in [None, *range(len(chol._buckets))]} == {"cholesky_qr2"}
    assert chol.with_options(lr=0.2).retraction == "cholesky_qr2"
    data = _batches(size, batch=32)
    _train(model, auto, data, 5)
    _train(twin, chol, data, 5)
    for name, b in twin.state_dict().items():
        a = model.state_dict()[name]
        assert torch.allclose(a, b, rtol=0, atol=1e-5 * float(a.abs().max())), name
    assert any(not torch.equal(model.state_dict()[k], b) for k, b in twin.state_dict().items())  # two routes
    with pytest.raises(ValueError, match="retraction must be one of"):
        ManifoldSGD(model, [l for _, l in lowrank_layers(model)], retraction="qr", **hp)


# --------------------------------------------------------------------------------------------
# orthogonal_dense mode=unit: every weight on the Stiefel manifold (all singular values 1)
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("what,lr", [(None, 0.2), ("S_kappa=1e4", 0.1), ("rank_deficient", 0.1)])
def test_unit_mode_keeps_every_singular_value_at_one(what, lr):
    cls = METHODS.get("orthogonal_dense")
    method = cls(cls.Params(mode="unit"))
    torch.manual_seed(0)
    model = method.build(build_model("lenet5"), BuildContext(compression=0.5, example_input=torch.zeros(1, 1, 28, 28),
                                                             total_steps=None, seed=0))
    if what:
        _corrupt(model, what)
    opt = method.make_optimizer(model, OptimHP(lr=lr, momentum=0.9, weight_decay=5e-4))
    for step, (x, y) in enumerate(_batches(28, n=4, batch=16)):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        for name, layer in lowrank_layers(model):
            U, S, V = layer.lowrank_factors()
            sv = torch.linalg.svdvals((U @ S @ V.T).to(F64))
            assert torch.allclose(sv, torch.ones_like(sv), atol=1e-5), (what, step, name, sv.min(), sv.max())
    assert len(lowrank_layers(model)) == 4  # every weight layer, none compressed


def test_unit_mode_is_only_for_orthogonal_dense():
    from bench.method import ParamError, parse_params

    with pytest.raises(ParamError):
        parse_params(METHODS.get("robust_lowrank").Params, {"mode": "unit"})
