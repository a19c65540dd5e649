"""Recovery protocol: entity state on a state topic, replay positions beside it.

Why not transactions or commit metadata: the embedded broker (Tansu) leaves aborted
records visible and drops offset-commit metadata (``../shared/KAFKA.md``), so exactly-once
output rests on the state topic and on deterministic event ids instead.

The state topic has as many partitions as the readings topic (compacted on real Kafka; a
reader keeps the last value per key, so an uncompacted topic works too). The snapshot of
an entity whose last reading came from readings partition ``p`` is written to state
partition ``p`` explicitly (not through the key hash), keyed by the entity id.

A checkpoint, between micro-batches (every ``checkpoint_interval_s``, counted from the last
checkpoint or restore; on revoke; on shutdown), once the batches in flight are finished:

1. on the poll loop, take a snapshot of every entity changed since the last checkpoint and one
   record per assigned readings partition, key ``__partition__/<p>``, holding the next
   readings offset, the alerts-topic and dead-letter-topic offsets (per partition of each)
   acknowledged so far and the consumer's drift watch (``drift_watch.py``; the same few hundred
   bytes in each of its partitions' records); the poll loop goes on;
2. on the checkpoint thread: flush the producer, so every alert and dead letter produced
   before the snapshot is acknowledged (if any failed, stop: no state goes out that assumes
   it published); then write the records and flush;
3. back on the poll loop, once that is done, commit the readings offsets (asynchronously but
   for the last one: a partition resumes from its state record's offset, so the group's
   commit is only a fallback for a partition that has no checkpoint yet).

The stored output offsets are lower bounds on where anything produced after the snapshot
lands (an alert still in flight at the snapshot lands at or after them), so a restore that
reads the alerts topic from them finds every event the replay derives again, and perhaps a
few the state already holds. One checkpoint is written at a time, from one thread, so each
state partition receives the records in checkpoint order.

On assignment of partition ``p``: read state partition ``p`` from the beginning up to the
fetch high-watermark (``end_offsets`` is wrong on Tansu), keep the last value per key,
restore those entities; then read the alerts topic from the stored alerts offsets to its
end and hand the ``event_id`` s found to :meth:`Detector.suppress`, and the dead-letter topic
from its stored offsets, whose letters' sources (topic, partition, offset) the publisher
does not send again. The detector replays
from the checkpointed offset, skipping readings already in a restored state, and does not
return an event that is already published. A crash between any two steps leaves a state
at least as old as the commit, so a replay recomputes what is missing and nothing twice.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import msgspec
import numpy as np

from stream_ae.errors import StreamAEError

log = logging.getLogger(__name__)

PARTITION_KEY = "__partition__/"  # the decoder refuses entity ids that start so (columns.py)
FORMAT = 1


def _numpy_scalar(obj):
    """msgspec's hook for what it does not encode itself: a numpy scalar becomes its Python value."""
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"a snapshot holds a {type(obj).__name__}, which cannot be encoded")


_ENCODER = msgspec.msgpack.Encoder(enc_hook=_numpy_scalar)


def encode_state(d: dict) -> bytes:
    """MessagePack bytes of a snapshot; NaN and inf (forward-fill state) survive the round trip.

    A checkpoint encodes every changed entity on the poll loop, so the codec matters: for the
    16 entities of the stream benchmark (~20 KB of JSON each, mostly the windower's tail and
    the threshold's peaks), ``json.dumps`` took 8.6 ms a checkpoint and msgspec's MessagePack
    0.1 ms, at half the bytes.

    >>> decode_state(encode_state({"last": [float("nan"), 1.0]}))["last"][1]
    1.0
    """
    return _ENCODER.encode(d)


def decode_state(data: bytes) -> dict:
    """Inverse of :func:`encode_state`; also reads the JSON snapshots of earlier versions
    (a JSON object starts with ``{``, which no MessagePack map does).

    >>> decode_state(b'{"windows": 3, "last": NaN}')["windows"]
    3
    """
    if data[:1] == b"{":
        return json.loads(data)
    return msgspec.msgpack.decode(data)


def partition_key(p: int) -> bytes:
    """Key of the replay-position record of readings partition ``p``.

    >>> partition_key(3)
    b'__partition__/3'
    """
    return f"{PARTITION_KEY}{p}".encode()


@dataclass
class PartitionRecord:
    """Replay positions of one readings partition as of a checkpoint."""

    partition: int
    next_offset: int  # next readings offset not in the state
    alerts_offsets: dict[int, int] = field(default_factory=dict)  # alerts partition -> offset
    written_at: float = 0.0
    drift: dict | None = None  # the writer's DriftWatch.state() (records before it: none)
    dead_letter_offsets: dict[int, int] = field(default_factory=dict)  # dead-letter partition -> offset

    def encode(self) -> bytes:
        return encode_state({"format": FORMAT, "partition": self.partition, "next_offset": self.next_offset,
                             "alerts_offsets": {str(k): v for k, v in self.alerts_offsets.items()},
                             "written_at": self.written_at, "drift": self.drift,
                             "dead_letter_offsets": {str(k): v for k, v in self.dead_letter_offsets.items()}})

    @classmethod
    def decode(cls, data: bytes) -> "PartitionRecord":
        d = decode_state(data)
        return cls(int(d["partition"]), int(d["next_offset"]),
                   {int(k): int(v) for k, v in d["alerts_offsets"].items()}, float(d.get("written_at", 0.0)),
                   d.get("drift"), {int(k): int(v) for k, v in d.get("dead_letter_offsets", {}).items()})


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


