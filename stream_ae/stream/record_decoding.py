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
  aiokafka lacks the batch's compression codec);
* builds kafka-python's ``ConsumerRecord`` for each, field for field what kafka-python gives.

Everything else (the group, fetching, positions, commits) stays kafka-python's. When the
consumer has key or value deserializers, a fetch holds a pre-v2 message set, or kafka-python's
internals are not what this was written against, the consumer keeps its own decoder
(``install`` returns False and says why in the log). ``tests/test_record_decoding.py`` compares
both decoders record for record over plain, compressed, transactional, aborted, control and
mid-batch fetches.
"""
from __future__ import annotations

import functools
import importlib
import itertools
import logging
import operator
import struct
from typing import Any

log = logging.getLogger(__name__)

_OFFSET, _TIMESTAMP, _KEY, _VALUE, _HEADERS = (operator.attrgetter(a) for a in
                                               ("offset", "timestamp", "key", "value", "headers"))


def available() -> str | None:
    """None when the compiled decoder can be used, else why not."""
    try:
        importlib.import_module("aiokafka.record._crecords.default_records")  # the compiled decoder
    except ImportError as exc:
        return f"aiokafka's compiled record decoder is not importable ({exc})"
    try:
        from kafka.consumer.fetcher import Fetcher

        if not hasattr(Fetcher, "PartitionRecords") or not hasattr(Fetcher.PartitionRecords, "take"):
            return "this kafka-python has no Fetcher.PartitionRecords.take"
    except ImportError as exc:
        return f"kafka-python's fetcher is not importable ({exc})"
    return None


def install(consumer: Any, decoder: str = "compiled") -> bool:
    """Decode the consumer's fetched batches with :class:`FastPartitionRecords`; False (and
    the consumer unchanged) when that cannot be done exactly, or ``decoder`` (the
    ``kafka.record_decoder`` setting) is ``"kafka-python"``."""
    if decoder != "compiled":
        return False
    why = available()
    fetcher = getattr(consumer, "_fetcher", None)
    if why is None and fetcher is None:
        why = "the consumer has no fetcher"
    if why is None and (fetcher.config.get("key_deserializer") or fetcher.config.get("value_deserializer")):
        why = "the consumer deserializes keys or values"
    if why is not None:
        log.warning("record batches decoded by kafka-python (slower): %s", why)
        return False
    fetcher.PartitionRecords = _partition_records_class()  # an instance attribute: this consumer only
    return True


@functools.cache
def _partition_records_class():
    return _build_class()


def _build_class(compiled_codecs: frozenset[int] | None = None):
    """The reader class; ``compiled_codecs``: compression types aiokafka decodes (default: all it
    can here; 0 is none). The others take kafka-python's own batch decoder."""
    import aiokafka.codec as acodec
    import kafka.errors as Errors
    from aiokafka.errors import KafkaError as AioKafkaError
    from aiokafka.record._crecords import DefaultRecordBatch as CBatch
    from kafka.consumer.fetcher import ConsumerRecord, Fetcher
    from kafka.protocol.consumer import IsolationLevel
    from kafka.record.default_records import DefaultRecordBatch as PyBatch

    if compiled_codecs is None:
        compiled_codecs = frozenset(c for c, ok in ((PyBatch.CODEC_NONE, True), (PyBatch.CODEC_GZIP, acodec.has_gzip()),
                                                    (PyBatch.CODEC_SNAPPY, acodec.has_snappy()),
                                                    (PyBatch.CODEC_LZ4, acodec.has_lz4()),
                                                    (PyBatch.CODEC_ZSTD, acodec.has_zstd())) if ok)
    read_committed = IsolationLevel.READ_COMMITTED

    class FastPartitionRecords(Fetcher.PartitionRecords):
        """kafka-python's ``PartitionRecords`` with each batch's records decoded in one C pass."""

        def __init__(self, fetch_offset, tp, records, *args, **kwargs):
            super().__init__(fetch_offset, tp, records, *args, **kwargs)  # its iterator is never run
            self._pending: list = []  # decoded records of the current batch not yet taken
            self._at = 0
            self._fast = _all_v2(records)
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
            batch = records.next_batch()
            last_batch = None
            topic, partition = tp.topic, tp.partition
            while batch is not None:
                last_batch = batch
                if self.check_crcs and not batch.validate_crc():
                    raise Errors.CorruptRecordError(
                        "Record batch for partition %s at offset %s failed crc check"
                        % (self.topic_partition, batch.base_offset))
                self.leader_epoch = batch.leader_epoch
                if self.isolation_level == read_committed and batch.has_producer_id():
                    self._consume_aborted_transactions_up_to(batch.last_offset)
                    producer_id = batch.producer_id
                    if self._contains_abort_marker(batch):
                        self.aborted_producer_ids.discard(producer_id)
                    elif self._is_batch_aborted(batch):
                        self.next_fetch_offset = batch.next_offset
                        batch = records.next_batch()
                        continue
                if batch.is_control_batch:
                    self.next_fetch_offset = batch.next_offset
                    batch = records.next_batch()
                    continue
                try:
                    recs = list(CBatch(batch._buffer)) if batch.compression_type in compiled_codecs else list(batch)
                except AioKafkaError as exc:  # kafka-python's error, as its own decoder raises
                    raise Errors.CorruptRecordError(
                        "Record batch for partition %s at offset %s: %s"
                        % (self.topic_partition, batch.base_offset, exc)) from exc
                self.records_read += len(recs)
                if recs and recs[0].offset < self.fetch_offset:  # a batch fetched from its middle
                    recs = [r for r in recs if r.offset >= self.fetch_offset]
                self.bytes_read += batch.size_in_bytes
                if recs:
                    n = len(recs)
                    keys, values, headers = (list(map(f, recs)) for f in (_KEY, _VALUE, _HEADERS))
                    ts_type = batch.timestamp_type
                    yield list(map(ConsumerRecord, itertools.repeat(topic, n), itertools.repeat(partition, n),
                                   itertools.repeat(self.leader_epoch, n), map(_OFFSET, recs),
                                   map(_TIMESTAMP, recs), itertools.repeat(ts_type, n), keys, values, headers,
                                   itertools.repeat(None, n), map(_size, keys), map(_size, values),
                                   map(_header_size, headers)))
                else:
                    yield []
                batch = records.next_batch()
            if last_batch is not None and last_batch.magic == 2:
                self.next_fetch_offset = last_batch.next_offset
            self.drain()

    return FastPartitionRecords


def _all_v2(records) -> bool:
    """True when every batch of a fetched ``MemoryRecords`` is message format v2 (read from the
    headers alone; the reader is left where it was)."""
    buf = getattr(records, "_buffer", None)
    if not isinstance(buf, (bytes, bytearray, memoryview)):
        return False  # not the MemoryRecords this was written against: kafka-python's reader
    pos, size = 0, len(buf)
    while pos + 17 <= size:
        length, magic = struct.unpack_from(">i", buf, pos + 8)[0], buf[pos + 16]
        if magic != 2 or length < 0:  # a corrupt length: kafka-python's reader says what is wrong
            return False
        pos += 12 + length
    return True


def _size(b) -> int:
    return -1 if b is None else len(b)


def _header_size(headers) -> int:
    if not headers:
        return -1
    return sum(len(k.encode("utf-8")) + (len(v) if v is not None else 0) for k, v in headers)
