"""AutoAttack robustness curves with ``pyautoattack``, captured warnings and resumable state.

What one curve is
-----------------
For each norm (Linf, then L2) the ε values are attacked in increasing order, and each
ε attacks only the points still robust at the previous, smaller ε. A perturbation
within a smaller ε is also within a larger one (the balls are nested), so a point
broken at ε_{k-1} is broken at ε_k; the reported

    robust(ε_k) = robust(ε_{k-1}) AND (no attack in ε_k's set breaks it at ε_k)

is therefore a valid AutoAttack result at every ε and the curve is non-increasing by
construction, at a fraction of the cost of attacking every ε from scratch. (Running
each ε independently, as RobustBench does for its single ε, gives the same
monotonicity only up to attack randomness; here it is exact.) The points are the given
ones; a point that is misclassified without attack counts as broken, as AutoAttack does,
so the accuracy at every ε is at most the clean accuracy on the same points.

Attack sets
-----------
Each ε has a version: ``standard`` (APGD-CE, APGD-T, FAB-T, Square), ``plus``, or
``custom`` with an explicit list (by default APGD-CE + APGD-T). A custom set uses the
*standard* version's settings for those attacks (APGD-CE with 1 restart, APGD-T with 9
target classes), i.e. it is the standard version without FAB-T and Square. The number
of target classes is capped at classes − 1.

Flags
-----
Everything ``pyautoattack`` logs at WARNING or above on the logger ``auto-attack``
(randomised defence, zero gradients, probabilities instead of logits, Square beating
APGD, too many target classes, dynamic defence) and every Python ``warnings`` warning
raised during the attack is captured, deduplicated with a count, and returned as
``"<norm> eps=<ε> <version>: <message>"``; nothing is printed. A model left in train mode
adds its own flag.

State and resume
----------------
With ``state_dir``, every (norm, ε) keeps ``pyautoattack``'s own state file (the robust
flags after every batch and the attacks already run), named by a fingerprint of the
model's weights, the points, the norm, ε, the attack set and the seed, so a state is
only ever reused for exactly the same evaluation. On a rerun a finished (norm, ε) is
read back without attacking; a half-finished one runs only its remaining attacks on its
still-robust points. ``pyautoattack`` 0.2.0's own restore path cannot be used: it writes
the attack set as the string "{'apgd-ce', 'apgd-t'}" and then refuses the file because a
string is not that set, and its restored branch returns an unassigned ``y_adv``. So this
module reads the file itself and runs the remainder as a fresh evaluation of the
still-robust points, with its own state file, merged back when it finishes. The caller
deletes the folder after success.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import logging
import math
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch

from bench.metrics.accuracy import correct_mask

LOGGER_NAME = "auto-attack"
VERSION_ATTACKS: dict[str, tuple[str, ...]] = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
}
KNOWN_ATTACKS = ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t")


@dataclass(frozen=True)
class AAStep:
    """One point of a curve: the norm, ε and the attack set run there."""

    norm: str  # 'Linf' | 'L2'
    eps: float
    version: str  # 'standard' | 'plus' | 'custom'
    attacks: tuple[str, ...]


@dataclass
class AAResult:
    points: list[dict]  # one per step: norm, eps, acc, version, attacks, n, n_attacked, seconds
    flags: list[str]
    clean_acc: float  # on the same points
    robust: dict[tuple[str, float], torch.Tensor] = field(default_factory=dict)  # per-point robust masks

    def acc_at(self, norm: str, eps: float) -> float | None:
        for p in self.points:
            if p["norm"] == norm and math.isclose(p["eps"], eps, rel_tol=1e-9, abs_tol=1e-12):
                return p["acc"]
        return None


def plan_curve(*, linf_eps: Iterable[float] = (), l2_eps: Iterable[float] = (), headline_eps: float | None = None,
               headline_version: str = "standard", curve_attacks: Iterable[str] = ("apgd-ce", "apgd-t"),
               force_version: str | None = None) -> list[AAStep]:
    """The attack steps of a protocol: Linf ε ascending (the headline ε added if missing), then L2.

    ``force_version`` ('standard' or 'plus') runs that version at every ε; otherwise the
    headline ε (Linf) runs ``headline_version`` ('custom': the ``curve_attacks`` there too) and every
    other ε the custom ``curve_attacks``.
    """
    if headline_version not in VERSION_ATTACKS and headline_version != "custom":
        raise ValueError(f"the headline version must be one of {sorted(VERSION_ATTACKS)} or 'custom', "
                         f"got {headline_version!r}")
    if force_version is not None and force_version not in VERSION_ATTACKS:
        raise ValueError(f"AutoAttack version must be one of {sorted(VERSION_ATTACKS)}, got {force_version!r}")
    curve_attacks = tuple(curve_attacks)
    bad = [a for a in curve_attacks if a not in KNOWN_ATTACKS]
    if bad or not curve_attacks:
        raise ValueError(f"curve attacks must be a non-empty subset of {KNOWN_ATTACKS}, got {curve_attacks}")
    linf = sorted({float(e) for e in linf_eps} | ({float(headline_eps)} if headline_eps is not None else set()))
    steps = []
    for norm, eps_list in (("Linf", linf), ("L2", sorted({float(e) for e in l2_eps}))):
        for eps in eps_list:
            if not eps > 0:
                raise ValueError(f"AutoAttack ε must be > 0, got {eps}")
            if force_version is not None:
                version = force_version
            elif norm == "Linf" and headline_eps is not None and math.isclose(eps, headline_eps):
                version = headline_version
            else:
                version = "custom"
            attacks = VERSION_ATTACKS[version] if version != "custom" else curve_attacks
            steps.append(AAStep(norm, eps, version, tuple(attacks)))
    return steps


class _ListHandler(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.messages.append(record.getMessage())
        except Exception:  # noqa: BLE001 - a malformed record must not end the evaluation
            self.messages.append(str(record.msg))


@contextlib.contextmanager
def capture_flags(prefix: str, sink: list[str]):
    """Collect ``auto-attack`` log records (WARNING+) and Python warnings into ``sink`` as ``prefix: message``."""
    logger = logging.getLogger(LOGGER_NAME)
    handler = _ListHandler()
    old_level, old_propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.propagate = False  # captured, not printed
    if logger.getEffectiveLevel() > logging.WARNING:
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        logger.propagate = old_propagate
        msgs = handler.messages + [f"{w.category.__name__}: {w.message}" for w in caught]
        for msg, count in Counter(msgs).items():  # Counter keeps first-seen order
            sink.append(f"{prefix}: {msg}" + (f" (x{count})" if count > 1 else ""))


def _model_digest(model: torch.nn.Module) -> bytes:
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())  # any dtype
    return h.digest()


def _fingerprint(model_digest: bytes, x: torch.Tensor, y: torch.Tensor, step: AAStep, seed: int) -> str:
    """Names a state file after everything that determines its content."""
    h = hashlib.sha256(model_digest)
    h.update(x.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    h.update(y.detach().to("cpu").numpy().tobytes())
    h.update(f"{step.norm}|{step.eps!r}|{step.version}|{','.join(step.attacks)}|{seed}".encode())
    return h.hexdigest()[:16]


def _load_state(path: Path):
    """pyautoattack's EvaluationState from ``path``, or None when missing, unreadable or half-written."""
    from pyautoattack.state import EvaluationState

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # it warns when the folder was moved; the content is still right
            st = EvaluationState.from_disk(path)
        if st.robust_flags is None or st.robust_flags.dim() != 1:
            return None
        # to_disk writes the attack set through json's default=str, i.e. as "{'apgd-ce', 'apgd-t'}"
        todo = st._attacks_to_run
        st._attacks_to_run = set(ast.literal_eval(todo) if isinstance(todo, str) else todo)
        st._run_attacks = set(st._run_attacks)
        return st
    except Exception:  # noqa: BLE001 - a state cut off mid-write (its writes are not atomic) is just discarded
        return None


