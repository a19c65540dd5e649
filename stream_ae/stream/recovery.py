"""Reading a checkpoint back: what a consumer needs to take over readings partitions.

The write side, and why the protocol is built as it is: ``checkpoint.py``.

On assignment of partition ``p``: read state partition ``p`` from the beginning up to the
fetch high-watermark (``end_offsets`` is wrong on Tansu), fence it (``StateScan``: write a
record of a higher epoch and read up to it), keep the last value per key that no fence
rejects and a checkpoint written whole holds, restore those entities; then read the alerts
topic from the stored alerts offsets to its end and hand the ``event_id`` s found to
:meth:`Detector.suppress`, and the dead-letter topic from its stored offsets, whose letters'
sources (topic, partition, offset) the publisher does not send again. The detector replays
from the checkpointed offset, skipping readings already in a restored state, and does not
return an event that is already published. A crash between any two steps leaves a state at
least as old as the commit, so a replay recomputes what is missing and nothing twice; a
crash inside a checkpoint's write leaves entity records that the position record after them
never committed, and they are set aside (``StateScan``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from stream_ae.errors import StreamAEError
from stream_ae.stream.checkpoint import EPOCH_HEADER, FENCE_PREFIX, PARTITION_KEY, PartitionRecord, decode_state

log = logging.getLogger(__name__)


def read_to_end(consumer, starts: dict, timeout_s: float = 60.0, poll_ms: int = 200,
                ends: dict | None = None, progress: Callable[[], None] | None = None) -> Iterator[Any]:
    """Yield every record of ``starts`` (TopicPartition -> offset, None = beginning) up to the
    fetch high-watermark each partition had when it was first fetched (or up to ``ends[tp]``).

    ``consumer`` is a group-less KafkaConsumer used for nothing else. Raises
    :class:`StreamAEError` when a poll has brought nothing for ``timeout_s``: a long topic read
    at a steady pace is not cut off, a stuck one is. ``progress()`` is called after each poll
    that brought records (the service's liveness: a restore reading a large state topic is
    alive, not stalled).
    """
    if not starts:
        return
    tps = list(starts)
    consumer.assign(tps)
    consumer.resume(*tps)  # a partition paused by an earlier call
    for tp, offset in starts.items():
        if offset is None:
            consumer.seek_to_beginning(tp)
        else:
            consumer.seek(tp, offset)
    target: dict = dict(ends or {})
    done: set = set()
    deadline = time.monotonic() + timeout_s
    while len(done) < len(tps):
        polled = consumer.poll(timeout_ms=poll_ms, max_records=10_000)
        if any(polled.values()):
            deadline = time.monotonic() + timeout_s
            if progress is not None:
                progress()
        for tp, records in polled.items():
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
                f"could not read {', '.join(missing)} to the end: nothing came for {timeout_s:.0f} s; "
                "check that the broker is reachable and the topic exists"
            )


@dataclass
class Restored:
    """What a readings partition's state partition held."""

    entities: dict[str, dict] = field(default_factory=dict)  # entity -> snapshot
    positions: PartitionRecord | None = None
    published: set[str] = field(default_factory=set)  # event ids on the alerts topic since then
    alerts_end: dict[int, int] = field(default_factory=dict)  # alerts partition -> high-watermark read
    dropped: int = 0  # records a fence rejected (a zombie's)
    set_aside: int = 0  # entity records of a checkpoint whose position record never landed (StateScan)


def by_recency(restored) -> list[tuple[str, dict]]:
    """The entity snapshots of the ``Restored`` partitions, one per entity (the one with the
    latest reading, where an entity has records in several: it moved partition when the topic
    grew, and its old record stays), least recent first.

    Restored in that order, the entities read last are the ones the table keeps live under
    ``input.max_entities``. In the order the state topic held them (first written first), the
    ids of a past flood came last and pushed every long-lived entity out of the table, and a
    moved entity's stale record of another partition could replace its current one.

    >>> snap = lambda t: {"windower": {"last_ts": t}}
    >>> [e for e, _ in by_recency([Restored({"a": snap(5), "b": snap(1)}), Restored({"a": snap(3), "c": snap(None)})])]
    ['c', 'b', 'a']
    """
    newest: dict[str, dict] = {}
    for r in restored:
        for entity, snap in r.entities.items():
            if entity not in newest or _last_reading(snap) > _last_reading(newest[entity]):
                newest[entity] = snap
    return sorted(newest.items(), key=lambda item: _last_reading(item[1]))


