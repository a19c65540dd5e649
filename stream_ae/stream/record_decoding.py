"""Fetched record batches decoded in C: the same ConsumerRecords at a fifth of the CPU a record.

kafka-python parses each record of a fetched batch in Python (varints, a ``DefaultRecord``,
a generator step, a ``ConsumerRecord``): about 4.7 µs a record (0.9 here) on this project's benchmark
machine, more than the detector's own work per reading. aiokafka ships the same wire format's
decoder compiled (``aiokafka.record``, Cython). :func:`install` swaps the consumer's
per-partition record reader for one that

* walks the fetched batches with kafka-python's own ``MemoryRecords`` and batch headers, so
  the batch-level rules are kafka-python's: CRC check, leader epoch, transactions (aborted
  batches and control batches skipped under ``read_committed``), records before the fetch
  offset dropped, the next fetch offset;
* decodes each batch's records with aiokafka's compiled decoder (kafka-python's own when
  aiokafka lacks the batch's compression codec, is not installed, or ``kafka.record_decoder``
  is ``"kafka-python"``);
* builds kafka-python's ``ConsumerRecord`` for each, field for field what kafka-python gives;
* where kafka-python would raise from ``poll()`` on a batch it cannot read (its CRC fails, or
  its records do not decode) and stop the service on every restart, fetches the batch once
  more and, if it is still unreadable, hands over one ``CorruptBatch`` in its place, which
  becomes the dead letter ``corrupt_batch`` (``corrupt_batch.py``); a batch whose magic byte
  changed from 2 is one such (kafka-python read it as a v0/v1 message set, whose CRC failed).

Everything else (the group, fetching, positions, commits) stays kafka-python's. When the
consumer has key or value deserializers, a fetch holds a pre-v2 message set, or kafka-python's
internals are not what this was written against, the consumer keeps its own reader
(``install`` returns False and says why in the log). ``tests/test_record_decoding.py`` compares
both readers record for record over plain, compressed, transactional, aborted, control and
mid-batch fetches; ``tests/test_corrupt_batch.py`` covers the unreadable ones.
"""
from __future__ import annotations

import functools
import importlib
import itertools
import logging
import operator
import struct
from typing import Any

from stream_ae.stream.corrupt_batch import CorruptBatch

log = logging.getLogger(__name__)

CRC_FAILED = "failed its CRC check"
_CRC_AT, _CRC_FROM = 17, 21  # a v2 batch's CRC field, and where the bytes it covers begin
_V2_MIN_LENGTH = 49  # a v2 batch's length field: its header after the length, at least
_OFFSET, _TIMESTAMP, _KEY, _VALUE, _HEADERS = (operator.attrgetter(a) for a in
                                               ("offset", "timestamp", "key", "value", "headers"))


def available() -> str | None:
    """None when the record reader can be installed, else why not."""
    try:
        from kafka.consumer.fetcher import Fetcher

        if not hasattr(Fetcher, "PartitionRecords") or not hasattr(Fetcher.PartitionRecords, "take"):
            return "this kafka-python has no Fetcher.PartitionRecords.take"
    except ImportError as exc:
        return f"kafka-python's fetcher is not importable ({exc})"
    return None


def _compiled_available() -> bool:
    try:
        importlib.import_module("aiokafka.record._crecords.default_records")  # the compiled decoder
    except ImportError as exc:
        log.warning("record batches decoded by kafka-python (slower): aiokafka's compiled record decoder "
                    "is not importable (%s)", exc)
        return False
    return True


def install(consumer: Any, decoder: str = "compiled") -> bool:
    """Read the consumer's fetched batches with :class:`FastPartitionRecords` (each batch's records decoded
    in C when ``decoder``, the ``kafka.record_decoder`` setting, is ``"compiled"`` and aiokafka is there,
    else by kafka-python); False (and the consumer unchanged) when that cannot be done exactly."""
    why = available()
    fetcher = getattr(consumer, "_fetcher", None)
    if why is None and fetcher is None:
        why = "the consumer has no fetcher"
    if why is None and (fetcher.config.get("key_deserializer") or fetcher.config.get("value_deserializer")):
        why = "the consumer deserializes keys or values"
    if why is not None:
        log.warning("record batches read by kafka-python's own reader (slower, and an unreadable batch "
                    "stops the consumer): %s", why)
        return False
    compiled = decoder == "compiled" and _compiled_available()
    cls = _partition_records_class(compiled)
    # an instance attribute: this consumer only, with its own memory of batches found unreadable once
    fetcher.PartitionRecords = type(cls.__name__, (cls,), {"unreadable": {}})
    return True


_CLASSES: dict[bool, type] = {}  # (functools.cache would key f() and f(True) apart)


