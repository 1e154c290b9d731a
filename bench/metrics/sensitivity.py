"""The empirical relative condition number of the network, the quantity the paper's theory bounds.

For an input x (pixels in [0, 1], before the model's own normalisation) and the logits
f(x), the relative condition number is

    κ_f(x) = ‖J_f(x)‖₂ · ‖x‖₂ / ‖f(x)‖₂

with ‖·‖₂ the Euclidean norm of the flattened input and of the logit vector, and
‖J_f(x)‖₂ the spectral norm (largest singular value) of the input-to-logit Jacobian.
It is estimated by power iteration on JᵀJ using Jacobian-vector products
(``torch.func.jvp``) and vector-Jacobian products (``torch.func.vjp``), batched: in eval
mode the examples of a batch do not interact, so the batch Jacobian is block diagonal and
one power iteration runs for every example at once. Power iteration converges from below,
so the estimate is a lower bound that is tight after enough iterations.
"""

from __future__ import annotations

import warnings

import torch


def _per_example_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1)


def jacobian_spectral_norm(model: torch.nn.Module, x: torch.Tensor, *, iters: int = 20,
                           generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-example ‖J_f(x)‖₂ of ``model`` at ``x`` (a batch), by ``iters`` steps of power iteration."""
    from torch.func import jvp, vjp

    x = x.detach()
    v = torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
    v = v / _per_example_norm(v).clamp_min(1e-30).view(-1, *([1] * (x.dim() - 1)))
    _, vjp_fn = vjp(model, x)
    with warnings.catch_warnings():
        # torch's first jvp scripts its own decompositions and warns that torch.jit.script is deprecated
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated", category=FutureWarning)
        for _ in range(iters):
            _, u = jvp(model, (x,), (v,))
            (w,) = vjp_fn(u)
            v = w / _per_example_norm(w).clamp_min(1e-30).view(-1, *([1] * (x.dim() - 1)))
        _, u = jvp(model, (x,), (v,))
    return _per_example_norm(u.detach())


def relative_condition_numbers(model: torch.nn.Module, x: torch.Tensor, *, iters: int = 20, batch_size: int = 64,
                               seed: int = 0, device: torch.device | str = "cpu") -> torch.Tensor:
    """Per-example ‖J_f(x)‖₂·‖x‖₂/‖f(x)‖₂ (CPU tensor, float64) for the points in ``x``."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].to(device)
        jn = jacobian_spectral_norm(model, xb, iters=iters, generator=gen)
        with torch.no_grad():
            fn = _per_example_norm(model(xb))
        out.append((jn.double() * _per_example_norm(xb).double() / fn.double().clamp_min(1e-30)).cpu())
    return torch.cat(out) if out else torch.empty(0, dtype=torch.float64)
