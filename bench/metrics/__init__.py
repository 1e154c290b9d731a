"""Pure evaluation metrics. Each function takes a model and tensors and returns numbers;
none of them prints or writes result files (the AutoAttack state file is the one
exception, and only where the caller names a folder for it).

Submodules, imported on use so that ``import bench.metrics`` stays cheap:

* :mod:`bench.metrics.accuracy`     clean correctness and accuracy
* :mod:`bench.metrics.autoattack`   AutoAttack (``pyautoattack``) robustness curves, flags, resumable state
* :mod:`bench.metrics.attacks`      FGSM and PGD (Linf, L2) and their curves
* :mod:`bench.metrics.conditioning` per-layer condition numbers and spectral norms
* :mod:`bench.metrics.cost`         FLOPs, non-zeros, inference latency
* :mod:`bench.metrics.sensitivity`  the empirical relative condition number of the network
"""
