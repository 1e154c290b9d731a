"""Time the CondLR optimizer step (bench.condlr.ManifoldSGD.step) alone, and its stages, against
another version of bench/condlr, on one model, interleaved.

The model is robust_lowrank on a track at one compression, built as ``bench run`` builds it; one
forward/backward on a batch of the track's size gives the gradients. Each round restores the same
parameters and gradients, then times one ``step()`` of the current optimizer and one of the
baseline (``--baseline REV``: bench/condlr as of that git revision, loaded from ``git show``),
in alternating order. Medians over rounds, and the per-round ratio. ``--stages`` also times the
current step's stages (projection, SGD, retraction, conditioning of S) per bucket.

    python benchmarks/condlr_step.py --track mnist-lenet5 --compression 0.5 --baseline 864607e
    python benchmarks/condlr_step.py --track cifar10-vgg16 --compression 0.5 0.8 --baseline 864607e --rounds 6
    python benchmarks/condlr_step.py --track cifar10-vgg16 --compression 0.5 0.8 --device cuda --stages
    python benchmarks/condlr_step.py --track cifar10-vgg16 --compression 0.5 0.8 --device cuda --conditioner both

``--conditioner both`` times the current step with conditioner="eigh" against the same step with
"newton_schulz" (bench.condlr.CONDITIONERS) instead of a git revision. ``--cuda-graph`` (CUDA only)
times the step replayed from a CUDA graph (``ManifoldSGD(experimental="cuda_graph")``, experimental
and never run on a GPU so far; conditioner newton_schulz) against the same step run eagerly, and
checks that the two take the same step.

    python benchmarks/condlr_step.py --track cifar10-vgg16 --compression 0.5 0.8 --device cuda --cuda-graph

``--workers both`` (CPU, ``--threads`` 2 or more) times the step with its buckets on worker threads
(``ManifoldSGD(experimental="cpu_workers")``) against the default step, one bucket after another.

    python benchmarks/condlr_step.py --track mnist-lenet5 --compression 0.5 0.8 --threads 2 --workers both

``--retraction both`` times the step with ``retraction="auto"`` (on the CPU Householder QR for all
but large, very tall factor buckets) against the same step with Cholesky-QR2 everywhere
(bench.condlr.RETRACTIONS); ``--retraction NAME`` sets the current step's kernel.

    python benchmarks/condlr_step.py --track cifar10-vgg16 --compression 0.5 0.8 --retraction both --stages
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def load_condlr(rev: str):
    """bench/condlr as of git revision ``rev`` (the module bench/condlr.py before the split, the
    package bench/condlr/ after it), imported under a name of its own."""
    def show(path: str) -> str:
        return subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, check=True, capture_output=True,
                              text=True).stdout

    name = f"condlr_{rev}".replace("-", "_").replace("~", "_").replace("^", "_")
    tree = subprocess.run(["git", "ls-tree", "--name-only", f"{rev}:bench"], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout.split()
    folder = Path(tempfile.mkdtemp())
    if "condlr.py" in tree:
        path = folder / f"{name}.py"
        path.write_text(show("bench/condlr.py"))
        spec = importlib.util.spec_from_file_location(name, path)
    else:
        package = folder / name
        package.mkdir()
        files = subprocess.run(["git", "ls-tree", "--name-only", f"{rev}:bench/condlr"], cwd=ROOT, check=True,
                               capture_output=True, text=True).stdout.split()
        for f in files:
            if f.endswith(".py"):
                (package / f).write_text(show(f"bench/condlr/{f}"))
        spec = importlib.util.spec_from_file_location(name, package / "__init__.py",
                                                      submodule_search_locations=[str(package)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # the package's relative imports find it there
    spec.loader.exec_module(mod)
    return mod


def _optimizer(module, model, track, **kw):
    from bench.lowrank import lowrank_layers

    return module.ManifoldSGD(model, [l for _, l in lowrank_layers(model)], lr=track.lr, momentum=track.momentum,
                              weight_decay=track.weight_decay, nesterov=track.nesterov, **kw)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--track", default="mnist-lenet5")
    p.add_argument("--compression", type=float, nargs="+", default=[0.5])
    p.add_argument("--baseline", default=None, help="git revision whose bench/condlr is the baseline")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu, cuda, ... (timings synchronise the device)")
    p.add_argument("--stages", action="store_true", help="also time the current step's stages per bucket")
    p.add_argument("--conditioner", choices=["eigh", "newton_schulz", "both"], default="eigh",
                   help="how the current step conditions S (approx_orth); both: time the two, interleaved, "
                        "newton_schulz as the baseline column")
    p.add_argument("--cuda-graph", action="store_true",
                   help="time the step replayed from a CUDA graph (experimental; conditioner newton_schulz) "
                        "against the same step run eagerly; needs --device cuda")
    p.add_argument("--workers", choices=["on", "off", "both"], default="off",
                   help="CPU: the buckets on worker threads (experimental, on) or one after another (off, the "
                        "default step); both: time the two, interleaved, 'off' as the baseline column")
    p.add_argument("--retraction", choices=["auto", "cholesky_qr2", "householder", "both"], default="auto",
                   help="the current step's QR kernel (ManifoldSGD retraction); both: time auto against "
                        "cholesky_qr2, interleaved, cholesky_qr2 as the baseline column")
    args = p.parse_args(argv)
    compared = [flag for flag, on in (("--baseline", args.baseline), ("--conditioner both", args.conditioner == "both"),
                                      ("--cuda-graph", args.cuda_graph), ("--workers both", args.workers == "both"),
                                      ("--retraction both", args.retraction == "both")) if on]
    if len(compared) > 1:
        p.error(f"one comparison at a time: {' and '.join(compared)} each choose what the baseline column is")
    if args.cuda_graph and not args.device.startswith("cuda"):
        p.error("--cuda-graph needs --device cuda")

    import copy

    import torch
    import torch.nn.functional as F

    import bench.condlr as current
    from bench.perf import _build, _load_data
    from bench.registry import TRACKS
    from bench.train import synchronize

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    track = TRACKS.get(args.track)
    data, source = _load_data(track, SimpleNamespace(synthetic=True, data_dir=None, seed=0), track.batch_size)
    baseline = load_condlr(args.baseline) if args.baseline else None
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {args.threads} thread(s)"
    print(f"track {args.track}, batch {track.batch_size}, {args.rounds} rounds on {where}; "
          f"torch {torch.__version__}; data: {source.split(' (')[0]}")
    table = []
    for c in args.compression:
        entry = _build("robust_lowrank", c, track, data, device, track.batch_size, 0)
        model = entry.model
        x, y = data.x_train[:track.batch_size].to(device), data.y_train[:track.batch_size].to(device)
        F.cross_entropy(model(x), y).backward()
        state = copy.deepcopy(model.state_dict())
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        cond = "eigh" if args.conditioner == "both" else args.conditioner
        if args.cuda_graph:
            cond = "newton_schulz"
        retraction = "auto" if args.retraction == "both" else args.retraction
        experimental = ["cuda_graph"] if args.cuda_graph else []
        if args.workers != "off":
            experimental.append("cpu_workers")
        opts = {"current": _optimizer(current, model, track, conditioner=cond, retraction=retraction,
                                      experimental=experimental)}
        if args.cuda_graph or args.workers == "both":
            opts["baseline"] = _optimizer(current, model, track, conditioner=cond)
        elif args.retraction == "both":
            opts["baseline"] = _optimizer(current, model, track, conditioner=cond, retraction="cholesky_qr2")
        elif args.conditioner == "both":
            opts["baseline"] = _optimizer(current, model, track, conditioner="newton_schulz")
        elif baseline is not None:
            opts["baseline"] = _optimizer(baseline, model, track)

        def restore():
            model.load_state_dict(state)
            for n, prm in model.named_parameters():
                prm.grad = grads[n].clone() if n in grads else None

        if args.cuda_graph:
            # the graph replays from the step after graph_warmup eager steps and the capture; the
            # momentum buffers it captured must stay (so neither optimizer's state is cleared below)
            for k in opts:
                for _ in range(opts[k].graph_warmup + 2):
                    restore()
                    opts[k].step()
            synchronize(device)
        times = {k: [] for k in opts}
        for r in range(args.rounds + 1):
            for k in (list(opts) if r % 2 == 0 else list(reversed(opts))):
                if not args.cuda_graph:
                    opts[k].state.clear()  # momentum buffers: every round starts alike
                restore()
                synchronize(device)
                t0 = time.perf_counter()
                opts[k].step()
                synchronize(device)
                if r:  # round 0 warms up
                    times[k].append(time.perf_counter() - t0)
        row = {"compression": c, "current_ms": 1e3 * statistics.median(times["current"])}
        if "baseline" in opts:
            row["baseline_ms"] = 1e3 * statistics.median(times["baseline"])
            row["ratio"] = statistics.median(a / b for a, b in zip(times["current"], times["baseline"]))
        if args.cuda_graph:
            row["captured"] = opts["current"].graph_captured
            after = {}
            for k in opts:  # one step of each from the same parameters, gradients and momentum
                restore()
                for st in opts[k].state.values():
                    st["momentum_buffer"].zero_()
                opts[k].step()
                synchronize(device)
                after[k] = {n: t.detach().clone() for n, t in model.state_dict().items()}
            row["max_diff"] = max(float((after["current"][n] - a).abs().max() / a.abs().max().clamp_min(1e-30))
                                  for n, a in after["baseline"].items() if a.is_floating_point())
            print(f"compression {c:g}: step {'replayed from a CUDA graph' if row['captured'] else 'NOT captured'}; "
                  f"graph vs eager, one step from the same state: max |diff| / max |value| = {row['max_diff']:.1e}")
        table.append(row)
        if args.stages:
            for k, o in opts.items():
                if k == "current" or args.conditioner == "both" or args.retraction == "both":
                    _stages(o, restore, args.rounds, lambda: synchronize(device))
    cur, base = (("eigh", "newton_schulz") if args.conditioner == "both" else
                 ("graph", "eager") if args.cuda_graph else
                 ("workers", "serial") if args.workers == "both" else
                 ("auto", "cholesky_qr2") if args.retraction == "both" else ("current", "baseline"))
    compared = any("ratio" in row for row in table)
    print(f"{'compression':>11}  {cur + ' ms':>10}" + (f"  {base + ' ms':>16}  {cur + '/' + base:>21}" if compared else ""))
    for row in table:
        line = f"{row['compression']:>11g}  {row['current_ms']:>10.1f}"
        if compared:
            line += f"  {row['baseline_ms']:>16.1f}  {row['ratio']:>21.2f}"
        print(line)
    return 0


def _stages(opt, restore, rounds: int, sync) -> None:
    import torch

    from bench.condlr import _stack

    def timed(fn) -> float:
        out = []
        for _ in range(max(3, rounds // 2)):
            restore()
            with torch.no_grad():
                sync()
                t0 = time.perf_counter()
                fn()
                sync()
                out.append(time.perf_counter() - t0)
        return 1e3 * statistics.median(out)

    layers = opt.layers
    print(f"  stage times (ms), current step ({opt.mode}, conditioner {opt.conditioner}, retraction {opt.retraction}):")
    print(f"    SGD (foreach) {timed(lambda: torch.optim.SGD.step(opt)):.2f}")
    for k, (bucket, members) in enumerate(opt._buckets):
        params = [getattr(layers[i], w) for i, w in members]

        def project():
            scales = opt._direction_scales()
            bucket.snapshot_(params)
            bucket.project_(params, [q.grad for q in params], _stack([scales[i] for i, _ in members]),
                            core=opt._core_operands(members))

        shapes = sorted(set(bucket.shapes))
        qr = opt.bucket_retraction(k)
        print(f"    factors {len(members)} x {shapes[:3]}{'...' if len(shapes) > 3 else ''}: "
              f"project {timed(project):.2f}, retract {timed(lambda: bucket.retract_(params, qr)):.2f} ({qr})")
    for bucket, members in opt._core_buckets:
        cores = [layers[i].S for i in members]
        cond = timed(lambda: bucket.condition_(cores, opt.mode, opt.kappa_bar, opt.conditioner,
                                               opt.bucket_retraction(None)))
        print(f"    cores {bucket.sizes}: condition {cond:.2f}")


if __name__ == "__main__":
    raise SystemExit(main())