def _last_reading(snapshot: dict) -> int:
    last = (snapshot.get("windower") or {}).get("last_ts")
    return -1 if last is None else int(last)


class StateScan:
    """One state partition read in offset order: the last value per key that no fence rejects,
    as of the last checkpoint that was written whole.

    A *fence* (``checkpoint.Checkpointer.fence``) is the record a consumer writes when it takes
    a partition over, with a higher epoch than any the partition held. A record whose epoch is
    below the highest fence before it was written by a member that had lost the partition (a
    zombie's checkpoint still in flight) and is dropped; so is a fence below it (the zombie's own).

    >>> from types import SimpleNamespace as R
    >>> from stream_ae.stream.checkpoint import epoch_after, fence_key
    >>> fence = lambda o, e: R(offset=o, key=fence_key(0, e), value=b"", headers=[(EPOCH_HEADER, e)])
    >>> rec = lambda o, k, v, e: R(offset=o, key=k, value=v, headers=[(EPOCH_HEADER, e)])
    >>> a, b = epoch_after(b"", 7), epoch_after(epoch_after(b"", 7), 8)
    >>> marker = lambda o, e: rec(o, b"__partition__/0", b"position", e)
    >>> s = StateScan(partition=0)
    >>> for r in [rec(0, b"x", b"1", a), fence(1, b), rec(2, b"x", b"2", b), marker(3, b), rec(4, b"x", b"old", a)]:
    ...     s.feed(r)
    >>> s.latest[b"x"], s.dropped, s.top == b
    (b'2', 1, True)

    A checkpoint writes a partition's entity records first and its position record
    (``__partition__/<p>``) last, so the position record is the checkpoint's commit: entity
    records after the last one are *pending*. A crash between the two leaves them behind,
    newer than the position the replay starts from; restored, they would skip readings the
    replay must see to move the partition's event time as the first run did (``silence.py``).
    At a fence and at the end of the read (:meth:`settle`), a pending record whose key has a
    committed value is set aside (kept in ``aside``), and the entity resumes from that value and
    replays; one with no committed value (an entity first written then, or whose older record
    compaction removed) is kept, as the newest state there is. A tombstone is never part of a
    checkpoint (an operator's reset of one entity): it counts at once.

    >>> s = StateScan(partition=0)
    >>> for r in [rec(0, b"x", b"1", a), marker(1, a), rec(2, b"x", b"2", a), rec(3, b"y", b"1", a)]:
    ...     s.feed(r)
    >>> s.settle(); s.latest[b"x"], s.latest[b"y"], s.aside
    (b'1', b'1', {b'x': b'2'})
    """

    def __init__(self, partition: int | None = None):
        self.latest: dict[bytes, bytes | None] = {}   # committed: up to the last position record
        self.pending: dict[bytes, bytes | None] = {}  # written since then
        self.aside: dict[bytes, bytes] = {}  # an unfinished checkpoint's records of keys with a committed value
        # the key that commits: this partition's position record (None: any partition's)
        self.commit_key = None if partition is None else f"{PARTITION_KEY}{partition}".encode()
        self.fence = b""   # the highest fence's epoch so far (b"": none, as records before fences)
        self.top = b""     # the highest epoch seen
        self.end = 0       # the next offset to read
        self.dropped = 0

    def feed(self, r) -> None:
        epoch = next((v for k, v in (r.headers or ()) if k == EPOCH_HEADER), b"")
        self.end = r.offset + 1
        self.top = max(self.top, epoch)
        if epoch < self.fence:
            self.dropped += 1
        elif r.key is not None and r.key.startswith(FENCE_PREFIX):
            self.settle()  # the previous owner is done: what it left unfinished stays so
            self.fence = epoch
        elif self._commits(r.key) or r.value is None:
            if r.value is not None:
                self._commit(self.pending)
                self.pending = {}
            self._commit({r.key: r.value})
            self.pending.pop(r.key, None)
        else:
            self.pending[r.key] = r.value

    def settle(self) -> None:
        """End an unfinished checkpoint: its records of keys with a committed value are set aside,
        the others kept."""
        for key, value in self.pending.items():
            if self.latest.get(key) is not None:  # a tombstone is no committed value
                self.aside[key] = value
            else:
                self.latest[key] = value
        self.pending = {}

    def _commit(self, values: dict) -> None:
        self.latest.update(values)
        for key in values:
            self.aside.pop(key, None)

    def _commits(self, key: bytes | None) -> bool:
        if key is None or self.commit_key is None:
            return key is not None and key.startswith(PARTITION_KEY.encode())
        return key == self.commit_key


