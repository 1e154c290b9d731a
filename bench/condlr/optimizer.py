"""ManifoldSGD, the CondLR optimizer: momentum SGD that keeps every low-rank layer W = U S Vᵀ on
the constraint set (orthonormal U, V; conditioned S) after every step (Savostianova et al.,
NeurIPS 2023). The mathematics is in :mod:`.linalg`, the packing of layers in :mod:`.buckets`;
this module schedules them.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from .buckets import _Bucket, _stack, plan_buckets
from .experimental import EXPERIMENTAL, GRAPH_WARMUP, GraphedStep, WorkerPool, check_cuda_graph
from .linalg import CONDITIONERS, MODES, RETRACTIONS, condition_s_exact

#: How CondLR scales the tangent direction of U and V.
#: ``inv_a``: by 1/a, a = ‖S‖²_F / r, in both modes, so a step moves U S Vᵀ about as much as a
#: dense SGD step whatever the scale of S (the default: the trainer's lr then means the same for
#: every method). ``reference``: as the paper's code, (σ_min(S)/σ_max(S))² in approx_orth (a
#: factor in [1/κ̄², 1], independent of the scale of S) and the constant 1/a of the initial S in mean.
STEP_SCALES = ("inv_a", "reference")


def _check_options(*, mode: str, conditioner: str, step_scale: str, retraction: str, experimental) -> frozenset:
    """Every option by name, before any work; the experimental features as a set."""
    for name, value, allowed in (("mode", mode, MODES), ("conditioner", conditioner, CONDITIONERS),
                                 ("step_scale", step_scale, STEP_SCALES), ("retraction", retraction, RETRACTIONS)):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    features = frozenset((experimental,) if isinstance(experimental, str) else experimental)
    unknown = sorted(features - set(EXPERIMENTAL))
    if unknown:
        raise ValueError(f"experimental features are {EXPERIMENTAL}, got {unknown}")
    return features


class ManifoldSGD(torch.optim.SGD):
    """Momentum SGD for CondLR: U, V of every listed layer stay orthonormal and S conditioned.

    One step: the gradients of U and V are projected onto the tangent space, d ← (I − UUᵀ)d, and
    scaled (``step_scale``, see ``STEP_SCALES``); then plain momentum SGD (S and every other
    parameter get weight decay, U and V none); then U and V are retracted with
    :func:`~bench.condlr.linalg.q_factor` and S is conditioned with
    :func:`~bench.condlr.linalg.condition_s`. All of it runs in every step, so the invariants
    (‖UᵀU − I‖ ≈ 1e-6, κ(S) ≤ κ̄) hold after every step, whatever the step did. Each stage is one
    batched call per bucket (:mod:`bench.condlr.buckets`), and nothing in :meth:`step` reads a
    tensor value on the host.

    ``core_gradient``: take XᵀG from the core's gradient (UᵀG_U = G_S Sᵀ, VᵀG_V = G_Sᵀ S): one
    n×r×r product per factor instead of two, exact when U and V get their gradients through
    W = U S Vᵀ alone (any loss of the network's output; not a penalty on U or V themselves: pass
    False for that). A factor whose retraction cannot be certified (a non-finite or numerically
    singular step) keeps its value from before the step.

    ``conditioner`` (approx_orth; see ``CONDITIONERS``): ``eigh`` (default) or ``newton_schulz``
    (the same map from matrix products, for GPUs).

    ``retraction`` (see ``RETRACTIONS``): ``auto`` (default) takes Householder QR on the CPU (all
    but large, very tall factor buckets) and Cholesky-QR2 elsewhere; :meth:`bucket_retraction`
    says which kernel a bucket uses.

    ``experimental`` (off by default; names from ``EXPERIMENTAL``, see
    :mod:`bench.condlr.experimental`, unverified on the hardware they are for): ``"cuda_graph"``
    replays the step from a CUDA graph (CUDA only, with a step free of host synchronisation:
    approx_orth with ``conditioner="newton_schulz"`` and ``step_scale="inv_a"``, or mean / unit);
    ``"cpu_workers"`` runs the buckets on worker threads (CPU only). :meth:`with_options` makes
    the same optimizer with other options (``bench perf --cuda-graph``).

    The momentum buffer is not re-projected onto the new tangent space: its normal component
    there is O(lr), so the within-span rotation it adds is O(lr²) and the retraction absorbs it.

    The trainer writes ``lr`` into both parameter groups; U and V are in the one marked
    ``stiefel``.
    """

    #: the n·r² work worth one more batched call: about 0.2 ms of one CPU core, or of launches on a GPU
    bucket_slack = 4e6
    #: factor buckets of rank 32 or more are padded to a multiple of this many columns: BLAS products
    #: with an unaligned row stride run slower (docs/speed.md)
    bucket_align = 8
    #: eager steps before experimental "cuda_graph" captures the step
    graph_warmup = GRAPH_WARMUP

    def __init__(self, model: nn.Module, layers: list, *, lr: float, momentum: float, weight_decay: float,
                 nesterov: bool = False, mode: str = "approx_orth", kappa_bar: float = 1.5,
                 step_scale: str = "inv_a", core_gradient: bool = True, conditioner: str = "eigh",
                 retraction: str = "auto", experimental=()):
        self.experimental = _check_options(mode=mode, conditioner=conditioner, step_scale=step_scale,
                                           retraction=retraction, experimental=experimental)
        self.layers = list(layers)
        if any(l.S is None for l in self.layers):
            raise ValueError("CondLR layers need an S (with_s=True)")
        self.mode, self.kappa_bar, self.step_scale = mode, kappa_bar, step_scale
        self.core_gradient, self.conditioner, self.retraction = core_gradient, conditioner, retraction
        self._model = model
        self._options = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov, mode=mode,
                             kappa_bar=kappa_bar, step_scale=step_scale, core_gradient=core_gradient,
                             conditioner=conditioner, retraction=retraction, experimental=self.experimental)
        groups = self._param_groups(model, self.layers)
        devices = {p.device.type for g in groups for p in g["params"]}
        self._on_cpu = devices <= {"cpu"}  # retraction="auto" and worker threads: CPU steps only
        self._graph, self._workers = self._experimental_parts(devices)
        super().__init__(groups, lr=lr, momentum=momentum, weight_decay=weight_decay,
                         nesterov=nesterov and momentum > 0, foreach=True)
        self._plan = plan_buckets(self.layers, slack=self.bucket_slack, align=self.bucket_align,
                                  on_cpu=self._on_cpu, conditioner=conditioner)
        self._buckets, self._core_buckets = self._plan.factors, self._plan.cores
        self._init_step_scales()

    # -- construction ----------------------------------------------------------------------------
    @staticmethod
    def _param_groups(model: nn.Module, layers: list) -> list[dict]:
        """U and V of the layers in a group without weight decay (they stay orthonormal); every
        other trainable parameter of the model, S included, in the other."""
        stiefel = [p for l in layers for p in (l.U, l.V)]
        ids = {id(p) for p in stiefel}
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
        return [{"params": rest}, {"params": stiefel, "weight_decay": 0.0}]

    def _experimental_parts(self, devices: set[str]) -> tuple[GraphedStep | None, WorkerPool | None]:
        """The parts of the experimental features asked for, checked against the devices."""
        graph = workers = None
        if "cuda_graph" in self.experimental:
            check_cuda_graph(mode=self.mode, conditioner=self.conditioner, step_scale=self.step_scale,
                             retraction=self.retraction, devices=devices)
            graph = GraphedStep(self)
        if "cpu_workers" in self.experimental:
            if not self._on_cpu:
                raise ValueError(f"experimental 'cpu_workers' needs every parameter on the CPU, got {sorted(devices)}")
            workers = WorkerPool()
        return graph, workers

    def _init_step_scales(self) -> None:
        """What ``_direction_scales`` reads: the ranks (inv_a), the cores grouped by size (reference
        in approx_orth: the eigenvalues of SᵀS) and the constant 1/a of the initial S (reference in mean)."""
        self._ranks = [float(l.rank) for l in self.layers]
        self._core_groups: dict[int, list[int]] = {}
        for i, l in enumerate(self.layers):
            self._core_groups.setdefault(l.rank, []).append(i)
        with torch.no_grad():
            self._inv_a0 = [l.rank / l.S.detach().square().sum() for l in self.layers]

    def with_options(self, **changes) -> "ManifoldSGD":
        """A new optimizer (no state) on the same model and layers with the same settings but
        ``changes``, e.g. ``opt.with_options(conditioner="newton_schulz", experimental="cuda_graph")``."""
        new = type(self)(self._model, self.layers, **{**self._options, **changes})
        for g, old in zip(new.param_groups, self.param_groups):
            g.update({k: v for k, v in old.items() if k not in g or k in ("lr", "lr_scale")})
        return new

    # -- the step ----------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._graph is not None:
            self._graph.step()
        else:
            self._step()
        return loss

    @property
    def graph_captured(self) -> bool:
        """Whether steps now replay a captured CUDA graph (experimental "cuda_graph")."""
        return self._graph is not None and self._graph.captured

    def load_state_dict(self, state_dict) -> None:
        super().load_state_dict(state_dict)
        if self._graph is not None:
            self._graph.reset()  # new momentum buffers: capture again

    def _step(self, sgd=None) -> None:
        """Project, SGD (``sgd``: another implementation of torch.optim.SGD's step), retract and
        condition."""
        layers = self.layers
        scales = self._direction_scales()
        self._each([functools.partial(self._project, b, m, scales) for b, m in self._buckets])
        if sgd is None:
            super().step()
        else:
            sgd()
        self._each([functools.partial(b.retract_, [getattr(layers[i], w) for i, w in m], self.bucket_retraction(k))
                    for k, (b, m) in enumerate(self._buckets)]
                   + [functools.partial(b.condition_, [layers[i].S for i in m], self.mode, self.kappa_bar,
                                        self.conditioner, self.bucket_retraction(None)) for b, m in self._core_buckets],
                   order=self._plan.work_order)

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

    def bucket_retraction(self, k: int | None) -> str:
        """The QR kernel of factor bucket ``k`` (None: the cores), ``retraction`` resolved."""
        if self.retraction != "auto":
            return self.retraction
        return self._plan.core_retraction if k is None else self._plan.factor_retraction[k]

    def _each(self, tasks: list, order: list[int] | None = None) -> None:
        """Run the callables (independent: disjoint tensors) one after another, or, with experimental
        "cpu_workers" where that pays, on worker threads in ``order`` (largest first, so that the
        workers finish together)."""
        if self._workers is not None and self._workers.pays(len(tasks), self._plan.work):
            self._workers.run(tasks if order is None else [tasks[i] for i in order])
            return
        for task in tasks:
            task()


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
