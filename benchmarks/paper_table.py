"""The papers' published numbers beside ours at the same attack and ε, as one Markdown table.

For one track, every number of ``leaderboard_app/paper_reference.csv`` on the track's data set and
architecture (the leaderboard's "Show the paper's reported numbers" layer) gets a line per
configuration of ours that runs the matching method (the file's ``bench_method``), with our mean
over seeds at the same attack and ε (FGSM at ε = 0 is the clean accuracy on the attacked points).
The ε of one attack are joined into one cell, so a line reads as the paper's curve beside ours.
A paper number without a matching configuration of ours keeps its line, 'ours' empty. The two are
never ranked together: the papers' settings (model size, epochs, test points) are not the track's.

    python benchmarks/paper_table.py --track cifar10-vgg16q-e25 --also robust_lowrank=robust_lowrank_paper

``--also A=B`` compares the paper's rows for our method A with our method B too (here the paper's
CondLR with our preset of its exact code, beside our default). Only rows trained on the clean
objective (``standard``) are used: the papers' models were.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

HEADER = ("| paper setting (as published) | attack | ε | paper % | our configuration (this track) | seeds "
          "| ours %, mean over seeds |\n| --- | --- | --- | --- | --- | --- | --- |")


def parse_also(items: list[str]) -> dict[str, list[str]]:
    """``['robust_lowrank=robust_lowrank_paper']`` -> ``{'robust_lowrank': ['robust_lowrank_paper']}``;
    a malformed item or an unregistered method is a ValueError naming it."""
    from bench.registry import METHODS

    known = set(METHODS.names())
    out: dict[str, list[str]] = {}
    for item in items:
        parts = [p.strip() for p in item.split("=")]
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"--also takes A=B (our method A's paper rows also against our method B), got {item!r}")
        for name in parts:
            if name not in known:
                raise ValueError(f"--also {item!r}: unknown method {name!r} (known: {', '.join(sorted(known))})")
        out.setdefault(parts[0], []).append(parts[1])
    return out


def _eps(v: float) -> str:
    return f"{v:g}"


def _pct(v: float) -> str:
    return "–" if v != v else f"{100 * v:.1f}"  # NaN: no number of ours at that ε


def table(runs, track: str, also: dict[str, list[str]] | None = None, ref=None) -> str:
    """The Markdown table of the paper numbers for ``track``'s data set and architecture beside the
    ``standard``-objective rows of ``runs`` on that track."""
    import pandas as pd

    from bench.method import short_id
    from leaderboard_app import data as lbd

    ref = lbd.load_paper_reference() if ref is None else ref
    mine = runs[runs["track"] == track] if "track" in runs.columns else runs.iloc[0:0]
    if mine.empty:
        raise ValueError(f"no rows on track {track!r}")
    if "objective" in mine.columns:
        mine = mine[mine["objective"].fillna("standard") == "standard"]
    ref = lbd.paper_rows(ref, mine)
    if ref.empty:
        raise ValueError(f"no published numbers for the data set and architecture of track {track!r}")
    extra = [ref[ref["bench_method"] == a].assign(bench_method=b)
             for a, bs in (also or {}).items() for b in bs]
    ref = pd.concat([ref, *extra], ignore_index=True)
    # configurations named as people type them (bench compare's specs), not with every default parameter
    mine = mine.assign(method_id=[short_id(m, p) for m, p in zip(mine["method"], mine["method_params"])])
    beside = lbd.paper_beside_ours(ref, mine)
    # a paper setting's lines together (the --also lines beside the method they extend), in the file's order
    first = {k: i for i, k in reversed(list(enumerate(zip(beside["paper setting"], beside["attack"]))))}
    beside = beside.assign(_order=[first[k] for k in zip(beside["paper setting"], beside["attack"])])
    beside = beside.sort_values("_order", kind="stable")
    out = [HEADER]
    keys = ["paper setting", "attack", "our configuration"]
    for (setting, attack, ours), part in beside.groupby(keys, sort=False):
        part = part.sort_values("eps")
        seeds = sorted(set(part["seeds"]))
        out.append(f"| {setting} | {attack} | {' / '.join(_eps(e) for e in part['eps'])} "
                   f"| {' / '.join(f'{100 * v:.2f}' for v in part[lbd.PAPER_LABEL])} "
                   f"| {ours or '–'} | {', '.join(map(str, seeds)) if ours else 0} "
                   f"| {' / '.join(_pct(v) for v in part['ours']) if ours else '–'} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--track", "-t", required=True, help="the track whose rows stand beside the paper's numbers")
    ap.add_argument("--also", action="append", default=[], metavar="A=B",
                    help="the paper's rows for our method A also against our method B (repeatable)")
    ap.add_argument("--results-dir", default=None, help="default: $BENCH_RESULTS_DIR, then ./results")
    args = ap.parse_args(argv)
    from bench.commands import results_dir_default
    from bench.results import read_results
    from bench.registry import TRACKS

    if args.track not in TRACKS:
        ap.error(f"unknown track {args.track!r} (known: {', '.join(TRACKS.names())})")
    try:
        also = parse_also(args.also)
        print(table(read_results(results_dir_default(args.results_dir)), args.track, also))
    except ValueError as exc:
        print(f"paper_table: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
