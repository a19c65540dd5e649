"""What an archive's Parquet footers say before a row is read: each file's columns, its rows,
the span of its timestamps and the columns that hold no value.

:meth:`History.open <stream_ae.data.history.History.open>` decides from them which files a
time range needs, which channels the archive has there and whether each has a value; years
of archive may hold files of a sensor not yet fitted, or since retired, that a range never
reaches. Nothing here reads rows.
"""

from __future__ import annotations

import datetime as dt
import difflib
import logging
import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from stream_ae.data.layout import Layout
from stream_ae.errors import DataError

log = logging.getLogger(__name__)

NS_PER = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}
ARROW_ERRORS = (pa.ArrowException, OSError, ValueError)
# statistics of timestamps come back as Python datetimes (microseconds): a file is kept when
# its span, widened by this, touches the range; the scan's own filter bounds it exactly
SPAN_MARGIN_NS = 1_000_000_000


@dataclass(frozen=True)
class Footer:
    """One file's footer: its schema, rows and per-row-group statistics."""

    path: str
    schema: pa.Schema
    n_rows: int
    metadata: Any = None            # pyarrow.parquet.FileMetaData
    leaves: Any = None              # column name -> its index among the file's Parquet columns

    @classmethod
    def read(cls, fragment) -> "Footer":
        """Read ``fragment``'s footer; an unreadable file is a :class:`DataError` naming it."""
        try:
            schema, meta = fragment.physical_schema, fragment.metadata
            leaves = {meta.schema.column(j).path: j for j in range(meta.num_columns)}
        except ARROW_ERRORS as exc:
            raise DataError(f"{fragment.path}: cannot be read as Parquet ({exc})") from exc
        return cls(fragment.path, schema, meta.num_rows, meta, leaves)

    def _stats(self, column: str):
        """Each row group's (rows, statistics or None) for ``column``; None when the file lacks it."""
        j = self.leaves.get(column)
        if j is None:
            return None
        groups = (self.metadata.row_group(i) for i in range(self.metadata.num_row_groups))
        return [(group.num_rows, group.column(j).statistics) for group in groups]

    def span_ns(self, column: str, unit_ns: int | None) -> tuple[int, int] | None:
        """First and last value of time column ``column`` in ns, from the statistics; None when
        a row group has none (the file is then read, and the scan bounds it)."""
        groups, lo, hi = self._stats(column), None, None
        for n, stats in groups or ():
            if not n:
                continue
            if stats is None or not stats.has_min_max:
                return None
            first, last = _as_ns(stats.min, unit_ns), _as_ns(stats.max, unit_ns)
            if first is None or last is None:
                return None
            lo, hi = first if lo is None else min(lo, first), last if hi is None else max(hi, last)
        return None if lo is None else (lo, hi)

    def touches(self, column: str, unit_ns: int | None, start_ns: int | None, end_ns: int | None) -> bool:
        """Whether rows of this file may lie in ``[start_ns, end_ns)`` (True when unknown)."""
        span = self.span_ns(column, unit_ns) if start_ns is not None or end_ns is not None else None
        if span is None:
            return True
        return ((start_ns is None or span[1] + SPAN_MARGIN_NS >= start_ns)
                and (end_ns is None or span[0] - SPAN_MARGIN_NS < end_ns))

    def has_values(self, column: str) -> bool:
        """False only when the file lacks ``column`` or its statistics count every value null."""
        if column not in self.schema.names or pa.types.is_null(self.schema.field(column).type):
            return False
        for n, stats in self._stats(column) or [(1, None)]:
            if n and (stats is None or not stats.has_null_count or stats.null_count < n):
                return True
        return False


def _as_ns(value, unit_ns: int | None) -> int | None:
    """A timestamp statistic as ns: a datetime (a timestamp column), or an integer epoch of
    ``unit_ns`` ns (None: unknown). Anything else: None."""
    try:
        if isinstance(value, (dt.datetime, pd.Timestamp)):
            stamp = pd.Timestamp(value)
            return int((stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp).value)
        if isinstance(value, int) and not isinstance(value, bool) and unit_ns is not None:
            return value * unit_ns
    except (ValueError, OverflowError):
        pass
    return None


