"""The buckets of the CondLR step: the layers' factors U, V (n×r) and cores S (r×r) packed, once
for the optimizer's life, into a few stacked tensors, so that each stage of the step is one
batched call per bucket. Equal shapes stack; small ones are padded to a common shape where the
padding costs less than a call (``bucketing``); a bucket of one factor that needs no padding
works on views of the parameter (no copy).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .linalg import _completion, _eye, _masked_completion, condition_s, q_factor

# factor buckets of rank R ≥ this are padded to a multiple of ManifoldSGD.bucket_align columns
_ALIGN_MIN = 32
# retraction="auto" on the CPU takes Householder QR for factor buckets up to this many times taller
# than wide (beyond it Cholesky-QR2's products win, docs/speed.md) ...
_HOUSEHOLDER_ASPECT = 16
# ... and for buckets of at most this much n·r² work whatever their shape: bound by the op count
# (Cholesky-QR2 runs about 40 ops, Householder about 8), not by the flops
_HOUSEHOLDER_SMALL = 4e6
# estimated cost of conditioning one r×r core, in r×r×r products: an eigh, or the ~90 batched
# products of conditioner="newton_schulz" (for bucketing cores and ordering the work)
_EIGH_WEIGHT = 10.0
_NEWTON_SCHULZ_WEIGHT = 90.0
# estimated cost of projecting and retracting one n×r factor, in n×r×r products
_FACTOR_WEIGHT = 5.0


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


def bucketing(shapes: list[tuple[int, int]], slack: float, weight: float = 1.0) -> list[list[int]]:
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



def auto_retraction(bucket: _Bucket | None, on_cpu: bool) -> str:
    """The QR kernel of ``retraction="auto"`` for a factor bucket (None: the cores): on the CPU
    Householder QR for the cores and for every factor bucket but the large, very tall ones;
    Cholesky-QR2 for those and on other devices."""
    if not on_cpu:
        return "cholesky_qr2"
    if bucket is None:
        return "householder"
    tall = bucket.N > _HOUSEHOLDER_ASPECT * bucket.R
    large = len(bucket.shapes) * bucket.N * bucket.R ** 2 > _HOUSEHOLDER_SMALL
    return "cholesky_qr2" if tall and large else "householder"


@dataclass
class BucketPlan:
    """How a list of layers is bucketed, fixed for the optimizer's life."""

    #: (bucket, members): the factors as (layer index, "U"/"V"), of one dtype and device
    factors: list[tuple[_Bucket, list[tuple[int, str]]]]
    #: (bucket, members): the cores as layer indices, of one dtype and device
    cores: list[tuple[_CoreBucket, list[int]]]
    #: retraction="auto" resolved: per factor bucket, and for the cores
    factor_retraction: list[str]
    core_retraction: str
    #: estimated work of the step's retractions and conditionings (n·r² multiply-adds), and the
    #: order of the tasks (factor buckets, then core buckets) by it, largest first
    work: float
    work_order: list[int]


def _by_dtype_and_device(tensors) -> dict[tuple, list]:
    """Keys grouped by (dtype, device) of their tensor, in order: only those can share a bucket."""
    kinds: dict[tuple, list] = {}
    for key, t in tensors:
        kinds.setdefault((t.dtype, t.device), []).append(key)
    return kinds


def _factor_buckets(layers: list, slack: float, align: int) -> list[tuple[_Bucket, list[tuple[int, str]]]]:
    out = []
    kinds = _by_dtype_and_device(((i, w), getattr(l, w)) for i, l in enumerate(layers) for w in ("U", "V"))
    for members in kinds.values():
        shapes = [tuple(getattr(layers[i], w).shape) for i, w in members]
        for idx in bucketing(shapes, slack):
            group = [members[j] for j in idx]
            out.append((_Bucket([getattr(layers[i], w) for i, w in group], align), group))
    return out


def _core_buckets(layers: list, slack: float) -> list[tuple[_CoreBucket, list[int]]]:
    out = []
    for members in _by_dtype_and_device((i, l.S) for i, l in enumerate(layers)).values():
        sizes = [layers[i].rank for i in members]
        for idx in bucketing([(r, r) for r in sizes], slack, weight=_EIGH_WEIGHT):
            out.append((_CoreBucket([sizes[j] for j in idx], layers[members[idx[0]]].S), [members[j] for j in idx]))
    return out


def plan_buckets(layers: list, *, slack: float, align: int, on_cpu: bool, conditioner: str) -> BucketPlan:
    """Bucket the layers' factors and cores (see :func:`bucketing`), resolve ``retraction="auto"``
    per bucket and estimate each bucket's work; make the constants that cholesky_qr and
    condition_s cache now, so that no step copies them to the device."""
    factors = _factor_buckets(layers, slack, align)
    cores = _core_buckets(layers, slack)
    core_weight = _EIGH_WEIGHT if conditioner == "eigh" else _NEWTON_SCHULZ_WEIGHT
    work = ([_FACTOR_WEIGHT * len(b.shapes) * b.N * b.R ** 2 for b, _ in factors]
            + [core_weight * len(b.sizes) * b.R ** 3 for b, _ in cores])
    for bucket, _ in factors:
        _eye(bucket.R, bucket.R, torch.float64, bucket.device), _completion(bucket.R, bucket.device)
    for bucket, members in cores:
        dev = layers[members[0]].S.device
        _eye(bucket.R, bucket.R, torch.float64, dev), _completion(bucket.R, dev)
    return BucketPlan(factors=factors, cores=cores,
                      factor_retraction=[auto_retraction(b, on_cpu) for b, _ in factors],
                      core_retraction=auto_retraction(None, on_cpu),
                      work=sum(work), work_order=sorted(range(len(work)), key=lambda i: -work[i]))
