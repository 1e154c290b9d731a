"""AutoAttack (``pyautoattack``) at the track's headline ε and along its ε-curve."""

from __future__ import annotations

import math
import time

from bench.columns import Column, EvalInputs, MetricFamily, fmt
from bench.metrics.families.clean import wilson_columns
from bench.registry import register_metric

#: AutoAttack batch: pyautoattack's default on a CPU; a GPU is far from full at 250 CIFAR images
AA_BATCH = {"cpu": 250, "cuda": 1000}


def compute(inp: EvalInputs) -> dict:
    if not inp.attacking:
        return {"aa_n": 0}
    from bench.metrics.autoattack import autoattack_curve, plan_curve
    from bench.outcomes import entry

    protocol, ctx, device = inp.protocol, inp.ctx, inp.device
    steps = plan_curve(linf_eps=protocol.linf_eps, l2_eps=protocol.l2_eps, headline_eps=protocol.headline_eps,
                       headline_version=protocol.headline_version, curve_attacks=protocol.curve_attacks,
                       force_version=ctx.aa_version)
    bar = _Progress(len(steps), enabled=ctx.progress)
    t0 = time.perf_counter()
    try:
        res = autoattack_curve(inp.model, inp.x_eval, inp.y_eval, steps, device=device, seed=ctx.seed,
                               state_dir=ctx.state_dir, batch_size=AA_BATCH.get(device.type, 250), progress=bar.step)
    finally:
        bar.close()
    headline = next(s for s in steps if s.norm == "Linf" and math.isclose(s.eps, protocol.headline_eps))
    out = {
        "robust_acc": res.acc_at("Linf", headline.eps),
        "robust_eps": float(headline.eps),
        "aa_headline_version": headline.version,
        "aa_n": inp.n_eval,
        "aa_curve": res.points,
        # the masks of finished ε come back from the state files on a resume (bench.metrics.autoattack)
        "aa_outcomes": [entry("autoattack", p["norm"], p["eps"], res.robust[(p["norm"], p["eps"])])
                        for p in res.points],
        "aa_flags": list(res.flags),
        "aa_seconds": time.perf_counter() - t0,
    }
    out["robust_acc_ci_low"], out["robust_acc_ci_high"] = wilson_columns(out["robust_acc"], out["aa_n"])
    return out


def summary(row: dict) -> list[str]:
    lines = []
    if row.get("robust_acc") is not None:
        lines.append(f"  robust acc  {fmt(row.get('robust_acc'))} at Linf eps {fmt(row.get('robust_eps'), '.4g')} "
                     f"(AutoAttack {row.get('aa_headline_version') or ''}, {row.get('aa_n', '')} points, "
                     f"clean on them {fmt(row.get('clean_acc_eval'))}; {fmt(row.get('aa_seconds'), '.0f')} s)")
    curve = row.get("aa_curve")
    if curve is not None and len(curve):
        for norm in dict.fromkeys(c["norm"] for c in curve):
            pts = "  ".join(f"{c['eps']:.4g}: {c['acc']:.3f}" + ("*" if c.get("version") != "custom" else "")
                            for c in curve if c["norm"] == norm)
            lines.append(f"  AA {norm:<5}    {pts}" + ("   (* full version)" if "*" in pts else ""))
    flags = row.get("aa_flags")
    if flags is not None and len(flags):
        lines.append(f"  AA flags    {len(flags)}:")
        lines += [f"    - {f}" for f in list(flags)[:5]]
        if len(flags) > 5:
            lines.append(f"    ... {len(flags) - 5} more in the aa_flags column")
    return lines


class _Progress:
    """A tqdm bar over the AutoAttack steps (stderr, only when enabled)."""

    def __init__(self, total: int, enabled: bool):
        self._bar = None
        self._calls = 0
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc="autoattack", unit="eps", leave=False, dynamic_ncols=True)

    def step(self, msg: str) -> None:
        if self._bar is None:
            return
        if self._calls:
            self._bar.update(1)
        self._calls += 1
        self._bar.set_description_str(msg)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.update(self._bar.total - self._bar.n)
            self._bar.close()


FAMILY = register_metric(MetricFamily(
    name="autoattack", title="AutoAttack", order=50, compute=compute, summary=summary,
    description=("`pyautoattack` on the attacked points (`attacked_indices`); exact semantics (nested ε, versions, resumable "
                 "state) in `bench/metrics/autoattack.py`. Away from the headline ε the curve is usually "
                 "APGD-CE + APGD-T, not the standard AutoAttack: each point records its `version` and `attacks`."),
    columns=(
        Column("robust_acc", "float", "AutoAttack accuracy, Linf at the track's headline ε (null when attacks are "
                                      "skipped)", unit="fraction", agg="mean", label="robust acc", short="robust %",
               points="aa_n", points_label="attacked", board_points=True,
               views=("show", "board"), position=30, sort="desc",
               sort_label="robust accuracy"),
        Column("robust_eps", "float", "the headline ε (Linf, pixels in [0, 1])", agg="first", label="eps",
               fmt="eps", views=("show",), position=40),
        Column("aa_headline_version", "str", "'standard' | 'plus' | 'custom' (the curve's attacks, on a cheaper protocol): the AutoAttack version at the headline ε"),
        Column("aa_n", "int", "points attacked (0 when attacks are skipped)"),
        Column("robust_acc_ci_low", "float", "95% Wilson interval of robust_acc over the aa_n points, low end",
               unit="fraction"),
        Column("robust_acc_ci_high", "float", "95% Wilson interval of robust_acc, high end", unit="fraction"),
        Column("aa_curve", "aa_curve", "the whole curve, one struct {norm, eps, acc, version, attacks, n, "
                                       "n_attacked, seconds} per (norm, ε), Linf by increasing ε then L2; acc over "
                                       "all n points, non-increasing in ε (nested: ε_k attacks only the points "
                                       "robust at ε_{k-1}, n_attacked of them)"),
        Column("aa_outcomes", "outcomes", "per attacked point, robust or not at each (norm, ε) of aa_curve, in its "
                                          "order: entries {attack='autoattack', norm, eps, n, bits}, bits a base64 "
                                          "bitmask over attacked_indices (bench/outcomes.py); the entry at (Linf, "
                                          "robust_eps) is the headline's; empty for rows written before it"),
        Column("aa_flags", "list<str>", "every warning pyautoattack logged and every Python warning raised during "
                                        "the attacks, as '<norm> eps=<ε> <version>: <message>'"),
        Column("aa_seconds", "float", "wall time of the whole AutoAttack curve", unit="s"),
    ),
))
