"""Per-layer condition numbers and spectral norms, folded (BatchNorm, input normalisation) and raw."""

from __future__ import annotations

from bench.columns import Column, EvalInputs, MetricFamily, fmt
from bench.registry import register_metric


def compute(inp: EvalInputs) -> dict:
    from bench.metrics.conditioning import conditioning_summary, layer_conditioning

    return conditioning_summary(layer_conditioning(inp.model))


def summary(row: dict) -> list[str]:
    if row.get("cond_max") is None:
        return []
    return [f"  cond_max    {fmt(row.get('cond_max'), '.4g')}   log10 prod kappa {fmt(row.get('log10_cond_prod'), '.3g')}"
            f"   prod spectral norms {fmt(row.get('lipschitz_upper'), '.3g')}   cond_max raw "
            f"{fmt(row.get('cond_max_raw'), '.4g')}"]


_FOLDED = ("folded matrix diag(a_out)·W·diag(b_in): the eval-mode BatchNorm scale γ/√(running_var + ε) of a BN "
           "right after the layer, the |scale| of a BN before it and the model's Normalize 1/std for the layers "
           "that consume the input")

FAMILY = register_metric(MetricFamily(
    name="conditioning", title="Conditioning", order=20, compute=compute, summary=summary,
    description=("Each layer's κ and ‖·‖₂ are of its " + _FOLDED + " — at inference these scales are part of the "
                 "layer's linear map, so κ(W) alone is not the layer's κ. The `_raw` columns are of the stored "
                 "weights alone. See `bench/metrics/conditioning.py`."),
    columns=(
        Column("layer_names", "list<str>", "the weight layers, in order (all layer_* lists follow it)"),
        Column("layer_kinds", "list<str>", "'lowrank' | 'linear' | 'conv' per layer"),
        Column("layer_shapes", "list<str>", "'out x in·kh·kw' per layer"),
        Column("layer_ranks", "list<int>", "numerical rank of each stored weight"),
        Column("layer_kappa", "list<float>", "κ of each layer's folded matrix"),
        Column("layer_spectral_norm", "list<float>", "‖·‖₂ of each layer's folded matrix"),
        Column("cond_max", "float", "largest folded κ over the layers", agg="mean", label="cond_max", fmt=".3g",
               views=("show", "board"), position=50, sort="asc",
               help="largest per-layer condition number κ with BatchNorm and input normalisation folded in "
                    "(the layer's map at inference), mean over seeds"),
        Column("log10_cond_prod", "float", "log10 ∏ folded κ_l: the weight part of the paper's bound on the "
                                           "network's relative condition number", agg="mean"),
        Column("lipschitz_upper", "float", "∏ folded ‖W_l‖₂ (the paper's Lipschitz proxy; not a certificate)"),
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