def _write_state(path: Path, attacks, flags: torch.Tensor) -> None:
    """A finished state, written atomically (to a side name, then renamed over ``path``)."""
    import os

    from pyautoattack.state import EvaluationState

    tmp = path.with_name(path.name + ".partial")
    st = EvaluationState(set(attacks), path=tmp, _run_attacks=set(attacks), _robust_flags=flags.clone())
    st.to_disk(force=True)
    os.replace(tmp, path)


def _make_attack(model, step: AAStep, attacks, *, n_classes: int, seed: int, device):
    from pyautoattack import AutoAttack

    base = "plus" if step.version == "plus" else "standard"
    aa = AutoAttack(model, norm=step.norm, eps=step.eps, version=base, seed=seed, device=device)
    aa.attacks_to_run = list(attacks)
    aa.version = base if tuple(attacks) == VERSION_ATTACKS[base] else "custom"  # only used in its log lines
    # More target classes than the model has would crash APGD-T / FAB-T.
    aa.apgd_targeted.n_target_classes = min(aa.apgd_targeted.n_target_classes, n_classes - 1)
    aa.fab.n_target_classes = min(aa.fab.n_target_classes, n_classes - 1)
    return aa


def apgd_ce_examples(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "Linf",
                     seed: int = 0, device: torch.device | str = "cpu", batch_size: int = 250) -> torch.Tensor:
    """APGD-CE examples of ``model`` for every point of ``(x, y)`` (CPU float32), with the standard
    version's settings (100 iterations, 1 restart): for each point the iterate of highest
    cross-entropy (``APGDAttack.perturb(best_loss=True)``), broken by the attack or not, so that a
    transfer attack gets the strongest example of every point, not the clean input where APGD-CE failed.
    ``pyautoattack`` seeds only its other branch, so the global RNG is seeded here (and restored after).
    Its log records are dropped: they are about ``model``, not the model the examples are used on."""
    device = torch.device(device)
    x = x.detach().to("cpu", torch.float32).contiguous()
    y = y.detach().to("cpu", torch.long).contiguous()
    if not len(y):
        return x.clone()
    with torch.no_grad():
        n_classes = int(model(x[:1].to(device)).shape[-1])
    step = AAStep(norm, float(eps), "custom", ("apgd-ce",))
    aa = _make_attack(model, step, step.attacks, n_classes=n_classes, seed=seed, device=device)
    apgd = aa.apgd
    apgd.loss, apgd.seed = "ce", seed
    parts, dropped = [], []
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), capture_flags("transfer source", dropped):
        torch.manual_seed(seed)
        for i in range(0, len(y), batch_size):
            adv = apgd.perturb(x[i:i + batch_size].to(device), y[i:i + batch_size].to(device), best_loss=True)
            parts.append(adv.detach().to("cpu", torch.float32))
    return torch.cat(parts)


