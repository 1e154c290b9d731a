"""Per-layer condition numbers and spectral norms of the *effective* weight matrices.

Which layers: every ``nn.Linear`` and ``nn.Conv2d`` (weight reshaped from
(out, in, kh, kw) to out × (in·kh·kw)), and every module that exposes
``lowrank_factors() -> (U, S, V)`` (duck-typed; ``S`` may be ``None`` for the
identity), whose effective weight is U S Vᵀ; the walk does not descend into such a
module. Normalisation and BatchNorm are not weights of this kind and are not layers of
the list, but they are folded into the layers' matrices (below).
For a pruned layer (``torch.nn.utils.prune``) ``module.weight`` already is the
masked weight, so its zeros count.

κ of a matrix is σ_max/σ_min over the singular values above the tolerance
``max(rows, cols) · eps(float32) · σ_max`` (numpy's ``matrix_rank`` rule at float32,
the precision the weights are trained in), so exact zeros from a low rank or from
pruning are ignored instead of making κ infinite. ``rank`` is the number of singular
values above that tolerance, of the *raw* weight (a diagonal fold with non-zero entries
does not change the rank). The singular values are computed in float64.

For U S Vᵀ the singular values are those of the small matrix R_U S R_Vᵀ, with
U = Q_U R_U and V = Q_V R_V thin QR factorisations; this equals κ(S) when U and V
are orthonormal and stays right when they drifted.

Folding (BatchNorm and input normalisation)
-------------------------------------------
At inference a BatchNorm is the per-channel affine map x ↦ a ⊙ x + c with
a_i = γ_i / √(running_var_i + ε), so in a conv → BN block the layer's linear map is
diag(a) · W, not W: a CondLR layer with κ(W) ≤ 1.5 can have a far larger κ(diag(a) W).
Likewise the model's ``Normalize`` ((x − mean)/std per input channel) scales the first
layer's input columns by 1/std. The reported ``kappa`` and ``spectral_norm`` are
therefore those of the *folded* matrix

    W_f = diag(a_out) · W · diag(b_in)

and ``kappa_raw``/``spectral_norm_raw`` those of the stored weight W alone. The folds are
found on a ``torch.fx`` trace of the model (weight layers, BatchNorm and ``Normalize`` are
leaves of the trace):

* ``a_out`` (label ``"bn"``): a BatchNorm1d/2d that consumes the layer's output directly
  and alone (the layer's output has no other user, nothing in between — conv → BN → act).
  Such a BN counts as folded and is not folded again anywhere else.
* ``b_in`` from a preceding BatchNorm (label ``"bn_in"``, pre-activation networks such as
  the WideResNet: BN → act → conv) that is not already folded into the layer before it:
  |a| (signs do not change singular values) is folded into *every* weight layer that
  consumes the BN's output through per-channel, positively homogeneous ops only —
  ReLU/LeakyReLU, Dropout, Identity, max/average/adaptive pooling, and a flatten
  (``nn.Flatten``, ``torch.flatten``/``.flatten(1)``, ``.view(x.size(0), -1)``) from
  (N, C, H, W) to (N, C·H·W). A path through anything else (a residual addition, a
  concatenation, …) is not folded.
* ``b_in`` from ``Normalize`` (label ``"input_norm"``): 1/std, folded the same way into the
  layer(s) that consume the normalised input.

A per-channel input factor is expanded to the matrix columns as the layout demands: kh·kw
times per channel for a convolution's (in, kh, kw) columns, H·W times per channel
(channel-major, as ``nn.Flatten`` orders them; the count is in_features / C) for a Linear
behind a flatten. A BN fold uses the running statistics (the inference map) whatever the
module's ``training`` flag; a BN without running statistics is not folded, nor is an input
factor into a grouped convolution, nor a module called at more than one place in the
forward pass. ``LayerCond.folded`` lists what was folded ("", "bn", "bn_in",
"input_norm", "bn+input_norm", …, in that order, joined by "+"). If the model cannot be
traced, nothing is folded (folded == raw), a warning is issued and every layer's
``folded`` reads ``"untraced"``.

For a low-rank layer, diag(a) U S Vᵀ diag(b) = (diag(a) U) S (diag(b) V)ᵀ, so the folded
singular values come from the same QR route applied to diag(a) U and diag(b) V.
"""

from __future__ import annotations

import math
import operator
import warnings
from dataclasses import dataclass

import torch
from torch import nn
import torch.nn.functional as F

#: relative tolerance unit: float32 machine epsilon (weights are trained in float32)
REL_TOL_UNIT = float(torch.finfo(torch.float32).eps)

#: ``LayerCond.folded`` of every layer of a model that could not be traced (nothing folded)
UNTRACED = "untraced"


@dataclass(frozen=True)
class LayerCond:
    name: str
    kind: str  # 'lowrank' | 'linear' | 'conv'
    shape: tuple[int, int]  # effective matrix: out × (in·kh·kw)
    kappa: float  # κ of the folded matrix diag(a_out)·W·diag(b_in) (== kappa_raw when nothing is folded)
    spectral_norm: float  # ‖diag(a_out)·W·diag(b_in)‖₂
    rank: int  # numerical rank of the raw weight W
    kappa_raw: float | None = None  # κ(W) of the stored weight alone (None: the same as kappa)
    spectral_norm_raw: float | None = None  # ‖W‖₂ (None: the same as spectral_norm)
    folded: str = ""  # what was folded: '' | 'bn' | 'bn_in' | 'input_norm' | 'bn+input_norm' | … | 'untraced'

    def __post_init__(self):
        if self.kappa_raw is None:
            object.__setattr__(self, "kappa_raw", self.kappa)
        if self.spectral_norm_raw is None:
            object.__setattr__(self, "spectral_norm_raw", self.spectral_norm)


def singular_values(m: torch.Tensor) -> torch.Tensor:
    """Singular values (float64, descending) of a 2-D tensor.

    A clearly non-square matrix is first reduced to the square triangular factor of its
    (Householder, backward-stable) QR, which has the same singular values and is several
    times cheaper to decompose than the wide matrix itself.
    """
    m = m.detach().to("cpu", torch.float64)
    rows, cols = m.shape
    if min(rows, cols) > 0 and max(rows, cols) >= 2 * min(rows, cols):
        m = torch.linalg.qr(m.T if cols > rows else m, mode="r").R
    return torch.linalg.svdvals(m)


