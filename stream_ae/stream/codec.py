"""Message contracts on the wire: readings in, alerts and dead letters out.

The msgspec Structs below are the single definition of every message. The JSON Schema
files in ``schemas/`` are generated from them (``python -m stream_ae.stream.codec
--write-schemas schemas/``) and a test fails when the two drift apart.

Rules a producer must follow (see docs/schemas.md):

* ``ts`` is either an RFC 3339 string *with* an offset (``2024-05-01T12:00:00.5Z``,
  microsecond precision, finer digits are rounded) or an integer of **epoch
  milliseconds** UTC. Both become int64 nanoseconds since the epoch.
* a missing value is ``null``. ``NaN``/``Infinity`` tokens (what Python's
  ``json.dumps`` writes for float NaN) and numbers beyond float32 range are rejected as
  ``non_finite``: a sensor that cannot measure should say so with ``null``.
* unknown top-level fields are rejected (``unknown_field``) unless the decoder is built
  with ``unknown_fields="ignore"``: a field this version does not know may change the
  meaning of the others, and the dead letter keeps the bytes for a replay after upgrade.
* a ``ts`` more than ``max_future_s`` (when set; a day in the stream) ahead of the decoding
  host's clock is ``malformed``: accepted, one reading from a sender with a broken clock would
  make every later reading of its entity ``out_of_order`` until wall time caught up with it.

Decoding never raises: each bad message becomes a :class:`DeadLetter`.

>>> ok, bad = decode_readings([b'{"entity": "pump-1", "ts": 1000, "values": {"p": 1.5}}',
...                            b'{"entity": "pump-1", "ts": 1000}'])
>>> ok[0].entity, ok[0].ts_ns, ok[0].values
('pump-1', 1000000000, {'p': 1.5})
>>> bad[0].reason, bad[0].detail
('malformed', 'Object missing required field `values`')
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from typing import TYPE_CHECKING, Annotated, Any, Iterable, Literal

import msgspec
from msgspec import Meta

from stream_ae.stream.corrupt_batch import CorruptBatch
from stream_ae.stream.timestamps import MAX_EPOCH_MS as _MAX_EPOCH_MS
from stream_ae.stream.timestamps import datetime_to_ns, ns_to_datetime, reading_ts_ns  # noqa: F401 - re-exported

if TYPE_CHECKING:
    from stream_ae.stream.columns import ReadingColumns

SCHEMA_VERSION = 1
Reason = Literal[   # only reasons something produces: a consumer of dead letters keys dashboards on them
    "malformed", "unknown_field", "non_finite", "oversized",          # the codec's own
    "missing_channel", "unknown_channel",                              # checked by the runner
    "out_of_order", "duplicate",                                       # ordering, by the runner
    "corrupt_batch",                          # a fetched record batch the client cannot read (corrupt_batch.py)
]
REASONS: tuple[str, ...] = Reason.__args__
REJECT_DETAIL = {  # the detail of the ordering reasons, in the stream and the archiver alike
    "duplicate": "a reading with this entity and timestamp was already accepted",
    "out_of_order": "older than the entity's last accepted reading",
}
Severity = Literal["info", "warning", "critical"]
AlertState = Literal["open", "update", "resolved"]

F32_LIMIT = float.fromhex("0x1.ffffffp+127")   # the least magnitude float32 rounds to infinity
RESERVED_ENTITY_PREFIX = "__partition__/"   # the state topic's partition records use such keys
RESERVED_ENTITY_DETAIL = (f"entity ids starting with {RESERVED_ENTITY_PREFIX!r} are reserved: the state topic "
                          "keeps partition records under them")
ORIGINAL_MAX_BYTES = 256 * 1024   # a letter's copy of the value: base64 of it fits the producer's 1 MiB request
KEY_MAX_BYTES = 1024              # ... of the key (which is also its Kafka key): an entity id is far shorter
DETAIL_MAX_CHARS = 4096           # ... of its detail (a list of unknown channel names can be any length)
Timestamp = Annotated[dt.datetime, Meta(tz=True, description="RFC 3339 with an offset")]
EpochMs = Annotated[int, Meta(ge=0, le=_MAX_EPOCH_MS, description="epoch milliseconds, UTC")]
Name = Annotated[str, Meta(min_length=1, max_length=256)]
Version = Annotated[int, Meta(ge=1, le=SCHEMA_VERSION, description="message schema version")]


class Reading(msgspec.Struct, forbid_unknown_fields=True):
    """One sensor reading: an entity's channel values at one instant."""

    entity: Annotated[Name, Meta(description="the machine / sensor group; also the Kafka key")]
    ts: Timestamp | EpochMs
    values: Annotated[dict[Name, float | None],
                      Meta(description="channel name -> value; null = not measured")]
    schema_version: Version = SCHEMA_VERSION


