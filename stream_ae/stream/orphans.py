"""Alerts a previous owner left open that a takeover's replay does not carry on (no I/O).

A restore reads the alert events published after the checkpoint it restores (``recovery.py``);
the replay derives them again, and each is dropped as already published (``detector.py``). An
alert of this consumer's entities is *carried* when a restored state held it open or the replay
derived one of its events: its tracker goes on with it. Once every replay has passed its
previous owner, an alert that is not carried and whose last event on the topic is not
``resolved`` is one the previous owner opened after its checkpoint and the replay did not: it
ran another model (a restart onto a newly promoted version) or saw other readings. Downstream
it would stay open for good. :func:`closing_events` makes a ``resolved`` event for each: its
sequence continues the alert's, with its last score, threshold, severity and channels, at the
partition's event time now.
"""
from __future__ import annotations

import logging
from typing import Callable, Iterable, Mapping

from stream_ae.alerts.events import AlertEvent
from stream_ae.stream import codec
from stream_ae.stream.timestamps import datetime_to_ns

log = logging.getLogger(__name__)


def last_events(published: Mapping[str, bytes | None]) -> dict[str, codec.Alert]:
    """Per alert id, its event with the highest sequence among ``published`` (event id -> the
    record's value; None or a record that is not an alert event is skipped)."""
    last: dict[str, codec.Alert] = {}
    for raw in published.values():
        if raw is None:
            continue
        try:
            a = codec.decode_alert(raw)
        except Exception:  # noqa: BLE001 - a foreign record on the topic is not ours to judge
            continue
        if a.alert_id not in last or a.sequence > last[a.alert_id].sequence:
            last[a.alert_id] = a
    return last


def closing_events(last: Mapping[str, codec.Alert], carried: set[str], open_now: Mapping[str, str | None],
                   now_ns: Callable[[str], int | None]) -> list[AlertEvent]:
    """``resolved`` events for the alerts in ``last`` that are not ``carried`` (alert ids), whose
    last event is not ``resolved``, of an entity in ``open_now`` (this consumer's entities: the
    alert id open for each, or None) that does not have that alert open. ``now_ns(entity)``: its
    partition's event time (None: unknown; the alert's last time is kept).

    >>> import datetime as dt
    >>> t = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    >>> a = codec.Alert("a1-1", "a1", "pump", "v1", "update", t, t, 3.0, 1.0, "warning", [], 1)
    >>> [e.event_id for e in closing_events({"a1": a}, set(), {"pump": None}, lambda e: None)]
    ['a1-2']
    >>> closing_events({"a1": a}, {"a1"}, {"pump": None}, lambda e: None)   # restored open, or derived
    []
    >>> closing_events({"a1": a}, set(), {}, lambda e: None)                # another consumer's entity
    []
    """
    out = []
    for alert_id, a in sorted(last.items()):
        if a.state == "resolved" or alert_id in carried or a.entity not in open_now \
                or open_now[a.entity] == alert_id:
            continue
        at = max(datetime_to_ns(a.at), now_ns(a.entity) or 0)
        sequence = a.sequence + 1
        out.append(AlertEvent(alert_id, f"{alert_id}-{sequence}", a.entity, a.model_version, "resolved",
                              datetime_to_ns(a.started_at), at, a.score, a.threshold, a.severity,
                              [(c.channel, c.share) for c in a.top_channels], sequence))
        log.warning("alert %s of %s was published open before a restart and the replay did not carry it on "
                    "(another model, or other readings): resolving it", alert_id, a.entity)
    return out


class PublishedAlerts:
    """What restores found on the alerts topic after their checkpoints, until every replay has
    passed its previous owner (the detector's; no I/O): the event ids a replay has yet to derive,
    the records, and the alerts carried (restored open, or an event of theirs derived since)."""

    def __init__(self):
        self.ids: set[str] = set()
        self.events: dict[str, bytes | None] = {}
        self.carried: set[str] = set()

    def add(self, published: Iterable[str] | Mapping[str, bytes]) -> None:
        """Events on the topic: ids, or id -> the record's value."""
        for event_id, value in (published.items() if isinstance(published, Mapping)
                                else ((e, None) for e in published)):
            self.ids.add(event_id)
            self.events[event_id] = value

    def restored(self, open_alert_ids: Iterable[str]) -> None:
        """A restored state holds these alerts open: its tracker goes on with them."""
        self.carried.update(open_alert_ids)

    def derived(self, event) -> bool:
        """A replay derived ``event``: True if it is already published (to drop)."""
        if self.events:
            self.carried.add(event.alert_id)
        if event.event_id in self.ids:
            self.ids.discard(event.event_id)
            return True
        return False

    def forget(self, open_now: Callable[[], Mapping[str, str | None]],
               now_ns: Callable[[str], int | None]) -> list[AlertEvent]:
        """Every replay has passed its previous owner: forget it all, and return the ``resolved``
        events of :func:`closing_events` (``open_now()``: this consumer's entities, the alert open
        for each or None)."""
        events = closing_events(last_events(self.events), self.carried, open_now(), now_ns) if self.events else []
        self.ids, self.events, self.carried = set(), {}, set()
        return events
