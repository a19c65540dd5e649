"""Micro-batches bounded by size and by a maximum wait.

The runner polls Kafka with the time this batch may still wait and as many records as it
may still hold, so a batch closes either when it is full (throughput) or when its oldest
record has waited ``max_wait_s`` (latency), whichever comes first.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from stream_ae.errors import ConfigError


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
    >>> t = [0.0]
    >>> b = MicroBatcher(max_records=3, max_wait_s=0.05, clock=lambda: t[0])
    >>> b.add([1, 2]); b.ready()
    False
    >>> b.poll_timeout_ms(), b.room()
    (50, 1)
    >>> t[0] = 0.06; b.ready()
    True
    >>> b.take(), len(b)
    ([1, 2], 0)
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
        self._first_at: float | None = None

    def __len__(self) -> int:
        return len(self._records)

    def add(self, records: list[Any]) -> None:
        """Append records (in poll order); starts the wait clock on the first one."""
        if records and self._first_at is None:
            self._first_at = self._clock()
        self._records.extend(records)

    def room(self) -> int:
        """How many more records this batch takes."""
        return max(self.max_records - len(self._records), 0)

    def remaining_s(self) -> float:
        """Seconds until the batch must close (``max_wait_s`` while it is empty)."""
        if self._first_at is None:
            return self.max_wait_s
        return max(self._first_at + self.max_wait_s - self._clock(), 0.0)

    def poll_timeout_ms(self) -> int:
        """Poll timeout for the next ``consumer.poll``: the remaining wait, in ms."""
        return int(round(self.remaining_s() * 1000))

    def ready(self) -> bool:
        """True when the batch is full, or non-empty and its wait is over."""
        if not self._records:
            return False
        return len(self._records) >= self.max_records or self.remaining_s() <= 0.0

    def take(self) -> list[Any]:
        """Return the held records and start a new batch."""
        records, self._records, self._first_at = self._records, [], None
        return records
