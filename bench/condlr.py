"""The CondLR optimizer step: momentum SGD that keeps every low-rank layer W = U S Vᵀ on the
constraint set (orthonormal U, V; conditioned S) after every step (REFERENCE.md §2).

One code path for every device and no host synchronisation inside :meth:`ManifoldSGD.step`:
no ``.item()``, ``float(tensor)``, ``bool(tensor)`` or Python branch on a tensor value. Every
guard that keeps the invariants is a ``torch.where`` on values computed for the whole batch. The
one choice by device is the kernel of the QR factorisation (``RETRACTIONS``), and both kernels
run, guarded the same way, in the CPU tests.

* The layers are bucketed once by shape: factors (n×r) of one shape stack, small ones are padded
  into one bucket (:class:`_Bucket`), cores S likewise (:class:`_CoreBucket`); each stage of the
  step is one batched call per bucket (a bucket of one layer is a view, no copy).
* The tangent projection (I − XXᵀ)G needs XᵀG; for W = U S Vᵀ it is read off the core's
  gradient, UᵀG_U = G_S Sᵀ and VᵀG_V = G_Sᵀ S (r×r products), so projecting costs one n×r×r
  product per factor instead of two (``core_gradient=True``, the default; it assumes, as every
  loss of the network's output does, that U and V get their gradients through W alone).
* The retraction is the Q factor (diag(R) ≥ 0). On GPUs, :func:`cholesky_qr`: Cholesky-QR2 (two
  passes) with the n×r work in float32 and the r×r Cholesky factorisations in float64
  (orthonormal to float32 rounding for κ(X) up to about 1e3; an optimizer step from an
  orthonormal factor has κ(X) ≈ 1), a completion for (numerically) rank-deficient input, and a
  certificate of the second pass whose failure keeps the factor from before the step, so that Q
  is orthonormal whatever X is. On the CPU, :func:`householder_qr` (LAPACK's Householder QR, one
  call, orthonormal for every finite X; a non-finite one keeps the factor from before the step):
  up to 3× as fast there for all but very tall factors, the same Q up to rounding (``retraction="auto"``).
* :func:`condition_s` conditions S from a float64 ``eigh`` of SᵀS (r×r), accurate for κ(S) up to
  1e5 before the step; beyond that (or for a non-finite S) a fallback still lands on the
  constraint set. ``conditioner="newton_schulz"`` computes the same map with matrix products
  (Newton–Schulz polar factor and matrix signs) and a Cholesky certificate instead: no eigh, no
  synchronisation on CUDA, about 90 batched r×r products per core bucket (slower than eigh on a
  CPU; meant for GPUs, where eigh runs one matrix at a time).

* ``ManifoldSGD(cuda_graph=True)`` (CUDA only, with a step that never synchronises: approx_orth
  with ``conditioner="newton_schulz"``, or mean/unit) captures the whole step, momentum SGD
  included, in one CUDA graph after a few eager steps and replays it: one launch instead of
  1,600-2,400 Python-dispatched kernels for VGG16. ``_static_step`` is the captured step; run
  eagerly it takes the same step as the default path (tests/test_condlr.py, on the CPU). It has
  not run on a GPU yet: ``benchmarks/gpu_check/run.sh`` times it and checks it against the eager step.

On CUDA, ``torch.linalg.eigh`` checks its LAPACK status on the host (one synchronisation per
call, inside PyTorch): the approx_orth mode pays one per core bucket per step (two with
``step_scale="reference"``), with ``conditioner="newton_schulz"`` none (one with the reference
step scale, whose σ_min/σ_max comes from ``eigvalsh``); the mean mode with the default step scale
and approx_orth with newton_schulz use only matmuls, ``cholesky_ex`` and triangular solves, none of
which synchronises. The float64 work is r×r only (full speed on H100/H200-class GPUs and on
CPUs, slow on consumer GPUs).
"""

from __future__ import annotations

import functools

import torch
from torch import nn

# A layer whose conditioning would be reported as exactly κ̄ could read as κ̄(1 + 1e-7) after
# float32 rounding; clamping to a bound this much tighter keeps every reported κ ≤ κ̄.
_KAPPA_MARGIN = 1e-4

