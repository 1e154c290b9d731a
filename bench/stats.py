"""Small statistics shared by the evaluation (torch) and the tables (pandas); imports neither."""

from __future__ import annotations

import math

#: two-sided 95% normal quantile
Z95 = 1.959963984540054


def wilson_interval(successes: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``successes / n`` (95% by default).

    Unlike the normal approximation it stays inside [0, 1] and is not degenerate at 0 or 1
    (with 500 attacked points and 0 survivors it is [0, 0.0076]). Returns (nan, nan) for n = 0.
    ``successes`` may be fractional (an accuracy times n, rounded by the caller or not).
    """
    if not n or n <= 0:
        return float("nan"), float("nan")
    p = min(max(successes / n, 0.0), 1.0)
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    low = 0.0 if p == 0.0 else max(0.0, centre - half)
    high = 1.0 if p == 1.0 else min(1.0, centre + half)
    return low, high
