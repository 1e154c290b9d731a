"""A toy problem whose adversarial answer is known, shared by the metric and evaluation tests."""

import torch
from torch import nn

# -- a linear classifier with a known margin ------------------------------------------------------
# f_k(x) = x_k on a 2x2 "image" (4 classes). A point of class k has x_k in [0.65, 0.75] and the
# other pixels in [0.25, 0.35], so the gap x_k − x_j is in [0.3, 0.5]. Flipping k to j needs an
# Linf perturbation of gap/2 (in [0.15, 0.25]) or an L2 perturbation of gap/√2 (in [0.21, 0.36]).

def separable(n_per_class=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for k in range(4):
        x = 0.25 + 0.1 * torch.rand(n_per_class, 4, generator=g)
        x[:, k] = 0.65 + 0.1 * torch.rand(n_per_class, generator=g)
        xs.append(x)
        ys.append(torch.full((n_per_class,), k))
    return torch.cat(xs).view(-1, 1, 2, 2), torch.cat(ys)


def identity_classifier():
    lin = nn.Linear(4, 4)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(4))
        lin.bias.zero_()
    return nn.Sequential(nn.Flatten(), lin).eval()
