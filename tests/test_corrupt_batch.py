"""A fetched record batch the client cannot read: fetched once more, then one ``corrupt_batch`` dead letter.

Before, kafka-python's ``CorruptRecordError`` (the compiled decoder: ``UnicodeDecodeError``) left
``poll()`` before any record of the batch was seen, so the service exited and every restart met the
batch again. The reader (``stream/record_decoding.py``) now hands over a ``CorruptBatch`` in its
place on the second fetch that finds it unreadable; the decoder makes it the dead letter.
"""
from __future__ import annotations

import struct

import pytest
from kafka.errors import CorruptRecordError
from kafka.record import MemoryRecords
from kafka.record.util import calc_crc32c

from stream_ae.stream import codec, record_decoding
from stream_ae.stream.batcher import MicroBatcher
from stream_ae.stream.corrupt_batch import CorruptBatch
from test_record_decoding import TP, batch, readings


def reader(compiled: bool = True):
    """A per-consumer reader class, as ``install`` makes one."""
    base = record_decoding._build_class() if compiled else record_decoding._build_class(compiled_codecs=frozenset())
    return type(base.__name__, (base,), {"unreadable": {}})


def fetch(cls, data: bytes, fetch_offset: int):
    """One fetch: every record taken, and the offset the next fetch starts at."""
    part = cls(fetch_offset, TP, MemoryRecords(data), check_crcs=True)
    got = []
    while part:
        got += part.take(1000)
    return got, part.next_fetch_offset


def crc_broken(data: bytes) -> bytes:
    bad = bytearray(data)
    bad[-3] ^= 0xFF  # a payload byte: the CRC no longer matches
    return bytes(bad)


def header_key_not_utf8(data: bytes) -> bytes:
    """A record header key that is not UTF-8 (a non-Java producer can send one), correctly signed."""
    bad = bytearray(data)
    bad[bad.find(b"zz")] = 0xFF
    struct.pack_into(">I", bad, 17, calc_crc32c(bytes(bad[21:])))
    return bytes(bad)


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("spoil, why", [(crc_broken, "failed its CRC check"),
                                        (header_key_not_utf8, "could not be decoded (")])
def test_an_unreadable_batch_is_fetched_again_then_handed_over_as_one_stand_in(compiled, spoil, why):
    good1, good2 = batch(0, readings(5)), batch(10, readings(4))
    bad = spoil(batch(5, readings(5, headers=[("zz", b"v")])))
    data, cls = good1 + bad + good2, reader(compiled)

    got, next_offset = fetch(cls, data, 0)  # the first fetch stops before it: fetched again from there
    assert [r.offset for r in got] == [0, 1, 2, 3, 4] and next_offset == 5

    got, next_offset = fetch(cls, bad + good2, 5)  # the broker's answer from offset 5
    stand_in, rest = got[0], got[1:]
    assert isinstance(stand_in, CorruptBatch) and (stand_in.first, stand_in.offset) == (5, 9)
    assert stand_in.value == bad and why in stand_in.detail and "5-9" in stand_in.detail
    assert [r.offset for r in rest] == [10, 11, 12, 13] and next_offset == 14
    assert cls.unreadable == {}


def test_a_batch_unreadable_on_one_fetch_only_is_read_as_usual():
    good = batch(0, readings(5, headers=[("zz", b"v")]))
    cls = reader()
    assert fetch(cls, crc_broken(good), 0) == ([], 0)  # a bit flipped on the way, say
    got, next_offset = fetch(cls, good, 0)
    assert [r.offset for r in got] == [0, 1, 2, 3, 4] and next_offset == 5
    assert not any(isinstance(r, CorruptBatch) for r in got)


def test_the_stand_in_is_the_same_whatever_offset_the_fetch_starts_at():
    """A fetch that starts inside the batch names the same first offset: its letter is the same letter."""
    data = crc_broken(batch(20, readings(6))) + batch(26, readings(1))[:30]  # the next batch cut short
    cls = reader()
    fetch(cls, data, 23)
    got, next_offset = fetch(cls, data, 23)
    assert (got[0].first, got[0].offset, next_offset) == (20, 25, 26)


def test_a_crc_failed_batch_ends_where_the_next_header_says_not_where_its_own_suspect_header_says():
    bad = bytearray(crc_broken(batch(0, readings(10))))
    struct.pack_into(">i", bad, 23, 200)  # its last offset delta, inside the failed CRC's span: wrong too
    cls = reader()
    fetch(cls, bytes(bad) + batch(10, readings(3)), 0)
    got, next_offset = fetch(cls, bytes(bad) + batch(10, readings(3)), 0)
    assert (got[0].first, got[0].offset) == (0, 9) and [r.offset for r in got[1:]] == [10, 11, 12]
    fetch(cls, bytes(bad), 0)
    with pytest.raises(CorruptRecordError, match="no batch after it in the fetch"):  # no guess from the delta
        fetch(cls, bytes(bad), 0)