def kappa_from_singular_values(s: torch.Tensor, shape: tuple[int, int]) -> tuple[float, int]:
    """(κ, numerical rank) from singular values of a ``shape`` matrix; κ is NaN for a zero matrix."""
    if s.numel() == 0:
        return float("nan"), 0
    smax = float(s.max())
    tol = max(shape) * REL_TOL_UNIT * smax
    kept = s[s > tol]
    if smax == 0.0 or kept.numel() == 0:
        return float("nan"), 0
    return smax / float(kept.min()), int(kept.numel())


def matrix_condition(m: torch.Tensor) -> float:
    """κ(m) = σ_max/σ_min over singular values above the tolerance (see the module docstring)."""
    return kappa_from_singular_values(singular_values(m), tuple(m.shape))[0]


def lowrank_singular_values(u: torch.Tensor, s: torch.Tensor | None, v: torch.Tensor,
                            row_scale: torch.Tensor | None = None,
                            col_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Singular values of diag(row_scale) U S Vᵀ diag(col_scale) (U: n×r, S: r×q or None, V: m×q) via QR.

    ``row_scale`` (n) and ``col_scale`` (m) default to ones; with them the factors are
    diag(row_scale)·U and diag(col_scale)·V.
    """
    u = u.detach().to("cpu", torch.float64).reshape(u.shape[0], -1)
    v = v.detach().to("cpu", torch.float64).reshape(v.shape[0], -1)
    if row_scale is not None:
        u = row_scale.detach().to("cpu", torch.float64).reshape(-1, 1) * u
    if col_scale is not None:
        v = col_scale.detach().to("cpu", torch.float64).reshape(-1, 1) * v
    ru = torch.linalg.qr(u, mode="reduced").R
    rv = torch.linalg.qr(v, mode="reduced").R
    mid = ru @ rv.T if s is None else ru @ s.detach().to("cpu", torch.float64) @ rv.T
    return torch.linalg.svdvals(mid)


def _is_lowrank(mod: nn.Module) -> bool:
    return callable(getattr(mod, "lowrank_factors", None))


# ---------------------------------------------------------------------------------------------
# folding: which diagonal scales multiply each weight layer's output rows and input columns
# ---------------------------------------------------------------------------------------------
_BN = (nn.BatchNorm1d, nn.BatchNorm2d)
# per-channel, positively homogeneous (or linear) ops a per-channel input scale passes through
_PASS_MODULES = (nn.ReLU, nn.LeakyReLU, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
                 nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d,
                 nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)
_PASS_FUNCTIONS = {F.relu, F.relu_, torch.relu, torch.relu_, F.leaky_relu, F.leaky_relu_, F.dropout,
                   F.dropout1d, F.dropout2d, F.dropout3d, F.max_pool1d, F.max_pool2d, F.avg_pool1d, F.avg_pool2d,
                   F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_max_pool1d, F.adaptive_max_pool2d}
_PASS_METHODS = {"relu", "relu_", "contiguous"}


def _is_normalize(mod: nn.Module) -> bool:
    try:
        from bench.models import Normalize
    except Exception:  # pragma: no cover - bench.models always imports
        return False
    return isinstance(mod, Normalize)


class _FoldTracer(torch.fx.Tracer):
    """Weight layers (dense, pruned, low-rank), BatchNorm and Normalize stay leaves of the trace."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if _is_lowrank(m) or isinstance(m, (nn.Linear, nn.Conv2d) + _BN) or _is_normalize(m):
            return True
        return super().is_leaf_module(m, module_qualified_name)


@dataclass(frozen=True)
class _InScale:
    """A per-channel factor on a tensor: ``vec`` (C,), along dim 1 of an (N, C, …) tensor
    ('spatial'), along the features of an (N, C) tensor ('features'), or channel-major over
    the features of a flattened (N, C·H·W) tensor ('flat')."""

    vec: torch.Tensor
    layout: str
    labels: frozenset
    absorbed: bool = False  # it includes the factor its input carried (for the Lipschitz walk)


@dataclass(frozen=True)
class _Fold:
    row: torch.Tensor | None  # (out,) or None
    col: torch.Tensor | None  # (in·kh·kw,) or None
    label: str


_LABEL_ORDER = ("bn", "bn_in", "input_norm")


def _bn_scale(bn: nn.Module) -> torch.Tensor | None:
    """a = γ/√(running_var + ε) in float64, or None for a BN without running statistics."""
    rv = getattr(bn, "running_var", None)
    if rv is None:
        return None
    a = 1.0 / torch.sqrt(rv.detach().to("cpu", torch.float64) + float(bn.eps))
    if getattr(bn, "weight", None) is not None:
        a = a * bn.weight.detach().to("cpu", torch.float64)
    return a


def _layer_style(mod: nn.Module) -> str:
    """'conv' (columns (in, kh, kw), input (N, C, H, W)), 'linear' (input (N, in)) or 'any'."""
    if isinstance(mod, nn.Conv2d) or (_is_lowrank(mod) and hasattr(mod, "kernel_size")):
        return "conv"
    if isinstance(mod, nn.Linear) or (_is_lowrank(mod) and hasattr(mod, "in_features")):
        return "linear"
    return "any"


def _layer_dims(mod: nn.Module) -> tuple[int, int]:
    """(rows, cols) of the layer's effective matrix."""
    if _is_lowrank(mod):
        u, _, v = mod.lowrank_factors()
        return int(u.shape[0]), int(v.shape[0])
    return int(mod.weight.shape[0]), int(mod.weight[0].numel())


def _expand_columns(scale: _InScale, mod: nn.Module, ncols: int) -> torch.Tensor | None:
    """The per-column factor for ``mod``'s matrix from a per-channel input factor, or None if it does not fit."""
    style, c = _layer_style(mod), scale.vec.numel()
    if c == 0 or ncols % c:
        return None
    if style == "conv":
        if scale.layout != "spatial" or getattr(mod, "groups", 1) != 1:
            return None
    elif style == "linear":
        if scale.layout == "spatial" or (scale.layout == "features" and ncols != c):
            return None
    return scale.vec.repeat_interleave(ncols // c)


def _flatten_dims(node: torch.fx.Node) -> bool:
    """Whether a flatten/view node maps (N, C, …) to (N, C·…) (start_dim 1, end_dim -1)."""
    if node.op == "call_function" and node.target is torch.flatten or node.op == "call_method" and node.target == "flatten":
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
        return start == 1 and end == -1
    if node.op == "call_method" and node.target in ("view", "reshape"):
        shape = node.args[1:] if len(node.args) > 2 else (node.args[1] if len(node.args) > 1 else ())
        if not isinstance(shape, (tuple, list)) or len(shape) != 2 or shape[1] != -1:
            return False
        n = shape[0]  # x.size(0) / x.shape[0] of the same tensor
        src = node.args[0]
        if isinstance(n, torch.fx.Node) and n.op == "call_method" and n.target == "size":
            return n.args[0] is src and (n.args[1:] == (0,) or n.kwargs.get("dim") == 0)
        if isinstance(n, torch.fx.Node) and n.op == "call_function" and n.target is operator.getitem:
            sh = n.args[0]
            return (n.args[1] == 0 and isinstance(sh, torch.fx.Node) and sh.op == "call_function"
                    and sh.target is getattr and sh.args == (src, "shape"))
    return False


def _passes(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether a per-channel factor on the node's first argument passes unchanged to its output."""
    if node.op == "call_module":
        return isinstance(modules.get(node.target), _PASS_MODULES) and not getattr(
            modules.get(node.target), "return_indices", False)
    if node.op == "call_function":
        return node.target in _PASS_FUNCTIONS and not node.kwargs.get("return_indices", False)
    if node.op == "call_method":
        return node.target in _PASS_METHODS
    return False


@dataclass
class _FoldAnalysis:
    """The traced graph and what the fold found on it: ``folds`` (module name -> :class:`_Fold`), the
    per-channel factors each node carries (``scales``) and the BNs folded as a layer's rows (``consumed``)."""

    graph: torch.fx.Graph
    modules: dict
    calls: dict
    folds: dict
    scales: dict
    consumed: set


def _folds(model: nn.Module) -> dict[str, _Fold] | None:
    """Module name -> its fold, for every weight layer with something to fold; None if tracing fails."""
    analysis = _fold_analysis(model)
    return None if analysis is None else analysis.folds


def _fold_analysis(model: nn.Module) -> _FoldAnalysis | None:
    """The fold of every weight layer and the graph it was found on; None if tracing fails."""
    try:
        graph = _FoldTracer().trace(model)
    except Exception as exc:  # noqa: BLE001 - any tracing failure means: do not fold
        warnings.warn(f"conditioning: {type(model).__name__} could not be traced with torch.fx "
                      f"({type(exc).__name__}: {exc}); BatchNorm/Normalize are not folded", stacklevel=3)
        return None
    modules = dict(model.named_modules())

    def is_weight(mod):
        return mod is not None and (_is_lowrank(mod) or isinstance(mod, (nn.Linear, nn.Conv2d)))

    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1

    # 1. a BN that directly and alone consumes a weight layer's output: folded as its rows
    rows: dict[str, torch.Tensor] = {}
    consumed: set[torch.fx.Node] = set()
    for node in graph.nodes:
        mod = modules.get(node.target) if node.op == "call_module" else None
        if not is_weight(mod) or calls[node.target] != 1 or len(node.users) != 1:
            continue
        user = next(iter(node.users))
        bn = modules.get(user.target) if user.op == "call_module" else None
        if not isinstance(bn, _BN) or not user.args or user.args[0] is not node:
            continue
        a = _bn_scale(bn)
        style = _layer_style(mod)
        if (a is None or a.numel() != _layer_dims(mod)[0]
                or (style == "conv" and not isinstance(bn, nn.BatchNorm2d))
                or (style == "linear" and not isinstance(bn, nn.BatchNorm1d))):
            continue
        rows[node.target] = a
        consumed.add(user)

    # 2. per-channel input factors from Normalize and the remaining BNs, carried forward
    scales: dict[torch.fx.Node, _InScale] = {}
    cols: dict[str, tuple[torch.Tensor, frozenset]] = {}
    for node in graph.nodes:
        arg = node.args[0] if node.args and isinstance(node.args[0], torch.fx.Node) else None
        inp = scales.get(arg) if arg is not None else None
        mod = modules.get(node.target) if node.op == "call_module" else None
        if is_weight(mod):
            if inp is not None and calls[node.target] == 1:
                col = _expand_columns(inp, mod, _layer_dims(mod)[1])
                if col is not None:
                    cols[node.target] = (col, inp.labels)
            continue
        if _is_normalize(mod):
            vec = 1.0 / mod.std.detach().to("cpu", torch.float64).reshape(-1)
            labels = frozenset({"input_norm"})
            absorbed = inp is not None and inp.layout == "spatial" and inp.vec.numel() == vec.numel()
            if absorbed:
                vec, labels = vec * inp.vec, labels | inp.labels
            scales[node] = _InScale(vec, "spatial", labels, absorbed)
        elif isinstance(mod, _BN):
            a = _bn_scale(mod)
            if node in consumed or a is None:
                continue
            layout = "spatial" if isinstance(mod, nn.BatchNorm2d) else "features"
            vec, labels = a.abs(), frozenset({"bn_in"})
            absorbed = inp is not None and inp.layout == layout and inp.vec.numel() == vec.numel()
            if absorbed:
                vec, labels = vec * inp.vec, labels | inp.labels
            scales[node] = _InScale(vec, layout, labels, absorbed)
        elif inp is not None:
            if _passes(node, modules):
                scales[node] = inp
            elif inp.layout == "spatial" and (isinstance(mod, nn.Flatten) and mod.start_dim == 1 and mod.end_dim == -1
                                              or _flatten_dims(node)):
                scales[node] = _InScale(inp.vec, "flat", inp.labels, True)

    out: dict[str, _Fold] = {}
    for name in set(rows) | set(cols):
        col, labels = cols.get(name, (None, frozenset()))
        row = rows.get(name)
        labels = labels | ({"bn"} if row is not None else set())
        out[name] = _Fold(row, col, "+".join(l for l in _LABEL_ORDER if l in labels))
    return _FoldAnalysis(graph, modules, calls, out, scales, consumed)


def _cond(sv: torch.Tensor, shape: tuple[int, int]) -> tuple[float, float, int]:
    k, r = kappa_from_singular_values(sv, shape)
    return k, (float(sv.max()) if sv.numel() else float("nan")), r


_TRACE = object()  # layer_conditioning's default: trace the model itself


def layer_conditioning(model: nn.Module, analysis=_TRACE) -> list[LayerCond]:
    """One :class:`LayerCond` per weight layer, in module order, with BatchNorm/Normalize folded in.

    ``kappa``/``spectral_norm`` are those of diag(a_out)·W·diag(b_in) (see the module
    docstring: the BN scale is part of the layer's linear map at inference),
    ``kappa_raw``/``spectral_norm_raw`` those of W alone; ``folded`` says what was folded.
    ``analysis``: a :func:`_fold_analysis` of ``model`` already made (None: untraceable).
    """
    analysis = _fold_analysis(model) if analysis is _TRACE else analysis
    folds = None if analysis is None else analysis.folds
    out: list[LayerCond] = []

    def record(prefix, kind, shape, sv_raw, sv_fold):
        k_raw, n_raw, r = _cond(sv_raw, shape)
        fold = folds.get(prefix) if folds is not None else None
        k, n = (k_raw, n_raw) if sv_fold is None else _cond(sv_fold, shape)[:2]
        label = UNTRACED if folds is None else (fold.label if fold is not None else "")
        out.append(LayerCond(prefix, kind, shape, k, n, r, k_raw, n_raw, label))

    def visit(mod: nn.Module, prefix: str) -> None:
        fold = folds.get(prefix) if folds else None
        if _is_lowrank(mod):
            u, s, v = mod.lowrank_factors()
            shape = (int(u.shape[0]), int(v.shape[0]))
            sv = lowrank_singular_values(u, s, v)
            sv_f = None if fold is None else lowrank_singular_values(u, s, v, fold.row, fold.col)
            record(prefix, "lowrank", shape, sv, sv_f)
            return
        if isinstance(mod, (nn.Linear, nn.Conv2d)):
            w = mod.weight.detach().to("cpu", torch.float64).reshape(mod.weight.shape[0], -1)
            shape = (int(w.shape[0]), int(w.shape[1]))
            sv_f = None
            if fold is not None:
                wf = w if fold.row is None else fold.row.reshape(-1, 1) * w
                wf = wf if fold.col is None else wf * fold.col.reshape(1, -1)
                sv_f = singular_values(wf)
            record(prefix, "linear" if isinstance(mod, nn.Linear) else "conv", shape, singular_values(w), sv_f)
            return
        for name, child in mod.named_children():
            visit(child, f"{prefix}.{name}" if prefix else name)

    visit(model, "")
    return out


def conditioning_summary(layers: list[LayerCond]) -> dict:
    """Network-level numbers from the per-layer list.

    The folded numbers (BatchNorm scale and input normalisation folded into each layer's
    matrix, diag(a_out)·W·diag(b_in); see the module docstring — at inference the BN scale
    is part of the layer's linear map, so κ(W) alone understates or overstates it):

    * ``layer_kappa``, ``layer_spectral_norm``: per layer, of the folded matrix;
    * ``cond_max``: the largest folded κ;
    * ``log10_cond_prod``: log10 ∏κ_l over the folded κ, the weight part of the paper's
      bound on the network's relative condition number (κ(σ) of the activation is not
      included);
    * ``lipschitz_upper``: ∏‖W_f,l‖₂ over the folded matrices. It is the Lipschitz bound of
      a chain of the weight layers for 1-Lipschitz activations and pooling, now from the
      [0, 1] pixel input (Normalize's 1/std folded) and with the BN scales included
      (residual shortcuts are not accounted for); for a convolution the operator norm can
      exceed the reshaped matrix's by up to sqrt(kh·kw), so treat it as the paper's proxy,
      not a certificate.

    The raw numbers, of the stored weights W alone (nothing folded):

    * ``layer_kappa_raw``, ``layer_spectral_norm_raw``: per layer;
    * ``cond_max_raw``: the largest raw κ.

    ``layer_folded``: per layer, what was folded ("" nothing, "bn" the BN after it,
    "bn_in" a BN before it, "input_norm" the model's Normalize, joined by "+";
    "untraced" when the model could not be traced and nothing was folded).

    NaN (a zero layer) is left out of the max and the products. Lists follow layer order.
    """
    def finite(vals):
        return [v for v in vals if not math.isnan(v)]

    kappas = finite(L.kappa for L in layers)
    kappas_raw = finite(L.kappa_raw for L in layers)
    norms = finite(L.spectral_norm for L in layers)
    return {
        "layer_names": [L.name for L in layers],
        "layer_kappa": [float(L.kappa) for L in layers],
        "layer_spectral_norm": [float(L.spectral_norm) for L in layers],
        "layer_kappa_raw": [float(L.kappa_raw) for L in layers],
        "layer_spectral_norm_raw": [float(L.spectral_norm_raw) for L in layers],
        "layer_folded": [str(L.folded) for L in layers],
        "layer_ranks": [int(L.rank) for L in layers],
        "layer_shapes": [f"{L.shape[0]}x{L.shape[1]}" for L in layers],
        "layer_kinds": [L.kind for L in layers],
        "cond_max": float(max(kappas)) if kappas else None,
        "cond_max_raw": float(max(kappas_raw)) if kappas_raw else None,
        "log10_cond_prod": float(sum(math.log10(k) for k in kappas)) if kappas else None,
        "lipschitz_upper": float(math.prod(norms)) if norms else None,
    }


# ---------------------------------------------------------------------------------------------
# the operator each layer applies: a convolution on its whole input, not its reshaped kernel
# ---------------------------------------------------------------------------------------------
#: an operator matrix is built and decomposed exactly when its smaller side is at most this ...
EXACT_MAX_SIDE = 2048
#: ... and it has at most this many entries (digits-cnn's 32→64 conv on 8×8: 2048 × 4096)
EXACT_MAX_ENTRIES = 2048 * 4096
#: power iteration: at most this many steps, stopped when σ changes by less than POWER_TOL (relative)
POWER_ITERS = 50
POWER_TOL = 1e-4

#: ``LayerOperator.method`` values
EXACT_SVD, FFT_CIRCULAR, POWER_ITERATION, NOT_CALLED = "exact_svd", "fft_circular", "power_iteration", "not_called"


@dataclass(frozen=True)
class LayerOperator:
    """The linear map a weight layer applies in the forward pass, folds included (see :func:`layer_operators`).

    ``spectral_norm`` is σ_max: exact for 'exact_svd' / 'fft_circular', a power-iteration estimate
    (from below) for 'power_iteration'. ``norm_bound`` is a guaranteed upper bound on σ_max (equal to
    it where exact; None where none is known); ``kappa`` is the operator's κ, None where only σ_max
    is known."""

    name: str
    in_shape: tuple[int, ...]  # per example: (C, H, W) for a convolution, (features,) for a Linear
    out_shape: tuple[int, ...]
    spectral_norm: float | None
    norm_bound: float | None
    kappa: float | None
    method: str


def _conv_apply(mod: nn.Module):
    """``f(x, weight)``: the module's convolution (stride, padding and its mode, dilation, groups) with ``weight``."""
    if isinstance(mod, nn.Conv2d):
        return lambda x, w: mod._conv_forward(x, w, None)
    if _is_lowrank(mod) and hasattr(mod, "_conv"):
        return lambda x, w: mod._conv(x, w, None)
    raise TypeError(f"{type(mod).__name__} is not a convolution this module knows")


def _folded_kernel(mod: nn.Module, fold: _Fold | None) -> torch.Tensor:
    """The (out, in/groups, kh, kw) float64 kernel with the fold's row and column factors multiplied in.

    A low-rank convolution runs as conv(Vᵀ) then a 1×1 conv with U·S; both are linear and the 1×1
    conv mixes channels per pixel only, so the composition is exactly one conv with kernel U S Vᵀ."""
    w = mod.dense_weight() if _is_lowrank(mod) else mod.weight
    w = w.detach().to("cpu", torch.float64)
    if fold is not None and fold.row is not None:
        w = fold.row.reshape(-1, 1, 1, 1) * w
    if fold is not None and fold.col is not None:
        w = w * fold.col.reshape(1, *w.shape[1:])
    return w


def operator_matrix(apply, in_shape: tuple[int, ...], chunk: int = 512) -> torch.Tensor:
    """The dense (n_out, n_in) float64 matrix of the linear map ``apply`` on inputs of shape ``in_shape``
    (one example), built by applying it to the standard basis."""
    n_in = math.prod(in_shape)
    cols = []
    for i in range(0, n_in, chunk):
        k = min(chunk, n_in - i)
        basis = torch.zeros(k, n_in, dtype=torch.float64)
        basis[torch.arange(k), torch.arange(i, i + k)] = 1.0
        cols.append(apply(basis.reshape(k, *in_shape)).reshape(k, -1))
    return torch.cat(cols).T


def conv_matrix(kernel: torch.Tensor, in_shape: tuple[int, int, int], stride, pads, dilation, groups: int = 1,
                circular: bool = False) -> torch.Tensor:
    """The dense (out·Ho·Wo, C·H·W) matrix of a convolution with zero (or ``circular``) padding, written
    tap by tap from the kernel (no convolution is run): output (o, t, u) reads input (c, s·t − p + d·a, …)
    with weight K[o, c, a, b]; a zero-padding tap that falls outside the input is dropped, a circular one
    wraps."""
    kernel = _full_kernel(kernel.to(torch.float64), groups)
    o, c, kh, kw = kernel.shape
    C, H, W = in_shape
    (sh, sw), (dh, dw), (pt, pb, pl, pr) = stride, dilation, pads
    ho, wo = (H + pt + pb - dh * (kh - 1) - 1) // sh + 1, (W + pl + pr - dw * (kw - 1) - 1) // sw + 1
    m = kernel.new_zeros(o, ho, wo, C, H, W)
    for t in range(ho):
        for u in range(wo):
            for a in range(kh):
                y = sh * t - pt + dh * a
                if not 0 <= y < H and not circular:
                    continue
                for b in range(kw):
                    x = sw * u - pl + dw * b
                    if not 0 <= x < W and not circular:
                        continue
                    m[:, t, u, :, y % H, x % W] += kernel[:, :, a, b]
    return m.reshape(o * ho * wo, C * H * W)


def _full_kernel(kernel: torch.Tensor, groups: int) -> torch.Tensor:
    """A grouped (out, in/groups, kh, kw) kernel as the full block-diagonal (out, in, kh, kw) one."""
    if groups == 1:
        return kernel
    o, ig = kernel.shape[:2]
    full = kernel.new_zeros(o, ig * groups, *kernel.shape[2:])
    og = o // groups
    for g in range(groups):
        full[g * og:(g + 1) * og, g * ig:(g + 1) * ig] = kernel[g * og:(g + 1) * og]
    return full


def _gram_singular_values(m: torch.Tensor) -> torch.Tensor:
    """Singular values (descending) of a (batch of) matrix from the eigenvalues of its smaller Gram matrix
    (float64: √ of eigenvalues keeps ~8 significant digits down to σ_min/σ_max ≈ 1e-6, far below the rank
    tolerance, and is ~3× faster than an SVD)."""
    g = m.mH @ m if m.shape[-2] >= m.shape[-1] else m @ m.mH
    return torch.linalg.eigvalsh(g).clamp_min(0).sqrt().flip(-1)


def _dilated(kernel: torch.Tensor, dilation: tuple[int, int]) -> torch.Tensor:
    dh, dw = dilation
    if (dh, dw) == (1, 1):
        return kernel
    o, i, kh, kw = kernel.shape
    out = kernel.new_zeros(o, i, (kh - 1) * dh + 1, (kw - 1) * dw + 1)
    out[:, :, ::dh, ::dw] = kernel
    return out


def _dft_blocks(kernel: torch.Tensor, grid: tuple[int, int], groups: int = 1) -> torch.Tensor:
    """(frequencies, out, in) complex128: the DFT blocks of the stride-1 circular convolution with ``kernel`` on
    ``grid`` (taps beyond the grid wrap around), over the half-spectrum of ``rfft2`` — a real kernel's
    frequency −f has the conjugate block of f, with the same singular values."""
    kernel = _full_kernel(kernel.to(torch.float64), groups)
    o, i, kh, kw = kernel.shape
    gh, gw = grid
    wrapped = kernel.new_zeros(o, i, gh, gw)
    for a in range(kh):
        for b in range(kw):
            wrapped[:, :, a % gh, b % gw] += kernel[:, :, a, b]
    return torch.fft.rfft2(wrapped).permute(2, 3, 0, 1).reshape(-1, o, i)


def circular_singular_values(kernel: torch.Tensor, grid: tuple[int, int], groups: int = 1) -> torch.Tensor:
    """Singular values of the stride-1 circular convolution with ``kernel`` (out, in/groups, kh, kw) on an
    H×W ``grid``: it is block-diagonalised by the 2-D DFT into one out×in matrix per frequency (Sedghi, Gupta &
    Long, ICLR 2019), whose singular values together are the operator's. Returns (frequencies, min(out, in)),
    over the half-spectrum (:func:`_dft_blocks`): the set of values, max and min, is the whole operator's."""
    return _gram_singular_values(_dft_blocks(kernel, grid, groups))


#: relative rounding margin of :func:`circular_norm_bound` per unit of n·eps(float32)
_CHOL_MARGIN = 4.0


def circular_norm_bound(kernel: torch.Tensor, grid: tuple[int, int], groups: int = 1, seed: int = 0) -> float:
    """A guaranteed upper bound on the largest singular value of the circular convolution (as
    :func:`circular_singular_values`), several times cheaper than computing them all.

    With G_f = B_fᴴB_f per DFT block, ‖A‖² = max_f λ_max(G_f) ≤ μ exactly when every μI − G_f is positive
    definite, which a Cholesky factorisation certifies. μ starts just above a batched power-iteration estimate
    and grows by 2 % until every factorisation succeeds. The work is in complex64; the Gram matrices and the
    factorisation are then exact for a perturbation of relative size ≲ n·eps(float32) (backward stability), so
    the returned √μ carries a factor √(1 + 4·n·eps(float32)) — below 1e-3 for n ≤ 4096."""
    b = _dft_blocks(kernel, grid, groups).to(torch.complex64)
    g = b.mH @ b if b.shape[-2] >= b.shape[-1] else b @ b.mH
    n = g.shape[-1]
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(g.shape[0], n, 1, generator=gen).to(g.dtype)
    for _ in range(30):
        v = g @ v
        v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-30)
    mu = float((v.mH @ g @ v).real.max()) * 1.001 + 1e-30
    eye = torch.eye(n, dtype=g.dtype)
    for _ in range(200):
        if bool((torch.linalg.cholesky_ex(mu * eye - g).info == 0).all()):
            return math.sqrt(mu * (1 + _CHOL_MARGIN * n * REL_TOL_UNIT))
        mu *= 1.02
    return float(_gram_singular_values(b.to(torch.complex128))[:, 0].max())  # pragma: no cover - not reached


def power_iteration_norm(apply, in_shape: tuple[int, ...], *, iters: int = POWER_ITERS, tol: float = POWER_TOL,
                         seed: int = 0) -> float:
    """σ_max of the linear map ``apply`` by power iteration on AᵀA (adjoint by autograd's vector-Jacobian product).

    The value ‖A v‖ for a unit v never exceeds σ_max: it is an estimate from below."""
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(1, *in_shape, generator=gen)
    _, vjp = torch.func.vjp(apply, torch.zeros(1, *in_shape))  # linear: the adjoint does not depend on the point
    sigma = 0.0
    with torch.no_grad():
        for _ in range(iters):
            v = v / v.norm()
            u = apply(v)
            prev, sigma = sigma, float(u.norm())
            if sigma == 0.0 or abs(sigma - prev) <= tol * sigma:
                break
            (v,) = vjp(u)
    return sigma


def _conv_geometry(mod: nn.Module, in_shape, out_shape):
    """(stride, (top, bottom, left, right) zero padding, dilation, kernel size, padding_mode) of a convolution."""
    kh, kw = mod.kernel_size if isinstance(mod.kernel_size, tuple) else (mod.kernel_size,) * 2
    stride, dilation = tuple(mod.stride), tuple(mod.dilation)
    pad = mod.padding
    if isinstance(pad, str):  # 'valid' / 'same' (stride 1): PyTorch puts the odd pixel at the end
        if pad == "valid":
            pads = (0, 0, 0, 0)
        else:
            th, tw = dilation[0] * (kh - 1), dilation[1] * (kw - 1)
            pads = (th // 2, th - th // 2, tw // 2, tw - tw // 2)
    else:
        pads = (pad[0], pad[0], pad[1], pad[1])
    return stride, pads, dilation, (kh, kw), getattr(mod, "padding_mode", "zeros")


def _polyphase(kernel: torch.Tensor, grid: tuple[int, int], stride: tuple[int, int], groups: int):
    """(kernel, grid) of a stride-1 convolution on the coarse grid equal to the stride-s one on ``grid`` up to a
    permutation of the input (space-to-depth: the s·s sub-grids x[:, a::s, b::s] as extra input channels).

    A stride-s output at t reads x[s·t + k] = x_{k mod s}[t + k div s], so the new kernel is
    K'[o, (c, a, b), q, r] = K[o, c, s·q + a, s·r + b]; the grid is zero-extended to a multiple of s (still an
    isometric embedding) and no kept output wraps around on it. Grouped kernels are expanded to full ones."""
    kernel = _full_kernel(kernel, groups)
    sh, sw = stride
    if (sh, sw) == (1, 1):
        return kernel, grid
    o, c, kh, kw = kernel.shape
    qh, qw = -(-kh // sh), -(-kw // sw)
    k = kernel.new_zeros(o, c, qh * sh, qw * sw)
    k[:, :, :kh, :kw] = kernel
    k = k.reshape(o, c, qh, sh, qw, sw).permute(0, 1, 3, 5, 2, 4).reshape(o, c * sh * sw, qh, qw)
    return k, (-(-grid[0] // sh), -(-grid[1] // sw))


def conv_operator(mod: nn.Module, kernel: torch.Tensor, in_shape: tuple[int, int, int], name: str = "",
                  *, exact_max_side: int = EXACT_MAX_SIDE, exact_max_entries: int = EXACT_MAX_ENTRIES,
                  seed: int = 0) -> LayerOperator:
    """The spectrum of ``mod``'s convolution with ``kernel`` on one (C, H, W) input, by the cheapest exact route.

    * 'fft_circular': circular padding, stride 1 and an output as large as the input — the operator is a
      2-D circular convolution, exactly block-diagonalised by the DFT (all singular values);
    * 'exact_svd': the dense operator matrix when it is small enough (all singular values);
    * 'power_iteration': otherwise; σ_max estimated from below, κ unknown. Its guaranteed upper bound: a
      zero-padded convolution is the circular convolution on the zero-padded grid (on which no tap wraps)
      restricted to the embedded input and to the outputs it keeps — an isometry and a coordinate
      selection, neither of which increases the norm — so ‖A‖ ≤ max over frequencies of σ_max of the
      padded grid's DFT blocks; a stride s is first rewritten as stride 1 on the s-times coarser grid with
      s² times the input channels (:func:`_polyphase`), which keeps the bound tight. Likewise circular padding with stride > 1 keeps a subset of a
      circulant's outputs. Reflect/replicate padding has no such bound (None).
    """
    apply64 = _conv_apply(mod)
    with torch.no_grad():
        out_shape = tuple(apply64(torch.zeros(1, *in_shape, dtype=torch.float64), kernel).shape[1:])
    n_in, n_out = math.prod(in_shape), math.prod(out_shape)
    stride, pads, dilation, _, mode = _conv_geometry(mod, in_shape, out_shape)
    groups = int(getattr(mod, "groups", 1))
    ext = _dilated(kernel, dilation)
    H, W = in_shape[1:]
    circulant = mode == "circular" and stride == (1, 1) and out_shape[1:] == (H, W)
    shape = (n_out, n_in)
    if circulant or (min(shape) <= exact_max_side and n_in * n_out <= exact_max_entries):
        if circulant:
            sv, method = circular_singular_values(ext, (H, W), groups).flatten(), FFT_CIRCULAR
        else:
            if mode in ("zeros", "circular"):
                m = conv_matrix(kernel, in_shape, stride, pads, dilation, groups, circular=mode == "circular")
            else:
                with torch.no_grad():
                    m = operator_matrix(lambda x: apply64(x, kernel), in_shape)
            sv, method = _gram_singular_values(m), EXACT_SVD
        k, _ = kappa_from_singular_values(sv, shape)
        smax = float(sv.max()) if sv.numel() else float("nan")
        return LayerOperator(name, tuple(in_shape), out_shape, smax, smax, None if math.isnan(k) else k, method)
    if mode == "zeros":
        kern, grid = _polyphase(ext, (H + pads[0] + pads[1], W + pads[2] + pads[3]), stride, groups)
        bound = circular_norm_bound(kern, grid, seed=seed)
    elif mode == "circular" and all(o <= s for o, s in zip(out_shape[1:], (H, W))):
        bound = circular_norm_bound(ext, (H, W), groups, seed=seed)
    else:
        bound = None
    k32 = kernel.to(torch.float32)
    est = power_iteration_norm(lambda x: apply64(x, k32), tuple(in_shape), seed=seed)
    if bound is not None:
        est = min(est, bound)  # float32 rounding cannot push the estimate over the exact bound
    return LayerOperator(name, tuple(in_shape), out_shape, est, bound, None, POWER_ITERATION)


def _input_shapes(model: nn.Module, x_example: torch.Tensor, names: list[str]) -> dict[str, list[tuple[int, ...]]]:
    """Per weight layer, the per-example shapes of its inputs in one forward pass of ``x_example``."""
    mods = dict(model.named_modules())
    seen: dict[str, list[tuple[int, ...]]] = {n: [] for n in names}
    hooks = []
    for n in names:
        def hook(_m, args, _n=n):
            if args and isinstance(args[0], torch.Tensor):
                seen[_n].append(tuple(args[0].shape[1:]))
        hooks.append(mods[n].register_forward_pre_hook(hook))
    try:
        p = next(model.parameters(), None)
        with torch.no_grad():
            model(x_example[:1].to(p.device if p is not None else "cpu"))
    finally:
        for h in hooks:
            h.remove()
    return seen


def layer_operators(model: nn.Module, x_example: torch.Tensor, layers: list[LayerCond], analysis=_TRACE,
                    **kw) -> list[LayerOperator]:
    """One :class:`LayerOperator` per layer of ``layers`` (:func:`layer_conditioning`'s list, same order).

    The input size of each layer is recorded with a forward pre-hook on one example input. The
    operator is the layer with its folds (:func:`_fold_analysis`): a BN scale after it multiplies every
    output position of its channel, an input factor every input position of its channel, so for a
    convolution they multiply into the kernel (:func:`_folded_kernel`). A Linear's operator is its
    folded matrix, so its numbers are ``layers``' (a Linear applied along extra dimensions repeats the
    same matrix: the same σ and κ). ``kw`` goes to :func:`conv_operator`.
    """
    analysis = _fold_analysis(model) if analysis is _TRACE else analysis
    folds = analysis.folds if analysis is not None else {}
    mods = dict(model.named_modules())
    shapes = _input_shapes(model, x_example, [L.name for L in layers])
    out = []
    for L in layers:
        mod, seen = mods[L.name], list(dict.fromkeys(shapes[L.name]))
        if len(seen) != 1:  # never called, or called on inputs of different sizes: no one operator
            out.append(LayerOperator(L.name, seen[0] if seen else (), (), None, None, None, NOT_CALLED))
            continue
        if _layer_style(mod) != "conv":
            k = None if math.isnan(L.kappa) else float(L.kappa)
            out.append(LayerOperator(L.name, seen[0], seen[0][:-1] + (L.shape[0],), L.spectral_norm,
                                     L.spectral_norm, k, EXACT_SVD))
            continue
        out.append(conv_operator(mod, _folded_kernel(mod, folds.get(L.name)), seen[0], L.name, **kw))
    return out


# ---------------------------------------------------------------------------------------------
# a Lipschitz upper bound of the whole network from the layers' operator norms
# ---------------------------------------------------------------------------------------------
_ADD = {operator.add, operator.iadd, operator.sub, operator.isub, torch.add, torch.sub}
_ADD_METHODS = {"add", "add_", "sub", "sub_"}
_RESHAPE_METHODS = {"view", "reshape", "flatten", "contiguous"}
_NT = "not a tensor"


def _pool_overlap(kernel, stride, dilation=1) -> float:
    """√(most windows one input pixel falls into): the L2 Lipschitz factor of a max pooling (1 when they do not overlap)."""
    k, s, d = (_pair(v) for v in (kernel, stride if stride else kernel, dilation))
    count = 1
    for ki, si, di in zip(k, s, d):
        count *= min(ki, -(-((ki - 1) * di + 1) // si))
    return math.sqrt(count)


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _global(output_size) -> bool:
    return all(o == 1 for o in _pair(output_size))


def _unary_factor(node: torch.fx.Node, modules: dict) -> float | None:
    """The L2 Lipschitz factor of a one-input op that acts per channel (so a per-channel factor commutes
    with its Jacobian) or only reshapes; None when it is not known here."""
    if node.op == "call_module":
        m = modules.get(node.target)
        if isinstance(m, (nn.ReLU, nn.Identity, nn.Flatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)):
            return 1.0  # dropout: the identity in eval mode
        if isinstance(m, nn.LeakyReLU):
            return max(1.0, abs(m.negative_slope))
        if isinstance(m, (nn.MaxPool1d, nn.MaxPool2d)) and not m.return_indices:
            return _pool_overlap(m.kernel_size, m.stride, m.dilation)
        if isinstance(m, (nn.AvgPool1d, nn.AvgPool2d)) and m.count_include_pad and getattr(m, "divisor_override", None) is None:
            # every weight is 1/k: rows sum to ≤ 1, columns to ≤ (windows per pixel)/k ≤ 1 (Schur's test)
            return 1.0
        if isinstance(m, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)):
            return 1.0 if _global(m.output_size) and not getattr(m, "return_indices", False) else None
        return None
    if node.op == "call_function":
        t, a, kw = node.target, node.args, node.kwargs
        if t in (F.relu, F.relu_, torch.relu, torch.relu_, F.dropout, F.dropout1d, F.dropout2d, torch.flatten,
                 operator.neg, torch.neg):
            return 1.0
        if t in (F.leaky_relu, F.leaky_relu_):
            return max(1.0, abs(a[1] if len(a) > 1 else kw.get("negative_slope", 0.01)))
        if t in (F.max_pool1d, F.max_pool2d) and not kw.get("return_indices", False):
            return _pool_overlap(a[1] if len(a) > 1 else kw["kernel_size"], a[2] if len(a) > 2 else kw.get("stride"),
                                 a[4] if len(a) > 4 else kw.get("dilation", 1))
        if t in (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_max_pool1d, F.adaptive_max_pool2d):
            return 1.0 if _global(a[1] if len(a) > 1 else kw.get("output_size")) else None
        return None
    if node.op == "call_method":
        if node.target in ("relu", "relu_", "neg") or node.target in _RESHAPE_METHODS:
            return 1.0
    return None


def lipschitz_bound(model: nn.Module, bounds: dict[str, float | None], analysis=_TRACE) -> tuple[float | None, str]:
    """(an upper bound on the network's L2 Lipschitz constant from its input to its output, '') or (None, why).

    A walk over the ``torch.fx`` graph of :func:`_fold_analysis` with each node's bound on the norm of its
    Jacobian: a weight layer multiplies by its operator bound (``bounds``, module name -> ‖A‖₂ bound with its
    folds), a residual addition adds its operands' bounds, a concatenation takes the root of the sum of
    squares, LeakyReLU/ReLU, eval-mode dropout, reshapes and non-overlapping max pooling multiply by 1
    (overlapping max pooling by √(windows per pixel)), average pooling by at most 1. A per-channel factor
    the fold carries to a layer (Normalize's 1/std, a BN before the layer) is already in that layer's bound:
    per-channel factors commute with per-channel Jacobians (diagonal, or a selection within a channel), so
    ‖A·J·diag(s)‖ ≤ ‖A·diag(s)‖·‖J‖; where such a factor reaches anything else (an addition, a layer that
    did not fold it) its max |s| is multiplied in there. Any op not listed makes the bound unknown.
    """
    analysis = _fold_analysis(model) if analysis is _TRACE else analysis
    if analysis is None:
        return None, "the model could not be traced with torch.fx"
    scales, modules, folds = analysis.scales, analysis.modules, analysis.folds
    val: dict[torch.fx.Node, object] = {}

    def inputs(node):
        found = []
        torch.fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n))
        return [n for n in found if val.get(n) is not _NT]

    def plain(n):  # the node's bound with the per-channel factor it still carries multiplied in
        s = scales.get(n)
        return val[n] * (float(s.vec.abs().max()) if s is not None and s.vec.numel() else 1.0)

    for node in analysis.graph.nodes:
        ins = inputs(node)
        if any(val[n] is None for n in ins):
            return None, f"no bound for {ins[0]}"
        mod = modules.get(node.target) if node.op == "call_module" else None
        if node.op == "placeholder":
            val[node] = 1.0
        elif node.op == "get_attr":
            val[node] = 0.0  # a constant
        elif node.op == "output":
            return (plain(ins[0]) if ins else None), ("" if ins else "the output does not depend on the input")
        elif (node.op == "call_function" and node.target in (getattr, len)) or (
                node.op == "call_method" and node.target in ("size", "dim")) or (node.op != "placeholder" and not ins):
            val[node] = _NT  # shapes and sizes, not data
        elif mod is not None and (_is_lowrank(mod) or isinstance(mod, (nn.Linear, nn.Conv2d))):
            b = bounds.get(node.target)
            if b is None:
                return None, f"no operator bound for layer {node.target!r}"
            fold = folds.get(node.target)
            val[node] = (val[ins[0]] if fold is not None and fold.col is not None else plain(ins[0])) * b
        elif mod is not None and (isinstance(mod, _BN) or _is_normalize(mod)):
            if node in analysis.consumed:  # folded into the layer before it as its rows
                val[node] = val[ins[0]]
            elif node in scales:
                val[node] = val[ins[0]] if scales[node].absorbed else plain(ins[0])
            else:
                return None, f"{node.target!r} has no running statistics"
        elif node.op == "call_function" and node.target is operator.getitem and len(ins) == 1:
            val[node] = plain(ins[0])  # slicing a tensor keeps a subset of its coordinates
        elif (node.op == "call_function" and node.target in _ADD) or (
                node.op == "call_method" and node.target in _ADD_METHODS):
            if node.kwargs.get("alpha", 1) != 1:
                return None, f"{node.name}: addition with alpha"
            val[node] = sum(plain(n) for n in ins)
        elif node.op == "call_function" and node.target is torch.cat:
            val[node] = math.sqrt(sum(plain(n) ** 2 for n in ins))
        elif (node.op == "call_function" and node.target in (operator.mul, torch.mul, operator.truediv)
              and len(ins) == 1 and len(node.args) == 2 and isinstance(node.args[1], (int, float))
              and node.args[0] is ins[0] and node.args[1] != 0):  # x * c, x / c
            c = abs(float(node.args[1]))
            val[node] = plain(ins[0]) * (1 / c if node.target is operator.truediv else c)
        else:
            f = _unary_factor(node, modules) if len(ins) == 1 else None
            if f is None:
                return None, f"no Lipschitz bound for {node.op} {node.target!s}"
            carried = node in scales and (scales[node] is scales.get(ins[0]) or scales[node].absorbed)
            val[node] = (val[ins[0]] if carried else plain(ins[0])) * f
    return None, "the graph has no output"


def operator_summary(ops: list[LayerOperator], lipschitz: float | None = None, note: str = "") -> dict:
    """The operator columns (see ``bench/metrics/families/conditioning.py``) from :func:`layer_operators`."""
    def shape(t):
        return "x".join(str(int(d)) for d in t)

    kappas = [o.kappa for o in ops if o.kappa is not None and not math.isnan(o.kappa)]
    return {
        "layer_operator_kappa": [o.kappa for o in ops],
        "layer_operator_spectral_norm": [o.spectral_norm for o in ops],
        "layer_operator_norm_bound": [o.norm_bound for o in ops],
        "layer_operator_method": [o.method for o in ops],
        "layer_operator_shapes": [f"{shape(o.in_shape)}->{shape(o.out_shape)}" for o in ops],
        "operator_cond_max": float(max(kappas)) if kappas else None,
        "operator_lipschitz_upper": lipschitz,
        "operator_lipschitz_note": note,
    }


def conditioning_report(model: nn.Module, x_example: torch.Tensor | None = None, **kw) -> dict:
    """Every conditioning column: the reshaped-matrix numbers (:func:`conditioning_summary`) and, given one
    example input, the operator numbers (:func:`operator_summary`). The model is traced once."""
    analysis = _fold_analysis(model)
    layers = layer_conditioning(model, analysis)
    out = conditioning_summary(layers)
    if x_example is not None and len(x_example):
        ops = layer_operators(model, x_example, layers, analysis, **kw)
        lip, note = lipschitz_bound(model, {o.name: o.norm_bound for o in ops}, analysis)
        out.update(operator_summary(ops, lip, note))
    return out
