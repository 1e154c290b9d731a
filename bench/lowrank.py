"""Low-rank layers W = U S Vᵀ (Linear and Conv2d) and matched-compression rank plans.

* :class:`LowRankLinear` and :class:`LowRankConv2d` hold ``U`` (n×r), ``S`` (r×r, or ``None``
  for the plain U Vᵀ form) and ``V`` (m×r), where the layer's weight reshaped to
  out × (in·kh·kw) is U S Vᵀ. A convolution runs as two convolutions (Vᵀ as an
  (r, in, kh, kw) kernel, then a 1×1 convolution with U·S) when that is cheaper, else
  as one convolution with the kernel U S Vᵀ built on the fly.
* Their inference form merges U·S: n·r + r·m (+ bias) parameters, or n·m when that is
  no more (a full-rank layer merges back to one matrix). :meth:`merged` exports it.
* :func:`plan_ranks` picks per-layer ranks so that a model's inference-form parameter
  count is within 1 % of (1 − c) of the dense count; every low-rank method shares it.
* :class:`LowRankMethod` plans the ranks for the low-rank methods; :func:`layer_condition` is
  κ(U S Vᵀ) of a layer. The CondLR step that keeps U, V orthonormal
  and S conditioned is :class:`bench.condlr.ManifoldSGD`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import torch
from torch import nn
import torch.nn.functional as F

from bench.compression import inference_param_count
from bench.method import BuildContext, Method

# --------------------------------------------------------------------------------------------
# layers
# --------------------------------------------------------------------------------------------
class _LowRank(nn.Module):
    """Shared parts of the factorised layers: parameters, the effective matrix, counting, merging."""

    def __init__(self, n: int, m: int, rank: int, *, with_s: bool, bias: bool):
        super().__init__()
        if not 1 <= rank <= min(n, m):
            raise ValueError(f"rank must be in [1, {min(n, m)}], got {rank}")
        self.n, self.m, self.rank = n, m, rank
        self.U = nn.Parameter(torch.empty(n, rank))
        self.S = nn.Parameter(torch.empty(rank, rank)) if with_s else None
        self.V = nn.Parameter(torch.empty(m, rank))
        self.bias = nn.Parameter(torch.zeros(n)) if bias else None
        #: True while U, V are kept orthonormal and S conditioned (set by CondLR)
        self.orthonormal = False

    # -- the contract other modules rely on --------------------------------------------------
    def lowrank_factors(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(U, S, V) with the weight matrix (out × in·kh·kw) equal to U S Vᵀ (S is None: U Vᵀ)."""
        return self.U, self.S, self.V

    def us(self) -> torch.Tensor:
        return self.U if self.S is None else self.U @ self.S

    def dense_matrix(self) -> torch.Tensor:
        return self.us() @ self.V.t()

    def factored(self) -> bool:
        """Whether the inference form keeps two factors (it does when that saves parameters)."""
        return self.rank * (self.n + self.m) < self.n * self.m

    def inference_param_count(self) -> int:
        """n·r + r·m (+ bias) with U·S merged, or n·m (+ bias) when that is no more."""
        weights = self.rank * (self.n + self.m) if self.factored() else self.n * self.m
        return weights + (self.n if self.bias is not None else 0)

    def extra_repr(self) -> str:
        form = "U S Vᵀ" if self.S is not None else "U Vᵀ"
        return f"{self.m} -> {self.n}, rank={self.rank}, {form}, orthonormal={self.orthonormal}"

    # -- initialisation from a dense weight -----------------------------------------------------
    @torch.no_grad()
    def init_from_matrix(self, W: torch.Tensor, *, split: str, preserve_norm: bool = False) -> None:
        """Truncated SVD of W (n×m). split: 'usv' (U, diag σ, V), 'balanced' (U√σ, V√σ; S = I if any).

        preserve_norm: scale the kept singular values so that ‖U S Vᵀ‖_F = ‖W‖_F (for a fresh
        initialisation; a trained weight is truncated as it is).
        """
        try:
            Uf, sig_all, Vh = torch.linalg.svd(W.detach().float(), full_matrices=False)
        except torch.linalg.LinAlgError:  # float32 gesdd can fail to converge on clustered singular values
            Uf, sig_all, Vh = (t.float() for t in torch.linalg.svd(W.detach().double(), full_matrices=False))
        r = self.rank
        U, sig, V = Uf[:, :r], sig_all[:r], Vh[:r].t()
        if preserve_norm:
            # A truncated random initialisation keeps only part of its energy (about r/min(n, m) of
            # it), so the signal shrinks layer by layer and training starts on a plateau; scaling
            # the kept singular values restores the dense initialisation's ‖W‖_F.
            sig = sig * (sig_all.norm() / sig.norm())
        if split == "usv" and self.S is not None:
            self.U.copy_(U)
            self.V.copy_(V)
            self.S.copy_(torch.diag(sig))
        elif split in ("balanced", "usv"):  # usv without an S: split σ evenly
            root = sig.sqrt()
            self.U.copy_(U * root)
            self.V.copy_(V * root)
            if self.S is not None:
                self.S.copy_(torch.eye(r))
        else:
            raise ValueError(f"unknown split {split!r}")


