"""DLRT's rank-adaptive augment–train–truncate integrator, shared by the ``dlrt`` and ``robust_dlrt`` methods.

Dynamical low-rank training (Schotthöfer et al., NeurIPS 2022) with the "augmented BUG" integrator
of RobustDLRT (Schotthöfer, Yang, Schnake, arXiv 2505.08022, NeurIPS 2025), in matrix form: every
adaptive layer is W = U S Vᵀ with orthonormal U (n×r), V (m×r) and a free core S (r×r). Training
repeats a cycle of ``num_local_iter`` optimizer steps:

1. **augment** (the cycle's first step): the bases grow to rank r̂ = min(2r, n, m, rmax) with the
   gradient directions, U ← first r̂ columns of QR([U, −∂L/∂U]) (V likewise), and the core is
   carried over, S ← (Ûᵀ U) S (Vᵀ V̂). This step updates no parameter otherwise (as the reference);
2. **train** (the next steps): U, V fixed, the optimizer (Adam) steps S and every other parameter;
3. **truncate** (the cycle's last step, after its update): SVD S = P diag(d) Qᵀ, keep rank r:
   U ← U P_r, V ← V Q_r, S ← diag(d_r). ``tolerance`` mode: the smallest r with
   ‖d_{r:}‖ < τ‖d‖ (the reference's rule); ``budget`` mode: ranks chosen across all layers so the
   network's inference-form parameter count meets the matched-compression target (:func:`budget_ranks`).

Adam's moments of S follow each change of basis as in the reference (the first moment is transformed
like S, the second through its square root). In the last ``finetune`` fraction of the budget the
ranks are frozen (no augmentation), as the reference's low-rank fine-tuning epochs.

RobustDLRT adds, per layer: the regulariser β‖S Sᵀ − (‖S‖²_F / r) I‖_F (its gradient is added to
S's before the step, as if it were in the loss; the logged loss is the cross-entropy alone), and,
here optionally (``clamp``), the reference's projection of S's singular values into
[s̄ − ε, s̄ + ε], s̄ their root-mean-square and ε = β s̄ / (2 + β), so κ(S) ≤ 1 + β — applied after
every truncation and every step on a non-augmented core (an augmented core is rank-deficient by
construction: clamping it would create new directions).

A rank change gives a layer new parameters (:func:`bench.lowrank.set_factors_`) that take the old
ones' places in the trainer's optimizer, with their state; a checkpoint and the model store record the ranks
(:meth:`DLRTMethod.checkpoint_state`) and restoring resizes the layers before the state dicts load.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Literal

import torch

from bench.compression import inference_param_count
from bench.lowrank import LowRankMethod, lowrank_from_dense, replace_module, resize_lowrank_, set_factors_
from bench.method import BuildContext, OptimHP


# --------------------------------------------------------------------------------------------
# parameters shared by dlrt and robust_dlrt (defaults: the reference's example run, run_example.sh)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class IntegratorParams:
    #: budget: ranks chosen at every truncation so the count meets --compression (matched, 1 %);
    #: tolerance: the reference's rule ‖d_{r:}‖ < tau·‖d‖ per layer (the row's compression is what it chose)
    rank_mode: Literal["budget", "tolerance"] = "budget"
    #: truncation tolerance τ of tolerance mode (reference example 0.01; its script's default 0.075)
    tau: float = 0.01
    #: optimizer steps per augment–train–truncate cycle (reference 10)
    num_local_iter: int = 10
    #: last fraction of the budget trained at frozen ranks (reference example: 1 fine-tuning epoch after 20)
    finetune: float = 0.05
    #: Adam's learning rate at the start of the track's schedule (reference example 5e-4)
    lr: float = 5e-4
    #: clip the gradients' global 2-norm to this before each step, 0 = off (reference 1.0)
    grad_clip: float = 1.0
    #: smallest rank a truncation keeps (reference 2)
    rmin: int = 2
    #: largest rank of a layer (reference 200; budget mode never caps below the planned starting rank)
    rmax: int = 200

    def __post_init__(self):
        if not 0.0 < self.tau < 1.0:
            raise ValueError(f"tau must be in (0, 1), got {self.tau}")
        if self.num_local_iter < 2:
            raise ValueError(f"num_local_iter must be >= 2 (augment, train, truncate), got {self.num_local_iter}")
        if not 0.0 <= self.finetune < 1.0:
            raise ValueError(f"finetune must be in [0, 1), got {self.finetune}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.grad_clip < 0:
            raise ValueError(f"grad_clip must be >= 0 (0 = off), got {self.grad_clip}")
        if not 1 <= self.rmin <= self.rmax:
            raise ValueError(f"need 1 <= rmin <= rmax, got rmin={self.rmin}, rmax={self.rmax}")


# --------------------------------------------------------------------------------------------
# the pieces of the integrator
# --------------------------------------------------------------------------------------------
def tolerance_rank(d: torch.Tensor, tau: float, rmin: int, rmax: int) -> int:
    """The reference's rule: the smallest r with ‖d_{r:}‖ < τ‖d‖ (d descending), clamped to [rmin, rmax]."""
    tail = torch.cumsum(d.double().flip(0) ** 2, 0).flip(0).sqrt()  # tail[j] = ‖d_{j:}‖
    below = (tail < tau * tail[0]).nonzero()
    r = int(below[0]) if len(below) else len(d)
    return max(min(r, rmax, len(d)), min(rmin, len(d)))


