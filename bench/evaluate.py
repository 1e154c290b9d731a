"""Compose the pure metrics of ``bench.metrics`` into the evaluation columns of one result row.

The model is evaluated once, after training, in eval mode. Attacks use the first
``n_eval`` points of the test split (``aa_n``); clean accuracy uses the whole split.

Columns written (types as stored in parquet; lists are parquet list columns, the
curves lists of structs; a list is empty, never null, when there is nothing to list):

Clean
    ``n_test`` int, ``clean_acc`` float (whole test split), ``val_acc`` float|null,
    ``clean_acc_eval`` float (the ``aa_n`` attacked points, unattacked).
    ``clean_acc_ci_low``, ``clean_acc_ci_high`` float: 95% Wilson interval of ``clean_acc``
    over the ``n_test`` points (the seed spread is the leaderboard's, across rows).
    ``attacked_indices`` list<int>: the test-split indices every attack used (today the
    first ``n_eval``), so two rows can be compared point for point.
AutoAttack (``pyautoattack``; see :mod:`bench.metrics.autoattack` for the exact semantics)
    ``robust_acc`` float, ``robust_eps`` float: the headline, Linf at the track's
    ``headline_eps``; null when attacks are skipped.
    ``aa_headline_version`` str ('standard' | 'plus'), ``aa_n`` int (points attacked).
    ``robust_acc_ci_low``, ``robust_acc_ci_high`` float: 95% Wilson interval of
    ``robust_acc`` over the ``aa_n`` points; null when attacks are skipped.
    ``aa_curve`` list<struct{norm: str, eps: float, acc: float, version: str,
    attacks: str (comma-separated, e.g. "apgd-ce,apgd-t"), n: int, n_attacked: int,
    seconds: float}>: the whole curve, one struct per (norm, ε), Linf by increasing ε then
    L2. ``acc`` is over all ``n`` points and non-increasing in ε within a norm (nested
    evaluation: ε_k attacks only the points robust at ε_{k-1}; ``n_attacked`` says how
    many that was; ``seconds`` is this run's wall time, near 0 for an ε read back from a
    state file).
    ``aa_flags`` list<str>: every warning ``pyautoattack`` logged and every Python
    warning raised during the attacks, as ``"<norm> eps=<ε> <version>: <message>"``.
    ``aa_seconds`` float: wall time of the whole AutoAttack curve.
FGSM / PGD (own implementations, :mod:`bench.metrics.attacks`; raw, one attack per ε; a
point is broken when any iterate, the clean input included, misclassifies it)
    ``fgsm_curve``, ``pgd_linf_curve``, ``pgd_l2_curve``: list<struct{eps: float, acc: float}>
    on the track's grids (the paper's), ``pgd_steps`` int, ``attack_seconds`` float.
Conditioning (:mod:`bench.metrics.conditioning`)
    ``layer_names``, ``layer_kinds`` ('lowrank' | 'linear' | 'conv'), ``layer_shapes``
    ("out x in·kh·kw") list<str>; ``layer_ranks`` list<int> (numerical rank of the stored
    weight), all in the same layer order. Each layer's κ and ‖·‖₂ are of its *folded*
    matrix diag(a_out)·W·diag(b_in): the eval-mode BatchNorm scale γ/√(running_var + ε) of
    a BN right after the layer (conv → BN → act), and as b_in the |scale| of a BN before it
    (pre-activation BN → act → conv) and the model's ``Normalize`` 1/std for the layers
    that consume the input — at inference these scales are part of the layer's linear
    map, so κ(W) alone is not the layer's κ. ``layer_kappa``, ``layer_spectral_norm``
    list<float> (folded); ``cond_max`` float (max folded κ), ``log10_cond_prod`` float
    (log10 ∏ folded κ_l), ``lipschitz_upper`` float (∏ folded ‖W_l‖₂). The stored weights
    alone: ``layer_kappa_raw``, ``layer_spectral_norm_raw`` list<float>, ``cond_max_raw``
    float. ``layer_folded`` list<str>: per layer what was folded ("" nothing, "bn",
    "bn_in", "input_norm", joined by "+", e.g. "bn+input_norm"; "untraced" when the model
    could not be traced with ``torch.fx`` and folded == raw).
Cost (:mod:`bench.metrics.cost`), of the inference form (low-rank layers merged to two
plain layers with U·S multiplied once, the form ``n_params`` counts)
    ``n_nonzero`` int (non-zero parameters, pruning masks applied), ``flops_per_example``
    int (forward FLOPs of one example, ``torch.utils.flop_counter``; dense FLOPs for unstructured pruning),
    ``latency_ms_per_batch`` float and ``dense_latency_ms_per_batch`` float|null (median
    forward time of one batch of ``latency_batch_size`` test images on the run's device,
    for the model and for a freshly built dense model of the same architecture),
    ``latency_ratio`` float|null (model / dense), ``latency_repeats`` int, ``latency_batch_size`` int.
    (``n_params``, ``compression`` and ``images_per_second`` come from the runner.)
Sensitivity (:mod:`bench.metrics.sensitivity`)
    ``sensitivity_rel_cond`` float: mean over the first ``sensitivity_points`` test points
    of ‖J_f(x)‖₂·‖x‖₂/‖f(x)‖₂ (Euclidean norms, spectral norm of the input-to-logit
    Jacobian, f = logits, x in [0, 1] pixels); ``sensitivity_rel_cond_median`` float;
    ``sensitivity_points`` int.
``eval_seconds`` float: wall time of all of the above.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from bench.config import EvalProtocol

#: images per batch for the latency measurement (fewer when the test split is smaller)
LATENCY_BATCH = 128
#: power-iteration steps for ‖J(x)‖₂
SENSITIVITY_ITERS = 20
#: AutoAttack batch: pyautoattack's default on a CPU; a GPU is far from full at 250 CIFAR images
AA_BATCH = {"cpu": 250, "cuda": 1000}


@dataclass
class EvalContext:
    device: torch.device
    n_eval: int
    aa_version: str | None = None  # None: the track's protocol; 'standard'|'plus' forces one version
    skip_attacks: bool = False
    state_dir: Path | None = None  # where AutoAttack keeps its resumable state
    dense_factory: Callable[[], torch.nn.Module] | None = None  # a dense model of the same arch (latency baseline)
    progress: bool = True
    seed: int = 0


def evaluate(model: torch.nn.Module, data, protocol: EvalProtocol, ctx: EvalContext) -> dict[str, Any]:
    """All evaluation columns for ``model`` (left in eval mode). See the module docstring."""
    from bench.compression import nonzero_param_count
    from bench.metrics.accuracy import accuracy
    from bench.metrics.conditioning import conditioning_summary, layer_conditioning
    from bench.metrics.cost import flops_per_example, inference_form, latency_ms
    from bench.metrics.sensitivity import relative_condition_numbers

    t_start = time.perf_counter()
    device = torch.device(ctx.device)
    model.eval()
    n_eval = max(0, min(int(ctx.n_eval), len(data.y_test)))
    x_eval, y_eval = data.x_test[:n_eval], data.y_test[:n_eval]
    row: dict[str, Any] = {
        "n_test": int(len(data.y_test)),
        "clean_acc": accuracy(model, data.x_test, data.y_test, device=device),
        "val_acc": accuracy(model, data.x_val, data.y_val, device=device) if len(data.y_val) else None,
        "clean_acc_eval": accuracy(model, x_eval, y_eval, device=device) if n_eval else None,
        "attacked_indices": list(range(n_eval)),
    }
    row["clean_acc_ci_low"], row["clean_acc_ci_high"] = _ci(row["clean_acc"], row["n_test"])

    row.update(conditioning_summary(layer_conditioning(model)))

    deployed = inference_form(model)  # low-rank layers with U·S merged, as n_params counts them
    row["n_nonzero"] = nonzero_param_count(deployed)
    row["flops_per_example"] = flops_per_example(deployed, data.x_test[:1].to(device))
    bs = min(LATENCY_BATCH, len(data.y_test))
    batch = data.x_test[:bs].to(device)
    lat = latency_ms(deployed, batch)
    del deployed
    row.update(latency_ms_per_batch=lat["ms"], latency_repeats=lat["repeats"], latency_batch_size=bs,
               dense_latency_ms_per_batch=None, latency_ratio=None)
    if ctx.dense_factory is not None:
        dense = ctx.dense_factory().to(device).eval()
        dlat = latency_ms(dense, batch)
        row["dense_latency_ms_per_batch"] = dlat["ms"]
        row["latency_ratio"] = lat["ms"] / dlat["ms"] if dlat["ms"] > 0 else None
        del dense

    k = min(int(protocol.sensitivity_points), len(data.y_test))
    rel = relative_condition_numbers(model, data.x_test[:k], iters=SENSITIVITY_ITERS, seed=ctx.seed, device=device)
    finite = rel[torch.isfinite(rel)]
    row["sensitivity_rel_cond"] = float(finite.mean()) if len(finite) else None
    row["sensitivity_rel_cond_median"] = float(finite.median()) if len(finite) else None
    row["sensitivity_points"] = int(k)

    row.update(robust_acc=None, robust_acc_ci_low=None, robust_acc_ci_high=None, robust_eps=None, aa_headline_version=None, aa_n=0, aa_curve=[], aa_flags=[],
               aa_seconds=None, fgsm_curve=[], pgd_linf_curve=[], pgd_l2_curve=[], pgd_steps=int(protocol.pgd_steps),
               attack_seconds=None)
    if not ctx.skip_attacks and n_eval > 0:
        row.update(_autoattack_columns(model, x_eval, y_eval, protocol, ctx, device))
        row["robust_acc_ci_low"], row["robust_acc_ci_high"] = _ci(row["robust_acc"], row["aa_n"])
        row.update(_fgsm_pgd_columns(model, x_eval, y_eval, protocol, ctx, device))
        if ctx.state_dir is not None:
            _remove_state(Path(ctx.state_dir))
    model.eval()
    row["eval_seconds"] = time.perf_counter() - t_start
    return row


def _ci(acc: float | None, n: int) -> tuple[float | None, float | None]:
    """95% Wilson interval of an accuracy measured on ``n`` points (None when there is none)."""
    from bench.metrics.accuracy import wilson_interval

    if acc is None or not n:
        return None, None
    return wilson_interval(round(acc * n), n)


def _autoattack_columns(model, x, y, protocol: EvalProtocol, ctx: EvalContext, device) -> dict[str, Any]:
    from bench.metrics.autoattack import autoattack_curve, plan_curve

    steps = plan_curve(linf_eps=protocol.linf_eps, l2_eps=protocol.l2_eps, headline_eps=protocol.headline_eps,
                       headline_version=protocol.headline_version, curve_attacks=protocol.curve_attacks,
                       force_version=ctx.aa_version)
    bar = _Progress(len(steps), enabled=ctx.progress)
    t0 = time.perf_counter()
    try:
        res = autoattack_curve(model, x, y, steps, device=device, seed=ctx.seed, state_dir=ctx.state_dir,
                               batch_size=AA_BATCH.get(device.type, 250), progress=bar.step)
    finally:
        bar.close()
    headline = next(s for s in steps if s.norm == "Linf" and math.isclose(s.eps, protocol.headline_eps))
    return {
        "robust_acc": res.acc_at("Linf", headline.eps),
        "robust_eps": float(headline.eps),
        "aa_headline_version": headline.version,
        "aa_n": int(len(y)),
        "aa_curve": res.points,
        "aa_flags": list(res.flags),
        "aa_seconds": time.perf_counter() - t0,
    }


def _fgsm_pgd_columns(model, x, y, protocol: EvalProtocol, ctx: EvalContext, device) -> dict[str, Any]:
    from bench.metrics.attacks import attack_curve

    t0 = time.perf_counter()
    kw = dict(device=device, seed=ctx.seed)
    out = {
        "fgsm_curve": attack_curve(model, x, y, protocol.fgsm_eps, attack="fgsm", **kw),
        "pgd_linf_curve": attack_curve(model, x, y, protocol.pgd_linf_eps, attack="pgd", norm="Linf",
                                       steps=protocol.pgd_steps, **kw),
        "pgd_l2_curve": attack_curve(model, x, y, protocol.pgd_l2_eps, attack="pgd", norm="L2",
                                     steps=protocol.pgd_steps, **kw),
    }
    out["attack_seconds"] = time.perf_counter() - t0
    return out


def _remove_state(state_dir: Path) -> None:
    """Drop the finished evaluation's AutoAttack state, and its parent when that is left empty."""
    shutil.rmtree(state_dir, ignore_errors=True)
    try:
        state_dir.parent.rmdir()  # only succeeds when empty
    except OSError:
        pass


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
