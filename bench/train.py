"""The training loop. It owns the data order, augmentation, batch size,
learning-rate schedule and the budget; the method only supplies the model,
the optimizer over its parameters and a post-step hook. No method can spend
more epochs or seconds than the budget, because only this loop steps."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.method import Method, OptimHP


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


def train(model: torch.nn.Module, method: Method, x_train: torch.Tensor, y_train: torch.Tensor, *,
          hp: OptimHP, budget: Budget, batch_size: int, lr_milestones=(), lr_gamma: float = 1.0,
          augment: str = "none", seed: int = 0, device: torch.device, progress: bool = True) -> TrainStats:
    """Train ``model`` in place within ``budget``. Data order and augmentation depend only on ``seed``."""
    from tqdm.auto import tqdm

    n = len(y_train)
    if n == 0:
        raise BudgetError("the training split is empty")
    steps_per_epoch = math.ceil(n / batch_size)
    total_steps = math.ceil(budget.epochs * steps_per_epoch) if budget.epochs is not None else None
    optimizer = method.make_optimizer(model, hp)
    for g in optimizer.param_groups:
        g.setdefault("lr_scale", 1.0)
    gen = torch.Generator().manual_seed(seed)
    x_dev = x_train.to(device)
    y_dev = y_train.to(device)
    model.train()

    bar = tqdm(total=total_steps, disable=not progress, desc="train", unit="step", leave=False,
               dynamic_ncols=True)
    step = 0
    images = 0
    last_loss = float("nan")
    progress_frac = 0.0
    lr = hp.lr
    stopped_by = "epochs"
    synchronize(device)
    t0 = time.perf_counter()
    elapsed = 0.0
    done = False
    while not done:
        perm = torch.randperm(n, generator=gen).to(device)
        for i in range(steps_per_epoch):
            lr = lr_at(progress_frac, hp.lr, lr_milestones, lr_gamma)
            for g in optimizer.param_groups:
                g["lr"] = lr * g["lr_scale"]
            idx = perm[i * batch_size:(i + 1) * batch_size]
            xb = augment_batch(x_dev[idx], augment, gen)
            yb = y_dev[idx]
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            optimizer.step()
            step += 1
            images += len(idx)
            # post_step sees the progress *after* this step, so a schedule can reach 1.0 exactly
            frac_steps = step / total_steps if total_steps else 0.0
            if budget.seconds is not None:
                synchronize(device)
                elapsed = time.perf_counter() - t0
                progress_frac = max(frac_steps, elapsed / budget.seconds)
            else:
                progress_frac = frac_steps
            method.post_step(model, min(progress_frac, 1.0))
            if step % 20 == 0 or progress_frac >= 1.0:  # the loss is read (a host sync) every 20 steps
                last_loss = float(loss.detach())
                if not math.isfinite(last_loss):
                    bar.close()
                    raise DivergedError(f"training diverged: loss {last_loss} at step {step} "
                                        f"(epoch {step / steps_per_epoch:.2f}, lr {lr:.3g})")
                bar.set_postfix(loss=f"{last_loss:.3f}", lr=f"{lr:.3g}", refresh=False)
            bar.update(1)
            if total_steps is not None and step >= total_steps:
                done, stopped_by = True, "epochs"
                break
            if budget.seconds is not None and elapsed >= budget.seconds:
                done, stopped_by = True, "seconds"
                break
    synchronize(device)
    train_seconds = time.perf_counter() - t0
    bar.close()
    last_loss = float(loss.detach())
    if not math.isfinite(last_loss):
        raise DivergedError(f"training diverged: loss {last_loss} at the last step {step}")
    model.eval()
    return TrainStats(
        steps=step, epochs=step / steps_per_epoch, images=images, train_seconds=train_seconds,
        images_per_second=images / train_seconds if train_seconds > 0 else float("nan"),
        final_lr=lr, last_loss=last_loss, stopped_by=stopped_by,
    )
