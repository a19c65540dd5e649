"""The compiled record decoder gives what kafka-python's own gives, record for record.

Each case builds a fetch response's bytes (kafka-python's batch builder, headers patched where
only a broker sets them), reads it with kafka-python's ``PartitionRecords`` and with
:mod:`stream_ae.stream.record_decoding`'s, taking records in uneven chunks, and compares every
``ConsumerRecord`` field, the next fetch offset after every take, the leader epoch and the
errors raised.
"""
from __future__ import annotations

import collections
import struct

import pytest
from kafka.consumer.fetcher import Fetcher
from kafka.errors import CorruptRecordError
from kafka.protocol.consumer import IsolationLevel
from kafka.record import MemoryRecords
from kafka.record.default_records import DefaultRecordBatchBuilder
from kafka.record.legacy_records import LegacyRecordBatchBuilder
from kafka.record.util import calc_crc32c
from kafka.serializer import Deserializer
from kafka.structs import TopicPartition

from stream_ae.stream import record_decoding

TP = TopicPartition("readings", 3)
FAST = record_decoding._build_class()
Aborted = collections.namedtuple("Aborted", "producer_id first_offset")
_CONTROL, _TRANSACTIONAL, _LOG_APPEND = 0x20, 0x10, 0x08


def batch(base_offset, records, *, offsets=None, compression=0, producer_id=-1, control=False,
          log_append_ms=None, leader_epoch=7) -> bytes:
    """One v2 record batch: ``records`` are (timestamp, key, value, headers)."""
    b = DefaultRecordBatchBuilder(magic=2, compression_type=compression, is_transactional=producer_id >= 0,
                                  producer_id=producer_id, producer_epoch=0 if producer_id >= 0 else -1,
                                  base_sequence=0 if producer_id >= 0 else -1, batch_size=1 << 24)
    for i, (ts, key, value, headers) in enumerate(records):
        b.append((offsets or range(len(records)))[i], timestamp=ts, key=key, value=value, headers=headers)
    buf = bytearray(b.build())
    struct.pack_into(">q", buf, 0, base_offset)
    struct.pack_into(">i", buf, 12, leader_epoch)
    if control or log_append_ms is not None:  # only a broker writes these: patch, then re-sign
        (attrs,) = struct.unpack_from(">h", buf, 21)
        attrs |= (_CONTROL | _TRANSACTIONAL if control else 0) | (_LOG_APPEND if log_append_ms is not None else 0)
        struct.pack_into(">h", buf, 21, attrs)
        if log_append_ms is not None:
            struct.pack_into(">q", buf, 35, log_append_ms)
        struct.pack_into(">I", buf, 17, calc_crc32c(bytes(buf[21:])))
    return bytes(buf)


def readings(n, start_ts=1_700_000_000_000, headers=()):
    return [(start_ts + i, f"e{i % 3}".encode(), b'{"entity":"e","ts":%d,"values":{"a":%d}}' % (i, i),
             list(headers)) for i in range(n)]


def control(base_offset, producer_id, commit: bool) -> bytes:
    return batch(base_offset, [(1, struct.pack(">hh", 0, 1 if commit else 0), struct.pack(">hi", 0, 0), [])],
                 producer_id=producer_id, control=True)


def read(cls, data: bytes, fetch_offset: int, sizes, **kwargs):
    """Every take's records and the state after it, until drained (or an error)."""
    part = cls(fetch_offset, TP, MemoryRecords(data), check_crcs=True, **kwargs)
    steps, i = [], 0
    while part and i < 10_000:
        try:
            got = part.take(sizes[i % len(sizes)])
        except CorruptRecordError as exc:
            steps.append(("error", str(exc).split(":")[0]))
            break
        steps.append((got, part.next_fetch_offset, bool(part), part.leader_epoch))
        i += 1
    return steps, part.records_read


def same(data: bytes, fetch_offset: int = 0, sizes=(7, 1, 1000, None), **kwargs):
    stock = read(Fetcher.PartitionRecords, data, fetch_offset, sizes, **kwargs)
    fast = read(FAST, data, fetch_offset, sizes, **kwargs)
    assert fast == stock
    return stock[0]


def records_of(steps):
    return [r for s in steps if s[0] != "error" for r in s[0]]


def test_plain_batches_in_uneven_takes():
    data = batch(0, readings(50)) + batch(50, readings(30, headers=[("source", b"plc-1"), ("empty", None)]))
    steps = same(data)
    recs = records_of(steps)
    assert [r.offset for r in recs] == list(range(80))
    assert recs[60].headers == [("source", b"plc-1"), ("empty", None)] and recs[60].serialized_header_size == 16
    assert recs[0].serialized_header_size == -1 and recs[0].topic == "readings" and recs[0].partition == 3


