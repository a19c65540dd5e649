"""Reading timestamps as int64 nanoseconds since the epoch, and back (no I/O, no msgspec)."""
from __future__ import annotations

import datetime as dt

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
MAX_EPOCH_MS = (2**63 - 1) // 1_000_000          # keeps ts_ns inside int64


def datetime_to_ns(t: dt.datetime) -> int:
    """Nanoseconds since the epoch of an aware datetime.

    >>> datetime_to_ns(dt.datetime(1970, 1, 1, 0, 0, 1, 5, tzinfo=dt.timezone.utc))
    1000005000
    """
    d = t - _EPOCH
    return (d.days * 86_400 + d.seconds) * 1_000_000_000 + d.microseconds * 1_000


def reading_ts_ns(t) -> int | None:
    """A decoded reading's ``ts`` (epoch ms, bounded by the schema, or an aware datetime) as ns
    since the epoch; None for a datetime outside the span epoch milliseconds allow, 1970-01-01
    to 2262-04-11 (int64 nanoseconds end there).

    >>> reading_ts_ns(1_000), reading_ts_ns(dt.datetime(1, 1, 1, tzinfo=dt.timezone.utc))
    (1000000000, None)
    """
    if type(t) is int:
        return t * 1_000_000
    ns = datetime_to_ns(t)
    return ns if 0 <= ns <= MAX_EPOCH_MS * 1_000_000 else None


def ns_to_datetime(ns: int) -> dt.datetime:
    """UTC datetime of epoch nanoseconds (microsecond precision).

    >>> ns_to_datetime(1_500_000_000).isoformat()
    '1970-01-01T00:00:01.500000+00:00'
    """
    return _EPOCH + dt.timedelta(microseconds=int(ns) // 1_000)
