"""The reproduction table of one track, as Markdown, from the result rows (``REPRODUCTION.md``).

One line per (method, parameters, compression target), over the successful runs (seeds):
clean accuracy on the whole test split and standard AutoAttack at the headline ε as mean ± seed
std with a 95% Wilson interval over one seed's worth of points (every seed is evaluated on the
same test points, so pooling them would overstate the precision; as ``bench show``), the
APGD-CE + APGD-T curve, FGSM on the paper's grid (seed means, one cell), PGD-50 at the headline ε and
L2-PGD at the paper's 0.3 (where the track evaluates it), the transfer attack from the dense parent,
condition numbers (BN/input folded, raw, and of the convolution operator), and the cost of a run.
Rows of an adversarial objective add what reading them needs: the PGD monitor's last value
(``train_pgd_curve``), how many seeds overfit catastrophically, and the trust verdicts.

    python benchmarks/reproduction_table.py --track mnist-lenet5-e10 [--results-dir results]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# the CondLR paper's L2-PGD ε (its VGG16/CIFAR-10 and LeNet5/MNIST tables); shown where a track evaluates it
PAPER_L2_PGD_EPS = 0.3


def _curve_acc(curve, eps: float, norm: str | None = None) -> float | None:
    for p in list(curve) if curve is not None else []:
        if (norm is None or p.get("norm") == norm) and math.isclose(float(p["eps"]), eps, rel_tol=1e-6, abs_tol=1e-12):
            return float(p["acc"])
    return None


def _pooled(accs, ns) -> tuple[float, float]:
    from bench.summary import pooled_interval

    iv = pooled_interval(accs, ns)
    return iv["ci_low"], iv["ci_high"]


def _present(vals) -> list:
    """``vals`` without the missing ones (None, NaN)."""
    return [v for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]


def _ms(vals, scale=100.0, spec=".1f") -> str:
    import statistics

    vals = _present(vals)
    if not vals:
        return "–"
    m = statistics.fmean(vals) * scale
    if spec == ".3g" and abs(m) >= 1000:  # a κ of thousands as 4,779, not 4.78e+03
        spec = ",.0f"
    return f"{m:{spec}}" + (f" ± {statistics.stdev(vals) * scale:{spec}}" if len(vals) > 1 else "")


def _mean(vals) -> str:
    """The mean of ``vals`` in % without the seed std (for a cell that holds several ε)."""
    vals = _present(vals)
    return f"{sum(vals) / len(vals) * 100:.1f}" if vals else "–"


def _last(curve) -> float | None:
    """The last value of a per-epoch curve (None when there is none)."""
    vals = list(curve) if curve is not None and not isinstance(curve, float) else []
    return float(vals[-1]) if vals else None


def _trust(verdicts) -> str:
    """The rows' trust verdicts, each shortened to the checks that failed, with counts:
    'ok', 'suspect: Square ×2', 'ok ×1, suspect: Square ×2'."""
    import collections

    short = []
    for v in verdicts:
        if not isinstance(v, str) or not v:
            continue
        if v.startswith("suspect: "):  # 'Square (black-box) broke points ...; Transfer ...' -> 'Square, Transfer'
            v = "suspect: " + ", ".join(r.strip().split(" ")[0] for r in v[len("suspect: "):].split(";"))
        short.append(v)
    counts = collections.Counter(short)
    if not counts:
        return "–"
    if len(counts) == 1 and len(short) == 1:
        return short[0]
    return ", ".join(f"{v} ×{n}" for v, n in sorted(counts.items()))


def _col(g, name):
    import pandas as pd

    return g[name] if name in g else pd.Series(dtype=float)


def table(df, track, objective: str = "standard") -> list[str]:
    """The markdown table of ``track``'s rows trained with ``objective`` (a name: ``standard``, ``pgd_at``;
    an adversarial objective's headline ε is its training ε, as the rows were evaluated)."""
    import pandas as pd

    from bench.columns import eps_text
    from bench.method import short_id
    from bench.prepare import eval_protocol_for
    from bench.results import with_objective
    from bench.summary import markdown_table

    df = with_objective(df.copy())
    ok = df[(df["status"] == "ok") & (df["track"] == track.name) & (df["objective"] == objective)]
    ev = track.eval
    if objective != "standard" and len(ok):
        ev = eval_protocol_for(track, float(ok["robust_eps"].dropna().iloc[0]))
    curve_eps = [e for e in ev.linf_eps if not math.isclose(e, ev.headline_eps)]
    fgsm_eps = list(ev.fgsm_eps)
    l2_pgd = [e for e in ev.pgd_l2_eps if math.isclose(e, PAPER_L2_PGD_EPS)]
    n_test = sorted({int(n) for n in ok["n_test"].dropna()}) if "n_test" in ok else []
    head = (["method", "c", "seeds", f"clean % (n = {', '.join(f'{n:,}' for n in n_test) or '?'})", f"AA std ε={eps_text(ev.headline_eps)} %", "AA points"]
            + [f"APGD-CE+T ε={eps_text(e)} %" for e in curve_eps]
            + [f"FGSM ε={' / '.join(f'{e:g}' for e in fgsm_eps)} % (means)", f"PGD-50 L∞ ε={eps_text(ev.headline_eps)} %"]
            + [f"L2-PGD ε={e:g} %" for e in l2_pgd]
            + ["transfer %", "κ max (folded)", "κ max (raw)", "operator κ max", "train s", "eval s"]
            + (["PGD monitor, last epoch %", "catastrophic overfitting", "trust"] if objective != "standard" else []))
    rows = []
    groups = ok.groupby(["method", "method_params", "compression_target"], sort=True, dropna=False)
    for (method, params, target), g in groups:
        lo, hi = _pooled(g["clean_acc"], g["n_test"])
        rob = [r for r in g["robust_acc"] if r is not None and not pd.isna(r)]
        rlo, rhi = _pooled(g["robust_acc"], g["aa_n"]) if rob else (math.nan, math.nan)
        row = [short_id(method, params or "{}"), f"{target:g}" if not pd.isna(target) else "0", str(g["seed"].nunique()),
               f"{_ms(g['clean_acc'], spec='.2f')} [{lo * 100:.2f}, {hi * 100:.2f}]",
               f"{_ms(g['robust_acc'])} [{rlo * 100:.1f}, {rhi * 100:.1f}]" if rob else "–",
               str(int(g["aa_n"].fillna(0).max()))]
        row += [_ms([_curve_acc(c, e, "Linf") for c in g["aa_curve"]]) for e in curve_eps]
        row += [" / ".join(_mean([_curve_acc(c, e) for c in g["fgsm_curve"]]) for e in fgsm_eps)]
        row += [_ms([_curve_acc(c, ev.headline_eps) for c in g["pgd_linf_curve"]])]
        row += [_ms([_curve_acc(c, e) for c in g["pgd_l2_curve"]]) for e in l2_pgd]
        row += [_ms(_col(g, "transfer_acc")), _ms(g["cond_max"], 1.0, ".3g"), _ms(_col(g, "cond_max_raw"), 1.0, ".3g"),
                _ms(_col(g, "operator_cond_max"), 1.0, ".3g"),
                _ms(g["train_seconds"], 1.0, ".0f"), _ms(g["eval_seconds"], 1.0, ".0f")]
        if objective != "standard":
            co = _present(list(_col(g, "catastrophic_overfitting")))
            row += [_ms([_last(c) for c in _col(g, "train_pgd_curve")]),
                    f"{sum(bool(x) for x in co)} of {len(co)}" if co else "–", _trust(_col(g, "trust"))]
        rows.append(row)
    return markdown_table(pd.DataFrame(rows, columns=head)).splitlines() if rows else []


def main(argv=None) -> int:
    import bench.tracks  # noqa: F401
    from bench.registry import TRACKS
    from bench.results import read_results

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--track", default="mnist-lenet5-e10")
    ap.add_argument("--results-dir", default="results")
    ap.add_argument("--objective", default="standard", help="training objective of the rows (standard, pgd_at, ...)")
    args = ap.parse_args(argv)
    track = TRACKS.get(args.track)
    df = read_results(args.results_dir)
    if df.empty or not (df["track"] == track.name).any():
        print(f"no rows for track {track.name} in {args.results_dir}", file=sys.stderr)
        return 1
    print("\n".join(table(df, track, args.objective)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
