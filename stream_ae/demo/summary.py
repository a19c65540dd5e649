"""Match detections against injected anomalies: found, missed, false alerts, delay.

Works on plain arrays so the offline backfill and the streaming demo share it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Detection:
    """A run of flagged windows (or one alert) for one entity, in event time (ns)."""

    entity: str
    start_ts: int
    end_ts: int


@dataclass
class MatchSummary:
    found: list = field(default_factory=list)      # (InjectedAnomaly, delay_s)
    missed: list = field(default_factory=list)     # InjectedAnomaly
    false_alerts: list = field(default_factory=list)  # Detection

    @property
    def recall(self) -> float:
        total = len(self.found) + len(self.missed)
        return len(self.found) / total if total else float("nan")

    def delays_s(self) -> np.ndarray:
        return np.array([d for _, d in self.found], dtype=float)

    def lines(self) -> list[str]:
        delays = self.delays_s()
        out = [f"injected anomalies found: {len(self.found)}/{len(self.found) + len(self.missed)}",
               f"false alerts:             {len(self.false_alerts)}"]
        if delays.size:
            out.append(f"detection delay (event time): median {np.median(delays):.0f} s, "
                       f"max {delays.max():.0f} s")
        for a, d in self.found:
            out.append(f"  found  {a.entity:<10} {a.kind:<18} after {d:>6.0f} s")
        for a in self.missed:
            out.append(f"  missed {a.entity:<10} {a.kind:<18}")
        return out


def runs_to_detections(entity: str, end_ts: np.ndarray, flags: np.ndarray, merge_gap_ns: int) -> list[Detection]:
    """Group flagged windows (by their end time) into detections; gaps under merge_gap_ns join runs.

    >>> runs_to_detections("e", np.array([1, 2, 3, 10, 11]), np.array([1, 1, 0, 1, 1], bool), 2)
    [Detection(entity='e', start_ts=1, end_ts=2), Detection(entity='e', start_ts=10, end_ts=11)]
    """
    ts = np.asarray(end_ts)[np.asarray(flags, bool)]
    if ts.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(ts) > merge_gap_ns)
    starts = np.r_[0, breaks + 1]
    ends = np.r_[breaks, ts.size - 1]
    return [Detection(entity, int(ts[s]), int(ts[e])) for s, e in zip(starts, ends)]


def match(injected, detections: list[Detection], tolerance_ns: int) -> MatchSummary:
    """An injected anomaly is found when a detection of its entity begins within
    [start - tolerance, end + tolerance] and lasts into it; any other detection is a false alert.
    One that began earlier was open on normal data when the fault came (it did not find it).

    >>> from stream_ae.data.synthetic import InjectedAnomaly
    >>> fault = InjectedAnomaly("u", "level_shift", 10_000, 10_600, ("ch_1",))
    >>> s = match([fault], [Detection("u", 9_000, 10_050)], tolerance_ns=600)
    >>> len(s.found), len(s.false_alerts)
    (0, 1)
    >>> s = match([fault], [Detection("u", 9_500, 10_050)], tolerance_ns=600)
    >>> len(s.found), len(s.false_alerts)
    (1, 0)
    """
    summary = MatchSummary()
    used = set()
    for a in injected:
        hits = [i for i, d in enumerate(detections)
                if d.entity == a.entity and d.end_ts >= a.start_ts
                and a.start_ts - tolerance_ns <= d.start_ts <= a.end_ts + tolerance_ns]
        if hits:
            first = min(detections[i].start_ts for i in hits)
            summary.found.append((a, max(0.0, (first - a.start_ts) / 1e9)))
            used.update(hits)
        else:
            summary.missed.append(a)
    summary.false_alerts = [d for i, d in enumerate(detections) if i not in used]
    return summary