def suggest(name: str, names: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(names), n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


_FLOAT32_CHECKED: set[str] = set()   # channels whose float32 resolution was judged, once a process
FLOAT32_LEVELS = 64   # fewer float32 steps than this across a batch's readings: the channel is a staircase


def channel_values(batch: pa.RecordBatch, channels: Sequence[str], first: int, path: str) -> np.ndarray:
    """``(N, C)`` float32 values of ``channels``, columns ``first``.. of ``batch``. A channel whose
    readings vary by a few float32 steps of their size (``1e9 + 20 sin t``: a meter, a totalizer)
    is flattened by the cast, which the models work in: warned once, saying what to change."""
    values = np.empty((batch.num_rows, len(channels)), np.float32)
    for c, name in enumerate(channels):
        column = batch.column(first + c)
        if name not in _FLOAT32_CHECKED:
            lo, hi = (v.as_py() for v in pc.min_max(column).values())
            if lo is not None and hi is not None and hi > lo:   # judged on readings that vary
                _FLOAT32_CHECKED.add(name)
                step = float(np.spacing(np.float32(max(abs(lo), abs(hi)))))
                if hi - lo < FLOAT32_LEVELS * step:
                    log.warning("%s: channel %r varies by %.3g around %.7g, where float32 (which the models "
                                "work in) steps by %.3g: %d levels are left of its readings. Subtract an offset "
                                "(e.g. its first value) or store its change per reading", path, name, hi - lo,
                                hi, step, int((hi - lo) / step) + 1)
        values[:, c] = column.cast(pa.float32()).to_numpy(zero_copy_only=False)
    return values


def is_numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


def pandas_index(schema: pa.Schema) -> set[str]:
    """The columns that hold a pandas index (``df.to_parquet(path)`` keeps a filtered frame's row
    numbers as ``__index_level_0__``): never a sensor channel.

    >>> import pandas as pd
    >>> sorted(pandas_index(pa.Table.from_pandas(pd.DataFrame({"a": [1.0, 2.0]}, index=[3, 5])).schema))
    ['__index_level_0__']
    """
    try:
        meta = schema.pandas_metadata or {}
    except (ValueError, TypeError):   # pandas metadata that is not JSON: no index known
        meta = {}
    named = {c for c in meta.get("index_columns", []) if isinstance(c, str)}   # a RangeIndex is a dict, no column
    return named | {n for n in schema.names if re.fullmatch(r"__index_level_\d+__", n)}


def check_timestamp(where: str, layout: Layout, t: pa.DataType) -> None:
    name = layout.timestamp
    if pa.types.is_timestamp(t):
        return
    if pa.types.is_integer(t):
        if layout.timestamp_unit is None:
            raise DataError(
                f"{where}: timestamp column {name!r} is {t}, an integer epoch of unknown unit; convert it to a "
                f"Parquet timestamp (e.g. pandas.to_datetime(df[{name!r}], unit='s', utc=True)) or set "
                f"--time-unit s|ms|us|ns (Layout(timestamp_unit=...) in Python)"
            )
        return
    raise DataError(f"{where}: timestamp column {name!r} has type {t}; it must be a timestamp "
                    f"(convert with pandas.to_datetime(..., utc=True) before writing)")


def check_entity(where: str, name: str, t: pa.DataType) -> None:
    base = t.value_type if pa.types.is_dictionary(t) else t
    if not (pa.types.is_string(base) or pa.types.is_large_string(base) or pa.types.is_integer(base)):
        raise DataError(f"{where}: entity column {name!r} has type {t}; it must be string (utf8), large_string or an "
                        "integer type: cast it before writing (e.g. table.cast with pyarrow.string())")


def check_file(footer: Footer, layout: Layout, keys: Sequence[str]) -> None:
    """The entity and timestamp columns are in the file (or its hive path) with usable types."""
    names = footer.schema.names
    for role, name, flag in (("entity", layout.entity, "entity-col"), ("timestamp", layout.timestamp, "time-col")):
        if name in keys:
            continue
        if name not in names:
            raise DataError(f"{footer.path}: {role} column {name!r} not found; columns are {names}."
                            f"{suggest(name, names)} Name the right one with --{flag} NAME "
                            f"(Layout({role}=...) in Python).")
        t = footer.schema.field(name).type
        if role == "timestamp":
            check_timestamp(footer.path, layout, t)
        else:
            check_entity(footer.path, name, t)


def check_channels(footers: Sequence[Footer], channels: Sequence[str], keys: Sequence[str], where: str) -> None:
    """Each channel is numeric wherever it is a column, and some file in range holds it with
    a value. A file without the column reads it as null: a sensor added or retired."""
    for name in channels:
        if name in keys:
            continue
        holders = [f for f in footers if name in f.schema.names]
        for footer in holders:
            t = footer.schema.field(name).type
            if not (is_numeric(t) or pa.types.is_null(t)):   # null: no value in the file (pandas' None column)
                raise DataError(f"{footer.path}: channel column {name!r} has type {t}; channels must be numeric "
                                f"(leave it out with Layout(channels=...) or convert it)")
        if not holders:
            names = list(dict.fromkeys(n for f in footers for n in f.schema.names))
            others = [n for n in names if n not in channels and n not in keys]  # not one read for itself
            raise DataError(f"{where}: channel column {name!r} not found in any of the {len(footers)} file(s) "
                            f"read; columns are {names}.{suggest(name, others)}")
        if not any(f.has_values(name) for f in holders):
            raise DataError(f"{where}: channel column {name!r} has no value in the {len(footers)} file(s) read "
                            f"(every one null, or no column; the first {footers[0].path}): no window can be "
                            f"formed with it. Read a span where the sensor reported (start/end, the CLI's "
                            f"--start/--end), or leave the channel out of training (--channels)")
