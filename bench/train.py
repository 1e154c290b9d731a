"""The training loop. It owns the data order, augmentation, batch size,
learning-rate schedule and the budget; the method only supplies the model,
the optimizer over its parameters and a post-step hook; the objective
(:mod:`bench.objective`) supplies the loss and the training attack, which this loop
runs the same way for every method. No method can spend more epochs or seconds than
the budget, because only this loop steps."""

from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.method import Interrupted, Method, OptimHP, build_optimizer  # Interrupted: the CLI catches it torch-free


class BudgetError(ValueError):
    pass


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite; the runner records the run as failed with this reason."""


@dataclass
class Budget:
    """Either a number of epochs (may be fractional), or wall-clock training seconds, or both (first reached wins)."""

    epochs: float | None = None
    seconds: float | None = None

    def __post_init__(self):
        if self.epochs is None and self.seconds is None:
            raise BudgetError("a budget needs epochs or seconds")
        if self.epochs is not None and not self.epochs > 0:
            raise BudgetError(f"--epochs must be > 0, got {self.epochs}")
        if self.seconds is not None and not self.seconds > 0:
            raise BudgetError(f"--budget-seconds must be > 0, got {self.seconds}")


@dataclass
class TrainStats:
    steps: int
    epochs: float
    images: int
    train_seconds: float
    images_per_second: float
    final_lr: float
    last_loss: float
    stopped_by: str  # 'epochs' | 'seconds'
    resumed_from_step: int = 0  # 0: trained from scratch; else the checkpoint's step it continued from
    forward_passes: int = 0  # passes of the model over a training batch, the attack's included
    backward_passes: int = 0
    monitor_curve: list | None = None  # the monitor's value after each epoch (and at the end), when one was given


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":  # pragma: no cover
        torch.mps.synchronize()


def lr_at(progress: float, base_lr: float, milestones, gamma: float) -> float:
    """Piecewise-constant schedule on the fraction of budget spent (works for epoch and seconds budgets)."""
    return base_lr * gamma ** sum(1 for m in milestones if progress >= m)


def augment_batch(x: torch.Tensor, kind: str, gen: torch.Generator) -> torch.Tensor:
    """Random crop with 4-pixel zero padding and horizontal flip, vectorised on the batch's device."""
    if kind == "none":
        return x
    if kind != "crop_flip":
        raise ValueError(f"unknown augmentation {kind!r}")
    n, c, h, w = x.shape
    pad = 4
    xp = F.pad(x, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
    flip = (torch.rand(n, generator=gen) < 0.5).to(x.device)
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    rows = (dy[:, None] + ar_h[None, :])  # n, h
    cols = (dx[:, None] + ar_w[None, :])  # n, w
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    idx_n = torch.arange(n, device=x.device)[:, None, None, None]
    idx_c = torch.arange(c, device=x.device)[None, :, None, None]
    return xp[idx_n, idx_c, rows[:, None, :, None], cols[:, None, None, :]]


@dataclass
class Checkpointing:
    """Where and how often :func:`train` keeps a checkpoint (written atomically: temp file + rename).

    A checkpoint holds the model's, the optimizer's and the method's state, the data-order and
    augmentation generator, torch's global RNG (dropout), the position in the epoch and the time
    spent, so a run resumed from it continues exactly as if it had not stopped (bit for bit on a
    CPU with the same thread count). It is written at the end of every epoch, every
    ``every_steps`` steps and every ``every_seconds`` of training (a long epoch), and on SIGTERM at
    the next step boundary (then :class:`Interrupted` is raised).
    """

    path: str | os.PathLike
    every_steps: int | None = None
    every_seconds: float | None = 600.0
    #: what decides the trained weights (bench.identity.training_id); a checkpoint saved under
    #: another identity is not resumed (training starts over and overwrites it)
    identity: str = ""




def total_steps_of(n_train: int, batch_size: int, epochs: float | None) -> int | None:
    """Optimizer steps in an epoch budget (the last batch of an epoch may be short); None without one."""
    if epochs is None:
        return None
    return math.ceil(epochs * math.ceil(n_train / batch_size))


def _save_checkpoint(path, state: dict) -> None:
    from pathlib import Path

    from bench.results import write_atomically

    # The partial file must not look like a checkpoint (``*.pt``): a writer killed mid-save leaves
    # it behind, and the next run resumes from ``path`` only.
    write_atomically(path, lambda tmp: torch.save(state, tmp), prefix=f".{Path(path).name}.", suffix=".partial")


def load_checkpoint(path) -> dict | None:
    """The checkpoint at ``path`` (tensors only: ``weights_only=True``), or None when there is none."""
    from pathlib import Path

    if not Path(path).exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def train_step(model: torch.nn.Module, method: Method, optimizer, objective, xb: torch.Tensor, yb: torch.Tensor, *,
               lr: float, progress_after) -> torch.Tensor:
    """One optimizer step, the same for `bench run` (:func:`train`) and `bench perf`: the scheduled
    ``lr`` (× each group's ``lr_scale``), the objective's attack, zeroed gradients, the objective's
    loss, backward, ``optimizer.step()``, then ``method.post_step(model, progress_after())``.

    An adversarial objective generates its batch in eval mode (docs/objectives.md says why) with
    gradients w.r.t. the input only; the gradients are zeroed after it anyway, so whatever an
    objective computes while generating never reaches the optimizer or ``post_step``.
    """
    for g in optimizer.param_groups:
        g["lr"] = lr * g["lr_scale"]
    x_adv = None
    if objective.adversarial:
        model.eval()
        with torch.enable_grad():
            x_adv = objective.generate(model, xb, yb)
        model.train()
    optimizer.zero_grad(set_to_none=True)
    loss = objective.loss(model, xb, yb, x_adv)
    loss.backward()
    optimizer.step()
    method.post_step(model, min(progress_after(), 1.0))
    return loss


def train(model: torch.nn.Module, method: Method, x_train: torch.Tensor, y_train: torch.Tensor, *,
          hp: OptimHP, budget: Budget, batch_size: int, lr_milestones=(), lr_gamma: float = 1.0,
          augment: str = "none", seed: int = 0, device: torch.device, progress: bool = True,
          checkpoint: Checkpointing | None = None, objective=None, monitor=None) -> TrainStats:
    """Train ``model`` in place within ``budget``. Data order and augmentation depend only on ``seed``.

    ``objective`` (a :class:`bench.objective.Objective`; default ``standard``) is the loss each step
    descends (:func:`train_step`). ``monitor(model) -> float``, when given, is called in eval mode
    after every epoch and at the end of training; its values are ``TrainStats.monitor_curve`` and
    its time is not training time (the clock, and so a seconds budget, pause while it runs).

    With ``checkpoint``, an existing checkpoint file is resumed from (``TrainStats.resumed_from_step``)
    and a new one is kept as training goes (see :class:`Checkpointing`); the caller deletes it
    once the run's result is safe.
    """
    import signal

    from tqdm.auto import tqdm

    n = len(y_train)
    if n == 0:
        raise BudgetError("the training split is empty")
    steps_per_epoch = math.ceil(n / batch_size)
    total_steps = total_steps_of(n, batch_size, budget.epochs)
    if objective is None:
        from bench.objective import make_objective

        objective = make_objective("standard", {})
    optimizer = build_optimizer(method, model, hp)
    gen = torch.Generator().manual_seed(seed)
    x_dev = x_train.to(device)
    y_dev = y_train.to(device)

    step = 0
    images = 0
    progress_frac = 0.0
    spent = 0.0  # training seconds before this process (a resumed run)
    perm, pos = None, steps_per_epoch  # the epoch's data order and the next batch in it
    resumed_from = 0
    curve: list[float] = []
    saved = load_checkpoint(checkpoint.path) if checkpoint is not None else None
    if saved is not None and saved.get("identity", "") != checkpoint.identity:
        warnings.warn(f"checkpoint {checkpoint.path} belongs to another training configuration "
                      f"({saved.get('identity')!r}, not {checkpoint.identity!r}); training from the start", UserWarning)
        saved = None
    if saved is not None:
        method.restore_checkpoint_state(saved["method"], model)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        gen.set_state(saved["generator"])
        torch.set_rng_state(saved["torch_rng"])
        if device.type == "cuda" and saved.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(saved["cuda_rng"], device)
        step, images, spent = int(saved["step"]), int(saved["images"]), float(saved["train_seconds"])
        progress_frac, pos = float(saved["progress"]), int(saved["pos"])
        perm = saved["perm"].to(device) if saved.get("perm") is not None else None
        curve = [float(v) for v in saved.get("monitor_curve", [])]
        resumed_from = step
    model.train()

    sigterm = {"hit": False}
    old_handler = None
    if checkpoint is not None:
        def _on_term(signum, frame):  # noqa: ARG001
            sigterm["hit"] = True
        try:
            old_handler = signal.signal(signal.SIGTERM, _on_term)
        except ValueError:  # not the main thread: no handler, checkpoints still written
            old_handler = None

    def save(elapsed: float) -> None:
        _save_checkpoint(checkpoint.path, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "method": method.checkpoint_state(), "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "step": step, "images": images, "train_seconds": spent + elapsed, "progress": progress_frac,
            "pos": pos, "perm": perm.cpu() if perm is not None else None, "identity": checkpoint.identity,
            "monitor_curve": list(curve),
        })

    def progress_after() -> float:
        """The fraction of the budget spent once the running step is done (for ``post_step``)."""
        nonlocal elapsed, progress_frac
        frac_steps = (step + 1) / total_steps if total_steps else 0.0
        if budget.seconds is not None:
            synchronize(device)
            elapsed = spent + time.perf_counter() - t0
            progress_frac = max(frac_steps, elapsed / budget.seconds)
        else:
            progress_frac = frac_steps
        return progress_frac

    def run_monitor() -> float:
        """The monitor's value, in eval mode; returns the seconds it took (kept off the clock)."""
        t = time.perf_counter()
        model.eval()
        curve.append(float(monitor(model)))
        model.train()
        synchronize(device)
        return time.perf_counter() - t

    bar = tqdm(total=total_steps, initial=step, disable=not progress, desc="train", unit="step", leave=False,
               dynamic_ncols=True)
    last_loss = float("nan")
    loss = None
    lr = hp.lr
    stopped_by = "epochs"
    synchronize(device)
    t0 = time.perf_counter()
    last_save = t0
    elapsed = spent
    done = (total_steps is not None and step >= total_steps) or (budget.seconds is not None and spent >= budget.seconds)
    try:
        while not done:
            if pos >= steps_per_epoch:
                perm, pos = torch.randperm(n, generator=gen).to(device), 0
            while pos < steps_per_epoch:
                lr = lr_at(progress_frac, hp.lr, lr_milestones, lr_gamma)
                idx = perm[pos * batch_size:(pos + 1) * batch_size]
                xb = augment_batch(x_dev[idx], augment, gen)
                yb = y_dev[idx]
                # post_step sees the progress *after* this step, so a schedule can reach 1.0 exactly
                loss = train_step(model, method, optimizer, objective, xb, yb, lr=lr, progress_after=progress_after)
                step += 1
                pos += 1
                images += len(idx)
                if step % 20 == 0 or progress_frac >= 1.0:  # the loss is read (a host sync) every 20 steps
                    last_loss = float(loss.detach())
                    if not math.isfinite(last_loss):
                        raise DivergedError(f"training diverged: loss {last_loss} at step {step} "
                                            f"(epoch {step / steps_per_epoch:.2f}, lr {lr:.3g})")
                    bar.set_postfix(loss=f"{last_loss:.3f}", lr=f"{lr:.3g}", refresh=False)
                bar.update(1)
                if total_steps is not None and step >= total_steps:
                    done, stopped_by = True, "epochs"
                elif budget.seconds is not None and elapsed >= budget.seconds:
                    done, stopped_by = True, "seconds"
                if monitor is not None and (pos >= steps_per_epoch or done):
                    t0 += run_monitor()  # after each epoch, and at the end of a budget that stops mid-epoch
                if checkpoint is not None and not done and (
                        pos >= steps_per_epoch or sigterm["hit"]
                        or (checkpoint.every_steps and step % checkpoint.every_steps == 0)
                        or (checkpoint.every_seconds and time.perf_counter() - last_save >= checkpoint.every_seconds)):
                    synchronize(device)
                    save(time.perf_counter() - t0)
                    last_save = time.perf_counter()
                    if sigterm["hit"]:
                        raise Interrupted(f"SIGTERM: checkpoint written at step {step} to {checkpoint.path}")
                if done:
                    break
    finally:
        bar.close()
        if old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)
    synchronize(device)
    train_seconds = spent + time.perf_counter() - t0
    if loss is not None:
        last_loss = float(loss.detach())
    if not math.isfinite(last_loss) and loss is not None:
        raise DivergedError(f"training diverged: loss {last_loss} at the last step {step}")
    model.eval()
    fwd, bwd = objective.passes()
    return TrainStats(
        steps=step, epochs=step / steps_per_epoch, images=images, train_seconds=train_seconds,
        images_per_second=images / train_seconds if train_seconds > 0 else float("nan"),
        final_lr=lr, last_loss=last_loss, stopped_by=stopped_by, resumed_from_step=resumed_from,
        forward_passes=step * fwd, backward_passes=step * bwd, monitor_curve=curve if monitor is not None else None,
    )