class Checkpointer:
    """Writes checkpoints through the runner's producer and tracks the output positions.

    ``alerts_offsets`` (``dead_letter_offsets``) is a lower bound, per partition of the alerts
    (dead-letter) topic, on where anything produced after the current moment can land: the end
    seen on restore, raised by every acknowledged alert (letter). ``output_failed`` says whether
    an alert or dead letter failed to be produced (``Publisher.failed``).
    """

    def __init__(self, producer, state_topic: str, interval_s: float, clock=time.monotonic,
                 output_failed: Callable[[], bool] = lambda: False):
        self.producer = producer
        self.state_topic = state_topic
        self.interval_s = float(interval_s)
        self.alerts_offsets: dict[int, int] = {}
        self.dead_letter_offsets: dict[int, int] = {}
        self.output_failed = output_failed
        self._clock = clock
        self._last = clock()
        self._thread: ThreadPoolExecutor | None = None
        self.count = 0

    def due(self) -> bool:
        return self._clock() - self._last >= self.interval_s

    def alert_acked(self, partition: int, offset: int) -> None:
        """Called from the producer's delivery callback for every alert."""
        _advance(self.alerts_offsets, partition, offset + 1)

    def letter_acked(self, partition: int, offset: int) -> None:
        """Called from the producer's delivery callback for every dead letter."""
        _advance(self.dead_letter_offsets, partition, offset + 1)

    def restored(self, ends: dict[int, int], letter_ends: dict[int, int] | None = None) -> None:
        """After a restore: the alerts topic was read to ``ends`` (the dead-letter topic to
        ``letter_ends``), and the interval starts over. The state was just read back, so the
        next checkpoint is due an interval from now rather than at once (the interval would
        otherwise count from start-up, before the group join)."""
        for p, o in ends.items():
            _advance(self.alerts_offsets, p, o)
        for p, o in (letter_ends or {}).items():
            _advance(self.dead_letter_offsets, p, o)
        self._last = self._clock()

    def begin(self, table, next_offsets: dict[int, int], drift: dict | None = None) -> tuple[float, Future]:
        """Step 1 on the calling thread (the poll loop): the snapshot of the entities ``table``
        (``EntityTable``) holds changed and of the positions (with ``drift``, the drift watch's
        state); step 2 on the checkpoint thread. The caller commits once the future is done.

        Returns how long the snapshot held the caller (with thousands of entities, a tenth of
        a second) and the write's future: ``(seconds from the snapshot until every record was
        acknowledged, entity states written)``, or the producer's error. Call it again only
        once the previous future is done (the caller waits: records must land in order)."""
        started = time.perf_counter()
        states = table.take_dirty()  # entity -> (readings partition or -1, encoded snapshot)
        now = time.time()
        positions = {p: PartitionRecord(p, offset, dict(self.alerts_offsets), now, drift,
                                        dict(self.dead_letter_offsets)).encode()
                     for p, offset in next_offsets.items()}
        self._last = self._clock()
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="stream-ae-checkpoint")
        write = self._thread.submit(self._write, states, positions, started)
        return time.perf_counter() - started, write

    def _write(self, states: dict[str, tuple[int, bytes]], positions: dict[int, bytes],
               started: float) -> tuple[float, int]:
        """Step 2, on the checkpoint thread."""
        self.producer.flush()  # everything produced before the snapshot is acknowledged (callbacks ran)
        if self.output_failed():
            raise StreamAEError("an alert or dead letter could not be produced; no state is written "
                                "after it (a restart replays from the last checkpoint)")
        futures = [self.producer.send(self.state_topic, key=entity.encode(), value=value,
                                      partition=p if p >= 0 else None)
                   for entity, (p, value) in states.items()]
        futures += [self.producer.send(self.state_topic, key=partition_key(p), value=value, partition=p)
                    for p, value in positions.items()]
        self.producer.flush()
        for f in futures:  # raises the producer's error: the caller must not commit
            f.get(timeout=0)
        self.count += 1
        log.debug("checkpoint %d: %d entities, partitions %s", self.count, len(states), sorted(positions))
        return time.perf_counter() - started, len(states)

    def close(self) -> None:
        """Wait for a write in progress and stop the checkpoint thread (before the producer closes)."""
        if self._thread is not None:
            self._thread.shutdown(wait=True)
            self._thread = None


def _advance(offsets: dict[int, int], partition: int, offset: int) -> None:
    """Raise ``offsets[partition]`` to ``offset`` (a lower bound on where the next record lands)."""
    if offset > offsets.get(partition, 0):
        offsets[partition] = offset
