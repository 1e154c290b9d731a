"""FGSM and PGD (Linf, L2) curves on the track's ε grids (own implementations, bench.metrics.attacks)."""

from __future__ import annotations

import time

from bench.columns import Column, EvalInputs, MetricFamily
from bench.registry import register_metric

_NAMES = {"fgsm_curve": "FGSM", "pgd_linf_curve": "PGD Linf", "pgd_l2_curve": "PGD L2"}


def compute(inp: EvalInputs) -> dict:
    protocol = inp.protocol
    if not inp.attacking:
        return {"pgd_steps": int(protocol.pgd_steps)}
    from bench.metrics.attacks import attack_curve

    t0 = time.perf_counter()
    kw = dict(device=inp.device, seed=inp.ctx.seed)
    x, y, model = inp.x_eval, inp.y_eval, inp.model
    return {
        "fgsm_curve": attack_curve(model, x, y, protocol.fgsm_eps, attack="fgsm", **kw),
        "pgd_linf_curve": attack_curve(model, x, y, protocol.pgd_linf_eps, attack="pgd", norm="Linf",
                                       steps=protocol.pgd_steps, **kw),
        "pgd_l2_curve": attack_curve(model, x, y, protocol.pgd_l2_eps, attack="pgd", norm="L2",
                                     steps=protocol.pgd_steps, **kw),
        "pgd_steps": int(protocol.pgd_steps),
        "attack_seconds": time.perf_counter() - t0,
    }


def summary(row: dict) -> list[str]:
    lines = []
    for key, label in _NAMES.items():
        c = row.get(key)
        if c is not None and len(c):
            lines.append(f"  {label:<11} " + "  ".join(f"{p['eps']:.4g}: {p['acc']:.3f}" for p in c))
    return lines


_BROKEN = "a point is broken when any iterate, the clean input included, misclassifies it"

FAMILY = register_metric(MetricFamily(
    name="attacks", title="FGSM and PGD", order=60, compute=compute, summary=summary,
    description=f"Raw, one attack per ε on the attacked points; {_BROKEN}. See `bench/metrics/attacks.py`.",
    columns=(
        Column("pgd_linf_curve", "curve", "PGD Linf accuracy per ε (list of {eps, acc}) on the track's grid",
               norm="Linf", label="PGD L∞"),
        Column("pgd_l2_curve", "curve", "PGD L2 accuracy per ε", norm="L2", label="PGD L2"),
        Column("fgsm_curve", "curve", "FGSM accuracy per ε", norm="Linf",
               label="FGSM"),
        Column("pgd_steps", "int", "PGD iterations per ε"),
        Column("attack_seconds", "float", "wall time of the FGSM and PGD curves", unit="s"),
    ),
))