def _partition_records_class(compiled: bool = True):
    """The reader class, built once a process: batches decoded in C where aiokafka can (``compiled``), else by
    kafka-python."""
    if compiled not in _CLASSES:
        _CLASSES[compiled] = _build_class() if compiled else _build_class(compiled_codecs=frozenset())
    return _CLASSES[compiled]


def _build_class(compiled_codecs: frozenset[int] | None = None):
    """The reader class; ``compiled_codecs``: compression types aiokafka decodes (default: all it
    can here; 0 is none). The others take kafka-python's own batch decoder."""
    import kafka.errors as Errors
    from kafka.consumer.fetcher import ConsumerRecord, Fetcher
    from kafka.protocol.consumer import IsolationLevel
    from kafka.record.default_records import DefaultRecordBatch as PyBatch

    if compiled_codecs is None:
        import aiokafka.codec as acodec

        compiled_codecs = frozenset(c for c, ok in ((PyBatch.CODEC_NONE, True), (PyBatch.CODEC_GZIP, acodec.has_gzip()),
                                                    (PyBatch.CODEC_SNAPPY, acodec.has_snappy()),
                                                    (PyBatch.CODEC_LZ4, acodec.has_lz4()),
                                                    (PyBatch.CODEC_ZSTD, acodec.has_zstd())) if ok)
    if compiled_codecs:
        from aiokafka.record._crecords import DefaultRecordBatch as CBatch
    read_committed = IsolationLevel.READ_COMMITTED
    make = functools.partial(tuple.__new__, ConsumerRecord)  # a record from its fields, no Python call

    class FastPartitionRecords(Fetcher.PartitionRecords):
        """kafka-python's ``PartitionRecords`` with each batch's records decoded in one C pass."""

        unreadable: dict = {}  # {TopicPartition: first offset of the batch found unreadable on the last fetch}

        def __init__(self, fetch_offset, tp, records, *args, **kwargs):
            super().__init__(fetch_offset, tp, records, *args, **kwargs)  # its iterator is never run
            self._pending: list = []  # decoded records of the current batch not yet taken
            self._at = 0
            self._heads = _batch_heads(records)  # every batch header's (base offset, span), in order; None: not all v2
            self._buffer = getattr(records, "_buffer", None)
            self._fast = self._heads is not None
            if self._fast:
                self.record_iterator = self._batches(tp, records)

        def take(self, n=None):
            if not self._fast:
                return super().take(n)
            self._maybe_raise_next_inline_exception()
            out: list = []
            while (n is None or len(out) < n) and self.record_iterator is not None:
                if self._at >= len(self._pending):
                    try:
                        self._pending, self._at = next(self.record_iterator), 0
                    except StopIteration:
                        break
                    except Exception as exc:  # as kafka-python: records first, the error next call
                        if not out:
                            raise
                        self._next_inline_exception = exc
                        break
                    continue
                room = len(self._pending) - self._at
                end = self._at + (room if n is None else min(room, n - len(out)))
                part = self._pending[self._at:end]
                self._at = end
                out += part
                self.next_fetch_offset = part[-1].offset + 1
            return out

        def _batches(self, tp, records):
            """One list of ConsumerRecords per batch (possibly empty), kafka-python's rules per batch."""
            heads = iter(self._heads)
            batch = _next_batch(records, PyBatch, heads)
            last_batch = None
            topic, partition = tp.topic, tp.partition
            while batch is not None:
                if batch is _TAIL:  # the batch before it handed over first (a look-ahead would raise it early)
                    records.next_batch()  # raises kafka-python's complaint about them
                    break
                if type(batch) is _Broken:  # a length no batch can have: where it ends is unknown
                    self._broken(batch)  # raises on the second fetch to find it
                    self.next_fetch_offset = max(batch.base_offset, self.fetch_offset)
                    break
                last_batch, later = batch, _next_batch(records, PyBatch, heads)
                why = CRC_FAILED if self.check_crcs and not batch.validate_crc() else None
                self.leader_epoch = batch.leader_epoch  # outside the CRC's span, as the base offset and length
                if why is None and self.isolation_level == read_committed and batch.has_producer_id():
                    self._consume_aborted_transactions_up_to(batch.last_offset)
                    producer_id = batch.producer_id
                    if self._contains_abort_marker(batch):
                        self.aborted_producer_ids.discard(producer_id)
                    elif self._is_batch_aborted(batch):
                        self.next_fetch_offset, batch = batch.next_offset, later
                        continue
                if why is None and batch.is_control_batch:
                    self.next_fetch_offset, batch = batch.next_offset, later
                    continue
                if why is None and batch.magic != 2:  # a byte outside the CRC changed; the fields inside it
                    # (offset span, transaction markers: read above as usual) hold, so its span is its own
                    why = f"has magic byte {batch.magic & 0xFF} where a v2 batch has 2"
                if why is None:
                    try:
                        recs = list(CBatch(batch._buffer)) if batch.compression_type in compiled_codecs \
                            else list(batch)
                    except Exception as exc:  # noqa: BLE001 - a header key not UTF-8, a payload that will not inflate
                        why = f"could not be decoded ({type(exc).__name__}: {exc})"
                if why is not None:
                    stand_in = self._unreadable(batch, why)
                    if stand_in is None:  # found so once: fetched again from here
                        self.next_fetch_offset = max(batch.base_offset, self.fetch_offset)
                        break
                    if stand_in.offset >= self.fetch_offset:  # else wholly before the fetch offset: dropped
                        yield [stand_in]
                    batch = later
                    continue
                if self.unreadable and self.unreadable.get(tp) == batch.base_offset:
                    del self.unreadable[tp]  # unreadable on one fetch only: a later one is fetched twice too
                self.records_read += len(recs)
                if recs and recs[0].offset < self.fetch_offset:  # a batch fetched from its middle
                    recs = [r for r in recs if r.offset >= self.fetch_offset]
                self.bytes_read += batch.size_in_bytes
                yield _consumer_records(make, topic, partition, self.leader_epoch, batch.timestamp_type, recs) \
                    if recs else []
                batch = later
            else:
                if last_batch is not None and last_batch.magic == 2:
                    self.next_fetch_offset = last_batch.next_offset
            self.drain()

        def _unreadable(self, batch, why: str) -> CorruptBatch | None:
            """The stand-in for an unreadable batch found so on the fetch before too; None the first
            time (the caller fetches it again). Raises kafka-python's error when it cannot be skipped
            safely: its header fields after the CRC (offset span, transaction markers) are suspect when
            the CRC failed, so its end is then the next batch header's base offset in the fetch, trusted
            only when that batch passes its own CRC or the base is where the batch's own offset span
            ends (where the header starts came from the suspect batch's length, outside the CRC: a
            bit-rotted length lands on header-shaped bytes, which agree with neither); and under
            read_committed it might be a transaction's marker."""
            tp, first = self.topic_partition, batch.base_offset
            if self._first_time(first, why):
                return None
            trusted = why != CRC_FAILED
            heads = self._heads
            at = next((i for i, head in enumerate(heads) if head[0] == first), len(heads))
            after = heads[at + 1] if at + 1 < len(heads) else None
            unsure = not trusted and after is not None and after[0] != batch.next_offset \
                and not _whole_and_sound(self._buffer, *after[1:])
            end = batch.next_offset if trusted else None if after is None or unsure else after[0]  # one past its last
            if end is None or end <= first or (not trusted and self.isolation_level == read_committed):
                raise Errors.CorruptRecordError(
                    f"Record batch for partition {tp} at offset {first} {why}, and "
                    + ("it might be a transaction marker (read_committed)" if end is not None and end > first
                       else f"the next batch header in the fetch (offset {after[0]}) and its own offset span (to "
                       f"{batch.next_offset - 1}) disagree where it ends, and that batch cannot be checked (it fails "
                       "its CRC, or the fetch cuts it short)" if unsure
                       else "no batch after it in the fetch tells where it ends") + ": it cannot be skipped safely")
            log.error("partition %s: the record batch at offsets %d-%d %s on two fetches; dead-lettered as "
                      "corrupt_batch and skipped", tp, first, end - 1, why)
            return CorruptBatch(tp.topic, tp.partition, first, end - 1, bytes(batch._buffer), why,
                                batch.first_timestamp if trusted else None)

        def _first_time(self, first: int, why: str) -> bool:
            """True (and the batch remembered) when the batch at ``first`` is found unreadable for the first
            time in a row: the caller fetches it again, since a fault on the way can be the cause."""
            tp = self.topic_partition
            if self.unreadable.get(tp) != first:
                self.unreadable[tp] = first
                log.warning("partition %s: the record batch at offset %d %s; fetching it again", tp, first, why)
                return True
            del self.unreadable[tp]
            return False

        def _broken(self, broken: "_Broken") -> None:
            """A batch whose length field is shorter than a v2 batch header: nothing in the fetch says
            where it ends, so it cannot be skipped; fetched again once, then kafka-python's error, with
            what to do (before, ``struct.error`` or a bare size complaint from kafka-python's reader)."""
            why = f"has a length field of {broken.length} bytes, shorter than a batch header ({_V2_MIN_LENGTH})"
            if self._first_time(broken.base_offset, why):
                return
            raise Errors.CorruptRecordError(
                f"Record batch for partition {self.topic_partition} at offset {broken.base_offset} {why}, on two "
                "fetches: the length is corrupt, so where the batch ends and the next one starts cannot be known, "
                "and it cannot be skipped safely. Stop the consumers of the group and move its offset for this "
                "partition past the batch by hand (kafka-consumer-groups.sh --reset-offsets --to-offset)")

    return FastPartitionRecords


