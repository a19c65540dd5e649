"""A batch header changed outside the CRC: its magic byte, or its length shorter than a header.

The v2 CRC covers a batch from its attributes on; the base offset, the length, the leader epoch
and the magic byte come before. Before, a magic byte that changed to 0 or 1 made kafka-python
read the batch as a pre-0.11 message set, whose own CRC then failed, and any other value made
the reader give the whole fetch to kafka-python's reader: either way ``poll()`` raised on every
fetch, and the service stopped on every restart. A length shorter than a header made it raise
``struct.error`` (or a bare size complaint), as uninformative. Now a changed magic byte is one
more unreadable batch (fetched again, then one ``corrupt_batch`` stand-in over the offsets its
own CRC-covered span gives), and a short length, which leaves where the batch ends unknown,
raises kafka-python's ``CorruptRecordError`` saying so and what to do.
"""
from __future__ import annotations

import struct

import pytest
from kafka.consumer.fetcher import Fetcher
from kafka.errors import CorruptRecordError
from kafka.protocol.consumer import IsolationLevel
from kafka.record import MemoryRecords
from kafka.record.legacy_records import LegacyRecordBatchBuilder

from stream_ae.stream.corrupt_batch import CorruptBatch
from test_corrupt_batch import crc_broken, fetch, header_key_not_utf8, reader
from test_record_decoding import TP, Aborted, batch, control, readings


def _read(cls, data: bytes, fetch_offset: int, **kwargs) -> list:
    part = cls(fetch_offset, TP, MemoryRecords(data), **{"check_crcs": True, **kwargs})
    got = []
    while part:
        got += part.take(1000)
    return got


def _with_magic(data: bytes, magic: int) -> bytes:
    bad = bytearray(data)
    bad[16] = magic
    return bytes(bad)


def _with_length(data: bytes, length: int) -> bytes:
    bad = bytearray(data)
    struct.pack_into(">i", bad, 8, length)
    return bytes(bad)


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("magic", [0, 1, 3, 0x82])
def test_a_changed_magic_byte_is_fetched_again_then_dead_lettered_over_its_own_span(magic, compiled):
    good1, good2 = batch(0, readings(5)), batch(10, readings(4))
    bad = _with_magic(batch(5, readings(5)), magic)
    cls = reader(compiled)

    got, next_offset = fetch(cls, good1 + bad + good2, 0)
    assert [r.offset for r in got] == [0, 1, 2, 3, 4] and next_offset == 5

    got, next_offset = fetch(cls, bad + good2, 5)
    stand_in, rest = got[0], got[1:]
    assert isinstance(stand_in, CorruptBatch) and (stand_in.first, stand_in.offset) == (5, 9)
    assert f"has magic byte {magic}" in stand_in.detail and stand_in.value == bad
    assert [r.offset for r in rest] == [10, 11, 12, 13] and next_offset == 14


def test_a_changed_magic_byte_on_a_batch_that_also_fails_its_crc_takes_the_crc_rule():
    """Its span is then suspect: it ends at the next header, which passes its own CRC."""
    good2 = batch(10, readings(4))
    bad = crc_broken(_with_magic(batch(5, readings(5)), 3))
    cls = reader()
    assert fetch(cls, bad + good2, 5)[0] == []
    got, next_offset = fetch(cls, bad + good2, 5)
    assert (got[0].first, got[0].offset) == (5, 9) and "failed its CRC check" in got[0].detail
    assert next_offset == 14


def test_a_magic_byte_of_0_or_1_on_what_fails_a_v2_crc_is_left_to_kafka_pythons_reader():
    """Nothing tells it from a pre-0.11 message set whose CRC failed: that reader's error, as before."""
    bad = crc_broken(_with_magic(batch(5, readings(5)), 1))
    with pytest.raises(CorruptRecordError, match="failed crc check"):
        fetch(reader(), bad + batch(10, readings(4)), 5)