def budget_ranks(spectra: dict[str, torch.Tensor], dims: dict[str, tuple[int, int]], budget: int, *,
                 floor: dict[str, int], cap: dict[str, int]) -> dict[str, int]:
    """Ranks of the adaptive layers whose weights (min(r(n+m), nm) each) spend about ``budget`` parameters.

    Every layer starts at its ``floor``; then the singular value largest *relative to its layer's*
    ‖d‖ is kept next, while it fits (the relative scale is the one the tolerance rule uses, so layers
    of different scales compete fairly). Last, the one further rank that brings the count closest to
    the budget is taken when it helps (a rank of a big layer can exceed 1 % of the target).
    """
    def cost(k: str, r: int) -> int:
        n, m = dims[k]
        return min(r * (n + m), n * m)

    avail = {k: min(len(d), cap[k]) for k, d in spectra.items()}
    ranks = {k: min(floor[k], avail[k]) for k in spectra}
    rel = {k: (d.double() / d.double().norm().clamp_min(1e-30)).tolist() for k, d in spectra.items()}
    used = sum(cost(k, r) for k, r in ranks.items())
    order = {k: i for i, k in enumerate(sorted(spectra))}
    heap = [(-rel[k][ranks[k]], order[k], k) for k in spectra if ranks[k] < avail[k]]
    heapq.heapify(heap)
    while heap:
        _, _, k = heapq.heappop(heap)
        delta = cost(k, ranks[k] + 1) - cost(k, ranks[k])
        if used + delta > budget:
            continue  # every later rank of this layer costs at least as much
        ranks[k] += 1
        used += delta
        if ranks[k] < avail[k]:
            heapq.heappush(heap, (-rel[k][ranks[k]], order[k], k))
    best = None
    for k in sorted(spectra):
        if ranks[k] < avail[k]:
            c = used + cost(k, ranks[k] + 1) - cost(k, ranks[k])
            if abs(c - budget) < abs((best[1] if best else used) - budget):
                best = (k, c)
    if best is not None:
        ranks[best[0]] += 1
    return ranks


def core_regulariser(S: torch.Tensor) -> torch.Tensor:
    """‖S Sᵀ − (‖S‖²_F / r) I‖_F: zero exactly when all r singular values of S are equal."""
    r = S.shape[0]
    gram = S @ S.t()
    return torch.linalg.matrix_norm(gram - torch.eye(r, dtype=S.dtype, device=S.device) * (S.square().sum() / r))


def clamp_singular_values(d: torch.Tensor, beta: float) -> torch.Tensor:
    """d clamped into [s̄ − ε, s̄ + ε], s̄ = RMS(d), ε = β s̄ / (2 + β): max/min ≤ 1 + β."""
    s_ref = d.square().mean().sqrt()
    eps = beta * s_ref / (2 + beta)
    return torch.minimum(torch.maximum(d, s_ref - eps), s_ref + eps)


