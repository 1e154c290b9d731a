"""A trust verdict per row: 'ok', or 'suspect: ' and the reasons, from checks that each mean the white-box
evaluation may have failed or the row is wrong. Runs last and reads only the row the other families wrote.

The checks (each named in ``trust_checks`` when the row had what it needs):

* ``aa_flags``: pyautoattack's own warnings (``aa_flags``): a randomised defence, outputs that look like
  probabilities, points with zero input gradient (pyautoattack looks at APGD's DLR losses: APGD-T),
  a forward pass that calls backward (a dynamic defence), a model left in train mode. Other
  warnings stay in ``aa_flags`` and are not reasons (e.g. too many target classes: ours are capped).
* ``square``: Square, the black-box attack of the standard version, broke points that APGD-CE, APGD-T
  and FAB-T left standing (pyautoattack's own check, reported through its flag when Square lowered the
  accuracy by more than 0.2 %). pyautoattack does not say which attack broke which point, so the flag
  is the only record; it is missed when an interrupted run resumed with Square alone left to run.
* ``transfer``: the dense parent's APGD-CE examples broke points AutoAttack left standing at the same ε,
  more than :func:`slack` of them (per point when both outcomes are recorded, else by accuracy).
* ``certified``: a certified accuracy above the AutoAttack accuracy at the same (norm, ε) — impossible
  when both are right (every certified point is truly robust, and a truly robust point survives every
  attack); no slack.
* ``clean``: an attacked accuracy (AutoAttack, PGD, FGSM, transfer, certified) above the clean accuracy
  on the same points: impossible, since every attack counts a misclassified point as broken; no slack.
* ``monotone``: a curve that rises as ε grows. The AutoAttack and certified curves are monotone by
  construction (nested ε; a radius test), so any rise means the row is wrong. The PGD curves attack
  each ε independently from a random start, so they may rise by chance: more than :func:`slack` points
  counts. FGSM is not checked: one step of size ε can overshoot, and its curve is legitimately
  non-monotone (bench/metrics/attacks.py).
* ``progress``: an attack that breaks no correctly classified point (at most :func:`slack`) even at the
  largest ε of its grid (PGD L∞, PGD L2, AutoAttack L∞ and L2): every grid here reaches an ε where
  an undefended or adversarially trained model loses points, so a flat curve means the attack made
  no progress (Carlini et al. 2019, "On evaluating adversarial robustness", §5).
"""

from __future__ import annotations

import math

from bench.columns import Column, EvalInputs, MetricFamily
from bench.registry import register_metric

#: (text of a pyautoattack warning, as it logs it; the reason it gives); the last is the check "square"
FLAG_REASONS = (
    ("randomized defense", "AutoAttack found the output random (a randomised defence)"),
    ("output is a probability distribution", "AutoAttack found the outputs to be probabilities, not logits"),
    ("zero gradient", "AutoAttack found points with zero input gradient"),
    ("dynamic defense", "AutoAttack found a forward pass that computes gradients (a dynamic defence)"),
    ("in train mode", "the model was in train mode during AutoAttack"),
    ("Square Attack has decreased", "Square (black-box) broke points the white-box attacks did not"),
)
#: curves checked for monotonicity: column -> (label, exact: no slack)
MONOTONE = {"pgd_linf_curve": ("PGD L∞", False), "pgd_l2_curve": ("PGD L2", False),
            "certified_l2_curve": ("certified L2", True), "certified_linf_curve": ("certified L∞", True)}
#: curves whose largest ε must break something: column -> label (the AutoAttack curve per norm too)
PROGRESS = {"pgd_linf_curve": "PGD L∞", "pgd_l2_curve": "PGD L2"}
_NORM = {"Linf": "L∞", "L2": "L2"}
_TINY = 1e-9


def slack(n: int) -> int:
    """Points a chance effect may account for in the checks that allow one: 1 %, at least one point."""
    return max(1, int(0.01 * n))


def _points(curve) -> list[dict]:
    if curve is None or (isinstance(curve, float) and math.isnan(curve)):
        return []
    return [dict(p) for p in curve]