def _takes_back(committed: dict, aside: dict, p: int, resume: dict[int, int]) -> bool:
    """Whether the set-aside snapshot of an entity in state partition ``p`` must be restored after
    all: it holds readings from another partition that the committed one lacks and that partition's
    committed resume point may be past, so no replay would deliver them again. Only an entity that
    moved partitions when the topic grew meets this; on ``p`` itself, ``p``'s position record
    committed every reading before it with the committed snapshot.

    >>> _takes_back({"offsets": {"0": 100, "1": 5}}, {"offsets": {"0": 110, "1": 8}}, 1, {0: 110, 1: 5})
    True
    >>> _takes_back({"offsets": {"1": 5}}, {"offsets": {"1": 8}}, 1, {1: 6})
    False
    """
    have = {int(q): int(o) for q, o in (committed.get("offsets") or {}).items()}
    return any(int(q) != p and int(o) > have.get(int(q), 0) and have.get(int(q), 0) < resume.get(int(q), 1 << 62)
               for q, o in (aside.get("offsets") or {}).items())


def read_state(consumer, state_topic: str, partitions: list[int], timeout_s: float = 60.0,
               fence: Callable[[dict[int, bytes]], dict[int, int]] | None = None,
               progress: Callable[[], None] | None = None) -> dict[int, Restored]:
    """Last value per key of the given state partitions (tombstones delete), fences applied.

    With ``fence``, the partitions are taken over: once they are read to their ends,
    ``fence({p: highest epoch seen})`` writes a fence to each and returns its offset, and the
    records that landed meanwhile are read up to it, so this reader's view is the one every
    later reader gets."""
    from kafka import TopicPartition

    scans = {p: StateScan(partition=p) for p in partitions}
    for r in read_to_end(consumer, {TopicPartition(state_topic, p): None for p in partitions}, timeout_s,
                         progress=progress):
        scans[r.partition].feed(r)
    if fence is not None:
        fences = fence({p: scan.top for p, scan in scans.items()})
        tps = {TopicPartition(state_topic, p): scans[p].end for p in partitions}
        for r in read_to_end(consumer, tps, timeout_s, ends={tp: fences[tp.partition] + 1 for tp in tps},
                             progress=progress):
            scans[r.partition].feed(r)
    out = {}
    for p, scan in scans.items():
        scan.settle()
        restored = Restored(dropped=scan.dropped)
        for key, value in scan.latest.items():
            if value is None or key is None:
                continue
            if key.startswith(PARTITION_KEY.encode()):
                rec = PartitionRecord.decode(value)
                if rec.partition == p:
                    restored.positions = rec
            else:
                restored.entities[key.decode()] = decode_state(value)
        out[p] = restored
    resume = {p: r.positions.next_offset for p, r in out.items() if r.positions is not None}
    for p, scan in scans.items():
        for key, value in scan.aside.items():
            entity, aside = key.decode(), decode_state(value)
            if entity in out[p].entities and _takes_back(out[p].entities[entity], aside, p, resume):
                out[p].entities[entity] = aside
            else:
                out[p].set_aside += 1
        if out[p].set_aside:
            log.warning("state partition %d: %d entity records of a checkpoint cut short (its position record "
                        "never landed: a crash mid-write) set aside; those entities resume from the checkpoint "
                        "before it and replay", p, out[p].set_aside)
    return out


