"""Micro-batches bounded by size and by a maximum wait, fed by whole Kafka polls.

The runner polls Kafka with the time this batch may still wait, so a batch closes either
when it is full (throughput) or when its oldest record has waited ``max_wait_s`` (latency),
whichever comes first -- or at once while a model thread is idle: waiting then only adds
latency. Below the model's capacity a reading is scored as soon as a poll brings it; under a
backlog the threads stay busy, so the batches fill and throughput keeps its large batches.

A poll takes everything the client has buffered, up to :meth:`MicroBatcher.room` (two
batches): kafka-python sends the next fetch only once a poll has emptied its buffer, so a
poll capped at the room left in one batch leaves records behind and stalls the fetches
until later polls drain them. What one batch cannot take starts the next, which keeps the
time its records arrived. Each batch carries, per partition, one past the last offset it
holds: what a commit may cover once it is processed.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable

from stream_ae.errors import ConfigError

if TYPE_CHECKING:
    from concurrent.futures import Future

    import numpy as np

    from stream_ae.stream.columns import ReadingColumns


class MicroBatcher:
    """Collects records until ``max_records`` are held or the first one waited ``max_wait_s``.

    Parameters
    ----------
    max_records : int
        Readings per micro-batch at most.
    max_wait_s : float
        Longest time the first record of a batch waits before the batch is processed.
    clock : callable
        Monotonic seconds (injectable for tests).

    Examples
    --------
    >>> from collections import namedtuple
    >>> R = namedtuple("R", "offset")
    >>> t = [0.0]
    >>> b = MicroBatcher(max_records=3, max_wait_s=0.05, clock=lambda: t[0])
    >>> b.add(0, [R(10), R(11)]); b.ready()
    False
    >>> b.poll_timeout_ms(), b.room()
    (50, 4)
    >>> b.ready(idle=True)            # a model thread is idle: no reason to wait
    True
    >>> t[0] = 0.06; b.ready()
    True
    >>> b.take(), len(b)
    (([R(offset=10), R(offset=11)], {0: 12}), 0)

    A poll that brings more than a batch: the rest starts the next one, with its own wait.

    >>> t[0] = 1.0; b.add(0, [R(12), R(13)]); b.add(1, [R(5), R(6)])
    >>> b.ready(), b.take()
    (True, ([R(offset=12), R(offset=13), R(offset=5)], {0: 14, 1: 6}))
    >>> len(b), b.ready(), b.poll_timeout_ms()
    (1, False, 50)
    """

    def __init__(self, max_records: int, max_wait_s: float, clock: Callable[[], float] = time.monotonic):
        if int(max_records) < 1:
            raise ConfigError(f"batch max_records must be >= 1, got {max_records!r}")
        if not max_wait_s >= 0:
            raise ConfigError(f"batch max_wait_s must be >= 0 seconds, got {max_wait_s!r}")
        self.max_records = int(max_records)
        self.max_wait_s = float(max_wait_s)
        self._clock = clock
        self._records: list[Any] = []
        # one per add, oldest first: (start, stop) indices in _records, partition, added at
        self._chunks: list[tuple[int, int, int, float]] = []

    def __len__(self) -> int:
        return len(self._records)

    def add(self, partition: int, records: list[Any]) -> None:
        """Append one partition's records from a poll, in offset order (each has ``.offset``)."""
        if records:
            start = len(self._records)
            self._records.extend(records)
            self._chunks.append((start, len(self._records), partition, self._clock()))

    def clear(self) -> None:
        """Drop every record held (their partitions were lost: the next owner reads them)."""
        self._records, self._chunks = [], []

    def room(self) -> int:
        """How many more records the next poll may bring: up to two batches are held."""
        return max(2 * self.max_records - len(self._records), 0)

    def remaining_s(self) -> float:
        """Seconds until the batch must close (``max_wait_s`` while it is empty)."""
        if not self._chunks:
            return self.max_wait_s
        return max(self._chunks[0][3] + self.max_wait_s - self._clock(), 0.0)

    def poll_timeout_ms(self) -> int:
        """Poll timeout for the next ``consumer.poll``: the remaining wait, in ms."""
        return int(round(self.remaining_s() * 1000))

    def ready(self, idle: bool = False) -> bool:
        """True when a batch is full, or non-empty and its wait is over or ``idle`` (a model
        thread has nothing to score)."""
        if not self._records:
            return False
        return idle or len(self._records) >= self.max_records or self.remaining_s() <= 0.0

    def take(self) -> tuple[list[Any], dict[int, int]]:
        """The next batch (up to ``max_records``, oldest first) and, per partition, one past
        its last offset there; what is left over starts the next batch."""
        n = min(self.max_records, len(self._records))
        records, self._records = self._records[:n], self._records[n:]
        ends: dict[int, int] = {}
        rest = []
        for start, stop, partition, added_at in self._chunks:
            if start < n:  # later chunks of a partition hold later offsets
                ends[partition] = records[min(stop, n) - 1].offset + 1
            if stop > n:
                rest.append((max(start - n, 0), stop - n, partition, added_at))
        self._chunks = rest
        return records, ends


class InFlight:
    """A micro-batch being scored: between the runner's ``_submit_batch`` and ``_finish_oldest``."""

    __slots__ = ("ends", "cols", "ingest_s", "future", "letters")

    def __init__(self, ends: dict, cols: ReadingColumns, ingest_s: np.ndarray, future: Future, letters=()):
        # ends: partition -> one past the batch's last offset there (what a commit may cover);
        # letters: the decoder's dead letters, published when the batch is finished
        self.ends, self.cols, self.ingest_s, self.future, self.letters = ends, cols, ingest_s, future, letters

    def done(self) -> bool:
        return self.future.done()
