"""The mathematics of the CondLR step, as batched pure functions on tensors (…×n×r factors, …×r×r
cores): the tangent projection, the Q-factor retractions and the conditioning of S.

None of them reads a tensor back to the host (no ``.item()``, ``bool(tensor)`` or Python branch on
a value): every guard is a ``torch.where`` over the whole batch, so the same code runs on every
device and can be captured in a CUDA graph. The r×r work is in float64 (full speed on CPUs and
H100/H200-class GPUs, slow on consumer GPUs).

On CUDA only ``eigh`` and ``eigvalsh`` synchronise (PyTorch checks LAPACK's status on the host):
approx_orth with ``conditioner="eigh"`` pays one per core bucket and step, one more with
``step_scale="reference"``. Matrix products, ``cholesky_ex`` and triangular solves never do, hence
``conditioner="newton_schulz"`` for GPUs.
"""

from __future__ import annotations

import functools

import torch

# A layer whose conditioning would be reported as exactly κ̄ could read as κ̄(1 + 1e-7) after
# float32 rounding; clamping to a bound this much tighter keeps every reported κ ≤ κ̄.
_KAPPA_MARGIN = 1e-4

# cholesky_qr treats X as rank-deficient when κ_F(X) = ‖L‖_F‖L⁻¹‖_F (L = chol(XᵀX)), an upper
# bound of κ(X), exceeds this, per working precision: the κ up to which a Gram matrix of that
# precision still resolves X and two passes restore orthogonality. Such an X gets a completion.
_KAPPA_F_MAX = {torch.float32: 1e4, torch.float64: 1e5}
# τ of the completion, in units of X's rms column norm: first 1e-2, then 1 more where X + τC is
# still too ill-conditioned (rare with a random C)
_COMPLETION_STEPS = (1e-2, 1.0)
# "still too ill-conditioned": the Cholesky pivots spread more than this (a random C leaves no
# structure that could hide a small singular value from them)
_PIVOT_SPREAD = 1e3
# the second pass is certified when ‖Q₁ᵀQ₁ − I‖_F ≤ this: every eigenvalue in [0.5, 1.5], so the
# second Cholesky-QR is accurate to the working precision
_CERTIFICATE = 0.5
# _right_solve multiplies by the inverse triangle for factors at least this many times taller than
# wide: there a product beats a triangular solve with few columns (docs/speed.md)
_TALL = 6
# condition_s: below this σ_min/σ_max (κ(S) > 1e5) the eigh route is not accurate enough
_S_RANK_TOL = 1e-5

# conditioner="newton_schulz": iterations X ← X p(XᵀX) from X/‖X‖_F; first the quintic _NS_FAST
# (slope 3.4 at 0, so small singular values grow fast; it maps (0, 1] into about [0.7, 1.12]), then
# the cubic (3 − x²)/2, which converges quadratically from there. Steps (quintic, cubic) for the
# polar factor of S (singular values over ‖S‖_F ≥ 1/(√r·κ(S))) and for the signs of H − lo·I and
# H − hi·I (14 quintic steps grow 3e-8 of the Frobenius norm to order 1; an eigenvalue b not yet
# converged changes |B| by at most |b|, so the result moves by less than 1e-7 of S).
_NS_FAST = (3.4445, -4.7750, 2.0315)
_NS_POLAR_STEPS = (6, 5)
_NS_SIGN_STEPS = (14, 5)

#: How condition_s finds the spectrum of S in approx_orth: ``eigh`` (a float64 eigendecomposition
#: of SᵀS; the default, fastest on CPUs) or ``newton_schulz`` (matrix products and two Cholesky
#: factorisations only: batched and graph-capturable on GPUs, where eigh of r×r matrices runs one
#: matrix at a time and synchronises with the host).
CONDITIONERS = ("eigh", "newton_schulz")

#: How the step computes Q factors (the retraction of U and V; S in the mean and unit modes):
#: ``cholesky_qr2`` (:func:`cholesky_qr`: products, Cholesky factorisations and triangular solves,
#: batched, graph-capturable; for GPUs) or ``householder`` (:func:`householder_qr`: LAPACK's
#: Householder QR, faster on the CPU). ``auto`` (ManifoldSGD's default) chooses per bucket
#: (see bench.condlr.buckets.auto_retraction).
RETRACTIONS = ("auto", "cholesky_qr2", "householder")

