"""Parameter compression (this benchmark's axis) against the CondLR code's rank fraction c.r.

The paper's code gives every layer but the classifier rank r = ceil((1 - c.r.) * min(n, m)) and
keeps the classifier at full rank; this benchmark matches the inference-form parameter count
instead (U·S merged: n·r + r·m per factorised layer). For each model this prints what the code's
c.r. removes in parameters, and the rank fraction our plans (``robust_lowrank`` and the paper
preset ``robust_lowrank_paper``) use at a parameter compression.

    python benchmarks/rank_fractions.py
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MODELS = (("LeNet5 (MNIST)", "lenet5", dict(in_channels=1, image_size=28)),
          ("VGG16 (CIFAR-10)", "vgg16", dict(in_channels=3, image_size=32)),
          ("VGG16 x1/4 (cifar10-vgg16q-e25)", "vgg16", dict(in_channels=3, image_size=32, width=0.25)))


def code_compression(model, cr: float) -> float:
    """Parameters removed by the code's rank rule at rank fraction removed ``cr`` (inference form)."""
    from bench.compression import inference_param_count
    from bench.lowrank import classifier_name, is_factorizable

    dense = inference_param_count(model)
    keep = classifier_name(model)
    saved = 0
    for name, mod in model.named_modules():
        if not name or not is_factorizable(mod) or name == keep:
            continue
        n, m = mod.weight.shape[0], mod.weight[0].numel()
        r = math.ceil((1 - cr) * min(n, m))
        saved += max(0, n * m - r * (n + m))  # a layer whose factors are no smaller stays one matrix
    return saved / dense


def main() -> int:
    from bench.lowrank import plan_compression
    from bench.models import build_model

    print(f"{'model':<34} {'code c.r.':>9} {'-> params removed':>18}   {'ours: params removed':>20} "
          f"{'rank fraction (default)':>24} {'(paper preset)':>15}")
    for label, arch, kw in MODELS:
        model = build_model(arch, **kw)
        for cr, c in ((0.5, 0.5), (0.8, 0.8)):
            ours = plan_compression(model, c).rank_fraction
            paper = plan_compression(model, c, min_share=0.0).rank_fraction
            print(f"{label:<34} {cr:>9.1f} {code_compression(model, cr):>18.3f}   {c:>20.1f} {ours:>24.3f} "
                  f"{paper:>15.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
