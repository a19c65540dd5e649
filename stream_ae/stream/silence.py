"""Alerts of entities that went silent: event time per readings partition.

An alert resolves when a window of its entity comes ``quiet_s`` after the last flagged one.
An entity that stops sending (a dead sensor, a cut link) sends no such window, and its alert
would stay open for good. Its partition's other entities go on, though, so the partition's
event time, the latest window end seen on it (each bounded by its reading's Kafka record
timestamp, below), says how long the entity has been silent: once that time has moved on by
``alerts.silence_s`` since the entity's last window, the alert resolves
(:meth:`AlertTracker.expire_silent`), stamped with the entity's last window end plus the
silence. The silence is measured on the partition's time from one window of the entity to
the next, never by comparing the entity's own timestamps with it, so an entity whose clock
lags the others is not silent while it sends.

The rule is decided per window in offset order, so it does not depend on how readings fall
into micro-batches: an entity's window carries the partition's time just before it (the
tracker resolves the alert first when the silence was already complete then), and after a
batch every entity with an alert open on an advanced partition is checked against the new
time. The time of each partition goes into its checkpoint record, so a restart resumes it.

A partition whose entities all stop has no time to go by: their alerts stay open until one
of them sends again. An entity that sends in bursts (a gateway uploading every ten minutes) is
silent between them: set ``silence_s`` above that interval.

A window moves its partition's time no further than the Kafka timestamp of its last reading's
record (when the record has one): a sensor whose clock jumps ahead (a reading stamped an hour
or a day early, which the codec accepts up to ``input.max_future_s``) would otherwise move the
partition's time with it at once. That would resolve every alert open there, although their
entities still send (they open again, under new ids, on their next flagged windows), and then
stall every silence on the partition until the real time caught up. The record timestamp is
part of the record, so a replay bounds each window as the first run did. Readings sent long
after they were taken (a backlog, a replay of history) are stamped before their records and
are not bounded; a producer that stamps records with the readings' own times bounds nothing.
"""

from __future__ import annotations

import numpy as np

UNKNOWN = -1  # no time known for a partition yet (timestamps are >= 0: the codec's range)


class PartitionClocks:
    """Per readings partition, the latest window end seen; per entity with an open alert, its partition.

    >>> clocks = PartitionClocks()
    >>> clocks.note("pump-a", 0, 100); clocks.open
    {'pump-a': (0, 100)}
    """

    def __init__(self):
        self.now: dict[int, int] = {}  # readings partition -> latest window end (ns)
        self.last_reading: dict[int, int] = {}  # partition -> batch index of its last window's reading, this batch
        self.open: dict[str, tuple[int, int]] = {}  # entity with an alert open -> (partition, time at its last window)
        self._dropped_seen = 0  # the entity table's drop count at the last prune

    def around(self, partition: np.ndarray, reading: np.ndarray, end_ts: np.ndarray,
               record_ts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The time of each window's partition just before it (``UNKNOWN`` when none) and just
        after it, for a batch's windows: ``partition``, ``reading`` (batch index of the window's
        last reading, which orders a partition's windows), ``end_ts`` and ``record_ts`` (that
        reading's Kafka record timestamp, ns; <= 0: none), each ``(B,)``. Advances the clocks.

        >>> clocks = PartitionClocks()
        >>> before, after = clocks.around(np.array([0, 0, 1]), np.array([4, 2, 3]), np.array([50, 70, 10]))
        >>> before.tolist(), after.tolist(), clocks.now, clocks.last_reading
        ([70, -1, -1], [70, 70, 10], {0: 70, 1: 10}, {0: 4, 1: 3})
        >>> clocks = PartitionClocks()   # the second window's reading is stamped a day early
        >>> [a.tolist() for a in clocks.around(np.array([0, 0, 0]), np.array([0, 1, 2]),
        ...                                    np.array([50, 86_400, 70]), np.array([60, 75, 0]))]
        [[-1, 50, 75], [50, 75, 75]]
        """
        before = np.full(len(end_ts), UNKNOWN, np.int64)
        self.last_reading = {}
        end_ts = np.asarray(end_ts, np.int64)
        if record_ts is not None:   # a window moves the time no further than its record's timestamp
            end_ts = np.where(record_ts > 0, np.minimum(end_ts, record_ts), end_ts)
        if not len(end_ts):
            return before, end_ts
        order = np.lexsort((reading, partition))
        parts, ts = partition[order], end_ts[order]
        for seg in np.split(np.arange(len(order)), np.flatnonzero(np.diff(parts)) + 1):
            p = int(parts[seg[0]])
            seen = np.maximum.accumulate(np.maximum(ts[seg], self.now.get(p, UNKNOWN)))
            before[order[seg]] = np.concatenate([[self.now.get(p, UNKNOWN)], seen[:-1]])
            self.now[p], self.last_reading[p] = int(seen[-1]), int(reading[order[seg[-1]]])
        return before, np.maximum(before, end_ts)

    def note(self, entity: str, partition: int, since: int | None) -> None:
        """``entity`` (last seen on ``partition``) has an alert open since the partition's time
        ``since`` at its last window (``AlertTracker.open_since``); None: no alert open."""
        if since is None:
            self.open.pop(entity, None)
        else:
            self.open[entity] = (partition, since)

    def due(self, silence_ns: int) -> list[tuple[str, int]]:
        """``(entity, partition)`` of the open alerts whose partition's time, advanced by this
        batch, has moved on by ``silence_ns`` since the entity's last window; sorted.

        >>> clocks = PartitionClocks()
        >>> clocks.note("pump-a", 0, 100); clocks.note("pump-b", 0, 250)
        >>> _ = clocks.around(np.array([0]), np.array([0]), np.array([300]))
        >>> clocks.due(200)
        [('pump-a', 0)]
        """
        if not silence_ns:
            return []
        return sorted((e, p) for e, (p, since) in self.open.items()
                      if p in self.last_reading and self.now[p] - since >= silence_ns)

    def resume(self, partition: int, now: int | None) -> None:
        """A restored partition's time, from its checkpoint record (None: not known)."""
        if now is not None:
            self.now[partition] = max(int(now), self.now.get(partition, UNKNOWN))

    def forget(self, partitions) -> None:
        """Partitions no longer this consumer's."""
        for p in partitions:
            self.now.pop(p, None)
        self.open = {e: (p, t) for e, (p, t) in self.open.items() if p not in partitions}

    def prune(self, holds, dropped: int) -> None:
        """Forget the open alerts of entities whose state the table no longer holds (``holds``),
        once its count of dropped states (``dropped``) has moved: under a flood of new ids these
        would otherwise stay for good where no silence rule expires them (``silence_s = 0``)."""
        if dropped != self._dropped_seen:
            self._dropped_seen = dropped
            self.open = {e: v for e, v in self.open.items() if holds(e)}