def read_published(consumer, alerts_topic: str, starts: dict[int, int], event_id: Callable[[bytes], str | None],
                   timeout_s: float = 60.0, progress: Callable[[], None] | None = None, values: bool = False
                   ) -> tuple[set[str] | dict[str, bytes], dict[int, int]]:
    """Event ids on the alerts topic from ``starts`` (alerts partition -> offset) to the end
    (``values``: id -> the record's value), and the offset each partition was read to."""
    from kafka import TopicPartition

    ids: set[str] | dict[str, bytes] = {} if values else set()
    ends = dict(starts)
    tps = {TopicPartition(alerts_topic, p): o for p, o in starts.items()}
    for r in read_to_end(consumer, tps, timeout_s, progress=progress):
        ends[r.partition] = max(ends.get(r.partition, 0), r.offset + 1)
        eid = event_id(r.value) if r.value is not None else None
        if eid is not None and values:
            ids[eid] = r.value
        elif eid is not None:
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
            dead_letter_topic: str | None = None, letter_id: Callable[[bytes], Any] | None = None,
            fence: Callable[[dict[int, bytes]], dict[int, int]] | None = None,
            progress: Callable[[], None] | None = None):
    """Everything a consumer needs to take over readings ``partitions`` (``progress``: see
    :func:`read_to_end`).

    Returns the restored state per partition, the events published since the oldest of their
    checkpoints as event id -> the record's value (a partition without a checkpoint reads the
    alerts topic from the beginning), and the alerts offsets read to; with ``dead_letter_topic``, also the ids
    (``letter_id``) of the dead letters published since then and the offsets read to.
    """
    state_parts = reader.partitions_for_topic(state_topic) or set()
    if not set(partitions) <= state_parts:
        raise StreamAEError(
            f"state topic {state_topic!r} has partitions {sorted(state_parts)} but readings partitions "
            f"{sorted(partitions)} are assigned; create it with as many partitions as the readings topic")
    restored = read_state(reader, state_topic, partitions, timeout_s, fence, progress)
    starts = _output_starts(reader, alerts_topic, restored, lambda rec: rec.alerts_offsets)
    published, ends = read_published(reader, alerts_topic, starts, event_id, timeout_s, progress, values=True)
    if dead_letter_topic is None:
        return restored, published, ends
    starts = _output_starts(reader, dead_letter_topic, restored, lambda rec: rec.dead_letter_offsets)
    letters, letter_ends = read_published(reader, dead_letter_topic, starts, letter_id, timeout_s, progress)
    return restored, published, ends, letters, letter_ends


def take_over(settings, partitions: list[int], fence=None, progress=None):
    """:func:`recover` of readings ``partitions`` through a group-less consumer of its own,
    with the service's topics and codec (``fence``: see :func:`read_state`; ``progress``:
    :func:`read_to_end`):
    ``(restored, published, alerts_ends, letters, letter_ends)``."""
    from kafka import KafkaConsumer

    from stream_ae.stream import codec

    k = settings.kafka
    reader = KafkaConsumer(**{**settings.kafka_client_kwargs("consumer"), "group_id": None,
                              "enable_auto_commit": False, "fetch_max_wait_ms": 50})
    try:
        return recover(reader, k.state_topic, k.alerts_topic, partitions, codec.alert_event_id,
                       dead_letter_topic=k.dead_letter_topic, letter_id=codec.dead_letter_id, fence=fence,
                       progress=progress)
    finally:
        reader.close()