def _svd(S: torch.Tensor):
    try:
        return torch.linalg.svd(S, full_matrices=False)
    except torch.linalg.LinAlgError:  # float32 gesdd can fail on clustered singular values
        return tuple(t.to(S.dtype) for t in torch.linalg.svd(S.double(), full_matrices=False))


def _transform_moments(state: dict, left: torch.Tensor, right: torch.Tensor) -> None:
    """Adam's moments of S carried to a new basis: m ← L m R, v ← (L √v R)² (the reference's rule)."""
    if "exp_avg" in state:
        state["exp_avg"] = (left @ state["exp_avg"] @ right).contiguous()
        state["exp_avg_sq"] = (left @ state["exp_avg_sq"].sqrt() @ right).square().contiguous()


@torch.no_grad()
def augment_layer_(layer, optimizer, rmax: int) -> None:
    """Grow U, V to rank min(2r, n, m, rmax) with −∂L/∂U, −∂L/∂V; carry S (and its moments) over."""
    U, V, S = layer.U, layer.V, layer.S
    r = layer.rank
    r1 = max(r, min(2 * r, layer.n, layer.m, rmax))
    gu = U.grad if U.grad is not None else torch.zeros_like(U)
    gv = V.grad if V.grad is not None else torch.zeros_like(V)
    U1 = torch.linalg.qr(torch.cat([U, -gu], 1))[0][:, :r1]
    V1 = torch.linalg.qr(torch.cat([V, -gv], 1))[0][:, :r1]
    M = U1.t() @ U  # r1×r
    N = V.t() @ V1  # r×r1
    S1 = M @ S @ N
    if optimizer is not None:
        _transform_moments(optimizer.state[S], M, N)
    set_factors_(layer, U1, S1, V1, optimizer)


@torch.no_grad()
def truncate_layer_(layer, rank: int, svd, optimizer, clamp_beta: float | None) -> None:
    """Keep rank ``rank`` of S's SVD ``svd`` = (P, d, Qᵀ): U ← U P_r, V ← V Q_r, S ← diag(d_r) (clamped)."""
    P, d, Qh = svd
    Pr, Qr = P[:, :rank], Qh[:rank].t()
    dr = d[:rank] if clamp_beta is None else clamp_singular_values(d[:rank], clamp_beta)
    if optimizer is not None:
        _transform_moments(optimizer.state[layer.S], Pr.t(), Qr)
    set_factors_(layer, layer.U @ Pr, torch.diag(dr), layer.V @ Qr, optimizer)


@torch.no_grad()
def clamp_core_(layer, beta: float) -> None:
    """Project S's singular values into the RobustDLRT band (κ(S) ≤ 1 + β), basis unchanged."""
    P, d, Qh = _svd(layer.S)
    layer.S.copy_((P * clamp_singular_values(d, beta)) @ Qh)


# --------------------------------------------------------------------------------------------
# the optimizer step: Adam on S and every other parameter, with the integrator around it
# --------------------------------------------------------------------------------------------
class DLRTAdam(torch.optim.AdamW):
    """AdamW whose :meth:`step` runs the augment / train / truncate cycle on ``method``'s adaptive layers.

    The integrator's position (step in the cycle, augmented or not, adaptive or frozen ranks) lives on
    ``method`` so that :meth:`DLRTMethod.checkpoint_state` has all of it; Adam's own state (moments,
    step counts) is in this optimizer's state dict as usual.
    """

    def __init__(self, params, method: "DLRTMethod", **kw):
        super().__init__(params, **kw)
        self.method = method

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("DLRTAdam.step takes no closure")
        m = self.method
        layers = [layer for _, layer in m.layers]
        if m.beta > 0:
            with torch.enable_grad():
                for layer in layers:
                    S = layer.S.detach().requires_grad_(True)
                    (g,) = torch.autograd.grad(m.beta * core_regulariser(S), S)
                    layer.S.grad = g if layer.S.grad is None else layer.S.grad + g
        if m.params.grad_clip > 0:
            grads = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(grads, m.params.grad_clip)
        if m.augment_now():
            for name, layer in m.layers:
                augment_layer_(layer, self, m.cap[name])
            m.augmented = True
        else:
            for layer in layers:  # the bases move only at augmentation
                layer.U.grad = layer.V.grad = None
            super().step()
            if m.clamp_beta is not None and not m.augmented:
                for layer in layers:
                    clamp_core_(layer, m.clamp_beta)
        m.pos = (m.pos + 1) % m.params.num_local_iter
        if m.augmented and m.pos == 0:
            m.truncate(self)
        return None