class _LenientReading(Reading, forbid_unknown_fields=False):
    """Same contract, extra top-level fields ignored."""


class ChannelShare(msgspec.Struct, forbid_unknown_fields=True):
    """A channel's share of the window's reconstruction error."""

    channel: Name
    share: Annotated[float, Meta(ge=0.0, le=1.0)]


class Alert(msgspec.Struct, forbid_unknown_fields=True):
    """An alert lifecycle event. ``event_id`` is deterministic: a replay yields the same id."""

    event_id: Annotated[str, Meta(min_length=1, description="unique per event; dedup key")]
    alert_id: Annotated[str, Meta(min_length=1, description="shared by all events of one alert")]
    entity: Name
    model_version: Annotated[str, Meta(min_length=1)]
    state: AlertState
    started_at: Timestamp
    at: Annotated[Timestamp, Meta(description="time of the reading that caused this event")]
    score: float
    threshold: float
    severity: Severity
    top_channels: list[ChannelShare]
    sequence: Annotated[int, Meta(ge=0, description="0 for open, +1 per event of this alert")]
    schema_version: Version = SCHEMA_VERSION


class DeadLetter(msgspec.Struct, forbid_unknown_fields=True, dict=True):  # dict: .headers, the record's, not encoded
    """A message the service could not use, with the original bytes for a replay."""

    reason: Reason
    detail: Annotated[str, Meta(description="what is wrong, for a human")]
    original: Annotated[bytes, Meta(description="the record value, base64")]
    received_at: Timestamp
    original_key: bytes | None = None
    source_topic: str | None = None
    source_partition: int | None = None
    source_offset: int | None = None
    source_timestamp_ms: int | None = None
    entity: str | None = None
    schema_version: Version = SCHEMA_VERSION


class DecodedReading(msgspec.Struct, gc=False):
    """A valid reading, ready for the windower. ``message`` is the record it came from."""

    entity: str
    ts_ns: int
    values: dict[str, float | None]
    message: Any = None


def _record_fields(message: Any) -> tuple[Any, dict]:
    """(value, source fields) of a kafka ConsumerRecord-like object, or of raw bytes."""
    if message is None or isinstance(message, (bytes, bytearray, memoryview)):
        return message, {}
    return getattr(message, "value", None), {
        "original_key": getattr(message, "key", None),
        "source_topic": getattr(message, "topic", None),
        "source_partition": getattr(message, "partition", None),
        "source_offset": getattr(message, "offset", None),
        "source_timestamp_ms": getattr(message, "timestamp", None),
    }