#: What the step keeps S to: approx_orth κ(S) ≤ κ̄; mean S = √a·(orthogonal); unit S orthogonal.
MODES = ("approx_orth", "mean", "unit")


def project_tangent(X: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """(I − XXᵀ) D: the component of D orthogonal to span(X) (the part S cannot absorb)."""
    return D - X @ (X.transpose(-1, -2) @ D)


@functools.lru_cache(maxsize=64)
def _eye(n: int, r: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[I_r; 0] (n×r), cached: the identity when n = r, orthonormal columns otherwise."""
    return torch.eye(n, r, dtype=dtype, device=device)


@functools.lru_cache(maxsize=64)
def _completion(r: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed random r×r matrix C (float64, entries of variance 1/r) and CᵀC, cached.

    X + τ[C; 0] is full rank with a margin for any X: by smoothed analysis, σ_min of a matrix
    plus a Gaussian τC (entries of variance τ²/r) is of order τ/r or more with high probability,
    whatever the matrix. A structured completion such as X + τ[I; 0] can cancel (a square X
    with an eigenvalue near −τ), and did in tests.
    """
    g = torch.Generator().manual_seed(20230528 + r)
    C = (torch.randn(r, r, generator=g, dtype=torch.float64) / r ** 0.5).to(device)
    return C, C.t() @ C


def _masked_completion(blocks: list[tuple[int, int]], R: int, device: torch.device):
    """Per slot of a padded batch, (C, CᵀC) with C the fixed R×R completion zeroed outside the
    slot's block [:rows, :cols] (its real rows among the top R, its real columns)."""
    C = _completion(R, torch.device("cpu"))[0].repeat(len(blocks), 1, 1)
    for b, (rows, cols) in enumerate(blocks):
        C[b, rows:, :] = 0.0
        C[b, :, cols:] = 0.0
    C = C.to(device)
    return C, C.transpose(-1, -2) @ C


def _completion_factor(G0: torch.Tensor, top: torch.Tensor, completion, r: int, kappa_max: float):
    """The Cholesky factor of the Gram matrix of X + τ[C; 0] and τ (0 where X is fine), from
    G0 = XᵀX and X's top r rows alone (r×r work, float64)."""
    wide = torch.float64
    C, CtC = completion
    eye = _eye(r, r, wide, G0.device)
    # X + τ[C; 0] has the Gram matrix G0 + τ(X_topᵀC + CᵀX_top) + τ²CᵀC: exactly G0 where τ = 0
    cross = top.transpose(-1, -2) @ C
    cross = cross + cross.transpose(-1, -2)
    tr = G0.diagonal(dim1=-2, dim2=-1).sum(-1)
    rms = (tr / r).sqrt()
    L, info = torch.linalg.cholesky_ex(G0)
    # κ_F² = tr(G)·tr(G⁻¹) = ‖L‖²_F‖L⁻¹‖²_F bounds κ(X)² from above (and by κ(X)²·r² from below)
    tr_inv = torch.linalg.solve_triangular(L, eye, upper=False).square().sum((-2, -1))
    bad = (info != 0) | ~(tr * tr_inv <= kappa_max ** 2)  # a NaN counts as bad
    tau = bad.to(wide) * (_COMPLETION_STEPS[0] * rms)
    t = tau[..., None, None]
    L, info = torch.linalg.cholesky_ex(G0 + t * (cross + t * CtC))
    # X + τC is ill-conditioned by chance only (C is random), which its Cholesky pivots show
    piv = L.diagonal(dim1=-2, dim2=-1)
    worse = bad & ((info != 0) | ~(piv.amin(-1) * _PIVOT_SPREAD > piv.amax(-1)))
    tau = tau + worse.to(wide) * (_COMPLETION_STEPS[1] * rms)
    t = tau[..., None, None]
    L, info = torch.linalg.cholesky_ex(G0 + t * (cross + t * CtC))
    return L, info, t


def _right_solve(X: torch.Tensor, L: torch.Tensor, eye: torch.Tensor, work: torch.dtype) -> torch.Tensor:
    """X L⁻ᵀ (L lower triangular, float64, r×r) in precision ``work``. A tall X (n ≥ _TALL·r) is
    multiplied by L⁻ᵀ (the r×r inverse in float64): a product runs faster than a triangular solve
    with few columns on the CPU; for a squarer X the inverse costs more than it saves.
    Both are backward stable to the working precision for the triangles here (the retraction's
    second pass restores orthogonality from either)."""
    n, r = X.shape[-2:]
    if n >= _TALL * r:
        return X @ torch.linalg.solve_triangular(L, eye, upper=False).transpose(-1, -2).to(work)
    return torch.linalg.solve_triangular(L.transpose(-1, -2).to(work), X, upper=True, left=False)


def cholesky_qr(X: torch.Tensor, *, out: torch.Tensor | None = None,
                completion: tuple[torch.Tensor, torch.Tensor] | None = None,
                fallback: torch.Tensor | None = None) -> torch.Tensor:
    """The Q factor of X (…×n×r, n ≥ r) with diag(R) > 0, orthonormal for every input.

    Cholesky-QR2, batched over the leading dimensions: Q₁ = X L₁⁻ᵀ with L₁ = chol(XᵀX), then
    Q = Q₁ L₂⁻ᵀ with L₂ = chol(Q₁ᵀQ₁). The n×r work (two Gram matrices, two triangular solves)
    runs in X's precision (float32 for half-precision input), the r×r Cholesky factorisations in
    float64. No Householder QR. One pass loses about eps·κ(X)² of orthogonality; the
    second pass starts from Q₁ with κ(Q₁) ≈ 1 and restores the working precision (‖QᵀQ − I‖_F
    about 2e-6 in float32 for r = 155) for κ(X) up to about 1e3 in float32 (1e5 in float64).
    Two float32 passes cost less than one in float64 for large n (docs/speed.md).

    Where a batch element is (numerically) rank-deficient — the first Cholesky fails, or the
    bound κ_F = ‖L‖_F‖L⁻¹‖_F ≥ κ(X) exceeds 1e4 in float32 (1e5 in float64) — it factors
    X + τ[C; 0] instead, τ = 1e-2 × the rms column norm of X (1.01 × where that is not enough)
    and C a fixed random r×r matrix: the Q factor of a nearby full-rank matrix, orthonormal, its
    span within about τ of containing span(X). The second pass certifies its result
    (‖Q₁ᵀQ₁ − I‖_F ≤ 0.5 and both Cholesky factorisations succeeded); an element without the
    certificate (a non-finite X, or a near-singular one whose float32 Gram matrix hid it) returns
    ``fallback`` (the same shape as X; default [I_r; 0]), which the caller keeps orthonormal.
    The choices are ``torch.where``-style selections: nothing is read back to the host. ``out``
    (X itself allowed) receives the result; ``completion`` = (C, CᵀC) replaces the fixed C (a
    padded batch confines it to each slot's real block).
    """
    n, r = X.shape[-2:]
    if n < r:
        raise ValueError(f"cholesky_qr needs n >= r, got {n}×{r}")
    wide = torch.float64
    work = X.dtype if X.dtype in _KAPPA_F_MAX else torch.float32
    Xw = X.to(work)
    completion = completion if completion is not None else _completion(r, X.device)
    eye = _eye(r, r, wide, X.device)
    G0 = (Xw.transpose(-1, -2) @ Xw).to(wide)
    L, info, t = _completion_factor(G0, Xw[..., :r, :].to(wide), completion, r, _KAPPA_F_MAX[work])
    Xc = Xw.clone() if Xw is X else Xw
    Xc[..., :r, :] += (t * completion[0]).to(work)  # X + τ[C; 0]
    Q1 = _right_solve(Xc, L, eye, work)
    G1 = (Q1.transpose(-1, -2) @ Q1).to(wide)
    L2, info2 = torch.linalg.cholesky_ex(G1)
    Q = _right_solve(Q1, L2, eye, work)
    ok = (info == 0) & (info2 == 0) & ((G1 - eye).square().sum((-2, -1)) <= _CERTIFICATE ** 2)
    if fallback is None:
        fallback = _eye(n, r, X.dtype, X.device)
    return torch.where(ok[..., None, None], Q.to(X.dtype), fallback, out=out)


def householder_qr(X: torch.Tensor, *, out: torch.Tensor | None = None,
                   fallback: torch.Tensor | None = None) -> torch.Tensor:
    """The Q factor of X (…×n×r, n ≥ r) with diag(R) ≥ 0 by Householder QR (LAPACK's geqrf and
    orgqr through ``torch.linalg.qr``), batched: orthonormal to the working precision (float32 for
    half-precision input) for every finite X, rank-deficient ones included (span(Q) then holds
    span(X) plus arbitrary orthonormal directions for the missing rank). An element whose Q is not
    finite (X not finite) returns ``fallback`` (default [I_r; 0]), a ``torch.where`` selection:
    nothing is read back to the host. Equal to :func:`cholesky_qr` up to rounding for a full-rank X.

    On the CPU it is faster than :func:`cholesky_qr` (one LAPACK call instead of about 40 small ops)
    except for very tall factors (docs/speed.md); on GPUs batched QR of small matrices is slow and
    not graph-capturable, hence :func:`cholesky_qr` there (``RETRACTIONS``)."""
    n, r = X.shape[-2:]
    if n < r:
        raise ValueError(f"householder_qr needs n >= r, got {n}×{r}")
    work = X.dtype if X.dtype in _KAPPA_F_MAX else torch.float32
    Q, R = torch.linalg.qr(X.to(work))
    Q = Q * torch.where(R.diagonal(dim1=-2, dim2=-1) < 0, -1.0, 1.0).to(work).unsqueeze(-2)
    ok = torch.isfinite(Q.sum((-2, -1)))
    if fallback is None:
        fallback = _eye(n, r, X.dtype, X.device)
    return torch.where(ok[..., None, None], Q.to(X.dtype), fallback, out=out)


def q_factor(X: torch.Tensor, retraction: str, *, out: torch.Tensor | None = None,
             completion: tuple[torch.Tensor, torch.Tensor] | None = None,
             fallback: torch.Tensor | None = None) -> torch.Tensor:
    """The Q factor of X by ``retraction`` (``cholesky_qr2`` or ``householder``, see
    ``RETRACTIONS``); ``completion`` is for :func:`cholesky_qr` only."""
    if retraction == "householder":
        return householder_qr(X, out=out, fallback=fallback)
    if retraction != "cholesky_qr2":
        raise ValueError(f"retraction must be one of {RETRACTIONS[1:]}, got {retraction!r}")
    return cholesky_qr(X, out=out, completion=completion, fallback=fallback)


def effective_bound(kappa_bar: float) -> float:
    return 1.0 + (kappa_bar - 1.0) * (1.0 - _KAPPA_MARGIN)


def _clamp_bounds(mean: torch.Tensor, kappa_bar: float) -> tuple[torch.Tensor, torch.Tensor]:
    """[mean − e, mean + e], e = mean·(κ − 1)/(κ + 1) with κ = effective_bound(κ̄): max/min = κ."""
    k = effective_bound(kappa_bar)
    e = mean * (k - 1.0) / (k + 1.0)
    return mean - e, mean + e


def _clamp_spectrum(s: torch.Tensor, kappa_bar: float, mean: torch.Tensor | None = None) -> torch.Tensor:
    """Clamp singular values to :func:`_clamp_bounds` around their mean, so max/min ≤ κ̄."""
    lo, hi = _clamp_bounds(s.mean(dim=-1, keepdim=True) if mean is None else mean, kappa_bar)
    return torch.minimum(torch.maximum(s, lo), hi)


def _newton_schulz(X: torch.Tensor, steps: tuple[int, int]) -> torch.Tensor:
    """The orthogonal polar factor of X (…×r×r, nonsingular) by Newton–Schulz iterations (see
    _NS_FAST); for a symmetric X, its matrix sign. Matrix products only."""
    shape = X.shape
    X = X.reshape(-1, *shape[-2:])  # baddbmm: one batch dimension
    X = X / torch.linalg.matrix_norm(X, keepdim=True).clamp_min(torch.finfo(X.dtype).tiny)
    a, b, c = _NS_FAST
    for _ in range(steps[0]):  # X ← aX + X(bA + cA²), A = XᵀX: three batched products
        A = torch.bmm(X.transpose(-1, -2), X)
        X = torch.baddbmm(X, X, torch.baddbmm(A, A, A, beta=b, alpha=c), beta=a)
    for _ in range(steps[1]):  # X ← 1.5X − 0.5 X XᵀX
        X = torch.baddbmm(X, X, torch.bmm(X.transpose(-1, -2), X), beta=1.5, alpha=-0.5)
    return X.reshape(shape)


def _condition_newton_schulz(S64: torch.Tensor, kappa_bar: float, k, c, completion,
                             retraction: str = "cholesky_qr2") -> torch.Tensor:
    """approx_orth without eigh: S = P H (polar, Newton–Schulz), H's eigenvalues clamped around
    their mean with matrix signs, clamp(H) = ((lo + hi) I + |H − lo I| − |H − hi I|) / 2 where
    |B| = B sign(B), and S ← P clamp(H). A certificate (two Cholesky factorisations: every singular
    value of the result within [lo, hi], widened by the 1e-4 margin of κ̄) checks the result; where
    it fails (κ(S) too large for the fixed iteration counts, or S not finite) S ← m·Q_S (κ = 1, m
    the mean singular value), on the constraint set but not close to S."""
    r = S64.shape[-1]
    eye = _eye(r, r, S64.dtype, S64.device)
    P = _newton_schulz(S64, _NS_POLAR_STEPS)
    H = P.transpose(-1, -2) @ S64
    H = 0.5 * (H + H.transpose(-1, -2))
    m = (H.diagonal(dim1=-2, dim2=-1).sum(-1) - k * c) / (r - k)
    lo, hi = _clamp_bounds(m[..., None, None], kappa_bar)
    B = torch.stack([H - lo * eye, H - hi * eye])
    absB = B @ _newton_schulz(B, _NS_SIGN_STEPS)
    out = P @ (0.5 * ((lo + hi) * eye + absB[0] - absB[1]))
    # certified: lo·(1 − t) ≤ σ(out) ≤ hi·(1 + t), (1 + t)/(1 − t) = κ̄/κ (hi/lo = κ), so κ(out) ≤ κ̄
    q = kappa_bar / effective_bound(kappa_bar)
    t = (q - 1.0) / (q + 1.0)
    G = out.transpose(-1, -2) @ out
    ok = torch.isfinite(G.sum((-2, -1)))
    G = torch.where(ok[..., None, None], G, eye)
    ok &= torch.linalg.cholesky_ex(G - (lo * (1.0 - t)) ** 2 * eye)[1] == 0
    ok &= torch.linalg.cholesky_ex((hi * (1.0 + t)) ** 2 * eye - G)[1] == 0
    mean = torch.nan_to_num(m, nan=1.0, posinf=1.0, neginf=1.0).abs()
    Q = q_factor(S64, retraction, completion=completion)
    return torch.where(ok[..., None, None], out, Q * mean[..., None, None])


@torch.no_grad()
def condition_s(S: torch.Tensor, mode: str, kappa_bar: float, *, padding: tuple | None = None,
                completion: tuple[torch.Tensor, torch.Tensor] | None = None,
                conditioner: str = "eigh", retraction: str = "cholesky_qr2") -> torch.Tensor:
    """S (…×r×r) constrained, batched and without synchronisation; the r×r work in float64.

    approx_orth: SᵀS = W diag(s²) Wᵀ (eigh), the singular values clamped around their mean (s')
    and S ← S W diag(s'/s) Wᵀ = P diag(s') Wᵀ, so κ(S) ≤ κ̄. In float64 this is accurate (within
    1e-5 of the SVD route, κ within the 1e-4 margin) for κ(S) up to 1e5 before the step, which
    covers any step that is not a blow-up; where κ(S) > 1e5 (S numerically singular) or S is not
    finite, the result is W diag(s') Wᵀ instead: on the constraint set, but not close to S.
    mean: a = ‖S‖²_F / r and S ← √a · Q_S, the Q factor of S (:func:`cholesky_qr`): κ(S) = 1
    (a non-finite S becomes an orthogonal matrix). unit: S ← Q_S (a = 1): every singular value
    of U S Vᵀ is 1, W on the Stiefel manifold (the paper's orthogonal baselines).

    ``padding`` = (k, c), float64 tensors over the batch: the last k rows and columns of each S
    are c·I padding around the real core (c within the core's singular values, e.g. their rms).
    Both maps are matrix functions of a block-diagonal S, so the core's block of the result is
    the core's own result once the mean of the singular values (approx_orth) or a (mean)
    discounts the padding. ``retraction`` (``RETRACTIONS``, not auto): how Q_S is computed (mean,
    unit, and newton_schulz's fallback); ``completion``: passed to :func:`cholesky_qr`.
    ``conditioner`` (approx_orth, see ``CONDITIONERS``): ``newton_schulz`` computes the same map
    without eigh (:func:`_condition_newton_schulz`: within 1e-6 of eigh's, relative to max |S|, for
    κ(S) up to 300 before the step; beyond about 1e3 the constraint-set fallback m·Q_S).
    """
    wide = torch.float64
    S64 = S.to(wide)
    r = S.shape[-1]
    k, c = padding if padding is not None else (0.0, 0.0)
    if mode == "unit":
        return q_factor(S64, retraction, completion=completion).to(S.dtype)
    if mode == "mean":
        a = (S64.square().sum((-2, -1)) - k * c * c) / (r - k)
        a = torch.nan_to_num(a, nan=1.0, posinf=1.0)  # a non-finite S becomes an orthogonal matrix
        return (q_factor(S64, retraction, completion=completion) * a.sqrt()[..., None, None]).to(S.dtype)
    if conditioner == "newton_schulz":
        return _condition_newton_schulz(S64, kappa_bar, k, c, completion, retraction).to(S.dtype)
    G = S64.transpose(-1, -2) @ S64
    finite = torch.isfinite(G.sum((-2, -1)))
    G = torch.where(finite[..., None, None], G, _eye(r, r, wide, S.device))  # eigh must not see a NaN
    lam, W = torch.linalg.eigh(G)  # ascending
    s = lam.clamp_min(0.0).sqrt()
    mean = None if padding is None else ((s.sum(-1) - k * c) / (r - k)).unsqueeze(-1)
    s_new = _clamp_spectrum(s, kappa_bar, mean)
    ok = finite & (s[..., 0] > _S_RANK_TOL * s[..., -1])
    Wf = W * (s_new / s.clamp_min(torch.finfo(wide).tiny)).unsqueeze(-2)
    left = torch.where(ok[..., None, None], S64 @ Wf, W * s_new.unsqueeze(-2))  # P diag(s'), or W diag(s')
    return (left @ W.transpose(-1, -2)).to(S.dtype)


@torch.no_grad()
def condition_s_exact(S: torch.Tensor, mode: str, kappa_bar: float) -> torch.Tensor:
    """Constrain S with a full SVD (at initialisation and in :func:`orthonormalize_layer_`), in
    float64: LAPACK's float32 SVD (gesdd) can fail to converge on a well-conditioned S whose singular
    values cluster, as a conditioned S's do (a 217×217 core of VGG16 with κ = 1.5 did)."""
    P, s, Qh = torch.linalg.svd(S.to(torch.float64))
    if mode == "unit":
        out = P @ Qh  # the closest orthogonal matrix
    elif mode == "mean":
        a = (s.square().sum(-1, keepdim=True) / s.shape[-1]).sqrt()
        out = (P @ Qh) * a.unsqueeze(-1)  # the closest scaled orthogonal matrix
    else:
        out = (P * _clamp_spectrum(s, kappa_bar).unsqueeze(-2)) @ Qh
    return out.to(S.dtype)