def test_under_read_committed_a_crc_failed_batch_is_not_skipped():
    """It might be a transaction's abort marker: skipping it would read the producer's next
    committed transaction as aborted."""
    from kafka.protocol.consumer import IsolationLevel

    data = crc_broken(batch(0, readings(3))) + batch(3, readings(2))
    cls, rc = reader(), {"isolation_level": IsolationLevel.READ_COMMITTED, "aborted_transactions": []}
    cls(0, TP, MemoryRecords(data), check_crcs=True, **rc).take()
    with pytest.raises(CorruptRecordError, match="transaction marker"):
        cls(0, TP, MemoryRecords(data), check_crcs=True, **rc).take()


def test_a_good_read_forgets_the_one_failed_fetch_and_a_stand_in_before_the_fetch_offset_is_dropped():
    cls = reader()
    good = batch(0, readings(5, headers=[("zz", b"v")]))
    fetch(cls, crc_broken(good), 0)
    fetch(cls, good, 0)
    assert cls.unreadable == {}  # a later failure of this batch is fetched twice again
    data = header_key_not_utf8(good) + batch(5, readings(3))
    fetch(cls, data, 6)
    got, next_offset = fetch(cls, data, 6)  # the broker sent a batch wholly before the fetch offset
    assert [r.offset for r in got] == [6, 7] and next_offset == 8


def test_the_decoder_dead_letters_the_stand_in_and_the_batcher_ends_past_it():
    bad = crc_broken(batch(5, readings(5)))
    cls = reader()
    fetch(cls, bad + batch(10, readings(2)), 5)
    stand_in, *good = fetch(cls, bad + batch(10, readings(2)), 5)[0]
    decoder = codec.ReadingDecoder(max_bytes=64)  # smaller than the batch's bytes: the stand-in still says why
    cols, letters = decoder.decode_columns([stand_in, *good], ("a",))
    assert len(cols) == 2 and len(letters) == 1
    letter = codec.decode_dead_letter(codec.encode_dead_letter(letters[0]))  # valid on the wire
    assert letter.reason == "corrupt_batch" and letter.original == bad and "5-9" in letter.detail
    assert codec.dead_letter_source(letter) == (TP.topic, TP.partition, 5) and letter.source_timestamp_ms is None
    batcher = MicroBatcher(10, 1.0)
    batcher.add(TP.partition, [stand_in])
    assert batcher.take()[1] == {TP.partition: 10}  # a commit passes the whole batch once it is finished


def test_install_gives_each_consumer_its_own_memory_and_kafka_python_decoding_keeps_the_reader():
    from kafka import KafkaConsumer

    a = KafkaConsumer(bootstrap_servers="localhost:1", api_version=(2, 8))
    b = KafkaConsumer(bootstrap_servers="localhost:1", api_version=(2, 8))
    try:
        assert record_decoding.install(a) and record_decoding.install(b, "kafka-python")
        ra, rb = a._fetcher.PartitionRecords, b._fetcher.PartitionRecords
        assert ra.unreadable is not rb.unreadable
        bad = crc_broken(batch(0, readings(2))) + batch(2, readings(1))
        for cls in (ra, rb):
            fetch(cls, bad, 0)
            assert isinstance(fetch(cls, bad, 0)[0][0], CorruptBatch)
    finally:
        a.close()
        b.close()


def test_a_restore_without_a_checkpoint_resumes_at_the_stand_ins_first_offset_and_finds_its_letter_sent():
    """A partition taken over with no checkpoint resumes where its first polled record begins: for a
    stand-in, its batch's first offset, so the letter the crashed owner sent is not sent again."""
    from unittest import mock

    from kafka.structs import TopicPartition

    from stream_ae.stream import runner as R
    from stream_ae.stream.recovery import Restored
    from stream_ae.stream.settings import load_settings

    settings = load_settings(env={})
    topic = settings.kafka.readings_topic
    stand_in = CorruptBatch(topic, 0, 100, 109, b"\0" * 80, "failed its CRC check")
    source = codec.dead_letter_source(codec.dead_letter(stand_in, "malformed", "its bytes"))
    runner = object.__new__(R.StreamRunner)
    runner.settings, runner._to_restore, runner._next_offsets, runner._assigned = settings, {0}, {}, set()
    for name in ("_checkpointer", "_consumer", "detector", "drift", "membership", "metrics"):
        setattr(runner, name, mock.MagicMock())
    runner._commit_written = lambda block=False: None
    runner._publisher = mock.MagicMock(already_sent=set())
    with mock.patch.object(R, "take_over", return_value=({0: Restored()}, set(), {}, {source}, {})), \
            mock.patch.object(R, "by_recency", return_value=[]):
        runner._restore({TopicPartition(topic, 0): [stand_in]})
    runner._consumer.seek.assert_called_once_with(TopicPartition(topic, 0), 100)
    assert runner._publisher.already_sent == {source} and source[2] == 100