def dead_letter(message: Any, reason: str, detail: str, *, entity: str | None = None,
                received_at: dt.datetime | None = None) -> DeadLetter:
    """Build a dead letter for a record, raw bytes or :class:`DecodedReading`; for the record reader's
    stand-in for an unreadable batch, whatever was found wrong with its bytes, ``corrupt_batch``."""
    if type(message) is CorruptBatch:
        return dead_letter(message.source(), "corrupt_batch", message.detail, received_at=received_at)
    if reason not in REASONS:
        raise ValueError(f"unknown dead-letter reason {reason!r}; use one of {REASONS}")
    if isinstance(message, DecodedReading):
        entity = entity if entity is not None else message.entity
        message = message.message
    value, source = _record_fields(message)
    if len(detail) > DETAIL_MAX_CHARS:
        detail = f"{detail[:DETAIL_MAX_CHARS]}... ({len(detail) - DETAIL_MAX_CHARS} more characters)"
    key = source.get("original_key")
    if isinstance(key, str):
        key = source["original_key"] = key.encode()
    if key is not None and len(key) > KEY_MAX_BYTES:   # the letter's Kafka key too: it must stay producible
        detail += _clipped("original_key", key, KEY_MAX_BYTES)
        source["original_key"] = bytes(key[:KEY_MAX_BYTES])
    original = bytes((value.encode() if isinstance(value, str) else value) or b"")
    if len(original) > ORIGINAL_MAX_BYTES:   # an oversized record's whole copy could not be produced
        detail += _clipped("original", original, ORIGINAL_MAX_BYTES)
        original = original[:ORIGINAL_MAX_BYTES]
    letter = DeadLetter(reason=reason, detail=detail, original=original,
                        received_at=received_at or dt.datetime.now(dt.timezone.utc), entity=entity, **source)
    letter.headers = [(k, b"" if v is None else bytes(v)) for k, v in getattr(message, "headers", None) or ()]
    return letter


def _clipped(field: str, data: bytes, kept: int) -> str:
    return (f"; {field} holds the first {kept} of its {len(data)} bytes "
            f"(sha256 {hashlib.sha256(data).hexdigest()}): replay it from the source offset")


def _non_finite_reason(data: bytes) -> tuple[str, str] | None:
    """``(reason, detail)`` for ``data`` that is JSON apart from NaN / Infinity tokens (slow
    path, errors only): ``non_finite`` when each sits as a channel value, else ``malformed``
    naming the field (a NaN ``ts`` is no missing value); None for data that is not such JSON.
    Linear in the message, and strict UTF-8 as the fast path (a BOM or UTF-16 is malformed)."""
    marks: list = []
    try:
        obj = json.loads(bytes(data).decode("utf-8"),
                         parse_constant=lambda token: marks.append([token]) or marks[-1])
    except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError; deep nesting
        return None
    if not marks:
        return None
    ids = {id(m) for m in marks}
    values = obj.get("values") if isinstance(obj, dict) else None
    channels = [k for k, v in values.items() if id(v) in ids] if isinstance(values, dict) else []
    if len(channels) == len(marks):
        return "non_finite", f"NaN/Infinity is not JSON (channel {channels[0]!r}); send null for a missing value"
    where = next((k for k, v in obj.items() if k != "values" and _holds(v, ids)), "values") \
        if isinstance(obj, dict) else "the message"
    return "malformed", f"NaN/Infinity is not JSON, and {where!r} takes no such value"


def _holds(value, ids: set) -> bool:
    """Whether ``value`` is, or nests, one of the objects ``ids`` names (a walk, not a recursion:
    ``json.loads`` parses deeper nesting than Python's stack takes frames)."""
    todo = [value]
    while todo:
        v = todo.pop()
        if id(v) in ids:
            return True
        todo.extend(v.values() if isinstance(v, dict) else v if isinstance(v, list) else ())
    return False