def _num(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _aa_by_norm(row: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for p in _points(row.get("aa_curve")):
        out.setdefault(str(p["norm"]), []).append(p)
    return {k: sorted(v, key=lambda p: float(p["eps"])) for k, v in out.items()}


def _flag_reasons(row: dict) -> list[str]:
    flags = [str(f) for f in (row.get("aa_flags") if row.get("aa_flags") is not None else [])]
    found: dict[str, list[str]] = {}
    for f in flags:
        where, _, msg = f.partition(": ")
        for needle, reason in FLAG_REASONS:
            if needle.lower() in (msg or f).lower():
                found.setdefault(reason, [])
                if where not in found[reason]:
                    found[reason].append(where)
    return [f"{reason} ({', '.join(where)})" for reason, where in found.items()]


def _transfer(row: dict, n: int) -> tuple[list[str], bool]:
    t, eps = _num(row.get("transfer_acc")), _num(row.get("transfer_eps"))
    if t is None or eps is None:
        return [], False
    from bench.outcomes import mask_at, row_outcomes

    outs = row_outcomes(row)
    aa_mask, tr_mask = mask_at(outs, "autoattack", "Linf", eps), mask_at(outs, "transfer", "Linf", eps)
    if aa_mask is not None and tr_mask is not None and len(aa_mask) == len(tr_mask):
        k = int((aa_mask & ~tr_mask).sum())
    else:
        aa = next((_num(p["acc"]) for p in _aa_by_norm(row).get("Linf", []) if math.isclose(p["eps"], eps)), None)
        if aa is None:
            return [], False
        k = round((aa - t) * n)
    if k > slack(n):
        return [f"the transfer attack from the dense parent broke {k} point(s) AutoAttack left standing at "
                f"L∞ ε={eps:.4g}"], True
    return [], True


def _above(a, b, n: int) -> bool:
    """Accuracy ``a`` above ``b`` by at least one of ``n`` points (compared as counts: accuracies written by
    different code, some through float32, differ in their last digits)."""
    return round(float(a) * n) > round(float(b) * n) if n else float(a) > float(b) + _TINY


def _certified(row: dict, n: int) -> tuple[list[str], bool]:
    aa = _aa_by_norm(row)
    out, checked = [], False
    for col, norm in (("certified_linf_curve", "Linf"), ("certified_l2_curve", "L2")):
        for c in _points(row.get(col)):
            a = next((p for p in aa.get(norm, []) if math.isclose(float(p["eps"]), float(c["eps"]),
                                                                  rel_tol=1e-9, abs_tol=1e-12)), None)
            if a is None:
                continue
            checked = True
            if _above(c["acc"], a["acc"], n):
                out.append(f"certified accuracy {float(c['acc']):.3f} above AutoAttack's {float(a['acc']):.3f} at "
                           f"{_NORM[norm]} ε={float(c['eps']):.4g}")
    return out, checked


def _clean(row: dict, n: int) -> tuple[list[str], bool]:
    clean = _num(row.get("clean_acc_eval"))
    if clean is None:
        return [], False
    seen = []
    for label, acc, eps in (
            [("AutoAttack " + _NORM.get(str(p["norm"]), str(p["norm"])), p["acc"], p["eps"])
             for p in _points(row.get("aa_curve"))]
            + [(lab, p["acc"], p["eps"]) for col, lab in (("pgd_linf_curve", "PGD L∞"), ("pgd_l2_curve", "PGD L2"),
                                                         ("fgsm_curve", "FGSM"), ("certified_linf_curve", "certified L∞"),
                                                         ("certified_l2_curve", "certified L2"))
               for p in _points(row.get(col))]
            + ([("transfer", row["transfer_acc"], row.get("transfer_eps"))]
               if _num(row.get("transfer_acc")) is not None else [])):
        if _above(acc, clean, n):
            seen.append(f"{label} accuracy {float(acc):.3f} above the clean accuracy {clean:.3f} on the same points "
                        f"at ε={float(eps):.4g}")
    return seen, True


def _rises(pts: list[dict], allowed: float, n: int) -> list[tuple[float, float, float, float]]:
    pts = sorted(pts, key=lambda p: float(p["eps"]))
    return [(float(a["eps"]), float(a["acc"]), float(b["eps"]), float(b["acc"])) for a, b in zip(pts, pts[1:])
            if _above(b["acc"], float(a["acc"]) + allowed, n)]


def _monotone(row: dict, n: int) -> tuple[list[str], bool]:
    out, checked = [], False
    curves = [(f"AutoAttack {_NORM.get(norm, norm)}", pts, True) for norm, pts in _aa_by_norm(row).items()]
    curves += [(label, _points(row.get(col)), exact) for col, (label, exact) in MONOTONE.items()]
    for label, pts, exact in curves:
        if len(pts) < 2:
            continue
        checked = True
        for e0, a0, e1, a1 in _rises(pts, 0.0 if exact else slack(n) / n, n):
            out.append(f"{label} accuracy rises from {a0:.3f} at ε={e0:.4g} to {a1:.3f} at ε={e1:.4g}")
    return out, checked


def _progress(row: dict, n: int) -> tuple[list[str], bool]:
    clean = _num(row.get("clean_acc_eval"))
    if clean is None or clean <= 0:
        return [], False
    curves = [(f"AutoAttack {_NORM.get(norm, norm)}", pts) for norm, pts in _aa_by_norm(row).items()]
    curves += [(label, _points(row.get(col))) for col, label in PROGRESS.items()]
    out, checked = [], False
    for label, pts in curves:
        if not pts:
            continue
        checked = True
        last = max(pts, key=lambda p: float(p["eps"]))
        broken = round((clean - float(last["acc"])) * n)
        if broken <= slack(n):
            out.append(f"{label} broke {max(broken, 0)} correctly classified point(s) even at its largest ε "
                       f"{float(last['eps']):.4g}")
    return out, checked


def verdict(row: dict, n: int) -> tuple[str, list[str]]:
    """(``'ok'`` or ``'suspect: reason; reason'``, the checks that could be applied) for a row's columns
    measured on ``n`` attacked points."""
    reasons, checked = [], []
    reasons += _flag_reasons(row)
    if _points(row.get("aa_curve")):
        checked += ["aa_flags", "square"]
    for name, (found, applied) in (("transfer", _transfer(row, n)), ("certified", _certified(row, n)),
                                   ("clean", _clean(row, n)), ("monotone", _monotone(row, n)),
                                   ("progress", _progress(row, n))):
        reasons += found
        if applied:
            checked.append(name)
    return ("suspect: " + "; ".join(reasons)) if reasons else "ok", checked


def compute(inp: EvalInputs) -> dict:
    if not inp.attacking:  # nothing was attacked: nothing to trust or distrust
        return {}
    trust, checked = verdict(inp.row, inp.n_eval)
    return {"trust": trust, "trust_checks": checked}


def summary(row: dict) -> list[str]:
    trust = row.get("trust")
    if not trust:
        return []
    if trust == "ok":
        return [f"  trust       ok (checks: {', '.join(row.get('trust_checks') or [])})"]
    return ["  trust       SUSPECT:"] + [f"    - {r}" for r in trust.removeprefix("suspect: ").split("; ")]


FAMILY = register_metric(MetricFamily(
    name="trust", title="Trust verdict", order=1000, compute=compute, summary=summary,
    description=("'ok', or 'suspect: ' with the reasons, from checks that each mean the white-box evaluation may "
                 "have failed or the row is wrong: AutoAttack's own flags, Square beating the white-box attacks, "
                 "the transfer attack beating AutoAttack, certified above attacked, attacked above clean, a curve "
                 "rising with ε, an attack breaking nothing at its largest ε. Checks that allow for chance allow "
                 "1 % of the points (at least one). Computed from the row's other columns after every other "
                 "family; empty when nothing was attacked. Each check and why it means what it means: "
                 "`bench/metrics/families/trust.py`."),
    columns=(
        Column("trust", "str", "'ok', or 'suspect: ' and the reasons joined by '; '", agg="verdict", label="trust",
               views=("show", "board"), position=36,
               help="'ok' when every check passed; '⚠ suspect' when one says the white-box evaluation may have "
                    "failed (the run detail lists the reasons); over seeds, suspect when any seed is; "
                    "empty: not evaluated"),
        Column("trust_checks", "list<str>", "the checks the row had the columns for: aa_flags, square, transfer, "
                                            "certified, clean, monotone, progress"),
    ),
))
