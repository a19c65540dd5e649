"""An unreadable record batch on a real broker: the runner dead-letters it once and goes on.

A broker checks a batch's CRC when it is produced, so the test spoils one batch in every fetch
the runner's consumer receives (a byte of its payload flipped after it arrived, as a disk or a
faulty hop would). Before, ``poll()`` raised ``CorruptRecordError`` and the runner stopped there,
on every restart.
"""
from __future__ import annotations

import struct

import pytest

from stream_ae.stream import codec, record_decoding
from test_stream_runner import artifact, make_settings, plant_messages, produce, read_all, run_until, stream_topics

pytestmark = pytest.mark.kafka
__all__ = ["artifact"]  # the module fixture, shared


def spoiling(target: int, spoiled: list):
    """``record_decoding.install`` that then flips a payload byte of the batch holding offset ``target``
    in every fetch (and notes its offsets)."""
    from kafka.record import MemoryRecords

    install = record_decoding.install

    def install_and_spoil(consumer, decoder="compiled"):
        assert install(consumer, decoder)
        base = consumer._fetcher.PartitionRecords

        class Spoiled(base):
            def __init__(self, fetch_offset, tp, records, *args, **kwargs):
                buf, pos = bytearray(records._buffer), 0
                while pos + 27 <= len(buf):
                    first, length = struct.unpack_from(">qi", buf, pos)
                    last = first + struct.unpack_from(">i", buf, pos + 23)[0]
                    if first <= target <= last and pos + 12 + length <= len(buf):
                        buf[pos + 12 + length - 3] ^= 0xFF
                        spoiled.append((first, last))
                    pos += 12 + length
                super().__init__(fetch_offset, tp, MemoryRecords(bytes(buf)), *args, **kwargs)

        consumer._fetcher.PartitionRecords = Spoiled
        return True

    return install_and_spoil


def test_an_unreadable_batch_is_dead_lettered_once_and_the_partition_goes_on(
        broker, topic_factory, kafka_config, artifact, monkeypatch):
    from kafka import KafkaConsumer, TopicPartition

    from stream_ae.stream.runner import StreamRunner

    topics = stream_topics(topic_factory, partitions=1)
    messages = plant_messages()
    meta = [produce(broker.bootstrap, topics["readings_topic"], part)  # three producers: three batches at least
            for part in (messages[:600], messages[600:609], messages[609:])]
    target, end = meta[1][0].offset, meta[2][-1].offset + 1
    spoiled: list = []
    monkeypatch.setattr(record_decoding, "install", spoiling(target, spoiled))
    runner = StreamRunner(make_settings(kafka_config, topics), artifact, checkpoint_interval_s=1.0)
    run_until(runner, lambda: runner.metrics.sample("stream_ae_messages_consumed_total") >= 1 and spoiled and (
        runner.metrics.sample("stream_ae_messages_consumed_total") == end - (spoiled[0][1] - spoiled[0][0])))

    first, last = spoiled[0]
    assert first <= target <= last and len(set(spoiled)) == 1 and len(spoiled) >= 2  # fetched twice at least
    letters = [codec.decode_dead_letter(r.value) for r in read_all(broker.bootstrap, topics["dead_letter_topic"])]
    assert [(d.reason, d.source_offset) for d in letters] == [("corrupt_batch", first)]
    assert f"offsets {first}-{last}" in letters[0].detail and letters[0].source_topic == topics["readings_topic"]
    assert struct.unpack_from(">q", letters[0].original)[0] == first  # the batch's own bytes
    assert runner.metrics.sample("stream_ae_dead_letters_total", {"reason": "corrupt_batch"}) == 1
    assert read_all(broker.bootstrap, topics["alerts_topic"]), "the readings around the batch were scored"

    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=kafka_config["group_id"],
                             enable_auto_commit=False)
    try:
        assert consumer.committed(TopicPartition(topics["readings_topic"], 0)) == end
    finally:
        consumer.close()


def test_the_archiver_dead_letters_an_unreadable_batch_and_archives_the_rest(
        broker, topic_factory, kafka_config, tmp_path, monkeypatch):
    from test_archiver import _archive, _archived, _overrides, _read_all, _stream

    topic, dlq = topic_factory(partitions=1), topic_factory(partitions=1)
    msgs, expected = _stream(20, ["pump-1", "pump-2"])
    parts = (msgs[:15], msgs[15:16], msgs[16:])  # the one reading in the middle: a batch of its own
    target = [produce(broker.bootstrap, topic, part) for part in parts][1][0].offset
    spoiled: list = []
    monkeypatch.setattr(record_decoding, "install", spoiling(target, spoiled))
    report = _archive(_overrides(broker, kafka_config, topic, dlq, tmp_path / "archive"), len(msgs))

    assert set(spoiled) == {(target, target)}
    assert report.dead_letters == {"corrupt_batch": 1} and report.rows == len(msgs) - 1
    assert sorted(_archived(tmp_path / "archive")) == sorted(expected[:15] + expected[16:])
    (letter,) = _read_all(broker.bootstrap, dlq, 2, timeout_s=3.0)  # one, not two
    assert (letter.reason, letter.source_offset, letter.source_topic) == ("corrupt_batch", target, topic)