def _robust_flags(model, x, y, step: AAStep, attacks, *, n_classes: int, seed: int, device, batch_size: int,
                  state_path: Path | None) -> torch.Tensor:
    """Per-point robustness (CPU bool) of ``x`` under ``attacks`` at ``step``, resuming from ``state_path``."""
    if state_path is not None and state_path.exists():
        st = _load_state(state_path)
        if st is not None and st.attacks_to_run == set(attacks) and len(st.robust_flags) == len(y):
            flags = st.robust_flags.to("cpu", torch.bool).clone()
            remaining = [a for a in attacks if a not in st.run_attacks]
            if remaining and bool(flags.any()):
                idx = flags.nonzero().squeeze(1)
                rest = state_path.with_name(state_path.stem + ".rest.json")
                sub = _robust_flags(model, x[idx], y[idx], step, remaining, n_classes=n_classes, seed=seed,
                                    device=device, batch_size=batch_size, state_path=rest)
                flags[idx] &= sub
                _write_state(state_path, attacks, flags)
                rest.unlink(missing_ok=True)
            return flags
        state_path.unlink()
    aa = _make_attack(model, step, attacks, n_classes=n_classes, seed=seed, device=device)
    _, y_adv = aa.run_standard_evaluation(x.contiguous(), y.contiguous(), batch_size=batch_size, state_path=state_path)
    return y_adv.cpu() == y.cpu()


