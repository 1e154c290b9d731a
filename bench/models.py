"""Model builders, registered by name. Every model takes inputs in [0, 1] and
normalises internally (``mean``/``std``; the track decides which), so attack budgets ε are on
the pixel scale.

Activations are LeakyReLU (slope 0.01, PyTorch's default), as in the CondLR paper's models.
This matters for the conditioning metrics: the paper bounds a network's relative condition
number by ∏ κ(W_l)·κ(σ_l), and κ(σ) of an activation is finite only when σ is bi-Lipschitz.
LeakyReLU has slopes in [0.01, 1], so κ(σ) ≤ 100 and the bound means something; ReLU maps a
half-line to 0 (slope 0), κ(σ) = ∞, and the bound is vacuous whatever the weights.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
import torch.nn.functional as F

from bench.registry import MODELS, register_model


class Normalize(nn.Module):
    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


def _act() -> nn.Module:
    return nn.LeakyReLU(LEAKY_SLOPE)


#: LeakyReLU slope (PyTorch's default, the CondLR paper's)
LEAKY_SLOPE = 0.01


def _norm(in_channels, mean, std):
    mean = list(mean) if mean is not None else [0.5] * in_channels
    std = list(std) if std is not None else [0.5] * in_channels
    return Normalize(mean, std)


@register_model("digits_cnn")
def digits_cnn(*, num_classes: int = 10, in_channels: int = 1, image_size: int = 8, mean=None, std=None) -> nn.Module:
    """A small CNN for 8x8 digits: conv32-conv64-fc128-fc10."""
    return nn.Sequential(
        _norm(in_channels, mean, std),
        nn.Conv2d(in_channels, 32, 3, padding=1), _act(),
        nn.Conv2d(32, 64, 3, padding=1), _act(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * (image_size // 2) ** 2, 128), _act(),
        nn.Linear(128, num_classes),
    )


@register_model("lenet5")
def lenet5(*, num_classes: int = 10, in_channels: int = 1, image_size: int = 28, mean=None, std=None) -> nn.Module:
    """LeNet5 as in the CondLR paper: conv20(5x5)-LReLU-pool-conv50(5x5)-LReLU-pool-fc500-LReLU-fc10, PyTorch init."""
    s = ((image_size - 4) // 2 - 4) // 2
    return nn.Sequential(
        _norm(in_channels, mean, std),
        nn.Conv2d(in_channels, 20, 5), _act(), nn.MaxPool2d(2),
        nn.Conv2d(20, 50, 5), _act(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(50 * s * s, 500), _act(),
        nn.Linear(500, num_classes),
    )


_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


@register_model("vgg16")
def vgg16(*, num_classes: int = 10, in_channels: int = 3, image_size: int = 32, mean=None, std=None,
          width: float = 1.0) -> nn.Module:
    """VGG16 as in the CondLR paper: 13 conv3x3 (no bias) + BN + LReLU, FC 512-512 + Dropout(0.2), Kaiming init.

    ``width`` multiplies every layer's channels and the two hidden FC widths (0.25: 16-16-M-32-...-128,
    FC 128-128), the layout otherwise unchanged; 1 is the paper's network.
    """
    if not width > 0:
        raise ValueError(f"vgg16: width must be > 0, got {width}")

    def w(v: int) -> int:
        return max(1, round(v * width))

    layers: list[nn.Module] = [_norm(in_channels, mean, std)]
    c = in_channels
    for v in _VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            # momentum=0.9 as the paper's code passes it: in PyTorch's convention the new batch
            # statistics weigh 0.9 in the running estimates.
            layers += [nn.Conv2d(c, w(v), 3, padding=1, bias=False), nn.BatchNorm2d(w(v), momentum=0.9), _act()]
            c = w(v)
    s = image_size // 32
    layers += [
        nn.Flatten(),
        nn.Linear(c * s * s, w(512)), _act(),
        nn.Linear(w(512), w(512)), _act(),
        nn.Dropout(0.2),
        nn.Linear(w(512), num_classes),
    ]
    model = nn.Sequential(*layers)
    # The paper's initialisation: Kaiming-normal weights (fan-in, ReLU gain), biases uniform on [0, 1).
    for mod in model.modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
            if mod.bias is not None:
                nn.init.uniform_(mod.bias)
    return model


class _WideBasic(nn.Module):
    """Pre-activation wide residual block (Zagoruyko & Komodakis)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x):
        o = F.leaky_relu(self.bn1(x), LEAKY_SLOPE)
        # The projection shortcut sees the pre-activated input, the identity the raw input.
        shortcut = self.shortcut(o) if self.shortcut is not None else x
        out = self.conv1(o)
        out = self.conv2(F.leaky_relu(self.bn2(out), LEAKY_SLOPE))
        return out + shortcut


class WideResNet(nn.Module):
    def __init__(self, depth: int, width: int, num_classes: int, in_channels: int, mean, std):
        super().__init__()
        assert (depth - 4) % 6 == 0, "WideResNet depth must be 6n+4"
        n = (depth - 4) // 6
        widths = [16, 16 * width, 32 * width, 64 * width]
        self.norm = _norm(in_channels, mean, std)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        blocks = []
        cin = widths[0]
        for i, (w, stride) in enumerate(zip(widths[1:], (1, 2, 2))):
            for j in range(n):
                blocks.append(_WideBasic(cin, w, stride if j == 0 else 1))
                cin = w
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.conv1(self.norm(x))
        x = self.blocks(x)
        x = F.leaky_relu(self.bn(x), LEAKY_SLOPE)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


@register_model("wrn16_4")
def wrn16_4(*, num_classes: int = 10, in_channels: int = 3, image_size: int = 32, mean=None, std=None) -> nn.Module:
    """WideResNet-16-4 (pre-activation, LeakyReLU, dropout 0)."""
    return WideResNet(16, 4, num_classes, in_channels, mean, std)


def build_model(arch: str, **kwargs) -> nn.Module:
    """Build a registered model; ``None`` keyword arguments are dropped (timm-style)."""
    fn = MODELS.get(arch)
    return fn(**{k: v for k, v in kwargs.items() if v is not None})
