"""A dead letter can always be produced: a huge key or detail is clipped like the value, and a
letter the producer still refuses as too large goes without the record's copies instead of
stopping the consumer (which then met the same record again on every restart)."""
from __future__ import annotations

from collections import namedtuple
from types import SimpleNamespace

import pytest
from kafka.errors import MessageSizeTooLargeError

from stream_ae.stream import codec
from stream_ae.stream.publisher import Publisher, send_dead_letter

Record = namedtuple("Record", "topic partition offset timestamp key value")
PRODUCER_LIMIT = 1_048_576   # kafka-python's default max_request_size


def _letter(key: bytes, value: bytes) -> codec.DeadLetter:
    ok, bad = codec.ReadingDecoder().decode([Record("readings", 3, 42, 1_700_000_000_000, key, value)])
    assert not ok
    return bad[0]


@pytest.mark.parametrize("key_len, value_len", [(600_000, 8), (320_000, 300_000)])
def test_a_huge_key_is_clipped_like_the_value(key_len, value_len):
    """Before: a 600 KB key was copied whole, and counted twice (Kafka key and base64 in the JSON)."""
    key = b"k" * key_len
    letter = _letter(key, b"x" * value_len)
    assert letter.original_key == key[:codec.KEY_MAX_BYTES]
    assert f"original_key holds the first {codec.KEY_MAX_BYTES} of its {key_len} bytes (sha256 " in letter.detail
    assert len(codec.encode_dead_letter(letter)) + len(letter.original_key) < PRODUCER_LIMIT // 2
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == ("readings", 3, 42)


def test_a_long_detail_is_clipped():
    letter = codec.dead_letter(b"{}", "unknown_channel", "channels " + "x" * 1_000_000)
    assert len(letter.detail) < codec.DETAIL_MAX_CHARS + 64 and letter.detail.endswith("more characters)")


class RefusingProducer:
    """Refuses a value over ``limit`` bytes in send(), as kafka-python does with max_request_size."""

    def __init__(self, limit):
        self.limit, self.sent = limit, []

    def send(self, topic, key=None, value=None, headers=None):
        if len(value) + len(key or b"") > self.limit:
            raise MessageSizeTooLargeError(f"{len(value)} bytes is larger than max_request_size {self.limit}")
        self.sent.append((topic, key, value))
        return SimpleNamespace(add_callback=lambda f: SimpleNamespace(add_errback=lambda g: None))


def test_a_letter_the_producer_refuses_goes_without_the_record_copies():
    letter = _letter(b"pump-1", b"x" * 200_000)     # oversized: its 200 KB copy makes a ~270 KB letter
    producer = RefusingProducer(limit=100_000)      # a cluster with a lower max_request_size
    send_dead_letter(producer, "dlq", letter)
    ((topic, key, value),) = producer.sent
    sent = codec.decode_dead_letter(value)
    assert topic == "dlq" and key is None and sent.original == b"" and sent.original_key is None
    assert (sent.reason, sent.source_partition, sent.source_offset) == ("oversized", 3, 42)
    assert "was too large to produce, so it holds neither the record's value, key nor headers" in sent.detail


def test_the_publisher_does_not_raise_on_a_letter_too_large_for_the_producer():
    metrics = SimpleNamespace(dead_letters=SimpleNamespace(labels=lambda r: SimpleNamespace(inc=lambda: None)))
    producer = RefusingProducer(limit=100_000)
    publisher = Publisher(producer, SimpleNamespace(dead_letter_topic="dlq"), checkpointer=None, metrics=metrics)
    publisher.dead_letter(_letter(b"pump-1", b"x" * 200_000))
    assert len(producer.sent) == 1 and not publisher.failed
