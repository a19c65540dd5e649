"""Reading a checkpoint back: what a consumer needs to take over readings partitions.

The write side, and why the protocol is built as it is: ``checkpoint.py``.

On assignment of partition ``p``: read state partition ``p`` from the beginning up to the
fetch high-watermark (``end_offsets`` is wrong on Tansu), keep the last value per key,
restore those entities; then read the alerts topic from the stored alerts offsets to its
end and hand the ``event_id`` s found to :meth:`Detector.suppress`, and the dead-letter topic
from its stored offsets, whose letters' sources (topic, partition, offset) the publisher
does not send again. The detector replays from the checkpointed offset, skipping readings
already in a restored state, and does not return an event that is already published. A
crash between any two steps leaves a state at least as old as the commit, so a replay
recomputes what is missing and nothing twice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from stream_ae.errors import StreamAEError
from stream_ae.stream.checkpoint import PARTITION_KEY, PartitionRecord, decode_state


def read_to_end(consumer, starts: dict, timeout_s: float = 60.0, poll_ms: int = 200) -> Iterator[Any]:
    """Yield every record of ``starts`` (TopicPartition -> offset, None = beginning) up to the
    fetch high-watermark each partition had when it was first fetched.

    ``consumer`` is a group-less KafkaConsumer used for nothing else. Raises
    :class:`StreamAEError` when the topic cannot be read within ``timeout_s``.
    """
    if not starts:
        return
    tps = list(starts)
    consumer.assign(tps)
    for tp, offset in starts.items():
        if offset is None:
            consumer.seek_to_beginning(tp)
        else:
            consumer.seek(tp, offset)
    target: dict = {}
    done: set = set()
    deadline = time.monotonic() + timeout_s
    while len(done) < len(tps):
        for tp, records in consumer.poll(timeout_ms=poll_ms, max_records=10_000).items():
            for r in records:
                if tp not in target or r.offset < target[tp]:
                    yield r
        for tp in tps:
            if tp in done:
                continue
            hw = consumer.highwater(tp)
            if hw is not None:
                target.setdefault(tp, hw)
                if consumer.position(tp) >= target[tp]:
                    done.add(tp)
                    consumer.pause(tp)
        if time.monotonic() > deadline:
            missing = sorted(f"{tp.topic}[{tp.partition}]" for tp in set(tps) - done)
            raise StreamAEError(
                f"could not read {', '.join(missing)} to the end within {timeout_s:.0f} s; "
                "check that the broker is reachable and the topic exists"
            )


@dataclass
class Restored:
    """What a readings partition's state partition held."""

    entities: dict[str, dict] = field(default_factory=dict)  # entity -> snapshot
    positions: PartitionRecord | None = None
    published: set[str] = field(default_factory=set)  # event ids on the alerts topic since then
    alerts_end: dict[int, int] = field(default_factory=dict)  # alerts partition -> high-watermark read


def read_state(consumer, state_topic: str, partitions: list[int], timeout_s: float = 60.0) -> dict[int, Restored]:
    """Last value per key of the given state partitions (tombstones delete)."""
    from kafka import TopicPartition

    latest: dict[int, dict[bytes, bytes | None]] = {p: {} for p in partitions}
    for r in read_to_end(consumer, {TopicPartition(state_topic, p): None for p in partitions}, timeout_s):
        latest[r.partition][r.key] = r.value
    out = {}
    for p, values in latest.items():
        restored = Restored()
        for key, value in values.items():
            if value is None or key is None:
                continue
            if key.startswith(PARTITION_KEY.encode()):
                rec = PartitionRecord.decode(value)
                if rec.partition == p:
                    restored.positions = rec
            else:
                restored.entities[key.decode()] = decode_state(value)
        out[p] = restored
    return out


def read_published(consumer, alerts_topic: str, starts: dict[int, int], event_id: Callable[[bytes], str | None],
                   timeout_s: float = 60.0) -> tuple[set[str], dict[int, int]]:
    """Event ids on the alerts topic from ``starts`` (alerts partition -> offset) to the end,
    and the offset each partition was read to."""
    from kafka import TopicPartition

    ids: set[str] = set()
    ends = dict(starts)
    tps = {TopicPartition(alerts_topic, p): o for p, o in starts.items()}
    for r in read_to_end(consumer, tps, timeout_s):
        ends[r.partition] = max(ends.get(r.partition, 0), r.offset + 1)
        eid = event_id(r.value) if r.value is not None else None
        if eid is not None:
            ids.add(eid)
    for tp in tps:
        hw = consumer.highwater(tp)
        if hw is not None:
            ends[tp.partition] = max(ends[tp.partition], hw)
    return ids, ends


def _output_starts(reader, topic: str, restored: dict[int, Restored], offsets_of) -> dict[int, int]:
    """Per partition of an output topic, the oldest offset the restored checkpoints stored
    (``offsets_of(PartitionRecord)``); 0 where a partition has no checkpoint."""
    starts: dict[int, int] = {}
    for q in sorted(reader.partitions_for_topic(topic) or ()):
        for r in restored.values():
            start = offsets_of(r.positions).get(q, 0) if r.positions is not None else 0
            starts[q] = min(starts.get(q, start), start)
    return starts


def recover(reader, state_topic: str, alerts_topic: str, partitions: list[int],
            event_id: Callable[[bytes], str | None], timeout_s: float = 60.0,
            dead_letter_topic: str | None = None, letter_id: Callable[[bytes], Any] | None = None):
    """Everything a consumer needs to take over readings ``partitions``.

    Returns the restored state per partition, the event ids published since the oldest of
    their checkpoints (a partition without a checkpoint reads the alerts topic from the
    beginning), and the alerts offsets read to; with ``dead_letter_topic``, also the ids
    (``letter_id``) of the dead letters published since then and the offsets read to.
    """
    state_parts = reader.partitions_for_topic(state_topic) or set()
    if not set(partitions) <= state_parts:
        raise StreamAEError(
            f"state topic {state_topic!r} has partitions {sorted(state_parts)} but readings partitions "
            f"{sorted(partitions)} are assigned; create it with as many partitions as the readings topic")
    restored = read_state(reader, state_topic, partitions, timeout_s)
    starts = _output_starts(reader, alerts_topic, restored, lambda rec: rec.alerts_offsets)
    published, ends = read_published(reader, alerts_topic, starts, event_id, timeout_s)
    if dead_letter_topic is None:
        return restored, published, ends
    starts = _output_starts(reader, dead_letter_topic, restored, lambda rec: rec.dead_letter_offsets)
    letters, letter_ends = read_published(reader, dead_letter_topic, starts, letter_id, timeout_s)
    return restored, published, ends, letters, letter_ends


def take_over(settings, partitions: list[int]):
    """:func:`recover` of readings ``partitions`` through a group-less consumer of its own,
    with the service's topics and codec: ``(restored, published, alerts_ends, letters, letter_ends)``."""
    from kafka import KafkaConsumer

    from stream_ae.stream import codec

    k = settings.kafka
    reader = KafkaConsumer(**{**settings.kafka_client_kwargs("consumer"), "group_id": None,
                              "enable_auto_commit": False, "fetch_max_wait_ms": 50})
    try:
        return recover(reader, k.state_topic, k.alerts_topic, partitions, codec.alert_event_id,
                       dead_letter_topic=k.dead_letter_topic, letter_id=codec.dead_letter_id)
    finally:
        reader.close()
