"""What each ``bench`` command does once its flags are parsed (:mod:`bench.cli` parses them and
dispatches here; ``bench perf`` lives in :mod:`bench.perf`). A command returns the process's exit
status; an error a user can fix is raised as ``ValueError`` (or a registry, parameter or data error)
and printed by :func:`bench.cli.main`.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

from bench.columns import fmt
from bench.report import format_summary, params_text


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
    from bench.method import params_id
    from bench.objective import objective_spec
    from bench.prepare import prepare

    objective, objective_params = objective_spec(args.objective)
    cfg = _run_config(args, method=args.method, track=args.track, seed=args.seed, objective=objective,
                      objective_params=objective_params, method_params=_params_dict(args.param),
                      compression=args.compression, progress=not args.quiet and sys.stderr.isatty())
    prepared = prepare(cfg)
    budget = f"{prepared.epochs:g} epochs" if prepared.epochs is not None else ""
    if prepared.budget_seconds is not None:
        budget += (" or " if budget else "") + f"{prepared.budget_seconds:g} s"
    print(f"bench run: method={cfg.method} track={prepared.track.name} seed={cfg.seed} "
          f"compression={prepared.compression:g} budget={budget} n_eval={prepared.n_eval}"
          + (f" objective={params_id(cfg.objective, prepared.objective.params)}"
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
    deadline = None
    if getattr(args, "deadline", None):
        from bench.sweep import parse_deadline

        if args.executor == "ray":
            raise ValueError("bench sweep: --deadline is for the local executor (Ray schedules the runs itself)")
        deadline = parse_deadline(args.deadline)
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
    durations = None
    if args.dry_run or deadline is not None:
        from bench.sweep import Durations

        # with a deadline the rows written from now on (by this sweep or one beside it) set the pace
        durations = Durations(args.results_dir, since=None if args.dry_run else time.time())
    if args.dry_run:
        total, known = 0.0, 0
        for q in pl.todo:
            secs, basis = durations.expected(q)
            est = f"~{secs / 60:.0f} min ({basis})" if secs is not None else basis
            total, known = total + (secs or 0.0), known + (secs is not None)
            print(f"  {q.config_id}  {q.cfg.track} {q.cfg.method}{params_text(q.cfg)} "
                  f"compression={q.compression:g} seed={q.cfg.seed}  {est}")
        if pl.todo:
            print(f"expected: {total / 3600:.1f} h of runs for the {known} of {len(pl.todo)} with an estimate "
                  "(wall time of earlier rows, one run at a time)")
        return 0
    check_writable(args.results_dir)
    counts, slots, t_start = {"ok": 0, "failed": 0, "skipped": 0, "later": 0}, {"n": 1}, time.time()

    # the compression a run trains at: the track's when the grid leaves it out, 0 for dense methods
    # (keyed without num_threads, which the Ray executor sets on its copy of the config)
    def key(cfg) -> str:
        return repr(dataclasses.replace(cfg, num_threads=None))

    resolved = {key(q.cfg): q.compression for q in pl.todo}

    def what(cfg) -> str:
        c = resolved.get(key(cfg), cfg.compression)
        text = f"{cfg.method}{params_text(cfg)} compression={'track default' if c is None else format(c, 'g')} seed={cfg.seed}"
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

    def should_start(i, q) -> bool:
        """Start ``q`` only if its expected duration ends before the deadline (rows landed since count)."""
        durations.refresh()
        secs, basis = durations.expected(q)
        now = time.time()
        if now < deadline and (secs is None or now + secs <= deadline):
            return True
        counts["later"] += 1
        why = ("the deadline has passed" if now >= deadline else
               f"expected {secs / 60:.0f} min ({basis}), to {time.strftime('%H:%M', time.localtime(now + secs))}, "
               f"after the deadline {time.strftime('%H:%M', time.localtime(deadline))}")
        print(f"[{i}/{len(pl.todo)}] {what(q.cfg)}: not started: {why}", flush=True)
        return False

    execute(pl.todo, args.results_dir, executor=args.executor, rerun=args.rerun, on_result=report,
            on_begin=lambda i, cfg: print(f"[{i}/{len(pl.todo)}] {what(cfg)}", flush=True),
            **({"should_start": should_start} if deadline is not None else {}),
            **({"address": args.address, "cpus_per_run": args.cpus_per_run, "gpus_per_run": args.gpus_per_run,
                "on_start": started} if args.executor == "ray" else {}))
    if counts["later"]:
        print(f"deadline: {counts['later']} configuration{'s' * (counts['later'] > 1)} not started; "
              "rerun the command to continue", flush=True)
    return 1 if counts["failed"] else 0


def _params_dict(items: list[str]) -> dict:
    from bench.method import parse_assignments

    return parse_assignments(items)


def cmd_eval(args) -> int:
    from bench.reevaluate import evaluate_stored

    row, path = evaluate_stored(args.run_id, args.results_dir, n_eval=args.n_eval, aa_version=args.aa_version,
                                skip_attacks=args.no_attacks, device=args.device, data_dir=args.data_dir,
                                num_threads=args.threads, progress=sys.stderr.isatty(), transfer_only=args.transfer)
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


def _print_load_errors(registry, width: int) -> None:
    """One line per plugin of ``registry`` that failed to load, its name padded to ``width``."""
    for name, err in sorted(registry.load_errors.items()):
        print(f"{name:{width}s} (failed to load: {err})")


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
        _print_load_errors(METRIC_FAMILIES, 14)
        return 0
    if args.objectives:
        import dataclasses

        from bench.registry import OBJECTIVES

        for name, cls in OBJECTIVES.items():
            print(f"{name:10s} {cls.summary()}")
            params = ", ".join(f"{f.name}={f.default}" for f in dataclasses.fields(cls.Params))
            if params:
                print(f"{'':10s} parameters: {params} (eps=None: the track's adv_eps)")
        _print_load_errors(OBJECTIVES, 10)
        return 0
    if args.models:
        for name, fn in MODELS.items():
            doc = (fn.__doc__ or "").strip().splitlines()
            print(f"{name:14s} {doc[0] if doc else ''}")
        return 0
    for name, cls in METHODS.items():
        print(f"{name:18s} {cls.summary()}")
    _print_load_errors(METHODS, 18)
    return 0


def results_dir_default(arg: str | None) -> str:
    from bench.results import resolve_results_dir

    return str(resolve_results_dir(arg))


def cmd_show(args) -> int:
    import warnings

    from bench.results import read_results
    from bench.summary import LEGEND, bracket_lines, markdown_table, summary_table, suspect_lines

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
    print(markdown_table(table) if getattr(args, "format", "text") == "markdown" else table.to_string(index=False))
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

    print(compare(read_results(results_dir_default(args.results_dir)), args.a, args.b, track=args.track,
                  objective=args.objective, objective_b=args.objective_b).text())
    return 0


def cmd_leaderboard(args) -> int:
    """Serve leaderboard_app/app.py with Streamlit; this process becomes the server (stop it by its PID)."""
    import socket
    import subprocess

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