def test_a_pre_0_11_message_set_whose_crc_fails_reads_as_kafka_pythons_reader_reads_it():
    """Small v0/v1 messages have lengths under a v2 header's: not taken for a short length."""
    legacy = LegacyRecordBatchBuilder(magic=1, compression_type=0, batch_size=1 << 20)
    for i in range(4):
        legacy.append(i, timestamp=1_700_000_000_000 + i, key=b"k", value=b"v%d" % i)
    bad = bytearray(legacy.build())
    bad[30] ^= 0xFF  # inside the first message: its CRC fails
    for cls in (Fetcher.PartitionRecords, reader()):  # kafka-python's reader, and the fast one
        assert [r.offset for r in _read(cls, bytes(bad), 0, check_crcs=False)] == [0, 1, 2, 3]
    with pytest.raises(CorruptRecordError, match="failed crc check"):
        fetch(reader(), bytes(bad), 0)


def test_under_read_committed_an_abort_marker_whose_magic_byte_changed_still_ends_its_transaction():
    """The marker's fields inside the CRC hold: it is read as a marker, so the producer's next
    transaction, committed, is read (a dead-lettered marker left the producer aborted)."""
    def offsets(cls, marker):
        data = (batch(0, readings(3), producer_id=42) + marker + batch(4, readings(2), producer_id=42)
                + control(6, 42, commit=True) + batch(7, readings(2)))
        return [r.offset for r in _read(cls, data, 0, isolation_level=IsolationLevel.READ_COMMITTED,
                                        aborted_transactions=[Aborted(42, 0)])]

    assert offsets(Fetcher.PartitionRecords, control(3, 42, commit=False)) == [4, 5, 7, 8]
    assert offsets(reader(), _with_magic(control(3, 42, commit=False), 1)) == [4, 5, 7, 8]


def test_a_few_bytes_left_under_a_header_still_get_kafka_pythons_complaint():
    """12-16 bytes claiming a length of 0-4 at a fetch's end: its error, as before, not a silent stall."""
    tail = struct.pack(">qi", 5, 4) + bytes(4)
    with pytest.raises(CorruptRecordError, match="minimum record overhead"):
        fetch(reader(), batch(0, readings(5)) + tail, 0)


@pytest.mark.parametrize("length", [-40, 0, 10, 20, 48])
def test_a_length_shorter_than_a_header_is_fetched_again_then_stops_with_what_to_do(length):
    good1, good2 = batch(0, readings(5)), batch(10, readings(4))
    bad = _with_length(batch(5, readings(5)), length)
    cls = reader()

    got, next_offset = fetch(cls, good1 + bad + good2, 0)  # the records before it, then fetched again from it
    assert [r.offset for r in got] == [0, 1, 2, 3, 4] and next_offset == 5

    with pytest.raises(CorruptRecordError) as err:
        fetch(cls, bad + good2, 5)
    text = str(err.value)
    assert f"at offset 5 has a length field of {length} bytes" in text and "--reset-offsets" in text


def test_a_sound_fetch_after_a_short_length_found_once_reads_as_usual():
    """Found once (a fault on the way, say): the next fetch, sound, is read and forgotten."""
    good = batch(5, readings(5))
    cls = reader()
    assert fetch(cls, _with_length(good, 20), 5) == ([], 5)
    got, next_offset = fetch(cls, good, 5)
    assert [r.offset for r in got] == [5, 6, 7, 8, 9] and next_offset == 10 and cls.unreadable == {}


def test_a_few_bytes_left_under_a_header_are_complained_of_only_after_the_batch_before_them():
    """The reader looks one batch ahead: the complaint came before the last sound batch was handed
    over, and an unreadable batch just before such bytes was never dead-lettered."""
    tail = struct.pack(">qi", 10, 4) + bytes(4)
    part = reader()(0, TP, MemoryRecords(batch(0, readings(5)) + batch(5, readings(5)) + tail), check_crcs=True)
    assert [r.offset for r in part.take(1000)] == list(range(10))  # the complaint waits for the next take
    with pytest.raises(CorruptRecordError, match="minimum record overhead"):
        part.take(1000)

    cls = reader()  # records that do not decode, right before the bytes: dead-lettered, then the complaint
    bad = header_key_not_utf8(batch(5, readings(5, headers=[("zz", b"v")])))
    assert fetch(cls, bad, 5)[0] == []  # found once: fetched again
    part = cls(5, TP, MemoryRecords(bad + tail), check_crcs=True)
    got = part.take(1000)
    assert len(got) == 1 and isinstance(got[0], CorruptBatch) and (got[0].first, got[0].offset) == (5, 9)
    with pytest.raises(CorruptRecordError, match="minimum record overhead"):
        part.take(1000)
