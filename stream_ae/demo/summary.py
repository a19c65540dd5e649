"""Match detections against injected anomalies: found, missed, false alerts, delay.

Works on plain arrays so the offline backfill and the streaming demo share it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Detection:
    """One alert of one entity, from its start to its resolution, in event time (ns)."""

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
            out.append(f"  found  {a.entity:<10} {a.kind:<18} after {d:>6.0f} s" if d >= 0 else
                       f"  found  {a.entity:<10} {a.kind:<18} {-d:>6.0f} s before its first reading")
        for a in self.missed:
            out.append(f"  missed {a.entity:<10} {a.kind:<18}")
        return out


# The demo's alert rule, for the stream (settings) and the offline backfill (AlertTracker) alike:
# an alert opens on 3 flagged windows of 5 and resolves 300 s after the last flagged one.
ALERTS = {"k": 3, "n": 5, "quiet_s": 300, "update_interval_s": 3600}


def alerts_to_detections(alerts, last_ts: dict) -> list[Detection]:
    """One Detection per alert id: from its start to its resolution, or to its entity's last
    reading (``last_ts``: entity -> ns) while it is still open. ``alerts``: :class:`AlertEvent`
    (times in ns) or alerts decoded from the alerts topic (aware datetimes).

    >>> from types import SimpleNamespace as Event
    >>> alerts_to_detections([Event(alert_id="a1", entity="u", state="open", started_at=5, at=5),
    ...                       Event(alert_id="a1", entity="u", state="resolved", started_at=5, at=9),
    ...                       Event(alert_id="a2", entity="u", state="open", started_at=20, at=20)], {"u": 30})
    [Detection(entity='u', start_ts=5, end_ts=9), Detection(entity='u', start_ts=20, end_ts=30)]
    """
    from stream_ae.stream.codec import datetime_to_ns

    def ns(t) -> int:
        return int(t) if isinstance(t, (int, np.integer)) else datetime_to_ns(t)

    spans: dict[str, list] = {}
    for a in alerts:
        span = spans.setdefault(a.alert_id, [a.entity, ns(a.started_at), None])
        if a.state == "resolved":
            span[2] = ns(a.at)
    return [Detection(e, s, end if end is not None else int(last_ts[e])) for e, s, end in spans.values()]


def match(injected, detections: list[Detection], tolerance_ns: int, lead_ns: int = 0) -> MatchSummary:
    """An injected anomaly is found when a detection of its entity begins within
    [start - lead, end + tolerance] and lasts into it; any other detection is a false alert.
    ``tolerance`` is how long a window still holds the fault after it ends; ``lead`` how early
    the first of the k flagged windows that opened an alert may end before it (the alert
    rule's n windows). One that began earlier was open on normal data when the fault came (it
    did not find it). A detection finds one anomaly at most: the anomalies, in time order, each
    take the earliest detection left. The delay is signed (an alert may open within ``lead``
    before the fault's first reading).

    >>> from stream_ae.data.synthetic import InjectedAnomaly
    >>> fault = InjectedAnomaly("u", "level_shift", 10_000, 10_600, ("ch_1",))
    >>> s = match([fault], [Detection("u", 9_900, 10_050)], tolerance_ns=600, lead_ns=50)
    >>> len(s.found), len(s.false_alerts)
    (0, 1)
    >>> s = match([fault], [Detection("u", 9_960, 10_050)], tolerance_ns=600, lead_ns=50)
    >>> len(s.found), len(s.false_alerts), s.delays_s().tolist()
    (1, 0, [-4e-08])
    >>> later = InjectedAnomaly("u", "spike", 10_900, 10_950, ("ch_1",))   # under the same alert
    >>> s = match([fault, later], [Detection("u", 10_100, 11_000)], tolerance_ns=600)
    >>> len(s.found), len(s.missed)
    (1, 1)
    """
    summary = MatchSummary()
    credited, during = set(), set()   # detections that found an anomaly / that began during one
    for a in sorted(injected, key=lambda a: (a.start_ts, a.entity)):
        hits = [i for i, d in enumerate(detections)
                if d.entity == a.entity and d.end_ts >= a.start_ts
                and a.start_ts - lead_ns <= d.start_ts <= a.end_ts + tolerance_ns]
        during.update(hits)   # an alert that resolved and opened again within one fault is no false alert
        left = [i for i in hits if i not in credited]
        if left:
            first = min(left, key=lambda i: detections[i].start_ts)
            summary.found.append((a, (detections[first].start_ts - a.start_ts) / 1e9))
            credited.add(first)
        else:
            summary.missed.append(a)
    summary.false_alerts = [d for i, d in enumerate(detections) if i not in during]
    return summary
