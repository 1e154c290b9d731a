"""Certified accuracy from the logit margin and the operator Lipschitz bound: a floor under every attack."""

from __future__ import annotations

import math

from bench.columns import Column, EvalInputs, MetricFamily, fmt
from bench.registry import register_metric


def grids(protocol) -> tuple[list[float], list[float]]:
    """(L2 ε, L∞ ε) the certified curves are reported at: the AutoAttack and PGD grids of each norm, and the headline."""
    l2 = sorted({float(e) for e in tuple(protocol.l2_eps) + tuple(protocol.pgd_l2_eps)})
    linf = sorted({float(e) for e in tuple(protocol.linf_eps) + tuple(protocol.pgd_linf_eps)}
                  | {float(protocol.headline_eps)})
    return l2, linf


def compute(inp: EvalInputs) -> dict:
    lip = inp.row.get("operator_lipschitz_upper")
    if not inp.attacking:  # the floor goes with the attacks it brackets
        return {"certified_note": "attacks skipped" if inp.n_eval else "no points to certify (n_eval = 0)"}
    if lip is None:
        return {"certified_note": "no Lipschitz bound: " + (inp.row.get("operator_lipschitz_note") or "not computed")}
    from bench.metrics.certified import certified_curve, certified_radii, logit_margins

    radii = certified_radii(logit_margins(inp.model, inp.x_eval, inp.y_eval, device=inp.device), float(lip))
    d = math.prod(inp.x_eval.shape[1:])
    l2, linf = grids(inp.protocol)
    head = certified_curve(radii, [inp.protocol.headline_eps], scale=math.sqrt(d))[0]["acc"]
    return {
        "certified_acc": head,
        "certified_n": inp.n_eval,
        "certified_l2_curve": certified_curve(radii, l2),
        "certified_linf_curve": certified_curve(radii, linf, scale=math.sqrt(d)),
        "certified_radii": [round(float(r), 7) for r in radii],
        "certified_lipschitz": float(lip),
        "certified_note": "",
    }


def summary(row: dict) -> list[str]:
    if row.get("certified_acc") is None:
        note = row.get("certified_note")
        return [f"  certified   - ({note})"] if note else []
    line = (f"  certified   {fmt(row.get('certified_acc'))} at Linf eps {fmt(row.get('robust_eps'), '.4g')}"
            f" (Lipschitz bound {fmt(row.get('certified_lipschitz'), '.4g')})")
    if row.get("robust_acc") is not None:
        line += (f"   bracket: certified {fmt(row.get('certified_acc'))} <= true <= AutoAttack "
                 f"{fmt(row.get('robust_acc'))}")
    lines = [line]
    for key, norm in (("certified_l2_curve", "L2"), ("certified_linf_curve", "Linf")):
        c = row.get(key)
        if c is not None and len(c):
            lines.append(f"  cert {norm:<6} " + "  ".join(f"{p['eps']:.4g}: {p['acc']:.3f}" for p in c))
    return lines


_RULE = ("a point is certified at ε when its logit margin exceeds √2·L·ε (L2), with L = operator_lipschitz_upper; "
         "at L∞ ε when it exceeds √2·L·√d·ε (‖δ‖₂ ≤ √d·‖δ‖∞, d the input dimension)")

FAMILY = register_metric(MetricFamily(
    name="certified", title="Certified accuracy", order=45, compute=compute, summary=summary,
    description=("A lower bound on the true robust accuracy on the attacked points (Tsuzuku, Sato & Sugiyama, "
                 f"NeurIPS 2018): {_RULE}. Every row then brackets its robustness: certified ≤ true ≤ attacked. "
                 "See `bench/metrics/certified.py`."),
    columns=(
        Column("certified_acc", "float", "certified accuracy at the headline ε (L∞) on the attacked points",
               unit="fraction", agg="mean", label="certified acc", short="cert %", points="certified_n",
               views=("show", "board"), position=32, sort="desc", sort_label="certified accuracy",
               help="a lower bound on the true robust accuracy at the headline ε (Lipschitz margin), mean over "
                    "seeds; empty: not evaluated"),
        Column("certified_n", "int", "points certified (the attacked points)"),
        Column("certified_l2_curve", "curve", "certified accuracy per L2 ε (the AutoAttack and PGD L2 grids)",
               norm="L2", label="certified L2"),
        Column("certified_linf_curve", "curve", "certified accuracy per L∞ ε (the AutoAttack and PGD L∞ grids and "
                                                "the headline ε)", norm="Linf", label="certified L∞"),
        Column("certified_radii", "list<float>", "per attacked point, its certified L2 radius margin/(√2·L) "
                                                 "(0: misclassified), so any ε can be recomputed"),
        Column("certified_lipschitz", "float", "the Lipschitz bound L used"),
        Column("certified_note", "str", "why the certified columns are empty ('' when they are not)"),
    ),
))
