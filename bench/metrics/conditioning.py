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


def _folds(model: nn.Module) -> dict[str, _Fold] | None:
    """Module name -> its fold, for every weight layer with something to fold; None if tracing fails."""
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
            if inp is not None and inp.layout == "spatial" and inp.vec.numel() == vec.numel():
                vec, labels = vec * inp.vec, labels | inp.labels
            scales[node] = _InScale(vec, "spatial", labels)
        elif isinstance(mod, _BN):
            a = _bn_scale(mod)
            if node in consumed or a is None:
                continue
            layout = "spatial" if isinstance(mod, nn.BatchNorm2d) else "features"
            vec, labels = a.abs(), frozenset({"bn_in"})
            if inp is not None and inp.layout == layout and inp.vec.numel() == vec.numel():
                vec, labels = vec * inp.vec, labels | inp.labels
            scales[node] = _InScale(vec, layout, labels)
        elif inp is not None:
            if _passes(node, modules):
                scales[node] = inp
            elif inp.layout == "spatial" and (isinstance(mod, nn.Flatten) and mod.start_dim == 1 and mod.end_dim == -1
                                              or _flatten_dims(node)):
                scales[node] = _InScale(inp.vec, "flat", inp.labels)

    out: dict[str, _Fold] = {}
    for name in set(rows) | set(cols):
        col, labels = cols.get(name, (None, frozenset()))
        row = rows.get(name)
        labels = labels | ({"bn"} if row is not None else set())
        out[name] = _Fold(row, col, "+".join(l for l in _LABEL_ORDER if l in labels))
    return out


def _cond(sv: torch.Tensor, shape: tuple[int, int]) -> tuple[float, float, int]:
    k, r = kappa_from_singular_values(sv, shape)
    return k, (float(sv.max()) if sv.numel() else float("nan")), r


def layer_conditioning(model: nn.Module) -> list[LayerCond]:
    """One :class:`LayerCond` per weight layer, in module order, with BatchNorm/Normalize folded in.

    ``kappa``/``spectral_norm`` are those of diag(a_out)·W·diag(b_in) (see the module
    docstring: the BN scale is part of the layer's linear map at inference),
    ``kappa_raw``/``spectral_norm_raw`` those of W alone; ``folded`` says what was folded.
    """
    folds = _folds(model)
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

    The raw numbers, of the stored weights W alone (as before folding existed):

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
