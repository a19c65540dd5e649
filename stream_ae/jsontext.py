"""JSON that other tools can read: JSON has no NaN or infinity (RFC 8259), and Python's
``json.dumps`` writes them as bare ``NaN`` / ``Infinity`` tokens, which ``jq``, browsers and
log shippers refuse. Reports, benchmark figures and log lines go through :func:`dumps`, which
writes a non-finite float as ``null`` ("no figure") and refuses any it missed."""

from __future__ import annotations

import json
import math


def finite(obj):
    """``obj`` with every non-finite float (NaN, inf) in its dicts, lists and tuples made None.

    >>> finite({"p99_ms": float("nan"), "rates": [1.5, float("inf")], "n": 3})
    {'p99_ms': None, 'rates': [1.5, None], 'n': 3}
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def dumps(obj, **kwargs) -> str:
    """``json.dumps`` of :func:`finite` ``(obj)``: valid JSON whatever floats it holds.

    >>> dumps({"ratio": float("nan")})
    '{"ratio": null}'
    """
    return json.dumps(finite(obj), allow_nan=False, **kwargs)