# cholesky_qr treats X as rank-deficient when κ_F(X) = ‖L‖_F‖L⁻¹‖_F (L = chol(XᵀX)), an upper
# bound of κ(X) (at most r·κ(X)), exceeds this, per working precision (the dtype of the n×r
# products): a float32 Gram matrix resolves κ(X) up to about 1e4, and two passes restore float32
# orthogonality from there; float64, up to 1e5. Such an X is factored as X + τ[C; 0] (C random: see
# _completion). A failure the Gram matrix hid is caught by the second pass's certificate.
_KAPPA_F_MAX = {torch.float32: 1e4, torch.float64: 1e5}
# τ of the completion: 1e-2 × the rms column norm of X, then, where X + τC is still too
# ill-conditioned (rare with a random C), 1 × more
_COMPLETION_STEPS = (1e-2, 1.0)
# ... "still too ill-conditioned" read off the spread of the Cholesky pivots (the randomness of C
# leaves no structure that could hide a small singular value from them)
_PIVOT_SPREAD = 1e3
# the second pass certifies its result when its Gram matrix G₂ = Q₁ᵀQ₁ has ‖G₂ − I‖_F ≤ this: every
# eigenvalue of G₂ in [0.5, 1.5], so the second Cholesky-QR is accurate to the working precision
_CERTIFICATE = 0.5
# _right_solve multiplies by the inverse triangle for factors at least this many times taller than wide
_TALL = 6
# factor buckets of rank R ≥ this are padded to a multiple of ManifoldSGD.bucket_align columns
_ALIGN_MIN = 32
# retraction="auto" on the CPU: Householder QR for factor buckets up to this many times taller than
# wide, Cholesky-QR2 beyond. Timed inside VGG16 steps at compression 0.5 (2-core CPU, 1 thread, both
# optimizers alternating, ms Householder vs Cholesky-QR2): 9×519×224 50 vs 116, 1×2311×224 (n = 10r)
# 23 vs 31, 2×128×128 2.3 vs 6.1, but 4×4615×224 (n = 21r) 233 vs 200 and 1×4613×224 59 vs 51.
# Alone (benchmarks/qr_kernels.py) the crossover lies further out, at n ≈ 40r. A bucket of at most
# _HOUSEHOLDER_SMALL n·r² work (all its factors) is bound by the op count, not the flops (Cholesky-QR2
# runs about 40 ops, Householder about 8), so it takes Householder QR whatever its shape: LeNet5's
# padded small-factor bucket 6×514×20 at compression 0.8 made the whole step 0.94× the time.
_HOUSEHOLDER_ASPECT = 16
_HOUSEHOLDER_SMALL = 4e6
# condition_s: below this σ_min/σ_max (κ(S) > 1e5) the eigh route is not accurate enough
_S_RANK_TOL = 1e-5
# an r×r eigh costs about as much time as this many r×r×r matmuls (for bucketing cores)
_EIGH_WEIGHT = 10.0

# conditioner="newton_schulz": Newton–Schulz iterations X ← X p(XᵀX) from X/‖X‖_F; first _NS_FAST's
# quintic (slope 3.4 at 0: small singular values grow fast; it maps (0, 1] into about [0.7, 1.12]),
# then the cubic (3 − x²)/2, which converges from there quadratically. Steps (fast, cubic): the polar
# factor of S (its singular values over ‖S‖_F are ≥ 1/(√r·κ(S))), the sign of H − lo·I and H − hi·I
# (14 fast steps grow 3e-8 of the Frobenius norm to order 1; an eigenvalue b that has not converged
# changes |B| by at most |b|, so the result moves by less than 1e-7 of S).
_NS_FAST = (3.4445, -4.7750, 2.0315)
_NS_POLAR_STEPS = (6, 5)
_NS_SIGN_STEPS = (14, 5)

#: How condition_s finds the spectrum of S in approx_orth: ``eigh`` (a float64 eigendecomposition
#: of SᵀS; the default, fastest on CPUs) or ``newton_schulz`` (matrix products and two Cholesky
#: factorisations only, batched and graph-capturable on GPUs, where eigh of r×r matrices runs one
#: matrix at a time and synchronises with the host).
CONDITIONERS = ("eigh", "newton_schulz")

#: How the step computes Q factors (the retraction of U and V; S in the mean and unit modes):
#: ``cholesky_qr2`` (:func:`cholesky_qr`: matrix products, Cholesky factorisations and triangular
#: solves, batched, with a completion for rank-deficient input; graph-capturable, for GPUs) or
#: ``householder`` (:func:`householder_qr`: LAPACK's Householder QR, up to 3× as fast on the CPU).
#: ``auto`` (ManifoldSGD's default): on the CPU householder for the cores and for factor buckets up
#: to ``_HOUSEHOLDER_ASPECT`` times taller than wide or small, cholesky_qr2 for large tall ones;
#: elsewhere cholesky_qr2.
RETRACTIONS = ("auto", "cholesky_qr2", "householder")

#: How CondLR scales the tangent direction of U and V.
#: ``inv_a``: by 1/a, a = ‖S‖²_F / r, in both modes, so a step moves U S Vᵀ about as much as a
#: dense SGD step whatever the scale of S (the default: the trainer's lr then means the same for
#: every method). ``reference``: as the paper's code, (σ_min(S)/σ_max(S))² in approx_orth (a
#: factor in [1/κ̄², 1], independent of the scale of S) and the constant 1/a of the initial S in mean.
STEP_SCALES = ("inv_a", "reference")
#: What the step keeps S to: approx_orth κ(S) ≤ κ̄; mean S = √a·(orthogonal); unit S orthogonal.
MODES = ("approx_orth", "mean", "unit")


