"""Per-layer condition numbers and spectral norms: of the reshaped kernels (folded and raw) and of the operators the
layers apply (a convolution on its whole input)."""

from __future__ import annotations

from bench.columns import Column, EvalInputs, MetricFamily, fmt
from bench.registry import register_metric


def compute(inp: EvalInputs) -> dict:
    from bench.metrics.conditioning import conditioning_report

    return conditioning_report(inp.model, inp.data.x_test[:1], seed=inp.ctx.seed)


def summary(row: dict) -> list[str]:
    if row.get("cond_max") is None:
        return []
    lines = [f"  cond_max    {fmt(row.get('cond_max'), '.4g')} (reshaped kernels)   log10 prod kappa "
             f"{fmt(row.get('log10_cond_prod'), '.3g')}   prod spectral norms {fmt(row.get('lipschitz_upper'), '.3g')}"
             f"   cond_max raw {fmt(row.get('cond_max_raw'), '.4g')}"]
    methods = row.get("layer_operator_method")
    if methods is not None and len(methods):
        counts = ", ".join(f"{m} {list(methods).count(m)}" for m in dict.fromkeys(methods))
        note = row.get("operator_lipschitz_note") or ""
        lines.append(f"  operator    cond_max {fmt(row.get('operator_cond_max'), '.4g')}   Lipschitz upper bound "
                     f"{fmt(row.get('operator_lipschitz_upper'), '.4g')}" + (f" ({note})" if note else "")
                     + f"   layers: {counts}")
    return lines


_FOLDED = ("folded matrix diag(a_out)·W·diag(b_in): the eval-mode BatchNorm scale γ/√(running_var + ε) of a BN "
           "right after the layer, the |scale| of a BN before it and the model's Normalize 1/std for the layers "
           "that consume the input")

FAMILY = register_metric(MetricFamily(
    name="conditioning", title="Conditioning", order=20, compute=compute, summary=summary,
    description=("Two spectra per layer. (1) The *reshaped kernel* (`layer_kappa`, `layer_spectral_norm`, `cond_max`, "
                 "`log10_cond_prod`, `lipschitz_upper`): the " + _FOLDED + "; for a convolution this is the "
                 "out × (in·kh·kw) matrix, not the map the layer applies to its input. (2) The *operator* "
                 "(`layer_operator_*`, `operator_*`): the linear map the layer applies in the forward pass — a "
                 "convolution on its whole input with its stride, padding and input size (recorded on one test "
                 "input), the same BN and Normalize scales folded in; a Linear's operator is its folded matrix. "
                 "A convolution whose reshaped kernel has κ = 1 can have an operator κ of 5 to 1,000s. The `_raw` "
                 "columns are of the stored weights alone. See `bench/metrics/conditioning.py`."),
    columns=(
        Column("layer_names", "list<str>", "the weight layers, in order (all layer_* lists follow it)"),
        Column("layer_kinds", "list<str>", "'lowrank' | 'linear' | 'conv' per layer"),
        Column("layer_shapes", "list<str>", "'out x in·kh·kw' per layer"),
        Column("layer_ranks", "list<int>", "numerical rank of each stored weight"),
        Column("layer_kappa", "list<float>", "κ of each layer's folded reshaped kernel (for a convolution the "
                                             "out × in·kh·kw matrix, not its operator: see layer_operator_kappa)"),
        Column("layer_spectral_norm", "list<float>", "‖·‖₂ of each layer's folded reshaped kernel"),
        Column("cond_max", "float", "largest folded reshaped-kernel κ over the layers (not the operators': see "
                                    "operator_cond_max)", agg="mean", label="cond_max", fmt=".3g",
               views=("show", "board"), position=50, sort="asc",
               help="largest per-layer condition number κ of the reshaped kernels (out × in·kh·kw) with BatchNorm "
                    "and input normalisation folded in, mean over seeds; the convolution operators' κ is "
                    "operator cond_max"),
        Column("log10_cond_prod", "float", "log10 ∏ folded reshaped-kernel κ_l: the weight part of the paper's "
                                           "bound on the network's relative condition number", agg="mean"),
        Column("lipschitz_upper", "float", "∏ folded reshaped-kernel ‖W_l‖₂ (the paper's Lipschitz proxy; not a "
                                           "bound: see operator_lipschitz_upper)"),
        Column("layer_operator_kappa", "list<float>", "κ of each layer's operator (null where only σ_max is "
                                                      "known: layer_operator_method 'power_iteration')"),
        Column("layer_operator_spectral_norm", "list<float>", "σ_max of each layer's operator: exact, or a "
                                                              "power-iteration estimate (from below)"),
        Column("layer_operator_norm_bound", "list<float>", "a guaranteed upper bound on each operator's σ_max "
                                                           "(= σ_max where exact; for 'power_iteration' the DFT "
                                                           "bound of the zero-padded grid, within 1e-3 rounding "
                                                           "margin); null where none is known"),
        Column("layer_operator_method", "list<str>", "per layer: 'exact_svd' (dense operator matrix), "
                                                     "'fft_circular' (circular padding, stride 1: exact by the "
                                                     "2-D DFT), 'power_iteration' (too large: σ_max only), "
                                                     "'not_called' (not run, or on inputs of several sizes)"),
        Column("layer_operator_shapes", "list<str>", "per layer its input and output shape per example, "
                                                     "'CxHxW->CxHxW' ('F->F' for a Linear)"),
        Column("operator_cond_max", "float", "largest operator κ over the layers whose κ is computed "
                                             "(layer_operator_kappa not null)", agg="mean",
               label="operator cond_max", short="op_cond", fmt=".3g", views=("show", "board"), position=52,
               sort="asc", help="largest per-layer κ of the operators the layers apply (convolutions on their "
                                "whole input, BN and normalisation folded), over the layers small enough for "
                                "it; mean over seeds; empty for rows from before it was recorded"),
        Column("operator_lipschitz_upper", "float", "an upper bound on the network's L2 Lipschitz constant, "
                                                    "[0, 1] pixels to logits: products of the operator norm "
                                                    "bounds along the graph, sums over residual branches "
                                                    "(bench.metrics.conditioning.lipschitz_bound); null with "
                                                    "operator_lipschitz_note when the graph has an op it does "
                                                    "not know", agg="mean", label="Lipschitz ≤", fmt=".3g"),
        Column("operator_lipschitz_note", "str", "why operator_lipschitz_upper is null ('' when it is not)"),
        Column("layer_kappa_raw", "list<float>", "κ of each stored weight alone"),
        Column("layer_spectral_norm_raw", "list<float>", "‖·‖₂ of each stored weight alone"),
        Column("cond_max_raw", "float", "largest κ of the stored weights alone", agg="mean", label="cond_max raw",
               short="cond_raw", fmt=".3g", views=("show", "board"), position=55,
               help="largest per-layer κ of the stored weights alone (nothing folded), mean over seeds; "
                    "empty for rows from before it was recorded"),
        Column("layer_folded", "list<str>", "per layer what was folded: '' nothing, 'bn', 'bn_in', 'input_norm', "
                                            "joined by '+'; 'untraced' when torch.fx could not trace the model"),
    ),
))
