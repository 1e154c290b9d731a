"""The CondLR optimizer step: momentum SGD that keeps every low-rank layer W = U S Vᵀ on the
constraint set (orthonormal U, V; κ(S) ≤ κ̄) after every step.

In three parts, one code path for every device and no host synchronisation inside a step:

* :mod:`.linalg`: the mathematics as batched pure functions (tangent projection, the Q-factor
  retractions :func:`cholesky_qr` / :func:`householder_qr`, the conditioning of S);
* :mod:`.buckets`: the layers' factors and cores packed into a few stacked tensors, so that each
  stage is one call per bucket;
* :mod:`.optimizer`: :class:`ManifoldSGD`, which schedules them.

:mod:`.experimental` holds the CUDA-graph capture and the CPU worker threads, off by default and
unverified where they are meant to help (``ManifoldSGD(experimental=...)``). Timings behind the
constants: docs/speed.md.
"""

from .buckets import _HOUSEHOLDER_ASPECT, _HOUSEHOLDER_SMALL, _Bucket, _CoreBucket, _stack, bucketing
from .experimental import EXPERIMENTAL
from .linalg import (CONDITIONERS, MODES, RETRACTIONS, cholesky_qr, condition_s, condition_s_exact, effective_bound,
                     householder_qr, project_tangent, q_factor)
from .optimizer import STEP_SCALES, ManifoldSGD, orthonormalize_layer_

__all__ = ["CONDITIONERS", "EXPERIMENTAL", "MODES", "RETRACTIONS", "STEP_SCALES", "ManifoldSGD", "bucketing",
           "cholesky_qr", "condition_s", "condition_s_exact", "effective_bound", "householder_qr",
           "orthonormalize_layer_", "project_tangent", "q_factor"]
