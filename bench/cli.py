"""The ``bench`` command line: its flags, and :func:`main`, which parses them and dispatches to the
command (:mod:`bench.commands`; ``bench perf``: :mod:`bench.perf`). ``format_summary`` (now in
:mod:`bench.report`) is re-exported here for scripts that import it from ``bench.cli``."""

from __future__ import annotations

import argparse
import os
import sys

from bench import commands
from bench.report import format_summary  # noqa: F401 - re-export


def _common_run_flags() -> argparse.ArgumentParser:
    """The flags `bench run` and `bench sweep` share (an argparse parent: declared once)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--track", "-t", default="digits-cnn", help="track name (see `bench list --tracks`); default digits-cnn")
    p.add_argument("--epochs", type=float, default=None, help="override the track's epoch budget (may be fractional)")
    p.add_argument("--budget-seconds", type=float, default=None, help="wall-clock training budget instead of epochs")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ...; default: cuda when present")
    p.add_argument("--data-dir", default=None, help="data directory (default: $BENCH_DATA_DIR, then ./data)")
    p.add_argument("--results-dir", default="results", help="where the parquet rows go (default ./results)")
    p.add_argument("--n-eval", type=int, default=None, help="test points attacked (default: the track's)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="training batch size (default: the track's; another one is another configuration)")
    p.add_argument("--aa-version", choices=("standard", "plus"), default=None,
                   help="force one AutoAttack version for every ε (default: the track's protocol)")
    p.add_argument("--no-attacks", action="store_true", help="skip all attacks (clean metrics only)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--models-dir", default=None,
                   help="where trained models are kept for `bench eval` (default <results-dir>/.models)")
    p.add_argument("--deterministic", action="store_true",
                   help="PyTorch's deterministic algorithms (an op without one is an error); recorded in the row")
    return p


def _add_run(sub, common):
    p = sub.add_parser("run", parents=[common], help="train one method on a track, evaluate it, write one result row",
                       description="Train one compression method on a track under the track's budget, "
                                   "evaluate it (clean accuracy, AutoAttack, FGSM/PGD, conditioning, cost) "
                                   "and write one parquet row to the results directory.")
    p.add_argument("--method", "-m", required=True, help="registered method name (see `bench list`)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compression", type=float, default=None,
                   help="fraction of inference-form parameters removed, in [0, 1); default: the track's")
    p.add_argument("--param", "-p", action="append", default=[], metavar="KEY=VALUE",
                   help="method parameter, validated against the method's dataclass (repeatable)")
    p.add_argument("--objective", default="standard", metavar="NAME[KEY=VALUE,...]",
                   help="training objective, e.g. 'pgd_at[eps=0.3,steps=10]' (see `bench list --objectives`; "
                        "default standard: clean cross-entropy)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


def _add_sweep_flags(p) -> None:
    p.add_argument("--file", "-f", default=None, metavar="GRID.toml",
                    help="read the grid and any of these flags from a TOML file (flags given here win)")
    p.add_argument("--tracks", default=None, help="comma-separated tracks: one grid over all of them (instead of --track)")
    p.add_argument("--methods", default=None,
                    help="comma-separated methods, each optionally with parameters: "
                         "'dense,robust_lowrank[mode=mean,kappa=2]'; or 'all'")
    p.add_argument("--compressions", default=None, help="comma-separated targets (default: the track's)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    p.add_argument("--objectives", default=None,
                    help="comma-separated training objectives, each optionally with parameters: "
                         "'standard,pgd_at[eps=0.3,steps=10]' (default standard)")
    p.add_argument("--rerun", action="store_true", help="run configurations that already have an ok row too")
    p.add_argument("--dry-run", action="store_true",
                    help="print what would run and what each is expected to take (from earlier rows), run nothing")
    p.add_argument("--deadline", default=None, metavar="WHEN",
                    help="start a configuration only if its expected duration (median of earlier rows of it, else "
                         "of its method on the track) ends before WHEN: +90m, +2h, HH:MM or 2026-12-06T00:30; "
                         "the rest is left for the next sweep (local executor)")
    p.add_argument("--retry-failed", action="store_true",
                    help="rerun configurations whose earlier runs all failed (skipped by default)")
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                    help="local: one configuration after another in this process; ray: one Ray task each")
    p.add_argument("--address", default=None, help="Ray: join this cluster (default: start a local instance)")
    p.add_argument("--cpus-per-run", type=float, default=1, help="Ray: CPUs each run asks for (default 1)")
    p.add_argument("--gpus-per-run", type=float, default=0, help="Ray: GPUs each run asks for (default 0)")


def sweep_file_parser() -> argparse.ArgumentParser:
    """The sweep's flags in a parser that raises instead of exiting: what reads a sweep file
    (bench.sweep.load_sweep_file)."""
    p = argparse.ArgumentParser(parents=[_common_run_flags()], add_help=False, exit_on_error=False,
                                allow_abbrev=False)
    _add_sweep_flags(p)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench", description="Benchmark compressed networks under adversarial attack.")
    sub = parser.add_subparsers(dest="command", required=True)
    common = _common_run_flags()
    _add_run(sub, common)
    pl = sub.add_parser("list", help="list methods (or tracks, models)")
    g = pl.add_mutually_exclusive_group()
    g.add_argument("--tracks", action="store_true", help="list tracks")
    g.add_argument("--models", action="store_true", help="list model architectures")
    g.add_argument("--metrics", action="store_true", help="list metric families and the columns each writes")
    g.add_argument("--objectives", action="store_true", help="list training objectives and their parameters")
    g.add_argument("--columns", action="store_true",
                   help="print the reference of every result column (markdown, as docs/columns.md)")
    pw = sub.add_parser("sweep", parents=[common],
                        help="run a grid: tracks x methods x compressions x seeds, skipping done runs")
    _add_sweep_flags(pw)
    pe = sub.add_parser("eval", help="re-evaluate a stored model with the current protocol (no retraining)",
                        description="Load the trained model of a run from the model store (its sha256 checked), "
                                    "evaluate it with its track's current protocol and write a new row whose "
                                    "parent_run_id names the run.")
    pe.add_argument("run_id", help="the run's id (a unique prefix will do; `bench show --all` lists them)")
    pe.add_argument("--results-dir", default="results")
    pe.add_argument("--n-eval", type=int, default=None, help="test points attacked (default: the track's)")
    pe.add_argument("--aa-version", choices=("standard", "plus"), default=None)
    pe.add_argument("--no-attacks", action="store_true")
    pe.add_argument("--device", default=None)
    pe.add_argument("--data-dir", default=None)
    pe.add_argument("--threads", type=int, default=None)
    pe.add_argument("--transfer", action="store_true",
                    help="keep the run's evaluation and add only the transfer attack from its dense parent (and "
                         "the trust verdict): for rows written before the parent was stored, or before this column")
    px = sub.add_parser("export", help="write the results as RobustBench model-info JSON files, CSV or parquet")
    px.add_argument("--format", choices=("robustbench", "csv", "parquet"), default="robustbench")
    px.add_argument("--out", required=True, help="a folder (robustbench) or a file (csv, parquet)")
    px.add_argument("--results-dir", default=None, help="default: $BENCH_RESULTS_DIR, then ./results")
    px.add_argument("--track", default=None, help="only this track")
    px.add_argument("--objective", default=None, help="only this training objective (e.g. standard, pgd_at)")
    ps = sub.add_parser("show", help="print the results table")
    ps.add_argument("--results-dir", default=None, help="default: $BENCH_RESULTS_DIR, then ./results")
    ps.add_argument("--track", default=None, help="only this track")
    ps.add_argument("--objective", default=None, help="only this training objective (e.g. standard, pgd_at)")
    ps.add_argument("--all", action="store_true", help="one line per run instead of per configuration")
    ps.add_argument("--format", choices=("text", "markdown"), default="text",
                    help="markdown: a table to paste into notes or a README (raw rows: `bench export --format csv`)")
    pc = sub.add_parser("compare", help="paired test of two configurations of a track (McNemar, bootstrap)",
                        description="Compare two configurations point by point (McNemar's exact test per seed, "
                                    "a paired bootstrap over points and seeds) when their rows keep per-point "
                                    "outcomes, else by a paired test over seeds (see bench/compare.py).")
    pc.add_argument("a", metavar="A", help="NAME[KEY=VALUE,...]@COMPRESSION, e.g. robust_lowrank@0.5")
    pc.add_argument("b", metavar="B", help="the same for the second configuration")
    pc.add_argument("--track", "-t", default=None, help="track (default: the one track both have rows on)")
    pc.add_argument("--objective", default=None, help="training objective of the rows compared, e.g. pgd_at "
                    "(default: standard, else the one both have)")
    pc.add_argument("--objective-b", default=None, help="B's objective when it differs from A's (does AT help?)")
    pc.add_argument("--results-dir", default=None, help="default: $BENCH_RESULTS_DIR, then ./results")
    plb = sub.add_parser("leaderboard", help="serve the Streamlit leaderboard")
    plb.add_argument("--results-dir", default=None, help="default: $BENCH_RESULTS_DIR, then ./results")
    plb.add_argument("--port", type=int, default=8501)
    plb.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    from bench import perf
    perf.add_parser(sub)
    parser.sweep_parser = pw  # main() sets its defaults from a --file
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "sweep" and args.file:
        from bench.sweep import load_sweep_file

        try:  # the file's values become the defaults, so flags on the command line win
            parser.sweep_parser.set_defaults(**load_sweep_file(args.file, sweep_file_parser()))
        except (OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        args = parser.parse_args(argv)
    from bench import perf
    from bench.data import DataError
    from bench.method import Interrupted, ParamError
    from bench.registry import RegistryError

    handlers = {"run": commands.cmd_run, "eval": commands.cmd_eval, "export": commands.cmd_export,
                "sweep": commands.cmd_sweep, "list": commands.cmd_list, "show": commands.cmd_show,
                "compare": commands.cmd_compare, "leaderboard": commands.cmd_leaderboard, "perf": perf.cmd_perf}
    try:
        return handlers[args.command](args)
    except Interrupted as exc:
        print(f"interrupted: {exc}; run the same command again to resume", file=sys.stderr)
        return 143
    except (RegistryError, ParamError, DataError, ValueError) as exc:  # bench.train.BudgetError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `bench show | head`: the reader left; nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
