"""Building frozen config dataclasses from plain dicts (manifests, results files, settings)."""
from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import fields

from stream_ae.errors import ConfigError

#: Scoring precisions (``Scorer(precision=...)``, ``model.precision``, ``--precision``); which one
#: a device can run is checked by ``stream_ae.scoring.check_precision``.
PRECISIONS = ("fp32", "bf16", "fp16")


def from_mapping(cls, d, what: str):
    """``cls(**d)``, with unknown keys a :class:`ConfigError` naming them and the valid ones.

    Missing keys take the dataclass defaults; values are validated by ``cls`` itself.

    >>> from stream_ae.data.windows import WindowSpec
    >>> from_mapping(WindowSpec, {"length": 30}, "window").length
    30
    >>> from_mapping(WindowSpec, {"lenght": 30}, "window")
    Traceback (most recent call last):
    ...
    stream_ae.errors.ConfigError: unknown window setting(s): lenght; valid: length, hop, max_gap_s, max_fill
    """
    if not isinstance(d, Mapping):
        raise ConfigError(f"{what} settings must be a mapping, got {type(d).__name__}")
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise ConfigError(f"unknown {what} setting(s): {', '.join(unknown)}; valid: {', '.join(names)}")
    return cls(**d)


@functools.lru_cache(maxsize=256)
def spec_dict(spec) -> dict:
    """``spec.to_dict()`` of a frozen (hashable) spec, built once and shared: every entity's
    checkpoint snapshot names its window, threshold and alert specs, and ``dataclasses.asdict``
    for each of them took the snapshots of 4 096 entities from 0.13-0.17 s to 0.28-0.44 s
    (two runs each). Read it; never change it.

    >>> from stream_ae.data.windows import WindowSpec
    >>> spec_dict(WindowSpec(length=30)) is spec_dict(WindowSpec(length=30))
    True
    >>> spec_dict(WindowSpec(length=30)) == WindowSpec(length=30).to_dict()
    True
    """
    return spec.to_dict()


def parse_counts(text: str, flag: str) -> tuple[int, ...]:
    """``"1,2"`` -> (1, 2); anything but comma-separated positive integers is a ConfigError.

    >>> parse_counts("16,256", "--entities")
    (16, 256)
    """
    try:
        counts = tuple(int(part) for part in text.split(","))
    except ValueError:
        counts = ()
    if not counts or min(counts) < 1:
        raise ConfigError(f"{flag} takes comma-separated positive integers, e.g. 16,256; got {text!r}")
    return counts