def _batch_heads(records) -> list[tuple[int, int, int]] | None:
    """``(base offset, start, stop)`` of every batch header in a fetched ``MemoryRecords``, a
    truncated last one's too (its stop past the buffer's end), in order: read from the headers
    alone, outside any CRC; the reader is left where it was; it ends at a length shorter than a v2
    header. None when one has the magic byte of a v0/v1 message set (0 or 1) and its bytes do not
    pass a v2 batch's CRC: a pre-0.11 message set (a v2 batch whose magic byte changed passes it)."""
    buf = getattr(records, "_buffer", None)
    if not isinstance(buf, (bytes, bytearray, memoryview)):
        return None  # not the MemoryRecords this was written against: kafka-python's reader
    heads, pos, size = [], 0, len(buf)
    while pos + 17 <= size:
        base, length = struct.unpack_from(">qi", buf, pos)
        if buf[pos + 16] in (0, 1) and not _whole_and_sound(buf, pos, pos + 12 + length):
            return None  # a pre-0.11 message set, or what cannot be told from one: kafka-python's reader
        heads.append((base, pos, pos + 12 + length))
        if length < _V2_MIN_LENGTH:  # a corrupt length: the reader stops here (_next_batch)
            break
        pos += 12 + length
    return heads


_TAIL = object()  # :func:`_next_batch`: bytes at the fetch's end too few for a header, which kafka-python sliced