def test_null_keys_tombstones_and_empty_values():
    recs = [(5, None, b"{}", []), (6, b"k", None, []), (7, b"", b"", []), (8, b"k2", b"x" * 70_000, [])]
    steps = same(batch(10, recs), fetch_offset=10)
    got = records_of(steps)
    assert [(r.key, r.serialized_key_size, r.serialized_value_size) for r in got] == \
        [(None, -1, 2), (b"k", 1, -1), (b"", 0, 0), (b"k2", 2, 70_000)]


def test_fetch_from_the_middle_of_a_batch_and_compacted_offsets():
    data = batch(100, readings(10), offsets=[0, 1, 2, 4, 5, 8, 9, 12, 13, 20]) + batch(121, readings(5))
    steps = same(data, fetch_offset=105)
    assert records_of(steps)[0].offset == 105
    assert steps[-1][1] == 126  # the last batch's next offset


def test_gzip_batches_and_a_codec_only_kafka_python_decodes():
    data = batch(0, readings(40), compression=1) + batch(40, readings(3))
    same(data)
    no_codecs = record_decoding._build_class(compiled_codecs=frozenset())  # every batch: kafka-python's path
    assert read(no_codecs, data, 0, (9,)) == read(Fetcher.PartitionRecords, data, 0, (9,))


def test_log_append_time():
    steps = same(batch(0, readings(4), log_append_ms=1_800_000_000_000))
    assert {(r.timestamp, r.timestamp_type) for r in records_of(steps)} == {(1_800_000_000_000, 1)}


@pytest.mark.parametrize("committed", [True, False])
def test_transactions_under_read_committed(committed):
    data = (batch(0, readings(3)) + batch(3, readings(4), producer_id=42) + control(7, 42, commit=committed)
            + batch(8, readings(2), producer_id=42) + control(10, 42, commit=True)  # its next transaction
            + batch(11, readings(2)))
    rc = {"isolation_level": IsolationLevel.READ_COMMITTED,
          "aborted_transactions": [] if committed else [Aborted(42, 3)]}
    steps = same(data, **rc)
    assert [r.offset for r in records_of(steps)] == ([0, 1, 2, 3, 4, 5, 6, 8, 9, 11, 12] if committed
                                                     else [0, 1, 2, 8, 9, 11, 12])
    same(data)  # read_uncommitted: the aborted batch is read, the control batch never is


def test_a_truncated_last_batch_is_left_for_the_next_fetch():
    whole = batch(0, readings(5)) + batch(5, readings(5))
    steps = same(whole[:-20])
    assert [r.offset for r in records_of(steps)] == [0, 1, 2, 3, 4] and steps[-1][1] == 5


def test_legacy_message_sets_keep_kafka_pythons_reader():
    b = LegacyRecordBatchBuilder(magic=1, compression_type=0, batch_size=1 << 20)
    for i in range(4):
        b.append(i, timestamp=1_700_000_000_000 + i, key=b"k", value=b"v%d" % i)
    steps = same(bytes(b.build()))
    assert len(records_of(steps)) == 4


class _Text(Deserializer):
    def deserialize(self, topic, headers, data):
        return data.decode()


def test_install_on_a_consumer_and_its_refusals(caplog):
    from kafka import KafkaConsumer

    plain = KafkaConsumer(bootstrap_servers="localhost:1", api_version=(2, 8))
    deser = KafkaConsumer(bootstrap_servers="localhost:1", api_version=(2, 8), value_deserializer=_Text())
    try:
        assert record_decoding.install(plain)
        assert issubclass(plain._fetcher.PartitionRecords, record_decoding._partition_records_class())
        assert not record_decoding.install(deser) and deser._fetcher.PartitionRecords is Fetcher.PartitionRecords
        assert "deserializes" in caplog.text
        caplog.clear()
        stock = KafkaConsumer(bootstrap_servers="localhost:1", api_version=(2, 8))
        assert record_decoding.install(stock, "kafka-python")  # the reader stays: kafka-python decodes each batch
        assert not issubclass(stock._fetcher.PartitionRecords, record_decoding._partition_records_class())
        assert not [r for r in caplog.records if r.name == record_decoding.__name__]  # asked for: no warning
        stock.close()
    finally:
        plain.close()
        deser.close()
