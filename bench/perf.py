"""``bench perf``: training throughput, inference latency and AutoAttack overhead, measured back to back.

Training throughput
    Every (method, compression) entry is built exactly as ``bench run`` builds it
    (:func:`bench.models.build_model`, ``method.build(dense, BuildContext(...))``,
    ``method.make_optimizer(model, OptimHP(...))``, seeded the same way) and trained with the
    trainer's step (:func:`bench.train.train_step`, the function ``bench run`` steps with):
    learning rate from the schedule, the track's augmentation, ``zero_grad``, forward,
    cross-entropy, backward, ``optimizer.step()``, ``method.post_step(model, progress)``,
    with the track's batch size and the data on the
    device. ``progress`` is what a real run has at those steps (the start of the track's
    budget), so a schedule such as pruning's behaves as it does there. After ``--warmup``
    untimed steps per entry, ``--repeats`` rounds each time ``--steps`` steps of every entry in
    turn (round-robin, A B C A B C ...; device synchronised before each clock read), so
    machine load hits all entries alike. Reported: the median images/s over rounds and the
    median over rounds of the per-round ratio to dense (and to vanilla_lowrank at the same
    compression). Dense is always measured: it is the baseline.

Inference
    After training (and ``method.finalize``), the inference form
    (:func:`bench.metrics.cost.inference_form`, low-rank layers merged) of every entry is timed
    with :func:`bench.metrics.cost.latency_ms` on one batch of test images, interleaved with
    dense in the same way, round by round; latency_ratio is the median per-round ratio to
    dense, flop_ratio the ratio of :func:`bench.metrics.cost.flops_per_example`.

AutoAttack overhead
    :func:`bench.metrics.autoattack.autoattack_curve` with one Linf ε (the track's headline ε)
    against ``pyautoattack.AutoAttack(...).run_standard_evaluation`` called directly, on the
    same points (the first ``--aa-points`` test images) and the same model (the dense entry
    after its training steps, in eval mode), same seed and batch size; the order alternates
    between rounds. The goal is a ratio ≤ 1.05.

One parquet file per invocation goes to ``<results-dir>/_perf/`` (atomically: temp file +
rename), one row per entry, with provenance. They are never taken for runs:
``bench.results.read_results`` reads only the top level of the results directory, and
``pandas.read_parquet(<results-dir>)`` (pyarrow's dataset discovery, which recurses into
subfolders) skips folders whose name starts with ``_`` or ``.``; a plain ``perf/`` would be
read by the latter as extra rows without run_id.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_METHODS = ("dense", "vanilla_lowrank", "robust_lowrank", "pruning")
PERF_SUBDIR = "_perf"
#: (in_channels, image_size) of the synthetic stand-in for each data set
_SHAPES = {"digits": (1, 8), "mnist": (1, 28), "fashion_mnist": (1, 28), "cifar10": (3, 32), "cifar100": (3, 32),
           "svhn": (3, 32)}
_CLASSES = {"cifar100": 100}


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "perf", help="training throughput, inference latency and AutoAttack overhead per method",
        description="Measure, back to back in one process: training images/s of each method (built and stepped "
                    "as `bench run` does, round-robin over --repeats rounds), inference latency and FLOPs of the "
                    "merged model relative to dense, and the overhead of the project's AutoAttack wrapper over "
                    "calling pyautoattack directly. Prints one table and writes one parquet file under "
                    "<results-dir>/_perf/.")
    p.add_argument("--track", "-t", default="digits-cnn", help="track (see `bench list --tracks`); default digits-cnn")
    p.add_argument("--compression", type=float, nargs="+", default=None, metavar="C",
                   help="one or more compression targets (default: the track's)")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help=f"comma-separated methods (default {','.join(DEFAULT_METHODS)}); dense is always measured")
    p.add_argument("--device", default=None, help="cpu, cuda, ...; default: cuda when present")
    p.add_argument("--steps", type=int, default=20, help="timed training steps per entry per round (default 20)")
    p.add_argument("--warmup", type=int, default=5, help="untimed training steps per entry first (default 5)")
    p.add_argument("--repeats", type=int, default=3, help="rounds (default 3)")
    p.add_argument("--batch-size", type=int, default=None, help="training batch size (default: the track's)")
    p.add_argument("--latency-batch", type=int, default=None,
                   help="images per latency batch (default: as bench run, 128 or the test split if smaller)")
    p.add_argument("--results-dir", default=None, help="default: $BENCH_RESULTS_DIR, then ./results")
    p.add_argument("--data-dir", default=None, help="data directory (default: $BENCH_DATA_DIR, then ./data)")
    p.add_argument("--synthetic", action="store_true",
                   help="random tensors of the data set's shape instead of the real data (also the fallback "
                        "when the data set is not found)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--aa-points", type=int, default=100, help="test points for the AutoAttack overhead (default 100)")
    p.add_argument("--aa-version", choices=("standard", "apgd-ce"), default="standard",
                   help="standard AutoAttack, or APGD-CE only (cheap) for the overhead measurement")
    p.add_argument("--aa-eps", type=float, default=None, help="Linf ε (default: the track's headline ε)")
    p.add_argument("--aa-rounds", type=int, default=2,
                   help="timed pairs of AutoAttack calls, order alternating: direct+bench, bench+direct, ... (default 2)")
    p.add_argument("--no-aa", action="store_true", help="skip the AutoAttack overhead measurement")
    p.add_argument("--cuda-graph", action="store_true",
                   help="also time robust_lowrank with its optimizer step captured in a CUDA graph and replayed "
                        "(conditioner newton_schulz: no host synchronisation), as an extra row 'robust_lowrank "
                        "(graph)' beside the eager one; needs a CUDA device")
    p.add_argument("--no-write", action="store_true", help="print only, write no parquet file")
    return p


@dataclass
class _Entry:
    method: str
    compression: float
    model: Any
    method_obj: Any
    optimizer: Any
    gen: Any
    total_steps: int
    n_params: int = 0
    step: int = 0
    perm: Any = None
    pos: int = 0
    ips: list = field(default_factory=list)
    lat: list = field(default_factory=list)
    deployed: Any = None
    flops: int | None = None
    lat_repeats: int = 0
    variant: str = "eager"  # how the optimizer steps: eager, or cuda_graph (bench perf --cuda-graph)

    @property
    def key(self) -> tuple[str, float, str]:
        return (self.method, self.compression, self.variant)

    @property
    def label(self) -> str:
        return _label(self.method, self.variant)


def _label(method: str, variant: str) -> str:
    """How the log and the table name an entry: the method, marked when its step replays a CUDA graph."""
    return method if variant == "eager" else f"{method} (graph)"


def _load_data(track, args, batch_size: int):
    """(DataSplits-like object, source string); synthetic when asked or when the data set is missing."""
    import torch

    from bench.data import DataError, DataSplits, load_dataset

    reason = "--synthetic"
    if not args.synthetic:
        try:
            # no download: throughput does not depend on the values, and a download may hang offline
            data = load_dataset(track.dataset, args.data_dir, val_fraction=track.val_fraction, download=False)
            return data, f"real ({data.source})"
        except DataError as exc:
            reason = f"{track.dataset} not found: {str(exc).split('. ')[0]}"
    c, s = _SHAPES.get(track.dataset, (3, 32))
    k = _CLASSES.get(track.dataset, 10)
    g = torch.Generator().manual_seed(args.seed)
    n_train, n_test = max(8 * batch_size, 1024), 256
    data = DataSplits(
        name=track.dataset, source="synthetic",
        x_train=torch.rand(n_train, c, s, s, generator=g), y_train=torch.randint(0, k, (n_train,), generator=g),
        x_val=torch.empty(0, c, s, s), y_val=torch.empty(0, dtype=torch.long),
        x_test=torch.rand(n_test, c, s, s, generator=g), y_test=torch.randint(0, k, (n_test,), generator=g),
        num_classes=k)
    return data, f"synthetic random tensors {c}x{s}x{s} ({reason}; throughput does not depend on values)"


def _build(name: str, compression: float, track, data, device, batch_size: int, seed: int) -> _Entry:
    import torch

    from bench.compression import inference_param_count
    from bench.method import OptimHP, build_optimizer
    from bench.registry import METHODS
    from bench.build import build_for_track
    from bench.train import total_steps_of

    cls = METHODS.get(name)
    method = cls()
    total_steps = max(1, total_steps_of(len(data.y_train), batch_size, track.epochs))
    model, _ = build_for_track(track, data, method, compression=compression, seed=seed, total_steps=total_steps,
                               device=device)
    hp = OptimHP(lr=track.lr, momentum=track.momentum, weight_decay=track.weight_decay, nesterov=track.nesterov)
    opt = build_optimizer(method, model, hp)  # as bench.train.train does
    model.train()
    return _Entry(name, compression, model, method, opt, torch.Generator().manual_seed(seed), total_steps,
                  n_params=inference_param_count(model))


def _train_steps(e: _Entry, k: int, x, y, track, batch_size: int) -> None:
    """``k`` steps of :func:`bench.train.train_step`, the trainer's own step, with its schedule and
    augmentation (full batches; a new permutation when one runs out)."""
    import torch

    from bench.objective import make_objective
    from bench.train import augment_batch, lr_at, train_step

    n = len(y)
    objective = make_objective("standard", {})
    for _ in range(k):
        lr = lr_at(min(e.step / e.total_steps, 1.0), track.lr, track.lr_milestones, track.lr_gamma)
        if e.perm is None or e.pos + batch_size > n:
            e.perm = torch.randperm(n, generator=e.gen).to(x.device)
            e.pos = 0
        idx = e.perm[e.pos:e.pos + batch_size]
        e.pos += batch_size
        xb = augment_batch(x[idx], track.augment, e.gen)
        loss = train_step(e.model, e.method_obj, e.optimizer, objective, xb, y[idx], lr=lr,
                          progress_after=lambda: (e.step + 1) / e.total_steps)
        e.step += 1
        if e.step % 20 == 0:  # the trainer reads the loss every 20 steps (a device sync)
            float(loss.detach())


def _median_ratio(a: list[float], b: list[float]) -> float | None:
    r = [x / y for x, y in zip(a, b) if y and y > 0]
    return float(statistics.median(r)) if r else None


def _aa_overhead(model, x, y, *, eps: float, version: str, device, rounds: int, log) -> dict:
    """Seconds of bench's autoattack_curve vs pyautoattack called directly, same model, points, seed, batch."""
    import torch

    from bench.metrics.families.autoattack import AA_BATCH
    from bench.metrics.autoattack import VERSION_ATTACKS, AAStep, autoattack_curve, capture_flags

    try:
        from pyautoattack import AutoAttack
    except ImportError as exc:
        return {"aa_skipped": f"pyautoattack not importable: {exc}"}
    from bench.train import synchronize

    bs = AA_BATCH.get(device.type, 250)
    attacks = VERSION_ATTACKS["standard"] if version == "standard" else ("apgd-ce",)
    step = AAStep("Linf", float(eps), "standard" if version == "standard" else "custom", tuple(attacks))
    x = x.detach().to("cpu", torch.float32).contiguous()
    y = y.detach().to("cpu", torch.long).contiguous()

    attacked = []

    def bench_call(xs, ys) -> float:
        res = autoattack_curve(model, xs, ys, [step], device=device, seed=0, batch_size=bs)
        attacked.append(res.points[0]["n_attacked"])
        return res.points[0]["acc"]

    def direct_call(xs, ys) -> float:
        aa = AutoAttack(model, norm="Linf", eps=float(eps), version="standard", seed=0, device=device)
        if version != "standard":
            aa.attacks_to_run = list(attacks)
        with capture_flags("direct", []):  # keep its log lines off the terminal, as bench does
            _, y_adv = aa.run_standard_evaluation(xs, ys, batch_size=bs)
        return float((y_adv.cpu() == ys).float().mean())

    def timed(fn):
        synchronize(device)
        t0 = time.perf_counter()
        acc = fn(x, y)
        synchronize(device)
        return time.perf_counter() - t0, acc

    model.eval()
    w = min(8, len(y))  # warm-up: kernels, allocator, first-call imports
    direct_call(x[:w], y[:w])
    bench_call(x[:w], y[:w])
    t_bench, t_direct, acc_b, acc_d = [], [], None, None
    for r in range(max(1, rounds)):
        order = ("direct", "bench") if r % 2 == 0 else ("bench", "direct")
        for which in order:
            if which == "bench":
                s, acc_b = timed(bench_call)
                t_bench.append(s)
            else:
                s, acc_d = timed(direct_call)
                t_direct.append(s)
            log(f"  AutoAttack {which:6s} round {r + 1}: {s:.2f} s")
    return {
        "aa_version": version, "aa_eps": float(eps), "aa_points": int(len(y)), "aa_batch_size": bs,
        "aa_rounds": max(1, rounds), "aa_bench_seconds": float(statistics.median(t_bench)),
        "aa_direct_seconds": float(statistics.median(t_direct)),
        "aa_overhead_ratio": _median_ratio(t_bench, t_direct),
        "aa_bench_robust_acc": acc_b, "aa_direct_robust_acc": acc_d, "aa_n_attacked": attacked[-1],
    }


