"""Built-in tracks. A track fixes data, model, budget, compression target and evaluation protocol."""

from __future__ import annotations

from bench.config import EvalProtocol, Track
from bench.registry import TRACKS

# AutoAttack on a CPU costs about 40 s per ε for APGD-CE + APGD-T and 3x that for the standard
# version at 200 MNIST points (REFERENCE.md §5), and the cost grows with the points still robust.
# The curve is nested (each ε attacks only the survivors of the previous one), so the large ε are
# cheap; ε = 0.02 (and L2 0.5) would cost a full pass to report that almost nothing breaks.
_MNIST_EVAL = EvalProtocol(
    n_eval=200,
    linf_eps=(0.05, 0.1, 0.2, 0.3),
    headline_eps=0.1,
    l2_eps=(1.0, 2.0),
    fgsm_eps=(0.0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06),  # the paper's MNIST grid
    pgd_linf_eps=(0.02, 0.05, 0.1, 0.2),
    pgd_l2_eps=(0.5, 1.0, 2.0),
)
_CIFAR_EVAL = EvalProtocol(
    n_eval=1000,
    linf_eps=(1 / 255, 2 / 255, 4 / 255, 8 / 255),
    headline_eps=8 / 255,
    l2_eps=(0.25, 0.5),
    fgsm_eps=(0.0, 0.002, 0.004, 0.006),  # the paper's VGG16 grid
    pgd_linf_eps=(1 / 255, 2 / 255, 4 / 255, 8 / 255),
    pgd_l2_eps=(0.1, 0.3, 0.5),  # the paper's headline L2-PGD is ε = 0.3
)

_BUILTIN = [
    Track(
        name="digits-cnn",
        dataset="digits",
        arch="digits_cnn",
        description="scikit-learn 8x8 digits, small CNN; offline, about a minute on 2 CPU cores",
        epochs=30, batch_size=64, lr=0.05, momentum=0.9, weight_decay=5e-4,
        lr_milestones=(0.6, 0.85), lr_gamma=0.3, val_fraction=0.2, compression=0.5,
        # The standard AutoAttack at the headline ε, APGD-CE + APGD-T elsewhere; the digits are
        # 8x8 with 16 grey levels, so ε is larger than on MNIST.
        eval=EvalProtocol(
            n_eval=100, linf_eps=(0.05, 0.1, 0.2), headline_eps=0.1, l2_eps=(),
            fgsm_eps=(0.0, 0.05, 0.1, 0.15, 0.2), pgd_linf_eps=(0.05, 0.1, 0.2),
            pgd_l2_eps=(0.25, 0.5, 1.0), pgd_steps=10, sensitivity_points=32,
        ),
    ),
    Track(
        name="mnist-lenet5", dataset="mnist", arch="lenet5",
        description="MNIST, LeNet5 (conv20-conv50-fc500-fc10) as in the CondLR paper",
        epochs=10, batch_size=128, lr=0.1, momentum=0.3, weight_decay=0.0, compression=0.5, eval=_MNIST_EVAL,
    ),
    Track(
        name="fashion-lenet5", dataset="fashion_mnist", arch="lenet5",
        description="Fashion-MNIST, LeNet5",
        epochs=10, batch_size=128, lr=0.1, momentum=0.3, weight_decay=0.0, compression=0.5, eval=_MNIST_EVAL,
    ),
    Track(
        name="cifar10-vgg16", dataset="cifar10", arch="vgg16",
        description="CIFAR-10, VGG16 with BatchNorm (FC 512-512) as in the CondLR paper",
        epochs=120, batch_size=128, lr=0.05, momentum=0.45, weight_decay=5e-4, augment="crop_flip",
        compression=0.5, eval=_CIFAR_EVAL,
    ),
    Track(
        name="cifar10-wrn16-4", dataset="cifar10", arch="wrn16_4",
        description="CIFAR-10, WideResNet-16-4",
        epochs=120, batch_size=128, lr=0.05, momentum=0.9, weight_decay=5e-4, augment="crop_flip",
        compression=0.5, eval=_CIFAR_EVAL,
    ),
]

for _t in _BUILTIN:
    TRACKS.add(_t.name, _t)