# --------------------------------------------------------------------------------------------
# batched, synchronisation-free linear algebra
# --------------------------------------------------------------------------------------------
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
    multiplied by L⁻ᵀ (the r×r inverse in float64): a matrix product runs 2-3× as fast as a
    triangular solve with a few columns on the CPU; otherwise the inverse costs more than it saves.
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
    Two float32 passes cost less than one in float64 for large n (its Gram matrix and solve take
    2.7 × and 2.3 × as long as float32's on the 2-core CPU at n×r = 800×155).

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

    On the CPU it runs up to 3× as fast as :func:`cholesky_qr` (one LAPACK call instead of about
    40 small ops; 2-core CPU, 1 thread, ``benchmarks/qr_kernels.py``: 128×128 ×2 2.1 vs 6.5 ms,
    519×224 ×9 31 vs 94 ms), except for very tall factors (4614×88 ×4 42 vs 38 ms); on GPUs batched
    QR of small matrices is slow and not graph-capturable, hence :func:`cholesky_qr` there (``RETRACTIONS``)."""
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


# --------------------------------------------------------------------------------------------
# the optimizer
# --------------------------------------------------------------------------------------------
def _aligned(r: int, align: int) -> int:
    return r if r < _ALIGN_MIN else -(-r // align) * align


def _stack(ts: list[torch.Tensor]) -> torch.Tensor:
    """One batched tensor: a view of the only tensor (in-place ops reach it), else a stacked copy."""
    return ts[0].unsqueeze(0) if len(ts) == 1 else torch.stack(ts)


class _Bucket:
    """Factors projected and retracted together: padded to one (N, R) shape and stacked.

    Factor b (n×r) sits in the block [:n, :r] of its slot; the columns r..R−1 hold unit vectors
    in rows n, n+1, … (below the factor), so the padded matrix is [[X, 0], [0, I], [0, 0]]. Its
    Q factor is [[Q_X, 0], [0, I], [0, 0]], its tangent projection is the factor's padded with
    zeros, and the completion :func:`cholesky_qr` adds to a rank-deficient slot stays in the
    factor's block (C masked to it), so the block [:n, :r] of each result is the Q factor of the
    factor alone. R is the largest rank, rounded up to a multiple of ``align`` from rank 32 on
    (faster products, see ``ManifoldSGD.bucket_align``). The packed tensors are allocated once; a
    bucket of one factor that needs no padding works on views of the parameter and its gradient
    (no copy).

    Each step: :meth:`snapshot_` keeps the factors as they are before the SGD step (orthonormal:
    the retraction's fallback), :meth:`project_` projects and scales the gradients,
    :meth:`retract_` retracts the stepped factors.
    """

    def __init__(self, params: list[torch.Tensor], align: int = 1):
        self.shapes = [tuple(p.shape) for p in params]
        self.ranks = [r for _, r in self.shapes]
        self.R = _aligned(max(self.ranks), align)
        self.N = max(n + self.R - r for n, r in self.shapes)
        self.exact = all(shape == (self.N, self.R) for shape in self.shapes)  # no padding
        self.single = len(params) == 1 and self.exact  # works on views of the parameter
        like = params[0]
        self.dtype, self.device = like.dtype, like.device
        if self.single:
            self.prev = torch.empty_like(like).unsqueeze(0)
            return
        self.X = torch.zeros(len(params), self.N, self.R, dtype=like.dtype, device=like.device)
        for b, (n, r) in enumerate(self.shapes):
            self.X[b, n:n + self.R - r, r:].copy_(torch.eye(self.R - r))
        self.Y = self.X.clone()  # the stepped factors, same padding
        self.G = torch.zeros_like(self.X)
        self.Q = torch.empty_like(self.X)
        # r×r operands of the projection's K (see project_), zero outside each slot's block
        self.KA = torch.zeros(len(params), self.R, self.R, dtype=like.dtype, device=like.device)
        self.KB = torch.zeros_like(self.KA)
        self.completion = _masked_completion([(min(n, self.R), r) for n, r in self.shapes], self.R, self.device)
        self.X_blocks, self.Y_blocks, self.G_blocks, self.Q_blocks = (
            self._blocks(t) for t in (self.X, self.Y, self.G, self.Q))
        self.KA_blocks, self.KB_blocks = ([P[b, :r, :r] for b, r in enumerate(self.ranks)] for P in (self.KA, self.KB))

    def _blocks(self, P: torch.Tensor) -> list[torch.Tensor]:
        return [P[b, :n, :r] for b, (n, r) in enumerate(self.shapes)]

    def snapshot_(self, params: list[torch.Tensor]) -> None:
        """Keep the factors as they are now (before the SGD step)."""
        if self.single:
            self.prev[0].copy_(params[0])
        else:
            torch._foreach_copy_(self.X_blocks, params)

    def project_(self, params: list[torch.Tensor], grads: list[torch.Tensor], scale: torch.Tensor,
                 core: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None) -> None:
        """grad ← (grad − X K) · scale for every factor X (``scale``: one per factor), after
        :meth:`snapshot_`. K = Xᵀ grad, or, given ``core`` = (As, Bs) with K = A Bᵀ (r×r, one
        pair per factor), that product: U S Vᵀ's core gradient G_S gives UᵀG_U = G_S Sᵀ and
        VᵀG_V = G_Sᵀ S without an n×r×r product."""
        if self.single:
            X, G = self.prev, grads[0].unsqueeze(0)
        else:
            torch._foreach_copy_(self.G_blocks, grads)
            X, G = self.X, self.G
        if core is None:
            K = X.transpose(-1, -2) @ G
        elif self.single:
            K = (core[0][0] @ core[1][0].transpose(-1, -2)).unsqueeze(0)
        else:
            torch._foreach_copy_(self.KA_blocks, core[0])
            torch._foreach_copy_(self.KB_blocks, core[1])
            K = self.KA @ self.KB.transpose(-1, -2)
        G.sub_(X @ K).mul_(scale.view(-1, 1, 1))
        if not self.single:
            torch._foreach_copy_(grads, self.G_blocks)

    def retract_(self, params: list[torch.Tensor], retraction: str = "cholesky_qr2") -> None:
        """Every factor ← its Q factor (:func:`q_factor`); one the retraction cannot certify (see
        :func:`cholesky_qr`, :func:`householder_qr`) keeps its value from :meth:`snapshot_`."""
        if self.single:
            X = params[0].unsqueeze(0)
            q_factor(X, retraction, out=X, fallback=self.prev)
            return
        torch._foreach_copy_(self.Y_blocks, params)
        q_factor(self.Y, retraction, out=self.Q, completion=self.completion, fallback=self.X)
        torch._foreach_copy_(params, self.Q_blocks)


class _CoreBucket:
    """Cores S (r×r) conditioned together: padded to R×R with c·I (c = the rms singular value of
    the core, so the padding changes neither its extreme singular values nor, once discounted,
    their mean) and stacked; see :func:`condition_s`. Cores of one size need no padding."""

    def __init__(self, sizes: list[int], like: torch.Tensor):
        self.sizes = sizes
        self.R = max(sizes)
        self.exact = all(r == self.R for r in sizes)
        if not self.exact:
            dev = like.device
            self.k = torch.tensor([float(self.R - r) for r in sizes], dtype=torch.float64, device=dev)
            self.inv_sqrt_r = torch.tensor([r ** -0.5 for r in sizes], dtype=like.dtype, device=dev)
            self.mask = (torch.arange(self.R, device=dev) >= torch.tensor(sizes, device=dev)[:, None]).to(like.dtype)
            self.completion = _masked_completion([(r, r) for r in sizes], self.R, dev)

    def blocks(self, P: torch.Tensor) -> list[torch.Tensor]:
        return [P[b, :r, :r] for b, r in enumerate(self.sizes)]

    def condition_(self, cores: list[torch.Tensor], mode: str, kappa_bar: float, conditioner: str = "eigh",
                   retraction: str = "cholesky_qr2") -> None:
        if self.exact:
            out = condition_s(_stack(cores), mode, kappa_bar, conditioner=conditioner, retraction=retraction)
            if len(cores) == 1:
                cores[0].copy_(out[0])
            else:
                torch._foreach_copy_(cores, list(out.unbind(0)))
            return
        P = torch.zeros(len(cores), self.R, self.R, dtype=cores[0].dtype, device=cores[0].device)
        torch._foreach_copy_(self.blocks(P), cores)
        c = torch.stack(torch._foreach_norm(cores)) * self.inv_sqrt_r
        P.diagonal(dim1=-2, dim2=-1).add_(self.mask * c[:, None])
        out = condition_s(P, mode, kappa_bar, padding=(self.k, c.to(torch.float64)), completion=self.completion,
                          conditioner=conditioner, retraction=retraction)
        torch._foreach_copy_(cores, self.blocks(out))


def _buckets(shapes: list[tuple[int, int]], slack: float, weight: float = 1.0) -> list[list[int]]:
    """Indices of ``shapes`` (n, r) grouped into buckets, in order of r: one joins the last bucket
    when padding the bucket to one shape adds at most ``slack`` to its ``weight``·n·r² work (equal
    shapes always join). A factor (n×r) is padded to (N, R), N = max(n + R − r); a core to R×R."""
    order = sorted(range(len(shapes)), key=lambda i: (shapes[i][1], shapes[i][0]))
    square = all(n == r for n, r in shapes)
    buckets: list[list[int]] = []
    for i in order:
        if buckets:
            cand = buckets[-1] + [i]
            R = max(shapes[j][1] for j in cand)
            N = R if square else max(shapes[j][0] + R - shapes[j][1] for j in cand)
            own = sum(shapes[j][0] * shapes[j][1] ** 2 for j in cand)
            if weight * (len(cand) * N * R * R - own) <= slack:
                buckets[-1] = cand
                continue
        buckets.append([i])
    return buckets


class ManifoldSGD(torch.optim.SGD):
    """Momentum SGD for CondLR: U, V of every listed layer stay orthonormal and S conditioned.

    One step (REFERENCE.md §2): the gradients of U and V are projected onto the tangent space,
    d ← (I − UUᵀ)d, and scaled (``step_scale``, see ``STEP_SCALES``: by default 1/a with
    a = ‖S‖²_F / r, so a step moves the weight U S Vᵀ about as much as a dense SGD step would,
    whatever the scale of S); then plain momentum SGD (S and every other parameter get weight
    decay, U and V none); then U and V are retracted with :func:`q_factor` and S is
    conditioned with :func:`condition_s`. All of it runs in every step, so the invariants
    (‖UᵀU − I‖ ≈ 1e-6, κ(S) ≤ κ̄) hold after every step, whatever the step did.

    The work is batched: the factors are packed into a few buckets (:class:`_Bucket`; equal
    shapes stack, small ones are padded together), the cores S likewise, and each stage is one
    call per bucket. Nothing in :meth:`step` reads a tensor value on the host.

    ``core_gradient``: take XᵀG from the core's gradient (UᵀG_U = G_S Sᵀ, VᵀG_V = G_Sᵀ S), exact
    when U and V get their gradients through W = U S Vᵀ alone (any loss of the network's output;
    not a penalty on U or V themselves: pass False for that). A factor whose retraction cannot
    be certified (a non-finite or numerically singular step, see :func:`cholesky_qr` and
    :func:`householder_qr`) keeps its value from before the step.

    ``conditioner`` (approx_orth; see ``CONDITIONERS``): ``eigh`` (default) or ``newton_schulz``
    (the same map from matrix products, for GPUs; ``benchmarks/condlr_step.py --conditioner both``
    times the two).

    ``retraction`` (see ``RETRACTIONS``): ``auto`` (default) takes Householder QR on the CPU (all
    but large, very tall factor buckets) and Cholesky-QR2 elsewhere; :meth:`bucket_retraction` says which
    kernel a bucket uses.

    ``cuda_graph`` (CUDA; needs a step without host synchronisation, see above): after
    ``graph_warmup`` eager steps, capture the step in a CUDA graph and replay it every step (the
    gradients are copied into static buffers, the lr into 0-dim tensors). A step that differs from
    the captured one (other parameters with gradients, new momentum buffers after
    ``load_state_dict``, other momentum or weight decay) runs eagerly and the graph is captured anew; a
    capture that fails warns and leaves the optimizer eager. :meth:`with_options` makes the same
    optimizer with other options (``bench perf --cuda-graph``).

    The momentum buffer is not re-projected onto the new tangent space: its normal component
    there is O(lr), so the within-span rotation it adds is O(lr²) and the retraction absorbs it.

    The trainer writes ``lr`` into both parameter groups; U and V are in the one marked
    ``stiefel``.
    """

    #: the n·r² work worth one more batched call: about 0.2 ms of one CPU core, or of launches on a GPU
    bucket_slack = 4e6
    #: factor buckets of rank 32 or more are padded to a multiple of this many columns: BLAS products
    #: with an unaligned row stride run slower (2-core CPU: X @ K for X 4608×217 17.9 ms, 4608×224 10.5 ms)
    bucket_align = 8

    def __init__(self, model: nn.Module, layers: list, *, lr: float, momentum: float, weight_decay: float,
                 nesterov: bool = False, mode: str = "approx_orth", kappa_bar: float = 1.5,
                 step_scale: str = "inv_a", core_gradient: bool = True, conditioner: str = "eigh",
                 retraction: str = "auto", cuda_graph: bool = False):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if conditioner not in CONDITIONERS:
            raise ValueError(f"conditioner must be one of {CONDITIONERS}, got {conditioner!r}")
        if step_scale not in STEP_SCALES:
            raise ValueError(f"step_scale must be one of {STEP_SCALES}, got {step_scale!r}")
        if retraction not in RETRACTIONS:
            raise ValueError(f"retraction must be one of {RETRACTIONS}, got {retraction!r}")
        self.layers = list(layers)
        if any(l.S is None for l in self.layers):
            raise ValueError("CondLR layers need an S (with_s=True)")
        self.mode, self.kappa_bar, self.step_scale = mode, kappa_bar, step_scale
        self.core_gradient, self.conditioner = core_gradient, conditioner
        stiefel = [p for l in self.layers for p in (l.U, l.V)]
        ids = {id(p) for p in stiefel}
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
        groups = [{"params": rest}, {"params": stiefel, "weight_decay": 0.0, "stiefel": True}]
        super().__init__(groups, lr=lr, momentum=momentum, weight_decay=weight_decay,
                         nesterov=nesterov and momentum > 0, foreach=True)
        devices = {p.device.type for g in groups for p in g["params"]}
        self._on_cpu = devices <= {"cpu"}  # worker threads (_each) and auto retraction: CPU steps only
        self.retraction = retraction
        if cuda_graph:
            if retraction == "householder":
                raise ValueError("cuda_graph=True needs retraction='cholesky_qr2' (or 'auto'): batched Householder "
                                 "QR is not graph-capturable on CUDA")
            if mode == "approx_orth" and (conditioner == "eigh" or step_scale == "reference"):
                raise ValueError("cuda_graph=True needs a step without host synchronisation: approx_orth with "
                                 "conditioner='newton_schulz' and step_scale='inv_a' (eigh and eigvalsh "
                                 "synchronise on CUDA), or mode 'mean' / 'unit'")
            if devices != {"cuda"}:
                raise ValueError(f"cuda_graph=True needs every parameter on a CUDA device, got {sorted(devices)}")
        self.cuda_graph = cuda_graph
        self._model = model
        self._options = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov, mode=mode,
                             kappa_bar=kappa_bar, step_scale=step_scale, core_gradient=core_gradient,
                             conditioner=conditioner, retraction=retraction, cuda_graph=cuda_graph)
        self._pool = None  # (size, ThreadPoolExecutor) of _each, made on first use
        self._graph = None  # torch.cuda.CUDAGraph of _static_step once captured (see _graph_step)
        self._graph_key = None
        self._steps_taken = 0
        # buckets fixed for the optimizer's life: factors (layer index, "U"/"V") and cores (layer
        # index) of one dtype and device, by shape
        kinds: dict[tuple, list[tuple[int, str]]] = {}
        core_kinds: dict[tuple, list[int]] = {}
        for i, l in enumerate(self.layers):
            for name in ("U", "V"):
                X = getattr(l, name)
                kinds.setdefault((X.dtype, X.device), []).append((i, name))
            core_kinds.setdefault((l.S.dtype, l.S.device), []).append(i)
        self._buckets: list[tuple[_Bucket, list[tuple[int, str]]]] = []
        for members in kinds.values():
            shapes = [tuple(getattr(self.layers[i], w).shape) for i, w in members]
            for idx in _buckets(shapes, self.bucket_slack):
                group = [members[j] for j in idx]
                self._buckets.append((_Bucket([getattr(self.layers[i], w) for i, w in group], self.bucket_align), group))
        # retraction="auto": Householder QR on the CPU for the cores and for every factor bucket but
        # the large, very tall ones (N > _HOUSEHOLDER_ASPECT·R); Cholesky-QR2 elsewhere
        self._auto_core_retraction = "householder" if self._on_cpu else "cholesky_qr2"
        self._auto_retraction = [
            self._auto_core_retraction if (b.N <= _HOUSEHOLDER_ASPECT * b.R
                                           or len(b.shapes) * b.N * b.R ** 2 <= _HOUSEHOLDER_SMALL)
            else "cholesky_qr2" for b, _ in self._buckets]
        self._core_buckets: list[tuple[_CoreBucket, list[int]]] = []
        for members in core_kinds.values():
            sizes = [self.layers[i].rank for i in members]
            for idx in _buckets([(r, r) for r in sizes], self.bucket_slack, weight=_EIGH_WEIGHT):
                self._core_buckets.append((_CoreBucket([sizes[j] for j in idx], self.layers[members[idx[0]]].S),
                                           [members[j] for j in idx]))
        # retractions and conditionings by estimated work, largest first (for _each): about five
        # n×r×r products per factor; an eigh (or ~90 products with Newton–Schulz) per core
        core_weight = _EIGH_WEIGHT if conditioner == "eigh" else 90.0
        work = ([5.0 * len(b.shapes) * b.N * b.R ** 2 for b, _ in self._buckets]
                + [core_weight * len(b.sizes) * b.R ** 3 for b, _ in self._core_buckets])
        self._work_order = sorted(range(len(work)), key=lambda i: -work[i])
        self._work = sum(work)
        # the constants that cholesky_qr and condition_s cache, made now: no step copies them to the device
        for bucket, _ in self._buckets:
            _eye(bucket.R, bucket.R, torch.float64, bucket.device), _completion(bucket.R, bucket.device)
        for bucket, members in self._core_buckets:
            dev = self.layers[members[0]].S.device
            _eye(bucket.R, bucket.R, torch.float64, dev), _completion(bucket.R, dev)
        # the reference scale of approx_orth: the eigenvalues of SᵀS, cores grouped by size
        self._core_groups: dict[int, list[int]] = {}
        for i, l in enumerate(self.layers):
            self._core_groups.setdefault(l.rank, []).append(i)
        self._ranks = [float(l.rank) for l in self.layers]
        # reference scaling in mean mode: the constant 1/a of the layer at the start of training
        with torch.no_grad():
            self._inv_a0 = [l.rank / l.S.detach().square().sum() for l in self.layers]

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.cuda_graph:
            self._graph_step()
        else:
            self._step()
        self._steps_taken += 1
        return loss

    # -- the step captured in a CUDA graph ----------------------------------------------------
    # Every kernel of the step is launched by one graph replay instead of one Python call each
    # (about 1,600-2,400 calls for VGG16). What a replay reads must sit at fixed addresses: the
    # gradients are copied into static buffers (the trainer's zero_grad(set_to_none=True) makes new
    # ones every step), each group's lr is a 0-dim device tensor (the schedule changes it), and
    # momentum SGD is the foreach update of torch.optim.SGD written with that tensor lr
    # (:meth:`_static_sgd`). The rest of the step is :meth:`_step` itself, unchanged.

    #: eager steps before the capture (the momentum buffers and cached constants exist by then)
    graph_warmup = 3

    def _graph_params(self) -> list[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"] if p.grad is not None]

    def _graph_signature(self):
        """What a captured graph bakes in: the parameters stepped, their momentum buffers and the
        groups' hyper-parameters other than lr. A step whose signature differs runs eagerly and the
        graph is captured anew."""
        hp = tuple((g["momentum"], g["dampening"], g["weight_decay"], g["nesterov"], g["maximize"])
                   for g in self.param_groups)
        params = self._graph_params()
        bufs = [self.state.get(p, {}).get("momentum_buffer") for p in params]
        # compared by identity: the key holds the tensors themselves, so no id can be reused while it lives
        return tuple(params), tuple(bufs), hp

    @staticmethod
    def _same_signature(a, b) -> bool:
        return (a is not None and b is not None and a[2] == b[2] and len(a[0]) == len(b[0])
                and all(x is y for x, y in zip(a[0] + a[1], b[0] + b[1])))

    def _load_static_inputs(self) -> None:
        """Gradients into the static buffers (which become the parameters' .grad), lr into its tensors."""
        params = self._graph_params()
        grads = [p.grad for p in params]
        torch._foreach_copy_(self._static_grads, grads)
        for p, g in zip(params, self._static_grads):
            p.grad = g
        for t, group in zip(self._static_lr, self.param_groups):
            t.fill_(group["lr"])

    def _prepare_static(self) -> bool:
        """Allocate the static gradients and lr tensors for the parameters that have a gradient now;
        False where the step cannot be made static yet (a momentum buffer still missing)."""
        params = self._graph_params()
        if not params or any(g["maximize"] for g in self.param_groups):
            return False
        if any(g["momentum"] and self.state.get(p, {}).get("momentum_buffer") is None
               for g in self.param_groups for p in g["params"] if p.grad is not None):
            return False
        self._static_grads = [torch.empty_like(p.grad) for p in params]
        self._static_lr = [torch.zeros((), dtype=torch.float32, device=params[0].device) for _ in self.param_groups]
        self._load_static_inputs()
        return True

    def _static_sgd(self) -> None:
        """torch.optim.SGD's foreach step (weight decay, momentum, dampening, Nesterov) with the lr
        read from the 0-dim tensors of :meth:`_prepare_static`: nothing in it depends on a host value
        that changes between steps."""
        for group, lr in zip(self.param_groups, self._static_lr):
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if group["weight_decay"]:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            if group["momentum"]:
                bufs = [self.state[p]["momentum_buffer"] for p in params]
                torch._foreach_mul_(bufs, group["momentum"])
                torch._foreach_add_(bufs, grads, alpha=1 - group["dampening"])
                grads = torch._foreach_add(grads, bufs, alpha=group["momentum"]) if group["nesterov"] else bufs
            torch._foreach_sub_(params, torch._foreach_mul(grads, lr.to(params[0].dtype)))

    def _static_step(self) -> None:
        """The step as the graph runs it: :meth:`_step` with :meth:`_static_sgd` (run eagerly, it
        takes the same step as :meth:`_step`; tests compare the two on the CPU)."""
        self._step(sgd=self._static_sgd)

    def _graph_step(self) -> None:
        key = self._graph_signature()
        if self._graph is not None and self._same_signature(key, self._graph_key):
            self._load_static_inputs()
            self._graph.replay()
            return
        self._graph = self._graph_key = None
        if self._steps_taken < self.graph_warmup or not self._prepare_static():
            self._step()
            return
        self._capture(key)

    def _capture(self, key) -> None:
        """Take this step on a side stream (the warm-up the capture needs), then capture the same
        step into a graph without running it. A capture that fails leaves the step taken and the
        optimizer eager from then on, with a warning."""
        import warnings

        device = self._static_grads[0].device
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            self._static_step()
        torch.cuda.current_stream(device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=stream):
                self._static_step()
        except Exception as exc:  # noqa: BLE001 - any capture failure: keep training eagerly
            torch.cuda.synchronize(device)
            self.cuda_graph = False
            warnings.warn(f"ManifoldSGD: capturing the step in a CUDA graph failed ({type(exc).__name__}: {exc}); "
                          "the step runs eagerly from now on", RuntimeWarning, stacklevel=3)
            return
        self._graph, self._graph_key = graph, key

    def with_options(self, **changes) -> "ManifoldSGD":
        """A new optimizer (no state) on the same model and layers with the same settings but
        ``changes``, e.g. ``opt.with_options(conditioner="newton_schulz", cuda_graph=True)``."""
        new = type(self)(self._model, self.layers, **{**self._options, **changes})
        for g, old in zip(new.param_groups, self.param_groups):
            g.update({k: v for k, v in old.items() if k not in g or k in ("lr", "lr_scale")})
        return new

    @property
    def graph_captured(self) -> bool:
        """Whether steps now replay a captured CUDA graph."""
        return self._graph is not None

    def load_state_dict(self, state_dict) -> None:
        super().load_state_dict(state_dict)
        self._graph = self._graph_key = None  # new momentum buffers: capture again

    def _direction_scales(self) -> list[torch.Tensor]:
        """Per layer, the 0-dim factor applied to the projected U, V gradients (``STEP_SCALES``)."""
        if not self.layers:
            return []
        if self.step_scale == "inv_a":  # r / ‖S‖²_F
            sq = torch._foreach_norm([l.S for l in self.layers])
            torch._foreach_mul_(sq, sq)
            torch._foreach_reciprocal_(sq)
            torch._foreach_mul_(sq, self._ranks)
            return sq
        if self.mode in ("mean", "unit"):
            return self._inv_a0
        out: list[torch.Tensor] = [None] * len(self.layers)  # type: ignore[list-item]
        # reference, approx_orth: (σ_min(S)/σ_max(S))² = λ_min/λ_max of SᵀS
        for members in self._core_groups.values():
            S64 = _stack([self.layers[i].S for i in members]).to(torch.float64)
            lam = torch.linalg.eigvalsh(S64.transpose(-1, -2) @ S64)
            scale = (lam[..., 0] / lam[..., -1]).to(self.layers[members[0]].S.dtype)
            for k, i in enumerate(members):
                out[i] = scale[k]
        return out

    def _core_operands(self, members: list[tuple[int, str]]):
        """(As, Bs) with K = A Bᵀ = Xᵀ grad_X for each factor X of ``members`` (see
        :meth:`_Bucket.project_`), or None where a core has no gradient or this is switched off."""
        if not self.core_gradient:
            return None
        As, Bs = [], []
        for i, w in members:
            S = self.layers[i].S
            if S.grad is None:
                return None
            As.append(S.grad if w == "U" else S.grad.transpose(-1, -2))
            Bs.append(S if w == "U" else S.transpose(-1, -2))
        return As, Bs

    def _project(self, bucket: _Bucket, members: list[tuple[int, str]], scales: list[torch.Tensor]) -> None:
        """Keep the bucket's factors X; g ← (g − X Xᵀ g) · scale."""
        params = [getattr(self.layers[i], w) for i, w in members]
        bucket.snapshot_(params)
        if any(p.grad is None for p in params):  # a factor without a gradient: project the others
            for (i, _), X in zip(members, params):
                if X.grad is not None:
                    X.grad.sub_(X @ (X.transpose(-1, -2) @ X.grad)).mul_(scales[i])
            return
        bucket.project_(params, [p.grad for p in params], _stack([scales[i] for i, _ in members]),
                        core=self._core_operands(members))

    def _step(self, sgd=None) -> None:
        layers = self.layers
        scales = self._direction_scales()
        self._each([functools.partial(self._project, b, m, scales) for b, m in self._buckets])
        if sgd is None:
            super().step()
        else:
            sgd()
        # the largest first, so that the worker threads finish together
        self._each([functools.partial(b.retract_, [getattr(layers[i], w) for i, w in m], self.bucket_retraction(k))
                    for k, (b, m) in enumerate(self._buckets)]
                   + [functools.partial(b.condition_, [layers[i].S for i in m], self.mode, self.kappa_bar,
                                        self.conditioner, self.bucket_retraction(None)) for b, m in self._core_buckets],
                   order=self._work_order)

    def bucket_retraction(self, k: int | None) -> str:
        """The QR kernel of factor bucket ``k`` (None: the cores), ``retraction`` resolved."""
        if self.retraction != "auto":
            return self.retraction
        return self._auto_core_retraction if k is None else self._auto_retraction[k]

    # -- CPU: independent buckets on worker threads ---------------------------------------------
    #: on a CPU with torch set to T ≥ 2 threads, run the buckets' projections, retractions and
    #: conditionings (independent of each other) on T worker threads, each op on one thread, instead
    #: of one after another with T threads per op, when the step's estimated work is at least
    #: ``cpu_workers_min_work`` (see _work_order). Large ops (eigh, big products) then overlap; small
    #: ones contend for the GIL, so a step of mostly small ops runs slower on workers (2-core CPU,
    #: 2 threads, benchmarks/condlr_step.py --workers both: VGG16 0.82x / 0.80x the time at
    #: compression 0.5 / 0.8, LeNet5 1.03x / 1.16x). False: always one after another.
    cpu_workers = True
    cpu_workers_min_work = 5e8

    def _each(self, tasks: list, order: list[int] | None = None) -> None:
        """Run the callables (independent: disjoint tensors), on worker threads where that pays,
        submitted in ``order`` (indices into ``tasks``)."""
        n = torch.get_num_threads()
        if not (self.cpu_workers and n >= 2 and len(tasks) >= 2 and self._on_cpu
                and self._work >= self.cpu_workers_min_work):
            for task in tasks:
                task()
            return
        if order is not None:
            tasks = [tasks[i] for i in order]
        if self._pool is None or self._pool[0] != n:  # first use, or the thread count changed
            from concurrent.futures import ThreadPoolExecutor

            if self._pool is not None:
                self._pool[1].shutdown(wait=False)
            self._pool = (n, ThreadPoolExecutor(max_workers=n, thread_name_prefix="condlr",
                                                initializer=torch.set_num_threads, initargs=(1,)))
        pool = self._pool[1]

        def run(task):
            with torch.no_grad():  # grad mode is per thread
                task()

        torch.set_num_threads(1)  # the workers' BLAS: one thread each (the MKL setting is process-wide)
        try:
            for f in [pool.submit(run, t) for t in tasks]:
                f.result()
        finally:
            torch.set_num_threads(n)


@torch.no_grad()
def orthonormalize_layer_(layer, mode: str, kappa_bar: float) -> None:
    """Put a layer exactly on the constraint set (orthonormal U, V; conditioned S) with full QR/SVD."""
    for X in (layer.U, layer.V):
        Q, R = torch.linalg.qr(X)
        d = torch.sign(torch.diagonal(R))
        X.copy_(Q * d)
        # keep U S Vᵀ unchanged up to the conditioning: fold R into S
        R = R * d.unsqueeze(1)
        layer.S.copy_(R @ layer.S if X is layer.U else layer.S @ R.t())
    layer.S.copy_(condition_s_exact(layer.S, mode, kappa_bar))
    layer.orthonormal = True