class ReadingDecoder:
    """Validating reading decoder; keep one per consumer (the msgspec decoder is reused).

    Parameters
    ----------
    max_bytes : int
        Larger record values are dead-lettered as ``oversized`` before parsing.
    unknown_fields : {"reject", "ignore"}
        Policy for top-level fields this schema version does not define.
    max_future_s : float or None
        Readings stamped more than this far ahead of ``clock()`` (wall time in seconds, read once
        per call) are ``malformed``; None: no limit.
    """

    def __init__(self, max_bytes: int = 65_536, unknown_fields: str = "reject",
                 max_future_s: float | None = None, clock=time.time):
        if unknown_fields not in ("reject", "ignore"):
            raise ValueError(f"unknown_fields must be 'reject' or 'ignore', not {unknown_fields!r}")
        if max_future_s is not None and not 0 < max_future_s < float("inf"):
            raise ValueError(f"max_future_s must be None or a finite number above 0, not {max_future_s!r}")
        self.max_bytes, self.unknown_fields = max_bytes, unknown_fields
        self.max_future_s, self._clock = max_future_s, clock
        self._decoder = msgspec.json.Decoder(Reading if unknown_fields == "reject" else _LenientReading)
        self._fast: dict[tuple[str, ...], Any] = {}  # model channels -> column decoder

    def decode(self, messages: Iterable[Any]) -> tuple[list[DecodedReading], list[DeadLetter]]:
        """Decode records (ConsumerRecord-like with ``.value``, or bytes); never raises."""
        ok: list[DecodedReading] = []
        bad: list[DeadLetter] = []
        decode = self._decoder.decode
        horizon = self.horizon_ns()
        for message in messages:
            value = message if isinstance(message, (bytes, bytearray, memoryview)) \
                else getattr(message, "value", None)
            if value is None:
                bad.append(dead_letter(message, "malformed", "record value is null (tombstone)"))
                continue
            if len(value) > self.max_bytes:
                bad.append(dead_letter(message, "oversized",
                                       f"{len(value)} bytes > max_message_bytes {self.max_bytes}"))
                continue
            try:
                r = decode(value)
            except msgspec.ValidationError as exc:
                bad.append(dead_letter(message, _validation_reason(str(exc)), str(exc)))
                continue
            except msgspec.DecodeError as exc:
                bad.append(dead_letter(message, *(_non_finite_reason(value) or ("malformed", str(exc)))))
                continue
            except Exception as exc:  # invalid UTF-8 in a string, nesting too deep to parse ...
                bad.append(dead_letter(message, "malformed", f"{type(exc).__name__}: {exc}"))
                continue
            ts_ns = reading_ts_ns(r.ts)
            if ts_ns is None:
                bad.append(dead_letter(message, "malformed", f"timestamp {r.ts.isoformat()} is outside 1970-01-01 "
                                       "to 2262-04-11, the span epoch milliseconds allow", entity=r.entity))
                continue
            if r.entity.startswith(RESERVED_ENTITY_PREFIX):
                bad.append(dead_letter(message, "malformed", RESERVED_ENTITY_DETAIL, entity=r.entity))
                continue
            if horizon is not None and ts_ns > horizon:
                bad.append(dead_letter(message, "malformed", self.future_detail(ts_ns, horizon), entity=r.entity))
                continue
            for name, v in r.values.items():
                if v is not None and not -F32_LIMIT < v < F32_LIMIT:
                    bad.append(dead_letter(message, "non_finite",
                                           f"channel {name!r} value {v!r} is outside float32 range",
                                           entity=r.entity))
                    break
            else:
                ok.append(DecodedReading(r.entity, ts_ns, r.values, message))
        return ok, bad

    def horizon_ns(self) -> int | None:
        """The latest ``ts`` (int64 ns) accepted now, or None without ``max_future_s``."""
        return None if self.max_future_s is None else min(int((self._clock() + self.max_future_s) * 1e9), 2**63 - 1)

    def future_detail(self, ts_ns: int, horizon_ns: int) -> str:
        """The dead letter's detail of a reading stamped past ``horizon_ns``.

        >>> ReadingDecoder(  # doctest: +ELLIPSIS
        ...     max_future_s=3600, clock=lambda: 0.0).future_detail(86_400 * 10**9, 3600 * 10**9)
        'ts 1970-01-02T00:00:00Z is 24.0 h ahead of the clock of the host decoding it (input.max_future_s = 3600): ...'
        """
        ahead_h = (ts_ns - (horizon_ns - int(self.max_future_s * 1e9))) / 3.6e12
        stamp = dt.datetime.fromtimestamp(ts_ns // 1_000_000_000, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return (f"ts {stamp} is {ahead_h:.1f} h ahead of the clock of the host decoding it (input.max_future_s = "
                f"{self.max_future_s:g}): fix the clock of the sender or of this host")

    def decode_columns(self, messages: Iterable[Any], channels: tuple[str, ...]
                       ) -> tuple["ReadingColumns", list[DeadLetter]]:
        """Decode records straight into columns in the model's channel order; never raises
        (see :mod:`stream_ae.stream.columns`)."""
        from stream_ae.stream.columns import decode_columns

        return decode_columns(self, messages, channels)