class LowRankLinear(_LowRank):
    """A Linear layer with weight U S Vᵀ (or U Vᵀ)."""

    def __init__(self, in_features: int, out_features: int, rank: int, *, with_s: bool = True, bias: bool = True):
        super().__init__(out_features, in_features, rank, with_s=with_s, bias=bias)
        self.in_features, self.out_features = in_features, out_features

    def forward(self, x):
        if self.factored():
            h = F.linear(x, self.V.t())
            if self.S is not None and h.numel() < self.n * self.rank:
                # fewer rows than U has: S on the activations (rows·r² multiply-adds) is cheaper
                # than forming U·S (n·r²), forward and backward alike
                return F.linear(F.linear(h, self.S), self.U, self.bias)
            return F.linear(h, self.us(), self.bias)
        return F.linear(x, self.dense_matrix(), self.bias)

    def dense_weight(self) -> torch.Tensor:
        return self.dense_matrix()

    @torch.no_grad()
    def merged(self) -> nn.Module:
        """The inference form as plain modules: Linear(in→r, Vᵀ) then Linear(r→out, U·S), or one Linear."""
        dev, dt = self.U.device, self.U.dtype
        has_bias = self.bias is not None
        if not self.factored():
            lin = nn.Linear(self.m, self.n, bias=has_bias, device=dev, dtype=dt)
            lin.weight.copy_(self.dense_matrix())
            if has_bias:
                lin.bias.copy_(self.bias)
            return lin
        first = nn.Linear(self.m, self.rank, bias=False, device=dev, dtype=dt)
        first.weight.copy_(self.V.t())
        second = nn.Linear(self.rank, self.n, bias=has_bias, device=dev, dtype=dt)
        second.weight.copy_(self.us())
        if has_bias:
            second.bias.copy_(self.bias)
        return nn.Sequential(first, second)

    @classmethod
    def from_dense(cls, layer: nn.Linear, rank: int, *, with_s: bool = True, split: str = "usv",
                   preserve_norm: bool = False) -> "LowRankLinear":
        new = cls(layer.in_features, layer.out_features, rank, with_s=with_s, bias=layer.bias is not None)
        new = new.to(device=layer.weight.device, dtype=layer.weight.dtype)
        new.init_from_matrix(layer.weight, split=split, preserve_norm=preserve_norm)
        if layer.bias is not None:
            with torch.no_grad():
                new.bias.copy_(layer.bias)
        return new


