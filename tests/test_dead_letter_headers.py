"""A dead letter's record carries the original record's Kafka headers (a trace id, a schema id,
the producer's name): a replay from the dead-letter topic has them back. Before session 38 the
letter kept the value, key and coordinates but dropped the headers. They ride as the letter
record's own headers, not in its JSON, so the schema (``dead_letter.v1.json``) is unchanged."""
from __future__ import annotations

from collections import namedtuple
from types import SimpleNamespace

import pytest

from stream_ae.stream import codec
from stream_ae.stream.corrupt_batch import CorruptBatch
from stream_ae.stream.publisher import send_dead_letter

Record = namedtuple("Record", "topic partition offset timestamp key value headers")
HEADERS = [("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"), ("empty", None)]


class Producer:
    def __init__(self):
        self.sent = []

    def send(self, topic, key=None, value=None, headers=None):
        self.sent.append((topic, key, value, headers))
        return SimpleNamespace(add_callback=lambda f: SimpleNamespace(add_errback=lambda g: None))


def test_a_letter_built_from_a_record_keeps_its_headers_outside_its_json():
    ok, bad = codec.ReadingDecoder().decode([Record("readings", 1, 7, 1_700_000_000_000, b"k", b"{oops", HEADERS)])
    (letter,) = bad
    assert letter.headers == [HEADERS[0], ("empty", b"")]  # kafka-python sends no null header value
    wire = codec.encode_dead_letter(letter)
    assert b"traceparent" not in wire and codec.decode_dead_letter(wire) == letter  # the schema's fields only


def test_the_letter_record_carries_them_and_a_letter_without_a_record_carries_none():
    producer = Producer()
    send_dead_letter(producer, "dlq", codec.dead_letter(Record("r", 0, 3, 5, b"k", b"x", HEADERS), "malformed", "x"))
    send_dead_letter(producer, "dlq", codec.dead_letter(b"x", "malformed", "bytes alone"))
    send_dead_letter(producer, "dlq", codec.dead_letter(CorruptBatch("r", 0, 10, 12, b"\0" * 70, "failed"), "", ""))
    assert [headers for *_, headers in producer.sent] == [[HEADERS[0], ("empty", b"")], None, None]


@pytest.mark.kafka
def test_the_runner_sends_the_headers_with_the_letter(broker, topic_factory, kafka_config):
    from kafka import KafkaProducer

    from stream_ae.stream.runner import StreamRunner
    from test_stream_runner import make_artifact, make_settings, read_all, run_until, stream_topics

    topics = stream_topics(topic_factory, partitions=1)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    producer.send(topics["readings_topic"], key=b"pump-a", value=b"{not json", headers=[HEADERS[0]]).get(10)
    producer.send(topics["readings_topic"], key=b"pump-a", value=b"{no", headers=[("src", b"plc-7")]).get(10)
    producer.close()
    runner = StreamRunner(make_settings(kafka_config, topics), make_artifact(), checkpoint_interval_s=1.0)
    letters = []

    def done():
        letters[:] = read_all(broker.bootstrap, topics["dead_letter_topic"])
        return len(letters) >= 2

    run_until(runner, done)
    assert [(codec.decode_dead_letter(r.value).source_offset, r.headers) for r in letters] == [
        (0, [HEADERS[0]]), (1, [("src", b"plc-7")])]


class SizeCheckingProducer(Producer):
    """Refuses a record over ``limit`` bytes of key, value and headers in send(), as kafka-python does."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit

    def send(self, topic, key=None, value=None, headers=None):
        from kafka.errors import MessageSizeTooLargeError

        size = len(value) + len(key or b"") + sum(len(k) + len(v) for k, v in headers or ())
        if size > self.limit:
            raise MessageSizeTooLargeError(f"{size} bytes is larger than max_request_size {self.limit}")
        return super().send(topic, key, value, headers)


def test_headers_too_large_for_the_producer_are_left_off_before_the_value_and_key():
    """A 600 KB header beside a 250 KB value fits a 900 KB request; its letter with both does not (the
    value is base64 there). Before, the fallback dropped the value and the key too, though the letter
    fit without the headers."""
    big = [("trace-dump", b"h" * 600_000)]
    producer = SizeCheckingProducer(limit=900_000)
    record = Record("r", 0, 3, 5, b"k", b"x" * 250_000, big)
    send_dead_letter(producer, "dlq", codec.dead_letter(record, "malformed", "x"))
    ((_, key, value, headers),) = producer.sent
    sent = codec.decode_dead_letter(value)
    assert key == b"k" and sent.original == b"x" * 250_000 and headers is None
    assert "the record's headers (1, 600010 bytes) made this letter too large" in sent.detail
