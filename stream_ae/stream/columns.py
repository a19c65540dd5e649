"""Readings of a micro-batch decoded straight into columns in the model's channel order.

:func:`decode_columns` gives what :meth:`ReadingDecoder.decode` followed by
:func:`values_to_row` would, per reading, with a reading whose
channels are not exactly the model's dead-lettered as ``missing_channel`` /
``unknown_channel``. Three ways in, fastest first:

* **the whole batch in one msgspec call**, when every message is a reading with exactly the
  model's channels: the values are joined as JSON lines (see :func:`_decode_lines`);
* **message by message into a Struct** whose fields are the model's channels (any order in
  the message), so no per-reading dict is built or reordered in Python;
* **the validating dict path** for anything else, which also writes the dead letters.
"""
from __future__ import annotations

import itertools
import operator
import time
from typing import TYPE_CHECKING, Any, Iterable

import msgspec
import numpy as np

from stream_ae.stream.codec import (
    F32_LIMIT, RESERVED_ENTITY_DETAIL, RESERVED_ENTITY_PREFIX, SCHEMA_VERSION, DeadLetter, EpochMs, Name,
    Timestamp, Version, dead_letter, reading_ts_ns)
from stream_ae.stream.detector_io import ReadingBatch

if TYPE_CHECKING:
    from stream_ae.stream.codec import ReadingDecoder

_TIMESTAMP, _PARTITION, _OFFSET = (operator.attrgetter(a) for a in ("timestamp", "partition", "offset"))


