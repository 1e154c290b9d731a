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
    from bench.metrics.attacks import attack_masks, curve_of
    from bench.outcomes import entry

    t0 = time.perf_counter()
    kw = dict(device=inp.device, seed=inp.ctx.seed)
    x, y, model = inp.x_eval, inp.y_eval, inp.model
    out, outcomes = {}, []
    for col, attack, norm, eps_list, steps in (
            ("fgsm_curve", "fgsm", "Linf", protocol.fgsm_eps, 1),
            ("pgd_linf_curve", "pgd", "Linf", protocol.pgd_linf_eps, protocol.pgd_steps),
            ("pgd_l2_curve", "pgd", "L2", protocol.pgd_l2_eps, protocol.pgd_steps)):
        masks = attack_masks(model, x, y, eps_list, attack=attack, norm=norm, steps=steps, **kw)
        out[col] = curve_of(eps_list, masks)
        outcomes += [entry(attack, norm, e, m) for e, m in zip(eps_list, masks)]
    out.update(attack_outcomes=outcomes, pgd_steps=int(protocol.pgd_steps),
               attack_seconds=time.perf_counter() - t0)
    return out


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
        Column("attack_outcomes", "outcomes", "per attacked point, robust or not under each attack at each ε: "
                                              "entries {attack ('fgsm' | 'pgd'), norm, eps, n, bits}, bits a base64 "
                                              "bitmask over attacked_indices (bench/outcomes.py); the mean of an "
                                              "entry's mask is its curve's acc; empty for rows written before it"),
        Column("pgd_steps", "int", "PGD iterations per ε"),
        Column("attack_seconds", "float", "wall time of the FGSM and PGD curves", unit="s"),
    ),
))
