"""What the stream runner produces: alert events and dead letters.

Alerts are keyed by entity on a producer with ``acks=all`` and idempotence; each
acknowledgement is handed to the checkpointer (a partition's offsets are committed only
after the alerts its readings caused are acknowledged) and observed as ingest-to-alert
latency. A produce that fails marks the publisher failed: the runner then refuses to
commit, and a restart replays from the last checkpoint.

Dead letters are acknowledged to the checkpointer too. After a restore, ``already_sent`` holds
the sources (readings topic, partition, offset) of the dead letters found on the topic since
the checkpoint; the replay derives them again, and each is dropped instead of sent twice.
"""

from __future__ import annotations

import logging
import time

from stream_ae.stream import codec
from stream_ae.stream.record_decoding import header_size

log = logging.getLogger(__name__)


class Publisher:
    """Sends alert events and dead letters on the runner's producer.

    Parameters
    ----------
    producer : kafka.KafkaProducer
        ``acks="all"``, idempotent.
    kafka : KafkaSettings
        Where to: ``alerts_topic``, ``dead_letter_topic``.
    checkpointer : Checkpointer
        Told of every alert acknowledged.
    metrics : StreamMetrics
        Counts alerts by state and dead letters by reason; observes the latency.
    """

    def __init__(self, producer, kafka, checkpointer, metrics):
        self.producer, self.kafka, self.checkpointer, self.metrics = producer, kafka, checkpointer, metrics
        self.failed = False
        self.already_sent: set[tuple[str, int, int]] = set()  # dead letters a replay must not repeat

    def alert(self, event, ingest_s: float | None) -> None:
        """Produce one alert event; ``ingest_s`` is when its reading entered Kafka (epoch s; None:
        no reading caused it, so no latency is observed)."""
        alert = codec.alert_message(event)
        ck, m = self.checkpointer, self.metrics

        def acked(md) -> None:
            ck.alert_acked(md.partition, md.offset)
            if ingest_s is not None:
                m.latency.observe(max(time.time() - ingest_s, 0.0))
            m.alerts.labels(alert.state).inc()

        self.producer.send(self.kafka.alerts_topic, key=alert.entity.encode(),
                           value=codec.encode_alert(alert)).add_callback(acked).add_errback(self._send_failed)

    def dead_letter(self, letter: codec.DeadLetter) -> None:
        """Produce one dead letter (its key is the original record's), unless a replay finds it
        already sent."""
        source = codec.dead_letter_source(letter)
        if source is not None and source in self.already_sent:
            self.already_sent.discard(source)
            return
        self.metrics.dead_letters.labels(letter.reason).inc()
        ck = self.checkpointer
        send_dead_letter(self.producer, self.kafka.dead_letter_topic, letter).add_callback(
            lambda md: ck.letter_acked(md.partition, md.offset)).add_errback(self._send_failed)

    def forget(self, partitions: set[int]) -> None:
        """Readings partitions no longer this consumer's: their replays are another's to judge
        (``already_sent`` only ever holds the readings topic's records)."""
        self.already_sent = {s for s in self.already_sent if s[1] not in partitions}

    def _send_failed(self, exc) -> None:
        log.error("a produce failed: %r; the next checkpoint will not commit", exc)
        self.failed = True


def send_dead_letter(producer, topic: str, letter: codec.DeadLetter):
    """Produce ``letter`` under its original key, with its record's headers (a null header value,
    which kafka-python cannot send, as an empty one), and return the future. A letter the producer
    refuses as too large (kafka-python checks the size in ``send``, so it raised out of the
    consume loop, and the restart met the same record) goes without the headers first, and then
    without its copies of the record's value and key too: the source topic, partition and offset
    still say where to replay it from."""
    import msgspec
    from kafka.errors import MessageSizeTooLargeError

    headers = getattr(letter, "headers", None) or None
    value = codec.encode_dead_letter(letter)
    try:
        return producer.send(topic, key=letter.original_key, value=value, headers=headers)
    except MessageSizeTooLargeError as exc:
        refused = exc
    if headers:
        size = header_size(headers)
        lighter = msgspec.structs.replace(letter, detail=(
            f"{letter.detail}; the record's headers ({len(headers)}, {size} bytes) made this letter too large "
            "to produce and were left off: replay it from the source offset for them"))
        try:
            return producer.send(topic, key=letter.original_key, value=codec.encode_dead_letter(lighter))
        except MessageSizeTooLargeError as exc:
            refused = exc
    log.warning("a %s dead letter of %d bytes is too large to produce (%s); sent without the record's "
                "value, key and headers", letter.reason, len(value), refused)
    bare = msgspec.structs.replace(letter, original=b"", original_key=None, detail=(
        f"{letter.detail}; this letter ({len(value)} bytes) was too large to produce, so it holds neither "
        "the record's value, key nor headers: replay it from the source offset"))
    return producer.send(topic, key=None, value=codec.encode_dead_letter(bare))