def autoattack_curve(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: list[AAStep], *,
                     device: torch.device | str = "cpu", seed: int = 0, batch_size: int = 250,
                     state_dir: Path | None = None, progress: Callable[[str], None] | None = None) -> AAResult:
    """Run AutoAttack over ``steps`` on the points ``(x, y)`` (see the module docstring).

    The model is attacked in the mode it is in (callers use eval mode; a model in train
    mode is flagged). Returns an :class:`AAResult` whose ``points`` are in curve order: Linf by
    increasing ε, then L2 by increasing ε.
    """
    device = torch.device(device)
    x = x.detach().to("cpu", torch.float32).contiguous()
    y = y.detach().to("cpu", torch.long).contiguous()
    n = len(y)
    flags: list[str] = []
    if model.training:
        flags.append("model: in train mode during AutoAttack (dropout/BatchNorm make it random); evaluate in eval mode")
    with capture_flags("clean", flags):
        clean = correct_mask(model, x, y, device=device, batch_size=batch_size)
        with torch.no_grad():
            n_classes = int(model(x[:1].to(device)).shape[-1]) if n else 10
    digest = b""
    if state_dir is not None:
        state_dir = Path(state_dir)
        state_dir.mkdir(parents=True, exist_ok=True)
        digest = _model_digest(model)
    result = AAResult(points=[], flags=flags, clean_acc=float(clean.float().mean()) if n else 0.0)
    robust_by_norm: dict[str, torch.Tensor] = {}
    for step in sorted(steps, key=lambda s: (s.norm != "Linf", s.norm, s.eps)):
        robust = robust_by_norm.get(step.norm, clean).clone()
        idx = robust.nonzero().squeeze(1)
        if progress is not None:
            progress(f"AutoAttack {step.norm} eps={step.eps:.4g} {step.version} on {len(idx)} points")
        t0 = time.perf_counter()
        if len(idx):
            xs, ys = x[idx], y[idx]
            path = None
            if state_dir is not None:
                fp = _fingerprint(digest, xs, ys, step, seed)
                path = state_dir / f"aa_{step.norm}_eps{step.eps:.6g}_{step.version}_{fp}.json"
            with capture_flags(f"{step.norm} eps={step.eps:.4g} {step.version}", flags):
                sub = _robust_flags(model, xs, ys, step, step.attacks, n_classes=n_classes, seed=seed, device=device,
                                    batch_size=batch_size, state_path=path)
            robust[idx] &= sub
        robust_by_norm[step.norm] = robust
        result.robust[(step.norm, step.eps)] = robust
        result.points.append({
            "norm": step.norm, "eps": float(step.eps), "acc": float(robust.sum()) / n if n else 0.0,
            "version": step.version, "attacks": ",".join(step.attacks), "n": int(n), "n_attacked": int(len(idx)),
            "seconds": float(time.perf_counter() - t0),
        })
    return result


def state_dir_for(results_dir, key: str) -> Path:
    """Where one configuration's AutoAttack state lives: ``<results_dir>/.state/<key>`` (``key`` is a
    configuration id, or ``eval__<run id>`` for a re-evaluation). The state files inside are named by a
    hash of weights, points, ε and attacks, so a stale file is never reused for a different model."""
    safe = "".join(ch if ch.isalnum() or ch in "-_.=," else "_" for ch in str(key))
    return Path(results_dir) / ".state" / safe


def remove_state(state_dir: Path) -> None:
    """Drop a finished evaluation's AutoAttack state, and ``.state`` itself when that is left empty."""
    import shutil

    shutil.rmtree(state_dir, ignore_errors=True)
    try:
        Path(state_dir).parent.rmdir()  # only succeeds when empty
    except OSError:
        pass
