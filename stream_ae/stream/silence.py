"""Alerts of entities that went silent: event time per readings partition.

An alert resolves when a window of its entity comes ``quiet_s`` after the last flagged one.
An entity that stops sending (a dead sensor, a cut link) sends no such window, and its
alert would stay open for good. Its partition's other entities go on, though, so the
partition's event time, the latest window end seen on it, says how long the entity has
been silent: once that time has moved on by ``alerts.silence_s`` since the entity's last
window, the alert resolves (:meth:`AlertTracker.expire_silent`), stamped with the entity's
last window end plus the silence. The silence is measured on the partition's time from one
window of the entity to the next, never by comparing the entity's own timestamps with it, so
an entity whose clock lags the others is not silent while it sends.

The rule is decided per window in offset order, so it does not depend on how readings fall
into micro-batches: an entity's window carries the partition's time just before it (the
tracker resolves the alert first when the silence was already complete then), and after a
batch every entity with an alert open on an advanced partition is checked against the new
time. The time of each partition goes into its checkpoint record, so a restart resumes it.

A partition whose entities all stop has no time to go by: their alerts stay open until one
of them sends again. A reading stamped far ahead (a clock set to next year) moves its
partition's time with it at once and resolves the alerts open on it, which open again, under
new ids, on their next flagged windows. An entity that sends in bursts (a gateway uploading
every ten minutes) is silent between them: set ``silence_s`` above that interval.
"""

from __future__ import annotations

import numpy as np

UNKNOWN = -1  # no time known for a partition yet (timestamps are >= 0: the codec's range)


class PartitionClocks:
    """Per readings partition, the latest window end seen; per entity with an open alert, its partition.

    >>> clocks = PartitionClocks()
    >>> clocks.before(np.array([0, 0, 1]), np.array([4, 2, 3]), np.array([50, 70, 10])).tolist()
    [70, -1, -1]
    >>> clocks.now, clocks.last_reading
    ({0: 70, 1: 10}, {0: 4, 1: 3})
    """

    def __init__(self):
        self.now: dict[int, int] = {}  # readings partition -> latest window end (ns)
        self.last_reading: dict[int, int] = {}  # partition -> batch index of its last window's reading, this batch
        self.open: dict[str, tuple[int, int]] = {}  # entity with an alert open -> (partition, time at its last window)

    def before(self, partition: np.ndarray, reading: np.ndarray, end_ts: np.ndarray) -> np.ndarray:
        """The time of each window's partition just before it (``UNKNOWN`` when none), for a
        batch's windows: ``partition``, ``reading`` (batch index of the window's last reading,
        which orders a partition's windows) and ``end_ts``, each ``(B,)``. Advances the clocks."""
        out = np.full(len(end_ts), UNKNOWN, np.int64)
        self.last_reading = {}
        if not len(end_ts):
            return out
        order = np.lexsort((reading, partition))
        parts, ts = partition[order], np.asarray(end_ts, np.int64)[order]
        for seg in np.split(np.arange(len(order)), np.flatnonzero(np.diff(parts)) + 1):
            p = int(parts[seg[0]])
            seen = np.maximum.accumulate(np.maximum(ts[seg], self.now.get(p, UNKNOWN)))
            out[order[seg]] = np.concatenate([[self.now.get(p, UNKNOWN)], seen[:-1]])
            self.now[p], self.last_reading[p] = int(seen[-1]), int(reading[order[seg[-1]]])
        return out

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
        >>> _ = clocks.before(np.array([0]), np.array([0]), np.array([300]))
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