class ReadingColumns(msgspec.Struct, gc=False):
    """Valid readings of a batch, columnar, in input order (what :func:`decode_columns` gives)."""

    entity: np.ndarray  # (N,) object: entity ids
    ts_ns: np.ndarray  # (N,) int64 ns since the epoch
    values: np.ndarray  # (N, C) float32, the model's channel order; NaN = null
    messages: list  # (N,) the records they came from

    def __len__(self) -> int:
        return len(self.messages)

    def to_batch(self) -> tuple[ReadingBatch, np.ndarray]:
        """The detector's batch and each reading's ingest time (Kafka timestamp, s; now if unset)."""
        msgs, n = self.messages, len(self)
        try:
            ms = np.fromiter(map(_TIMESTAMP, msgs), np.int64, n)  # (N,) epoch ms; -1: none
        except TypeError:  # a record without a timestamp (None)
            ms = np.fromiter((m.timestamp or 0 for m in msgs), np.int64, n)
        ingest = np.where(ms > 0, ms / 1000, time.time())
        batch = ReadingBatch(entity=self.entity, ts=self.ts_ns, values=self.values,  # values (N, C)
                             partition=np.fromiter(map(_PARTITION, msgs), np.int64, n),
                             offset=np.fromiter(map(_OFFSET, msgs), np.int64, n),
                             record_ts=np.minimum(ms, 2**63 // 1_000_000) * 1_000_000)   # no wrap past 2262
        return batch, ingest


def decode_columns(decoder: "ReadingDecoder", messages: Iterable[Any], channels: tuple[str, ...]
                   ) -> tuple[ReadingColumns, list[DeadLetter]]:
    """Decode records into :class:`ReadingColumns` and dead letters; never raises."""
    channels = tuple(channels)
    fast = decoder._fast.get(channels)
    if fast is None:
        fast = decoder._fast[channels] = _fast_decoder(channels, decoder.unknown_fields)
    messages = messages if isinstance(messages, list) else list(messages)
    whole = _decode_lines(decoder, messages, fast)
    if whole is not None:
        return _columns(decoder, *whole, messages, [], len(channels))
    entity, ts, rows, kept, bad = [], [], [], [], []
    for message in messages:
        value = message if isinstance(message, (bytes, bytearray, memoryview)) \
            else getattr(message, "value", None)
        r = None
        if fast is not None and value is not None and len(value) <= decoder.max_bytes:
            try:
                r = fast[0](value)
            except Exception:  # the general path below names what is wrong
                pass
        t = None if r is None else reading_ts_ns(r.ts)
        if t is not None:
            entity.append(r.entity)
            ts.append(t)
            rows.append(msgspec.structs.astuple(r.values))
            kept.append(message)
            continue
        ok, letters = decoder.decode([message])
        bad += letters
        for reading in ok:
            row, missing, unknown = values_to_row(reading.values, channels)
            if missing:
                bad.append(dead_letter(reading, "missing_channel",
                                       f"channels {missing} are absent; the model needs {list(channels)}"))
            elif unknown:
                bad.append(dead_letter(reading, "unknown_channel",
                                       f"channels {unknown} are not in the model {list(channels)}"))
            else:
                entity.append(reading.entity)
                ts.append(reading.ts_ns)
                rows.append(row.tolist())
                kept.append(message)
    return _columns(decoder, entity, ts, rows, kept, bad, len(channels))


def _decode_lines(decoder: "ReadingDecoder", messages: list, fast) -> tuple[list, list, list] | None:
    """``(entity, ts_ns, rows)`` of the whole batch from one msgspec call, or None when any
    message is not a reading with exactly the model's channels (then each is decoded alone).

    The values are joined as JSON lines. A raw newline cannot occur inside a JSON string,
    so with no newline in any value, no blank value (each starts with ``{`` and ends with
    ``}``) and as many documents as values, line i is message i, exactly: a message
    can never lend bytes to its neighbour (:func:`lines_are_values`).
    """
    if fast is None or not messages:
        return None
    try:
        values = list(map(_VALUE, messages)) if not isinstance(messages[0], bytes) else messages
        lengths = np.fromiter(map(len, values), np.int64, len(values))  # (n,)
        if lengths.max() > decoder.max_bytes:
            return None
        joined = b"\n".join(values)
        if not lines_are_values(joined, lengths):
            return None
        readings = fast[1](joined)
    except Exception:  # a tombstone, an empty value, any bad message (invalid UTF-8, deep nesting ...)
        return None    # decode them one by one: the general path names what is wrong
    if len(readings) != len(messages):
        return None
    ts = list(map(_TS, readings))
    try:
        ts_ns = np.array(ts, dtype=np.int64) * 1_000_000  # all epoch ms (msgspec bounded them)
    except TypeError:  # some are RFC 3339 datetimes
        ts_ns = [reading_ts_ns(t) for t in ts]
        if None in ts_ns:
            return None  # one is out of range: the general path dead-letters it
    return list(map(_ENTITY, readings)), ts_ns, list(map(msgspec.structs.astuple, map(_VALUES, readings)))


def lines_are_values(joined: bytes, lengths: np.ndarray) -> bool:
    """Whether ``joined``, values of ``lengths`` (n,) joined by ``b"\\n"``, read as JSON lines is
    exactly its values, one object each: no newline but the n - 1 separators, and every value
    starts with ``{`` and ends with ``}``. Checked over the bytes at once.

    msgspec's ``decode_lines`` reads ``{..} {..}`` on one line as two documents and skips a
    blank line, so a newline count alone would let such a pair shift records onto the wrong
    messages.

    >>> lines_are_values(b'{"a":1}\\n{"b":2}', np.array([7, 7]))
    True
    >>> lines_are_values(b'{"a":1} {"b":2}\\n', np.array([15, 0]))
    False
    """
    n = len(lengths)
    if n == 0 or lengths.min() < 2:
        return False
    buf = np.frombuffer(joined, np.uint8)
    ends = np.cumsum(lengths + 1) - 1  # (n,) each value's separator (the last: one past the end)
    return bool(np.count_nonzero(buf == 10) == n - 1 and (buf[ends - lengths] == 123).all()
                and (buf[ends - 1] == 125).all())


def values_to_row(values: dict[str, float | None], channels: tuple[str, ...]
                  ) -> tuple[np.ndarray, list[str], list[str]]:
    """Order a reading's values by the model's channels.

    Returns ``(row (C,) float32 with NaN for null or absent, missing names, unknown names)``;
    whether a missing or unknown channel dead-letters the reading is the runner's policy.

    >>> row, missing, unknown = values_to_row({"a": 1.0, "b": None, "z": 2.0}, ("a", "b", "c"))
    >>> row.tolist(), missing, unknown
    ([1.0, nan, nan], ['c'], ['z'])
    """
    row = np.array([values.get(c) for c in channels], dtype=np.float64).astype(np.float32)
    missing = [c for c in channels if c not in values]
    unknown = [k for k in values if k not in channels] if len(values) > len(channels) - len(missing) else []
    return row, missing, unknown


_VALUE, _TS, _ENTITY, _VALUES = (operator.attrgetter(a) for a in ("value", "ts", "entity", "values"))


def _columns(decoder: "ReadingDecoder", entity: list, ts: list, rows: list, kept: list, bad: list,
             n_channels: int) -> tuple[ReadingColumns, list[DeadLetter]]:
    """The columns of the kept readings; one with a value beyond float32 becomes the
    ``non_finite`` dead letter the dict path writes for it."""
    try:  # (N, C); nulls (None) need np.array, which makes them NaN
        values = np.fromiter(itertools.chain.from_iterable(rows), np.float64, len(rows) * n_channels)
    except TypeError:
        values = np.array(rows, dtype=np.float64)
    values = values.reshape(len(rows), n_channels)
    with np.errstate(invalid="ignore"):
        out_of_range = (np.abs(values) >= F32_LIMIT).any(axis=1)  # (N,) the dict path checks per value
    for i in np.flatnonzero(out_of_range):
        bad = bad + decoder.decode([kept[i]])[1]
    drop = out_of_range
    reserved = [e for e in set(entity) if e.startswith(RESERVED_ENTITY_PREFIX)]  # a few names a batch
    if reserved:
        taken = np.isin(np.array(entity, dtype=object), reserved) & ~drop
        bad = bad + [dead_letter(kept[i], "malformed", RESERVED_ENTITY_DETAIL, entity=entity[i])
                     for i in np.flatnonzero(taken)]
        drop = drop | taken
    stamps = np.array(ts, dtype=np.int64).reshape(-1)
    horizon = decoder.horizon_ns()
    if horizon is not None:  # the codec's check, on the column (the fast paths do not call decode)
        ahead = (stamps > horizon) & ~drop
        bad = bad + [dead_letter(kept[i], "malformed", decoder.future_detail(int(stamps[i]), horizon),
                                 entity=entity[i]) for i in np.flatnonzero(ahead)]
        drop = drop | ahead
    if drop.any():
        keep = ~drop
        entity = [e for e, k in zip(entity, keep) if k]
        stamps = stamps[keep]
        kept = [m for m, k in zip(kept, keep) if k]
        values = values[keep]
    return ReadingColumns(np.array(entity, dtype=object), stamps, values.astype(np.float32), kept), bad


def _fast_decoder(channels: tuple[str, ...], unknown_fields: str):
    """``(decode one, decode JSON lines)`` of readings whose values are exactly ``channels``;
    None if the names cannot be Struct fields under the reading contract."""
    if not channels or len(set(channels)) != len(channels) or not all(1 <= len(c) <= 256 for c in channels):
        return None
    names = [f"c{i}" for i in range(len(channels))]
    values = msgspec.defstruct("ModelValues", [(n, float | None) for n in names], forbid_unknown_fields=True,
                               rename=dict(zip(names, channels)), gc=False)
    reading = msgspec.defstruct("ModelReading", [("entity", Name), ("ts", Timestamp | EpochMs),
                                                 ("values", values), ("schema_version", Version, SCHEMA_VERSION)],
                                forbid_unknown_fields=unknown_fields == "reject", gc=False)
    decoder = msgspec.json.Decoder(reading)
    return decoder.decode, decoder.decode_lines