# --------------------------------------------------------------------------------------------
# the method
# --------------------------------------------------------------------------------------------
class DLRTMethod(LowRankMethod):
    """Base of ``dlrt`` and ``robust_dlrt``: the planned layers become U S Vᵀ at the planned ranks,
    then :class:`DLRTAdam` adapts their ranks. Subclasses set ``beta`` / ``clamp_beta``."""

    #: how many points of the budget the rank history samples (plus the final ranks)
    HISTORY_POINTS = 20

    def __init__(self, params=None):
        super().__init__(params)
        self.layers: list = []  # (name, layer) of the adaptive layers
        self.cap: dict[str, int] = {}  # layer name -> largest rank
        self.pos = 0  # step within the cycle (0 = the next step augments when adaptive)
        self.augmented = False
        self.adaptive = self.params.finetune < 1.0
        self.progress = 0.0
        self.steps = 0
        self.truncations = 0
        self.history: list[dict] = []
        self.fixed_params = 0  # inference-form parameters outside the adaptive layers' weights
        self.target = 0
        self.finalized = False

    # -- regularisation, overridden by robust_dlrt ---------------------------------------------
    @property
    def beta(self) -> float:
        return 0.0

    @property
    def clamp_beta(self) -> float | None:
        return None

    # -- build / optimizer -------------------------------------------------------------------------
    def build(self, model, ctx: BuildContext):
        super().build(model, ctx)  # the shared rank plan: the starting ranks, the target
        p = self.params
        for name, rank in self.plan.ranks.items():
            new = lowrank_from_dense(model.get_submodule(name), rank, with_s=True, split="usv", preserve_norm=True)
            replace_module(model, name, new)
            self.layers.append((name, new))
            self.cap[name] = max(min(p.rmax, new.n, new.m), rank if p.rank_mode == "budget" else 0)
            if self.clamp_beta is not None:
                clamp_core_(new, self.clamp_beta)
        self.target = self.plan.target
        self.fixed_params = inference_param_count(model) - sum(_weights(layer) for _, layer in self.layers)
        self._set_basis_grads()
        self.history.append({**self._snapshot(), "step": 0})  # the planned starting ranks
        return model

    def make_optimizer(self, model, hp: OptimHP):
        # Adam at the reference's lr; lr_scale makes the trainer's schedule (milestones, gamma) apply to it.
        bases = {id(t) for _, layer in self.layers for t in (layer.U, layer.V)}
        rest = [t for t in model.parameters() if id(t) not in bases]
        basis = [t for _, layer in self.layers for t in (layer.U, layer.V)]
        scale = self.params.lr / hp.lr
        groups = [{"params": rest, "weight_decay": hp.weight_decay, "lr_scale": scale},
                  {"params": basis, "weight_decay": 0.0, "lr_scale": scale}]
        return DLRTAdam(groups, self, lr=self.params.lr, weight_decay=hp.weight_decay)

    # -- the integrator's schedule ---------------------------------------------------------------
    def augment_now(self) -> bool:
        return self.adaptive and self.pos == 0 and not self.augmented and bool(self.layers)

    def _set_basis_grads(self) -> None:
        # ∂L/∂U, ∂L/∂V are needed only on an augmentation step: skip their backward otherwise
        # (a finalized model is an ordinary network again: every parameter requires grad)
        need = self.finalized or self.augment_now()
        for _, layer in self.layers:
            layer.U.requires_grad_(need)
            layer.V.requires_grad_(need)

    def post_step(self, model, progress: float) -> None:
        self.steps += 1
        self.progress = progress
        self.adaptive = progress < 1.0 - self.params.finetune
        self._set_basis_grads()

    @torch.no_grad()
    def truncate(self, optimizer=None) -> None:
        """Truncate every adaptive layer (tolerance rule or the global budget) and leave the augmented state."""
        p = self.params
        svds = {name: _svd(layer.S) for name, layer in self.layers}
        if p.rank_mode == "tolerance":
            ranks = {name: tolerance_rank(svds[name][1], p.tau, p.rmin, self.cap[name])
                     for name, layer in self.layers}
        else:
            ranks = budget_ranks({k: s[1] for k, s in svds.items()}, {k: (l.n, l.m) for k, l in self.layers},
                                 self.target - self.fixed_params,
                                 floor={k: min(p.rmin, self.plan.ranks[k]) for k, _ in self.layers},
                                 cap=dict(self.cap))
        for name, layer in self.layers:
            truncate_layer_(layer, ranks[name], svds[name], optimizer, self.clamp_beta)
        self.augmented = False
        self.truncations += 1
        # the history samples the ranks at HISTORY_POINTS even points of the budget (rows stay small)
        if self.progress >= (len(self.history) - 1) / self.HISTORY_POINTS:
            self.history.append(self._snapshot())

    def _snapshot(self) -> dict:
        return {"step": self.steps + 1, "progress": round(self.progress, 4),
                "ranks": {k: l.rank for k, l in self.layers}, "params": self.param_count()}

    def param_count(self) -> int:
        return self.fixed_params + sum(_weights(layer) for _, layer in self.layers)

    def finalize(self, model) -> None:
        if self.augmented:  # a budget that ended mid-cycle: truncate as the cycle's end would
            self.truncate(self.optimizer)
        elif self.clamp_beta is not None:
            for _, layer in self.layers:
                clamp_core_(layer, self.clamp_beta)
        self.finalized = True
        self._set_basis_grads()
        final = self._snapshot()
        final["step"] = self.steps
        if not self.history or self.history[-1]["ranks"] != final["ranks"] or self.history[-1]["step"] != final["step"]:
            self.history.append(final)
        count = inference_param_count(model)
        if self.params.rank_mode == "budget" and abs(count - self.target) > 0.01 * self.target:
            raise ValueError(f"{self.name}: the final count {count} misses the target {self.target} by more than 1% "
                             f"(ranks {final['ranks']}, largest allowed {self.cap}); "
                             f"raise rmax")

    # -- checkpoint / store: the ranks decide the parameters' shapes --------------------------------
    def checkpoint_state(self) -> dict:
        return {"ranks": {k: l.rank for k, l in self.layers}, "pos": self.pos, "augmented": self.augmented,
                "adaptive": self.adaptive, "progress": self.progress, "steps": self.steps,
                "truncations": self.truncations, "history": [dict(h) for h in self.history],
                "finalized": self.finalized}

    def restore_checkpoint_state(self, state: dict, model) -> None:
        # Resize before the model's state dict is loaded; the new parameters take the old ones' places in
        # the optimizer's groups, so its state dict (Adam's moments, saved at these shapes) loads next.
        for name, layer in self.layers:
            resize_lowrank_(layer, int(state["ranks"][name]), self.optimizer)
        self.pos, self.augmented, self.adaptive = int(state["pos"]), bool(state["augmented"]), bool(state["adaptive"])
        self.progress, self.steps = float(state["progress"]), int(state["steps"])
        self.truncations, self.history = int(state["truncations"]), [dict(h) for h in state["history"]]
        self.finalized = bool(state.get("finalized", False))
        self._set_basis_grads()

    def describe(self, model) -> dict:
        d = super().describe(model)
        p = self.params
        d.update(planned_ranks=d.pop("ranks"), ranks={k: l.rank for k, l in self.layers},
                 rank_mode=p.rank_mode, compression_matched=p.rank_mode == "budget",
                 truncations=self.truncations, rank_history=self.history,
                 rank_range={k: [min(h["ranks"][k] for h in self.history), max(h["ranks"][k] for h in self.history)]
                             for k, _ in self.layers} if self.history else {})
        if p.rank_mode == "tolerance":
            d["tau"] = p.tau
        return d


def _weights(layer) -> int:
    return min(layer.rank * (layer.n + layer.m), layer.n * layer.m)


__all__ = ["IntegratorParams", "DLRTMethod", "DLRTAdam", "budget_ranks", "tolerance_rank", "core_regulariser",
           "clamp_singular_values", "augment_layer_", "truncate_layer_", "clamp_core_"]
