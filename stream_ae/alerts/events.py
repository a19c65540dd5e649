"""Alert events and the pieces they are built from: deterministic ids, UTC times, top channels."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Sequence

import numpy as np

from stream_ae.errors import DataError

_NS = 1_000_000_000


@dataclass(frozen=True)
class AlertEvent:
    """One message about one alert. ``event_id`` is unique and stable, so consumers can dedupe.

    ``score``/``threshold``/``top_channels`` are those of the window that triggered the event
    (for ``resolved``: of the alert's last flagged window); ``severity`` is that window's band
    (for ``open``: the highest among the flagged windows that opened it; for ``resolved``: the
    highest band the alert reached).
    """

    alert_id: str
    event_id: str
    entity: str
    model_version: str
    state: str                     # "open" | "update" | "resolved"
    started_at: int                # ns, end of the first flagged window of the alert
    at: int                        # ns, event time of this event
    score: float
    threshold: float
    severity: str
    top_channels: list[tuple[str, float]]
    sequence: int

    def to_dict(self) -> dict:
        """JSON-safe dict with ISO-8601 UTC times, for the alert message."""
        return {"alert_id": self.alert_id, "event_id": self.event_id, "entity": self.entity,
                "model_version": self.model_version, "state": self.state,
                "started_at": iso_utc(self.started_at), "at": iso_utc(self.at),
                "score": self.score, "threshold": self.threshold, "severity": self.severity,
                "top_channels": [{"channel": c, "share": s} for c, s in self.top_channels],
                "sequence": self.sequence}


def iso_utc(ns: int) -> str:
    """ISO-8601 UTC with as many fractional digits as needed (0, 3, 6 or 9).

    >>> iso_utc(1_700_000_000_250_000_000)
    '2023-11-14T22:13:20.250Z'
    """
    sec, frac = divmod(int(ns), _NS)
    base = datetime.fromtimestamp(sec, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    if frac == 0:
        return base + "Z"
    digits = f"{frac:09d}"
    while digits.endswith("000"):
        digits = digits[:-3]
    return f"{base}.{digits}Z"


def alert_id(entity: str, opened_at: int) -> str:
    """Deterministic id: sha1 of the entity and the opening window's end time, 16 hex."""
    return hashlib.sha1(f"{entity}\x00{int(opened_at)}".encode()).hexdigest()[:16]


def top_channels(channel_error: np.ndarray, channels: Sequence[str], k: int) -> list[tuple[str, float]]:
    """The ``k`` channels with the largest share of the window's error, largest first.

    >>> top_channels(np.array([1.0, 3.0, 0.0, 4.0]), ["a", "b", "c", "d"], 2)
    [('d', 0.5), ('b', 0.375)]
    """
    err = np.asarray(channel_error, dtype=np.float64).reshape(-1)
    if err.shape[0] != len(channels):
        raise DataError(f"channel_error has {err.shape[0]} values for {len(channels)} channels")
    err = np.where(np.isfinite(err) & (err > 0), err, 0.0)
    total = float(err.sum())
    if k == 0 or total <= 0:
        return []
    order = np.argsort(-err, kind="stable")[:k]
    return [(str(channels[i]), float(err[i] / total)) for i in order if err[i] > 0]


class _PendingTop:
    """``top_channels`` of a window, computed only if an event or a snapshot needs it."""

    __slots__ = ("error", "channels", "k")

    def __init__(self, error: np.ndarray, channels: Sequence[str], k: int):
        self.error, self.channels, self.k = np.array(error, copy=True), channels, k

    def resolve(self) -> list[tuple[str, float]]:
        return top_channels(self.error, self.channels, self.k)