def _fmt(v, spec: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec)


def format_table(rows: list[dict]) -> str:
    head = ("method", "compression", "img/s", "x dense", "x vanilla", "latency ms", "latency ratio", "FLOP ratio")
    body = [(_label(r["method"], r.get("step_variant", "eager")), _fmt(r["compression_target"], "g"), _fmt(r["images_per_second"], ",.0f"),
             _fmt(r["ratio_to_dense"], ".2f"), _fmt(r["ratio_to_vanilla_lowrank"], ".2f"),
             _fmt(r["latency_ms"], ".3f"), _fmt(r["latency_ratio"], ".2f"), _fmt(r["flop_ratio"], ".3f"))
            for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(head), line(tuple("-" * w for w in widths))] + [line(b) for b in body])


def write_perf_rows(rows: list[dict], results_dir: str | os.PathLike) -> Path:
    """One parquet file under ``<results_dir>/_perf/``, written atomically (temp file + rename)."""
    import datetime as _dt
    import tempfile
    import uuid

    import pyarrow as pa
    import pyarrow.parquet as pq

    d = Path(results_dir) / PERF_SUBDIR
    d.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    final = d / f"perf__{stamp}__{uuid.uuid4().hex[:8]}.parquet"
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".parquet", dir=d)
    os.close(fd)
    try:
        pq.write_table(pa.Table.from_pylist(rows), tmp)
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return final


