"""The uncompressed reference: the same network, optimizer family and schedule."""

from __future__ import annotations

from bench.method import Method, NoParams
from bench.registry import register_method


@register_method("dense")
class Dense(Method):
    """Uncompressed network trained with momentum SGD (the reference point).

    Weight decay: the track's, on every parameter.
    """

    Params = NoParams
    compresses = False
