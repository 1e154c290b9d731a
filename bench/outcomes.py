"""Per-point outcomes: for every attacked point, clean correct or not, and robust or not at every ε of
every attack, kept compactly in a row so that two rows compare point by point (``bench compare``).

A row holds them in its columns of type "outcomes" (``clean_outcomes``, ``aa_outcomes``,
``attack_outcomes``): a list of entries ``{attack, norm, eps, n, bits}``, one per measured
(attack, norm, ε). ``attack`` is "clean" (norm "", ε 0), "autoattack", "fgsm", "pgd" or "transfer" (the dense parent's
APGD-CE examples, ``transfer_outcomes``);
``bits`` is a bitmask over the row's ``attacked_indices`` in their order (point i is bit i % 8 of
byte i // 8, least significant bit first: ``numpy.packbits(bitorder="little")``), base64-encoded;
1 = correct (clean) or robust (attacks). 500 points take 84 characters per entry. The mean of a
decoded mask is the accuracy the row reports for the same attack and ε.

Rows written before outcomes were recorded have empty lists: :func:`row_outcomes` returns {} for
them. Imports numpy only (the leaderboard uses it), never torch.
"""

from __future__ import annotations

import base64
import math
from typing import Any, Iterable

import numpy as np

#: attack names an entry may carry
ATTACKS = ("clean", "autoattack", "fgsm", "pgd", "transfer")


def encode(mask: Iterable[bool]) -> str:
    """A boolean mask as base64 of its little-endian packed bits."""
    arr = np.asarray(mask, dtype=bool).reshape(-1)
    return base64.b64encode(np.packbits(arr, bitorder="little").tobytes()).decode("ascii")


def decode(bits: str, n: int) -> np.ndarray:
    """The boolean mask of ``n`` points that :func:`encode` wrote as ``bits``."""
    raw = np.frombuffer(base64.b64decode(bits), dtype=np.uint8)
    if len(raw) != (n + 7) // 8:
        raise ValueError(f"outcome bits hold {len(raw)} bytes, {(n + 7) // 8} expected for {n} points")
    return np.unpackbits(raw, count=n, bitorder="little").astype(bool)


def entry(attack: str, norm: str, eps: float, mask) -> dict[str, Any]:
    """One outcomes entry: ``mask`` (anything numpy reads as booleans, e.g. a CPU torch bool tensor)."""
    if attack not in ATTACKS:
        raise ValueError(f"outcome attack must be one of {ATTACKS}, got {attack!r}")
    arr = np.asarray(mask, dtype=bool).reshape(-1)
    return {"attack": attack, "norm": norm, "eps": float(eps), "n": int(len(arr)), "bits": encode(arr)}


def outcome_columns() -> list[str]:
    """The declared columns of type "outcomes" (:mod:`bench.columns`)."""
    from bench.columns import all_columns

    return [c.name for c in all_columns() if c.type == "outcomes"]


def _entries(value) -> list:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    return list(value)


def row_outcomes(row) -> dict[tuple[str, str, float], np.ndarray]:
    """Every outcome of a row (a dict or a pandas Series): (attack, norm, ε) -> boolean mask over its
    ``attacked_indices``. {} for a row without outcomes."""
    out = {}
    for col in outcome_columns():
        for e in _entries(row.get(col)):
            out[(str(e["attack"]), str(e["norm"]), float(e["eps"]))] = decode(e["bits"], int(e["n"]))
    return out


def mask_at(outcomes: dict, attack: str, norm: str = "", eps: float = 0.0) -> np.ndarray | None:
    """The mask of ``(attack, norm, eps)`` in :func:`row_outcomes`' dict (ε compared with a tolerance), or None."""
    for (a, nm, e), m in outcomes.items():
        if a == attack and nm == norm and math.isclose(e, eps, rel_tol=1e-9, abs_tol=1e-12):
            return m
    return None


__all__ = ["ATTACKS", "encode", "decode", "entry", "outcome_columns", "row_outcomes", "mask_at"]