def _validation_reason(msg: str) -> str:
    if msg.startswith("Object contains unknown field"):
        return "unknown_field"
    if msg.startswith("Number out of range") and "at `$.values[" in msg:   # a channel's 1e999, which would be inf
        return "non_finite"
    return "malformed"


def decode_readings(messages: Iterable[Any], *, max_bytes: int | None = None,
                    unknown_fields: str = "reject") -> tuple[list[DecodedReading], list[DeadLetter]]:
    """Decode a batch of records into valid readings and dead letters (never raises)."""
    return ReadingDecoder(max_bytes or 65_536, unknown_fields).decode(messages)


_ENCODER = msgspec.json.Encoder()
_ALERT_DECODER = msgspec.json.Decoder(Alert)
_DEAD_LETTER_DECODER = msgspec.json.Decoder(DeadLetter)


def encode_reading(reading: Reading) -> bytes:
    """JSON bytes of a reading (float NaN is written as null)."""
    return _ENCODER.encode(reading)


def encode_alert(alert: Alert) -> bytes:
    """JSON bytes of an alert event."""
    return _ENCODER.encode(alert)


def encode_dead_letter(letter: DeadLetter) -> bytes:
    """JSON bytes of a dead letter (``original`` and ``original_key`` as base64)."""
    return _ENCODER.encode(letter)


def decode_alert(data: bytes) -> Alert:
    """Validate and decode an alert event; raises ``msgspec.ValidationError`` if invalid."""
    return _ALERT_DECODER.decode(data)


def alert_message(event) -> Alert:
    """The wire form of an :class:`~stream_ae.alerts.AlertEvent` (shares clipped to [0, 1])."""
    return Alert(
        event_id=event.event_id, alert_id=event.alert_id, entity=event.entity,
        model_version=event.model_version, state=event.state,
        started_at=ns_to_datetime(event.started_at), at=ns_to_datetime(event.at),
        score=float(event.score), threshold=float(event.threshold), severity=event.severity,
        top_channels=[ChannelShare(channel=c, share=min(max(float(s), 0.0), 1.0)) for c, s in event.top_channels],
        sequence=int(event.sequence))


def alert_event_id(data: bytes) -> str | None:
    """The ``event_id`` of an alerts-topic record; None for one that is not an alert event
    (a foreign record on the topic is not ours to judge)."""
    try:
        return decode_alert(data).event_id
    except Exception:  # noqa: BLE001 - any undecodable record is foreign
        return None


def decode_dead_letter(data: bytes) -> DeadLetter:
    """Validate and decode a dead letter; raises ``msgspec.ValidationError`` if invalid."""
    return _DEAD_LETTER_DECODER.decode(data)


def dead_letter_source(letter: DeadLetter) -> tuple[str, int, int] | None:
    """(topic, partition, offset) of the record a dead letter stands for: one reading has at
    most one dead letter, so this identifies it; None for one not from Kafka."""
    if letter.source_topic is None or letter.source_partition is None or letter.source_offset is None:
        return None
    return letter.source_topic, letter.source_partition, letter.source_offset


def dead_letter_id(data: bytes) -> tuple[str, int, int] | None:
    """:func:`dead_letter_source` of a dead-letter-topic record; None for a foreign record."""
    try:
        return dead_letter_source(decode_dead_letter(data))
    except Exception:  # noqa: BLE001 - any undecodable record is foreign
        return None