class LowRankConv2d(_LowRank):
    """A Conv2d (groups=1) whose kernel reshaped to out × (in·kh·kw) is U S Vᵀ."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, rank: int, *, stride=1, padding=0,
                 dilation=1, with_s: bool = True, bias: bool = True):
        kh, kw = _pair(kernel_size)
        super().__init__(out_channels, in_channels * kh * kw, rank, with_s=with_s, bias=bias)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = (kh, kw)
        self.stride, self.padding, self.dilation = _pair(stride), padding if isinstance(padding, str) else _pair(padding), _pair(dilation)

    def _conv(self, x, weight, bias):
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation)

    def forward(self, x):
        if self.factored():
            # Vᵀ as an (r, in, kh, kw) kernel, then a 1×1 convolution with U·S: r·(in·kh·kw + out)
            # multiply-adds per output pixel instead of out·in·kh·kw.
            h = self._conv(x, self.V.t().reshape(self.rank, self.in_channels, *self.kernel_size), None)
            return F.conv2d(h, self.us().reshape(self.n, self.rank, 1, 1), self.bias)
        return self._conv(x, self.dense_weight(), self.bias)

    def dense_weight(self) -> torch.Tensor:
        return self.dense_matrix().reshape(self.out_channels, self.in_channels, *self.kernel_size)

    @torch.no_grad()
    def merged(self) -> nn.Module:
        """The inference form as plain modules: Conv2d(in→r, k×k, Vᵀ) then a 1×1 Conv2d(r→out, U·S), or one Conv2d."""
        dev, dt = self.U.device, self.U.dtype
        has_bias = self.bias is not None
        kw = dict(stride=self.stride, padding=self.padding, dilation=self.dilation, device=dev, dtype=dt)
        if not self.factored():
            conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, bias=has_bias, **kw)
            conv.weight.copy_(self.dense_weight())
            if has_bias:
                conv.bias.copy_(self.bias)
            return conv
        first = nn.Conv2d(self.in_channels, self.rank, self.kernel_size, bias=False, **kw)
        first.weight.copy_(self.V.t().reshape(self.rank, self.in_channels, *self.kernel_size))
        second = nn.Conv2d(self.rank, self.out_channels, 1, bias=has_bias, device=dev, dtype=dt)
        second.weight.copy_(self.us().reshape(self.n, self.rank, 1, 1))
        if has_bias:
            second.bias.copy_(self.bias)
        return nn.Sequential(first, second)

    @classmethod
    def from_dense(cls, layer: nn.Conv2d, rank: int, *, with_s: bool = True, split: str = "usv",
                   preserve_norm: bool = False) -> "LowRankConv2d":
        if not is_factorizable(layer):
            raise ValueError("only Conv2d with groups=1 and zero padding can be factorised")
        new = cls(layer.in_channels, layer.out_channels, layer.kernel_size, rank, stride=layer.stride,
                  padding=layer.padding, dilation=layer.dilation, with_s=with_s, bias=layer.bias is not None)
        new = new.to(device=layer.weight.device, dtype=layer.weight.dtype)
        new.init_from_matrix(layer.weight.reshape(layer.out_channels, -1), split=split, preserve_norm=preserve_norm)
        if layer.bias is not None:
            with torch.no_grad():
                new.bias.copy_(layer.bias)
        return new


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def is_factorizable(mod: nn.Module) -> bool:
    if isinstance(mod, nn.Linear):
        return True
    return isinstance(mod, nn.Conv2d) and mod.groups == 1 and mod.padding_mode == "zeros"


def lowrank_from_dense(layer: nn.Module, rank: int, *, with_s: bool = True, split: str = "usv",
                       preserve_norm: bool = False) -> _LowRank:
    """The rank-``rank`` factorisation of a Linear or Conv2d layer (truncated SVD of its weight)."""
    cls = LowRankLinear if isinstance(layer, nn.Linear) else LowRankConv2d
    return cls.from_dense(layer, rank, with_s=with_s, split=split, preserve_norm=preserve_norm)


def lowrank_layers(model: nn.Module) -> list[tuple[str, _LowRank]]:
    return [(name, mod) for name, mod in model.named_modules() if isinstance(mod, _LowRank)]


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


# --------------------------------------------------------------------------------------------
# matched compression: one rank plan for every low-rank method
# --------------------------------------------------------------------------------------------
@dataclass
class RankPlan:
    """Per-layer ranks that meet a parameter target; layers absent from ``ranks`` stay dense."""

    compression: float
    target: int  # inference-form parameters wanted: round((1 - c) * dense)
    dense_params: int
    planned_params: int
    rank_fraction: float  # the global fraction found by bisection, before per-layer adjustment
    ranks: dict[str, int] = field(default_factory=dict)
    full_ranks: dict[str, int] = field(default_factory=dict)  # min(n, m) of every candidate layer
    kept_dense: list[str] = field(default_factory=list)  # candidates left dense (full rank)

    @property
    def achieved_compression(self) -> float:
        return 1.0 - self.planned_params / self.dense_params

    def describe(self) -> dict:
        return {"ranks": dict(self.ranks), "full_ranks": dict(self.full_ranks), "dense_layers": list(self.kept_dense),
                "rank_fraction": self.rank_fraction, "planned_params": self.planned_params,
                "target_params": self.target}


def classifier_name(model: nn.Module) -> str | None:
    """The last Linear layer in module order: kept full rank by the low-rank methods."""
    last = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            last = name
    return last


def _matrix_shape(mod: nn.Module) -> tuple[int, int]:
    w = mod.weight
    return int(w.shape[0]), int(w[0].numel())


def plan_compression(model: nn.Module, compression: float, *, min_share: float = 0.01) -> RankPlan:
    """The rank plan every low-rank method shares: :func:`plan_ranks` with the classifier kept dense
    (``min_share=0``: the smallest layers are compressed too, as the CondLR code does)."""
    keep = classifier_name(model)
    return plan_ranks(model, compression, keep_dense=[keep] if keep else [], min_share=min_share)


def plan_ranks(model: nn.Module, compression: float, *, keep_dense: Iterable[str] = (), tol: float = 0.01,
               min_share: float = 0.01) -> RankPlan:
    """Ranks for the Linear/Conv2d layers of a dense ``model`` that meet the compression target.

    One global rank fraction f is found by bisection (layer rank = round(f · min(n, m)), at least
    1); a layer where r·(n + m) ≥ n·m saves nothing and stays dense. Layers holding less than
    ``min_share`` of the dense parameters stay dense too: they barely move the count, and the
    global fraction would cut them to rank 1 or 2 (a first convolution with one 3×3 filter
    shared by all its channels; on digits that alone costs 20 points of accuracy after 3 epochs).
    Because one rank step of a big layer can exceed 1 % of the target, single-layer ±1 rank
    moves then bring the count close to the target. Raises ValueError when the target cannot be
    met within ``tol`` (relative to the target).
    """
    if not 0.0 <= compression < 1.0:
        raise ValueError(f"compression must be in [0, 1), got {compression}")
    keep = set(keep_dense)
    dense = inference_param_count(model)
    target = round((1.0 - compression) * dense)
    cand: dict[str, tuple[int, int]] = {}  # the layers the plan may factorise: (n, m)
    stay: list[str] = []  # weight layers that stay dense whatever the rank
    for name, mod in model.named_modules():
        if not name or not is_factorizable(mod) or isinstance(mod, _LowRank):
            continue
        n, m = _matrix_shape(mod)
        if name in keep or n * m < min_share * dense:
            stay.append(name)
        else:
            cand[name] = (n, m)
    weights = sum(n * m for n, m in cand.values())
    fixed = dense - weights  # everything the plan does not touch: biases, other layers, norms

    def layer_count(name: str, r: int) -> int:
        n, m = cand[name]
        return min(r * (n + m), n * m)

    def ranks_at(f: float) -> dict[str, int]:
        return {k: min(max(1, round(f * min(n, m))), min(n, m)) for k, (n, m) in cand.items()}

    def total(ranks: dict[str, int]) -> int:
        return fixed + sum(layer_count(k, r) for k, r in ranks.items())

    lo, hi = 0.0, 1.0
    if total(ranks_at(1.0)) <= target:
        lo = 1.0
    else:
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if total(ranks_at(mid)) <= target else (lo, mid)
    ranks = ranks_at(lo)
    count = total(ranks)
    # Fine adjustment: the ±1 rank move that brings the count closest to the target, until the
    # count is within a quarter of the tolerance or no move helps (so small layers are rarely touched).
    while abs(count - target) > tol * target / 4:
        best = None
        for k, r in ranks.items():
            for nr in (r - 1, r + 1):
                if not 1 <= nr <= min(cand[k]):
                    continue
                c = count - layer_count(k, r) + layer_count(k, nr)
                if abs(c - target) < abs((best[2] if best else count) - target):
                    best = (k, nr, c)
        if best is None:
            break
        ranks[best[0]], count = best[1], best[2]
    if abs(count - target) > tol * target:
        lowest = total({k: 1 for k in cand})
        raise ValueError(
            f"compression {compression:g} cannot be matched within {tol:.0%}: target {target} parameters, "
            f"closest plan {count} (dense {dense}, lowest reachable by factorising {lowest})")
    factorised = {k: r for k, r in ranks.items() if r * sum(cand[k]) < cand[k][0] * cand[k][1]}
    return RankPlan(
        compression=compression, target=target, dense_params=dense, planned_params=count, rank_fraction=lo,
        ranks=factorised, full_ranks={k: min(nm) for k, nm in cand.items()},
        kept_dense=sorted(set(cand) - set(factorised) | set(stay)),
    )


def layer_condition(layer: _LowRank) -> float:
    """κ of U S Vᵀ (the raw κ of :mod:`bench.metrics.conditioning`), equal to κ(S) when U, V are orthonormal."""
    from bench.metrics.conditioning import lowrank_singular_values

    s = lowrank_singular_values(*layer.lowrank_factors())
    return float(s[0] / s[-1])


class LowRankMethod(Method):
    """Base of the methods that factorise at matched compression: ``build`` plans the ranks
    (:func:`plan_compression`, the same plan for every low-rank method), ``describe`` reports it."""

    def __init__(self, params=None):
        super().__init__(params)
        self.plan: RankPlan | None = None  # set by build

    def build(self, model, ctx: BuildContext):
        self.plan = plan_compression(model, ctx.compression)
        return model

    def describe(self, model) -> dict:
        return self.plan.describe() if self.plan is not None else {}



@torch.no_grad()
def set_factors_(layer: _LowRank, U: torch.Tensor, S: torch.Tensor | None, V: torch.Tensor, optimizer=None) -> None:
    """Give ``layer`` new factors of any rank (new Parameters: autograd keeps a leaf's shape, so a
    resized leaf cannot be reused). With ``optimizer``, each new Parameter takes the old one's place
    in its parameter group (same position, so a saved optimizer state dict still maps onto it) and
    its state; the caller adapts that state to the new shape."""
    r = U.shape[1]
    if not 1 <= r <= min(layer.n, layer.m) or tuple(V.shape) != (layer.m, r) or U.shape[0] != layer.n:
        raise ValueError(f"factors of shapes {tuple(U.shape)}, {tuple(V.shape)} do not fit a {layer.n}x{layer.m} layer")
    swaps = {}
    for name, new in (("U", U), ("S", S), ("V", V)):
        old = getattr(layer, name)
        if old is None:
            continue
        p = nn.Parameter(new.to(dtype=old.dtype, device=old.device).contiguous(), requires_grad=old.requires_grad)
        setattr(layer, name, p)
        swaps[old] = p
    layer.rank = r
    if optimizer is not None:
        replace_optimizer_params(optimizer, swaps)


def replace_optimizer_params(optimizer, swaps: dict) -> None:
    """Put each new parameter where the old one (a key of ``swaps``) was in ``optimizer``'s groups, with its state."""
    for g in optimizer.param_groups:
        g["params"] = [swaps.get(p, p) for p in g["params"]]
    for old, new in swaps.items():
        if old in optimizer.state:
            optimizer.state[new] = optimizer.state.pop(old)


def resize_lowrank_(layer: _LowRank, rank: int, optimizer=None) -> None:
    """Set ``layer`` to rank ``rank`` (zero factors), e.g. before loading a state dict saved at that rank."""
    if rank != layer.rank:
        U, V = layer.U, layer.V
        S = None if layer.S is None else layer.S.new_zeros(rank, rank)
        set_factors_(layer, U.new_zeros(layer.n, rank), S, V.new_zeros(layer.m, rank), optimizer)
