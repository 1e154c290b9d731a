"""The ``bench`` command line: run, list, show, leaderboard."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bench.columns import fmt


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
    p.add_argument("--dry-run", action="store_true", help="print what would run, run nothing")
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
    pc = sub.add_parser("compare", help="paired test of two configurations of a track (McNemar, bootstrap)",
                        description="Compare two configurations point by point (McNemar's exact test per seed, "
                                    "a paired bootstrap over points and seeds) when their rows keep per-point "
                                    "outcomes, else by a paired test over seeds (see bench/compare.py).")
    pc.add_argument("a", metavar="A", help="NAME[KEY=VALUE,...]@COMPRESSION, e.g. robust_lowrank@0.5")
    pc.add_argument("b", metavar="B", help="the same for the second configuration")
    pc.add_argument("--track", "-t", default=None, help="track (default: the one track both have rows on)")
    pc.add_argument("--results-dir", default=None, help="default: $BENCH_RESULTS_DIR, then ./results")
    plb = sub.add_parser("leaderboard", help="serve the Streamlit leaderboard")
    plb.add_argument("--results-dir", default=None, help="default: $BENCH_RESULTS_DIR, then ./results")
    plb.add_argument("--port", type=int, default=8501)
    plb.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    from bench import perf
    perf.add_parser(sub)
    parser.sweep_parser = pw  # main() sets its defaults from a --file
    return parser


def _run_config(args, **fields):
    """A RunConfig from the flags `bench run` and `bench sweep` share, and ``fields``."""
    from bench.config import RunConfig

    return RunConfig(epochs=args.epochs, budget_seconds=args.budget_seconds, device=args.device,
                     data_dir=args.data_dir, results_dir=args.results_dir, n_eval=args.n_eval,
                     aa_version=args.aa_version, skip_attacks=args.no_attacks, batch_size=args.batch_size,
                     num_threads=args.threads, deterministic=args.deterministic, models_dir=args.models_dir,
                     **fields)


def cmd_run(args) -> int:
    from bench import runner
    from bench.objective import objective_spec

    objective, objective_params = objective_spec(args.objective)
    cfg = _run_config(args, method=args.method, track=args.track, seed=args.seed, objective=objective,
                      objective_params=objective_params, method_params=_params_dict(args.param),
                      compression=args.compression, progress=not args.quiet and sys.stderr.isatty())
    prepared = runner.prepare(cfg)
    budget = f"{prepared.epochs:g} epochs" if prepared.epochs is not None else ""
    if prepared.budget_seconds is not None:
        budget += (" or " if budget else "") + f"{prepared.budget_seconds:g} s"
    print(f"bench run: method={cfg.method} track={prepared.track.name} seed={cfg.seed} "
          f"compression={prepared.compression:g} budget={budget} n_eval={prepared.n_eval}"
          + (f" objective={runner.params_id(cfg.objective, prepared.objective.params)}"
             if prepared.objective.adversarial or cfg.objective != "standard" else ""), flush=True)
    try:
        row, path = runner.run(cfg, prepared=prepared)
    except runner.RunError as exc:
        print(f"error: run failed: {exc}\n(a 'failed' row was written to {exc.path}; its traceback column has details)",
              file=sys.stderr)
        return 1
    print(format_summary(row, path))
    return 0


def cmd_sweep(args) -> int:
    import time

    from bench.plan import grid, plan
    from bench.registry import METHODS
    from bench.results import check_writable
    from bench.sweep import execute, parse_methods, parse_specs

    if not args.methods:
        raise ValueError("bench sweep: no methods: give --methods or `methods = [...]` in the --file")
    methods = [(m, {}) for m in METHODS.names()] if args.methods == "all" else parse_methods(args.methods)
    tracks = [t.strip() for t in args.tracks.split(",") if t.strip()] if args.tracks else [args.track]
    cfgs = grid(_run_config(args, method=methods[0][0], track=tracks[0], progress=sys.stderr.isatty()), tracks,
                methods, [float(c) for c in str(args.compressions).split(",")] if args.compressions else [None],
                [int(s) for s in str(args.seeds).split(",")],
                parse_specs(args.objectives, "--objectives") if args.objectives else [("standard", {})])
    pl = plan(cfgs, args.results_dir, rerun=args.rerun, retry_failed=args.retry_failed)
    head = f"bench sweep {pl.sweep_id}: {len(pl.configs)} configurations"
    head += f" on {pl.n_tracks} tracks" if pl.n_tracks > 1 else ""
    head += f", {len(pl.done)} already done"
    if pl.failed:
        head += f", {len(pl.failed)} failed before (" + (
            "rerun)" if args.retry_failed else "skipped; --retry-failed reruns them)")
    if pl.interrupted:
        head += f", {len(pl.interrupted)} stopped by the machinery before (rerun)"
    print(f"{head}, {len(pl.todo)} to run", flush=True)
    for reason in pl.declined:
        print(f"  left out: {reason}", flush=True)
    if args.dry_run:
        for q in pl.todo:
            print(f"  {q.config_id}  {q.cfg.track} {q.cfg.method}{_params_text(q.cfg)} "
                  f"compression={q.compression:g} seed={q.cfg.seed}")
        return 0
    check_writable(args.results_dir)
    counts, slots, t_start = {"ok": 0, "failed": 0, "skipped": 0}, {"n": 1}, time.time()

    def what(cfg) -> str:
        text = f"{cfg.method}{_params_text(cfg)} compression={cfg.compression} seed={cfg.seed}"
        return f"{cfg.track} {text}" if pl.n_tracks > 1 else text

    def report(cfg, summary) -> None:
        counts[summary["status"]] += 1
        if summary["status"] == "ok":
            print(f"    {what(cfg)}: clean {fmt(summary.get('clean_acc'))}  robust {fmt(summary.get('robust_acc'))}  "
                  f"cond_max {fmt(summary.get('cond_max'), '.3g')}  -> {Path(summary['file']).name}", flush=True)
        elif summary["status"] == "failed":
            print(f"    {what(cfg)}: failed: {summary['error']}", file=sys.stderr, flush=True)
        else:
            print(f"    {what(cfg)}: done or running elsewhere, skipped", flush=True)
        ran, left = counts["ok"] + counts["failed"], len(pl.todo) - sum(counts.values())
        running = min(left, slots["n"]) if args.executor == "ray" else 0
        line = (f"  progress: {counts['ok']} done, {counts['failed']} failed, {counts['skipped']} skipped "
                f"(elsewhere), {running} running, {left - running} waiting")
        if ran and left:
            per_run = (time.time() - t_start) / ran * slots["n"]
            eta = time.strftime("%H:%M", time.localtime(time.time() + per_run * left / slots["n"]))
            line += f"; {per_run / 60:.1f} min per run, ETA {eta}"
        print(line, flush=True)

    def started(n_slots: int, where: str) -> None:
        slots["n"] = max(1, n_slots)
        print(f"  executor: Ray ({where}), {args.cpus_per_run:g} CPU and "
              f"{args.gpus_per_run:g} GPU per run, {slots['n']} at a time", flush=True)

    execute(pl.todo, args.results_dir, executor=args.executor, rerun=args.rerun, on_result=report,
            on_begin=lambda i, cfg: print(f"[{i}/{len(pl.todo)}] {what(cfg)}", flush=True),
            **({"address": args.address, "cpus_per_run": args.cpus_per_run, "gpus_per_run": args.gpus_per_run,
                "on_start": started} if args.executor == "ray" else {}))
    return 1 if counts["failed"] else 0


def _params_text(cfg) -> str:
    text = "".join(f" {k}={v}" for k, v in sorted(cfg.method_params.items()))
    if cfg.objective != "standard":
        text += f" objective={cfg.objective}" + (
            "[" + ",".join(f"{k}={v}" for k, v in sorted(cfg.objective_params.items())) + "]"
            if cfg.objective_params else "")
    return text


def _params_dict(items: list[str]) -> dict:
    from bench.method import parse_assignments

    return parse_assignments(items)


def format_summary(row: dict, path) -> str:
    """What `bench run` prints: the run's data, size and training, then each metric family's lines
    (:meth:`bench.columns.MetricFamily.summary_lines`, in evaluation order)."""
    from bench.columns import families

    lines = [
        "",
        f"== {row['method_id']} on {row['track']} (seed {row['seed']})"
        + (f", trained with {_objective_text(row)}" if row.get("objective", "standard") != "standard" else "") + " ==",
        f"  data        {row.get('dataset')} [{row.get('data_source')}]  train {row.get('n_train')}  "
        f"val {row.get('n_val')}  test {row.get('n_test')}",
        f"  params      {fmt(row.get('n_params'), ',')} of {fmt(row.get('n_params_dense'), ',')} dense  "
        f"compression {fmt(row.get('compression'), '.4f')} (target {fmt(row.get('compression_target'), '.2f')})",
        f"  training    {fmt(row.get('epochs'), '.2f')} epochs, {row.get('steps')} steps, "
        f"{fmt(row.get('train_seconds'), '.1f')} s, {fmt(row.get('images_per_second'), ',.0f')} img/s "
        f"on {row.get('device_name')}",
    ]
    curve = row.get("train_pgd_curve")
    if curve is not None and len(curve):  # a list, or an array when the row was read back from parquet
        lines.append(f"  overfit     PGD acc per epoch (256 val points, training eps) "
                     f"{' '.join(f'{v:.3f}' for v in curve)}"
                     + ("  CATASTROPHIC OVERFITTING" if row.get("catastrophic_overfitting") else ""))
    for family in families():
        lines += family.summary_lines(row)
    lines.append(f"  written     {path}")
    return "\n".join(lines)


def _objective_text(row: dict) -> str:
    from bench.summary import objective_text

    return objective_text(row)


def cmd_eval(args) -> int:
    from bench import runner

    row, path = runner.evaluate_stored(args.run_id, args.results_dir, n_eval=args.n_eval, aa_version=args.aa_version,
                                       skip_attacks=args.no_attacks, device=args.device, data_dir=args.data_dir,
                                       num_threads=args.threads, progress=sys.stderr.isatty(),
                                       transfer_only=args.transfer)
    print(f"re-evaluated run {row['parent_run_id']} (no retraining):")
    print(format_summary(row, path))
    return 0


def cmd_export(args) -> int:
    from bench.export import export

    files = export(results_dir_default(args.results_dir), args.out, args.format, track=args.track,
                   objective=args.objective)
    print(f"bench export: {len(files)} file(s) under {args.out}")
    for f in files[:20]:
        print(f"  {f}")
    return 0


def cmd_list(args) -> int:
    from bench.registry import METHODS, MODELS, TRACKS

    if args.tracks:
        for name, t in TRACKS.items():
            print(f"{name}: {t.dataset}, {t.arch}, {t.epochs:g} epochs, compression {t.compression:g}, "
                  f"{t.eval.n_eval} attacked points")
            print(f"    {t.description}")
            if t.reference:
                print(f"    reproduces: {t.reference}" + ("" if t.differs else " (exactly)"))
            if t.differs:
                print(f"    differs: {t.differs}")
        return 0
    if args.metrics or args.columns:
        from bench.columns import families, reference_markdown
        from bench.registry import METRIC_FAMILIES

        if args.columns:
            print(reference_markdown())
            return 0
        for fam in families():
            print(f"{fam.name:14s} {fam.title}: {', '.join(c.name for c in fam.columns)}")
        for name, err in sorted(METRIC_FAMILIES.load_errors.items()):
            print(f"{name:14s} (failed to load: {err})")
        return 0
    if args.objectives:
        import dataclasses

        from bench.registry import OBJECTIVES

        for name, cls in OBJECTIVES.items():
            print(f"{name:10s} {cls.summary()}")
            params = ", ".join(f"{f.name}={f.default}" for f in dataclasses.fields(cls.Params))
            if params:
                print(f"{'':10s} parameters: {params} (eps=None: the track's adv_eps)")
        for name, err in sorted(OBJECTIVES.load_errors.items()):
            print(f"{name:10s} (failed to load: {err})")
        return 0
    if args.models:
        for name, fn in MODELS.items():
            doc = (fn.__doc__ or "").strip().splitlines()
            print(f"{name:14s} {doc[0] if doc else ''}")
        return 0
    for name, cls in METHODS.items():
        print(f"{name:18s} {cls.summary()}")
    for name, err in sorted(METHODS.load_errors.items()):
        print(f"{name:18s} (failed to load: {err})")
    return 0


def results_dir_default(arg: str | None) -> str:
    from bench.results import resolve_results_dir

    return str(resolve_results_dir(arg))


def cmd_show(args) -> int:
    import warnings

    from bench.results import read_results
    from bench.summary import LEGEND, bracket_lines, summary_table, suspect_lines

    d = results_dir_default(args.results_dir)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        df = read_results(d)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    if args.track:
        df = df[df["track"] == args.track]
    if args.objective:
        df = df[df["objective"] == args.objective]
    if df.empty:
        print(f"no results in {d}. Produce some with: bench run --method dense --results-dir {d}")
        return 0
    table = summary_table(df, per_run=args.all)
    print(table.to_string(index=False))
    if not table.empty:
        print(f"\n{_show_legend(args.all, LEGEND)}")
    bracket = bracket_lines(df)
    if bracket:
        print("\nrobustness bracket at the headline eps (means over seeds):\n" + "\n".join(bracket))
    suspect = suspect_lines(df)
    if suspect:
        print("\nruns whose evaluation is suspect (trust; bench/metrics/families/trust.py):\n" + "\n".join(suspect))
    return 0


def _show_legend(per_run: bool, legend: str) -> str:
    """What the accuracy cells of `bench show` mean."""
    if per_run:
        return ("accuracies in %: value [95% Wilson interval over the run's points: n_test for clean, aa_n "
                "attacked points for robust]; cond_max with BatchNorm and input normalisation folded in, "
                "cond_max_raw of the stored weights; trust 'ok' or 'suspect' (reasons below)")
    return legend


def cmd_compare(args) -> int:
    from bench.compare import compare
    from bench.results import read_results

    print(compare(read_results(results_dir_default(args.results_dir)), args.a, args.b, track=args.track).text())
    return 0


def cmd_leaderboard(args) -> int:
    """Serve leaderboard_app/app.py with Streamlit; this process becomes the server (stop it by its PID)."""
    import socket
    import subprocess
    from pathlib import Path

    app = Path(__file__).resolve().parent.parent / "leaderboard_app" / "app.py"
    results = Path(results_dir_default(args.results_dir)).resolve()
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be in 1..65535, got {args.port}")
    # Fail with a clear message now rather than a Streamlit traceback after start-up.
    try:
        infos = socket.getaddrinfo(args.host, args.port, type=socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as s:
            s.bind(infos[0][4])
    except OSError as exc:
        print(f"error: cannot serve on {args.host}:{args.port}: {exc.strerror or exc} "
              f"(pick another port with --port)", file=sys.stderr)
        return 2
    env = dict(os.environ)
    env["BENCH_RESULTS_DIR"] = str(results)
    cmd = [sys.executable, "-m", "streamlit", "run", str(app),
           "--server.port", str(args.port), "--server.address", args.host, "--server.headless", "true",
           "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
           "--client.toolbarMode", "minimal", "--theme.base", "light"]
    shown = f"[{args.host}]" if ":" in args.host else args.host
    note = "" if results.is_dir() else " (does not exist yet)"
    print(f"leaderboard: http://{shown}:{args.port}/  results: {results}{note}\n"
          f"stop it with Ctrl-C or `kill {os.getpid()}`", flush=True)
    if os.name == "posix":
        # exec, so the PID printed above (and the one a caller holds) is the server itself.
        os.execve(sys.executable, cmd, env)
    return subprocess.call(cmd, env=env)  # pragma: no cover - non-POSIX


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
    from bench.data import DataError
    from bench.method import ParamError
    from bench.registry import RegistryError

    handlers = {"run": cmd_run, "eval": cmd_eval, "export": cmd_export, "sweep": cmd_sweep, "list": cmd_list, "show": cmd_show, "compare": cmd_compare,
                "leaderboard": cmd_leaderboard,
                "perf": __import__("bench.perf", fromlist=["cmd_perf"]).cmd_perf}
    from bench.method import Interrupted

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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
