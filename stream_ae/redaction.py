"""Credentials a URI may carry (``s3://KEY:SECRET@bucket/path``, as pyarrow accepts): masked
wherever a URI is shown — settings logged at start, registry messages, CLI errors.

>>> mask_uri("s3://AKIA:wJal/r@models/reg and file:///tmp/x")
's3://**********@models/reg and file:///tmp/x'
>>> uri_secrets("s3://AKIA:wJal@models/reg")
['AKIA:wJal', 'wJal']
"""
from __future__ import annotations

import re

MASK = "**********"
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#@\s]+(?::[^@\s]*)?)@")


def mask_uri(text: str) -> str:
    """``text`` with the ``user:password`` of every URI in it replaced by :data:`MASK`."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)


def uri_secrets(text: str) -> list[str]:
    """The ``user:password`` of every URI in ``text``, and each password alone (for log masking)."""
    out = []
    for m in _USERINFO.finditer(text):
        out.append(m["userinfo"])
        if ":" in m["userinfo"]:
            out.append(m["userinfo"].split(":", 1)[1])
    return [s for s in out if s]


def strings(obj) -> list[str]:
    """Every string inside nested dicts, lists and tuples."""
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in strings(v)]
    if isinstance(obj, (list, tuple)):
        return [s for v in obj for s in strings(v)]
    return []


def mask_all(obj):
    """A copy of nested dicts, lists and tuples with :func:`mask_uri` applied to every string."""
    if isinstance(obj, str):
        return mask_uri(obj)
    if isinstance(obj, dict):
        return {k: mask_all(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [mask_all(v) for v in obj]
    return obj
