"""The empirical relative condition number of the network, ‖J_f(x)‖₂·‖x‖₂/‖f(x)‖₂."""

from __future__ import annotations

from bench.columns import Column, EvalInputs, MetricFamily, fmt
from bench.registry import register_metric

#: power-iteration steps for ‖J(x)‖₂
SENSITIVITY_ITERS = 20


def compute(inp: EvalInputs) -> dict:
    import torch

    from bench.metrics.sensitivity import relative_condition_numbers

    k = min(int(inp.protocol.sensitivity_points), len(inp.data.y_test))
    rel = relative_condition_numbers(inp.model, inp.data.x_test[:k], iters=SENSITIVITY_ITERS, seed=inp.ctx.seed,
                                     device=inp.device)
    finite = rel[torch.isfinite(rel)]
    return {"sensitivity_rel_cond": float(finite.mean()) if len(finite) else None,
            "sensitivity_rel_cond_median": float(finite.median()) if len(finite) else None,
            "sensitivity_points": int(k)}


def summary(row: dict) -> list[str]:
    if row.get("sensitivity_rel_cond") is None:
        return []
    return [f"  rel. cond   {fmt(row.get('sensitivity_rel_cond'), '.3g')} (mean), "
            f"{fmt(row.get('sensitivity_rel_cond_median'), '.3g')} (median) over {row.get('sensitivity_points')} points"]


FAMILY = register_metric(MetricFamily(
    name="sensitivity", title="Sensitivity", order=40, compute=compute, summary=summary,
    description="Euclidean norms, spectral norm of the input-to-logit Jacobian, f = logits, x in [0, 1] pixels.",
    columns=(
        Column("sensitivity_rel_cond", "float", "mean over the first sensitivity_points test points of "
                                                "‖J_f(x)‖₂·‖x‖₂/‖f(x)‖₂"),
        Column("sensitivity_rel_cond_median", "float", "the median of the same"),
        Column("sensitivity_points", "int", "test points it was measured on"),
    ),
))