class _Broken:
    """A batch header whose length no v2 batch can have (:func:`_next_batch`)."""

    __slots__ = ("base_offset", "length")

    def __init__(self, base_offset: int, length: int):
        self.base_offset, self.length = base_offset, length


def _next_batch(records, v2_batch, heads):
    """The fetch's next batch, always read as v2 (the fast reader only sees fetches whose batches are
    v2 or pass a v2 batch's CRC, :func:`_batch_heads`; for a magic byte that changed to 0 or 1,
    kafka-python builds a v0/v1 message set, which fails its CRC and stopped the consumer), or a :class:`_Broken` for a
    length field shorter than a batch header (kafka-python raised ``struct.error`` or its size
    complaint for it, and a negative one slices from the buffer's end). ``heads``: an iterator over
    :func:`_batch_heads`, which walks the fetch as ``records`` does and ends at such a header. None
    at the end, and at a batch the fetch cuts short (the next fetch starts at it)."""
    base, start, stop = next(heads, (None, 0, 0))
    if base is None:  # a few bytes left, under a header: kafka-python's own complaint if it slices them,
        return _TAIL if records.has_next() else None  # once the batch before them is handled
    if stop - start - 12 < _V2_MIN_LENGTH:
        return _Broken(base, stop - start - 12)
    if not records.has_next():
        return None
    batch = records.next_batch()
    return batch if isinstance(batch, v2_batch) else v2_batch(batch._buffer)


def _whole_and_sound(buf, start: int, stop: int) -> bool:
    """Whether the v2 batch at ``buf[start:stop]`` is whole in the fetch and passes its CRC
    (CRC-32C of its bytes from the attributes on)."""
    from kafka.record.util import calc_crc32c

    if stop > len(buf) or stop - start < _CRC_FROM:
        return False
    (crc,) = struct.unpack_from(">I", buf, start + _CRC_AT)
    return calc_crc32c(bytes(buf[start + _CRC_FROM:stop])) == crc


def _consumer_records(make, topic: str, partition: int, leader_epoch: int, ts_type: int, recs: list) -> list:
    """kafka-python's ``ConsumerRecord`` of each decoded record of one batch, field for field.

    ``make`` is ``partial(tuple.__new__, ConsumerRecord)``: built from zipped columns, a record
    takes no Python call (0.24 µs against 0.61 through the namedtuple's own ``__new__``)."""
    n, rep = len(recs), itertools.repeat
    keys, values, headers = (list(map(f, recs)) for f in (_KEY, _VALUE, _HEADERS))
    return list(map(make, zip(rep(topic, n), rep(partition, n), rep(leader_epoch, n), map(_OFFSET, recs),
                              map(_TIMESTAMP, recs), rep(ts_type, n), keys, values, headers, rep(None, n),
                              map(_size if None in keys else len, keys),
                              map(_size if None in values else len, values),
                              map(header_size, headers) if any(headers) else rep(-1, n))))


def _size(b) -> int:
    return -1 if b is None else len(b)


def header_size(headers) -> int:
    """Bytes of a record's headers as kafka-python counts them (keys in UTF-8, a null value as none);
    -1 for no headers."""
    if not headers:
        return -1
    return sum(len(k.encode("utf-8")) + (len(v) if v is not None else 0) for k, v in headers)
