"""Paired readings of several configuration pairs of one track, as one Markdown table (``REPRODUCTION.md``).

Each ``A:B`` pair is ``bench compare A B`` (bench/compare.py), one table line instead of a printout:
the robust-accuracy difference A − B in points with its 95% interval, each seed's McNemar p with
the discordant points (robust only under A / only under B), and the clean difference on the
attacked points. Rows without per-point outcomes fall back to the seed-level test as ``bench compare``
does, and the line says so (t-interval, sign-flip p). A pair that does not compare (no rows, no
common seed) becomes a line naming why, so one missing configuration does not hide the others.

    python benchmarks/paired_table.py --track cifar10-vgg16q-e25 \\
        robust_lowrank@0.5:dense robust_lowrank@0.5:vanilla_lowrank@0.5 [--objective fgsm_rs]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

HEADER = ("| A | B | seeds | robust A − B, points [95 %] | McNemar p per seed (only A / only B) "
          "| clean A − B on the attacked points [95 %] |\n| --- | --- | --- | --- | --- | --- |")


def split_pair(text: str) -> tuple[str, str]:
    """``'A:B'`` -> ``('A', 'B')``, each a valid ``bench compare`` specification; anything else is a
    ValueError naming the form or the bad specification (an unknown method, a bad compression)."""
    from bench.compare import parse_spec

    parts = text.split(":")
    if len(parts) != 2 or not all(p.strip() for p in parts):
        raise ValueError(f"a pair is A:B, e.g. robust_lowrank@0.5:dense, got {text!r}")
    for spec in parts:
        try:
            parse_spec(spec.strip())
        except Exception as exc:  # the registry's error or parse_spec's ValueError, with the choices
            raise ValueError(f"pair {text!r}: {exc}") from None
    return parts[0].strip(), parts[1].strip()


def _points(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:+.1f}".replace("-", "−")


def _interval(m) -> str:
    if m.diff is None:
        return "–"
    if m.low is None:
        return _points(m.diff)
    return f"{_points(m.diff)} [{_points(m.low)}, {_points(m.high)}]"


def line(cmp) -> str:
    """One table line of a :class:`bench.compare.Comparison`."""
    from bench.compare import _p

    robust = next((m for m in cmp.metrics if m.title.startswith("robust")), None)
    clean = next((m for m in cmp.metrics if m.title.startswith("clean")), None)
    if cmp.per_point:
        per_seed = "; ".join(f"s{s.seed}: {_p(s.p)} ({s.only_a} / {s.only_b})" for s in robust.seeds) if robust else "–"
    else:
        per_seed = (f"seed-level sign-flip p = {_p(robust.p)}" if robust and robust.p is not None
                    else "seed-level")
    seeds = ", ".join(map(str, cmp.seeds))
    return (f"| {cmp.a.label} | {cmp.b.label} | {seeds} | {_interval(robust) if robust else '–'} | {per_seed} "
            f"| {_interval(clean) if clean else '–'}{'' if cmp.per_point else ' (whole test split)'} |")


def table(df, pairs: list[str], *, track: str | None = None, objective: str | None = None) -> str:
    """The Markdown table for ``pairs`` (``'A:B'`` strings) on the rows ``df``."""
    from bench.compare import compare

    split = [split_pair(p) for p in pairs]  # every pair checked before any comparison runs
    out = [HEADER]
    for a, b in split:
        try:
            out.append(line(compare(df, a, b, track=track, objective=objective)))
        except ValueError as exc:
            out.append(f"| {a} | {b} | – | not compared: {exc} | | |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pairs", nargs="+", metavar="A:B", help="configurations as bench compare takes them")
    ap.add_argument("--track", "-t", default=None, help="track (default: the one track each pair has rows on)")
    ap.add_argument("--objective", default=None, help="training objective of the rows compared, e.g. fgsm_rs")
    ap.add_argument("--results-dir", default=None, help="default: $BENCH_RESULTS_DIR, then ./results")
    args = ap.parse_args(argv)
    from bench.commands import results_dir_default
    from bench.results import read_results

    try:
        for p in args.pairs:
            split_pair(p)
    except ValueError as exc:
        ap.error(str(exc))
    print(table(read_results(results_dir_default(args.results_dir)), args.pairs, track=args.track,
                objective=args.objective))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