def cmd_perf(args) -> int:
    import json

    import torch

    from bench.compression import compression_of, inference_param_count
    from bench.metrics.families.cost import LATENCY_BATCH
    from bench.metrics.cost import flops_per_example, inference_form, latency_ms
    from bench.registry import METHODS, TRACKS
    from bench.build import provenance, resolve_device
    from bench.train import synchronize

    log = lambda msg: print(msg, flush=True)  # noqa: E731
    for name in ("steps", "repeats", "aa_rounds"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0 or args.aa_points < 1:
        raise ValueError("--warmup must be >= 0 and --aa-points >= 1")
    if args.threads:
        torch.set_num_threads(int(args.threads))
    track = TRACKS.get(args.track)
    device = resolve_device(args.device)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        METHODS.get(m)  # unknown names fail now, with suggestions
    if "dense" not in methods:
        methods.insert(0, "dense")
    if args.cuda_graph:
        if device.type != "cuda":
            raise ValueError(f"--cuda-graph captures the CondLR step in a CUDA graph: it needs a CUDA device, "
                             f"got {device}")
        if "robust_lowrank" not in methods:
            raise ValueError("--cuda-graph times robust_lowrank's step: include robust_lowrank in --methods")
    comps = args.compression if args.compression else [track.compression]
    for c in comps:
        if not 0.0 <= c < 1.0:
            raise ValueError(f"--compression must be in [0, 1), got {c}")
    batch_size = int(args.batch_size or track.batch_size)
    if batch_size < 1:
        raise ValueError("--batch-size must be >= 1")

    data, source = _load_data(track, args, batch_size)
    if len(data.y_train) < batch_size:
        raise ValueError(f"--batch-size {batch_size} exceeds the {len(data.y_train)} training images")
    prov = provenance(device)
    threads = torch.get_num_threads()
    dev_name = prov["device_name"]
    log(f"bench perf: track {track.name} ({track.dataset}, {track.arch}), batch {batch_size}, {args.warmup} warm-up + "
        f"{args.repeats} rounds x {args.steps} steps per entry")
    log(f"device: {device} - {dev_name}; torch {torch.__version__}, {threads} CPU threads")
    log(f"data: {source}")

    entries: list[_Entry] = []
    for m in methods:
        cls = METHODS.get(m)
        for c in (comps if cls.compresses else [0.0]):
            if any(e.key == (m, c, "eager") for e in entries):
                continue
            entries.append(_build(m, float(c), track, data, device, batch_size, args.seed))
            if args.cuda_graph and m == "robust_lowrank":
                g = _build(m, float(c), track, data, device, batch_size, args.seed)
                g.optimizer = g.optimizer.with_options(conditioner="newton_schulz", experimental="cuda_graph")
                g.variant = "cuda_graph"
                entries.append(g)
    dense = entries[[e.method for e in entries].index("dense")]
    x_dev, y_dev = data.x_train.to(device), data.y_train.to(device)

    # -- training throughput, round-robin ----------------------------------------------------
    for e in entries:
        # a graph entry takes its eager warm-up steps and the capture before the timed steps
        warmup = max(args.warmup, e.optimizer.graph_warmup + 1) if e.variant == "cuda_graph" else args.warmup
        _train_steps(e, warmup, x_dev, y_dev, track, batch_size)
    synchronize(device)
    for e in entries:
        if e.variant == "cuda_graph":
            log(f"  {e.label}@{e.compression:g}: step " + ("captured in a CUDA graph" if e.optimizer.graph_captured
                                                           else "NOT captured (eager; see the warning above)"))
    for r in range(args.repeats):
        for e in entries:
            synchronize(device)
            t0 = time.perf_counter()
            _train_steps(e, args.steps, x_dev, y_dev, track, batch_size)
            synchronize(device)
            e.ips.append(args.steps * batch_size / (time.perf_counter() - t0))
        log(f"  round {r + 1}: " + "  ".join(f"{e.label}@{e.compression:g} {e.ips[-1]:,.0f}" for e in entries))

    # -- inference form: latency and FLOPs, interleaved --------------------------------------
    lat_bs = min(int(args.latency_batch or LATENCY_BATCH), len(data.y_test))
    batch = data.x_test[:lat_bs].to(device)
    for e in entries:
        e.method_obj.finalize(e.model)  # as the runner does before evaluating
        e.n_params = inference_param_count(e.model)
        e.model.eval()
        e.deployed = inference_form(e.model)
        e.flops = flops_per_example(e.deployed, batch)
    for r in range(args.repeats):
        for e in entries:
            res = latency_ms(e.deployed, batch, warmup=3 if r == 0 else 1, min_repeats=3, max_repeats=20,
                             max_seconds=0.5)
            e.lat.append(res["ms"])
            e.lat_repeats += res["repeats"]

    # -- AutoAttack overhead -----------------------------------------------------------------
    aa: dict = {}
    if not args.no_aa:
        eps = args.aa_eps if args.aa_eps is not None else track.eval.headline_eps
        n = min(args.aa_points, len(data.y_test))
        log(f"AutoAttack overhead: Linf eps={eps:.4g} {args.aa_version} on {n} test points, dense model after its "
            f"{dense.step} training steps")
        aa = _aa_overhead(dense.model, data.x_test[:n], data.y_test[:n], eps=eps, version=args.aa_version,
                          device=device, rounds=args.aa_rounds, log=log)

    # -- table and rows ----------------------------------------------------------------------
    rows = []
    args_json = json.dumps({k: v for k, v in vars(args).items() if not callable(v)}, sort_keys=True, default=str)
    for e in entries:
        van = next((v for v in entries if v.method == "vanilla_lowrank" and v.compression == e.compression
                    and v.variant == "eager"), None)
        if e.method == "dense":
            van = None
        row = {
            "track": track.name, "dataset": track.dataset, "arch": track.arch, "method": e.method,
            "step_variant": e.variant,
            "step_graph_captured": bool(getattr(e.optimizer, "graph_captured", False)),
            "compression_target": e.compression, "n_params": e.n_params, "n_params_dense": dense.n_params,
            "compression": compression_of(e.n_params, dense.n_params),
            "batch_size": batch_size, "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats,
            "images_per_second": float(statistics.median(e.ips)), "images_per_second_rounds": list(e.ips),
            "ratio_to_dense": _median_ratio(e.ips, dense.ips),
            "ratio_to_vanilla_lowrank": _median_ratio(e.ips, van.ips) if van is not None else None,
            "latency_ms": float(statistics.median(e.lat)), "dense_latency_ms": float(statistics.median(dense.lat)),
            "latency_ratio": _median_ratio(e.lat, dense.lat), "latency_batch_size": lat_bs,
            "latency_repeats": e.lat_repeats, "flops_per_example": e.flops,
            "flop_ratio": e.flops / dense.flops if e.flops is not None and dense.flops else None,
            "threads": threads, "device": str(device), "data_source": source, "seed": args.seed,
            "args_json": args_json,
        }
        row.update({k: v for k, v in aa.items()})
        row.update(prov)
        rows.append(row)

    log("")
    log(format_table(rows))
    log(f"device: {dev_name}" + (f" ({device})" if device.type != "cpu" else "") + f"; {threads} threads; batch {batch_size}; latency batch {lat_bs}; data: "
        f"{'synthetic' if data.source == 'synthetic' else 'real'}")
    if aa.get("aa_skipped"):
        log(f"AutoAttack overhead: skipped ({aa['aa_skipped']})")
    elif aa:
        ratio = aa["aa_overhead_ratio"]
        verdict = "ok" if ratio is not None and ratio <= 1.05 else "ABOVE the goal"
        log(f"AutoAttack overhead: bench {aa['aa_bench_seconds']:.2f} s vs pyautoattack direct "
            f"{aa['aa_direct_seconds']:.2f} s on {aa['aa_points']} points (Linf eps={aa['aa_eps']:.4g}, "
            f"{aa['aa_version']}, batch {aa['aa_batch_size']}): ratio {_fmt(ratio, '.3f')} (goal <= 1.05: {verdict}); "
            f"robust acc {_fmt(aa['aa_bench_robust_acc'], '.3f')} / {_fmt(aa['aa_direct_robust_acc'], '.3f')}; "
            f"{aa['aa_n_attacked']} points attacked (the correctly classified ones)"
            + (" - none, so the ratio times only set-up" if not aa["aa_n_attacked"] else ""))
    if not args.no_write:
        from bench.results import resolve_results_dir

        results_dir = str(resolve_results_dir(args.results_dir))
        path = write_perf_rows(rows, results_dir)
        log(f"written {path}")
    return 0
