"""Fences: a checkpoint still in flight from a member the group evicted is ignored by every restore.

The window this closes: member A's checkpoint thread has handed its records to the producer
when the whole process freezes (a paused VM, SIGSTOP). The group evicts A and member B restores
the partition, scores on and checkpoints. When A wakes, its producer sends the rest of the
write, after B's records. Before fences, the next restore took A's older records as the last
value of their keys, and an entity's state went back to what it was at A's snapshot
(``membership.py``'s guard stops A only before a send, not a send already under way).

Now B, on taking the partition over, writes a fence of a higher epoch and reads up to it
(``recovery.read_state``); its records carry that epoch, and a reader drops a record whose
epoch is below a fence before it (``recovery.StateScan``).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from stream_ae.stream.checkpoint import (
    EPOCH_HEADER, FENCE_PREFIX, PARTITION_KEY, Checkpointer, PartitionRecord, encode_state, epoch_after,
    fence_key, fence_value)
from stream_ae.stream.recovery import StateScan, read_state
from test_stream_runner import read_all


def record(offset: int, key: bytes, value: bytes | None, epoch: bytes | None):
    return SimpleNamespace(offset=offset, key=key, value=value,
                           headers=[] if epoch is None else [(EPOCH_HEADER, epoch)])


def fence(offset: int, epoch: bytes, p: int = 0):
    return record(offset, fence_key(p, epoch), fence_value(), epoch)


def position(offset: int, epoch: bytes | None, p: int = 0):
    """The position record that ends each checkpoint of partition ``p`` (its commit: ``StateScan``)."""
    return record(offset, f"{PARTITION_KEY}{p}".encode(), PartitionRecord(p, offset).encode(), epoch)


def scan(records) -> StateScan:
    s = StateScan(partition=0)
    for r in records:
        s.feed(r)
    s.settle()
    return s


A = epoch_after(b"", generation=4)      # member A took the partition over at generation 4
B = epoch_after(A, generation=6)        # then B, at generation 6
C = epoch_after(A, generation=7)        # ... or C, when B's fence had not landed before C read


def test_a_zombies_record_after_the_new_owners_fence_is_dropped_and_the_newer_value_stands():
    s = scan([record(0, b"x", b"a1", A), record(1, b"y", b"a1", A), position(2, A),
              fence(3, B), record(4, b"x", b"b1", B), position(5, B),
              record(6, b"x", b"a2", A), record(7, b"y", b"a2", A), position(8, A)])  # A's write, landing late
    assert {k: v for k, v in s.latest.items() if k != b"__partition__/0"} == {b"x": b"b1", b"y": b"a1"}
    assert s.dropped == 3 and s.top == B and PartitionRecord.decode(s.latest[b"__partition__/0"]).next_offset == 5


def test_records_that_landed_before_the_fence_are_kept_and_records_of_earlier_versions_too():
    """What lands between B's read and B's fence is before the fence: B reads up to its fence,
    so B restores it, and so does every later reader. Records with no epoch (written before
    fences existed) are older than any fence and count only where no fence comes before them."""
    s = scan([record(0, b"x", b"old", None), record(1, b"p", b"old", None), position(2, None),
              fence(3, A), record(4, b"x", b"a1", A), record(5, b"y", b"a1", A), position(6, A),  # after B read to 6
              fence(7, B), record(8, b"p", b"late", None)])
    assert {k: v for k, v in s.latest.items() if k != b"__partition__/0"} == \
        {b"x": b"a1", b"y": b"a1", b"p": b"old"} and s.dropped == 1


def test_a_zombies_own_fence_landing_after_the_new_owners_is_dropped():
    """B stalled inside its restore, between reading and fencing; C read the same highest epoch
    (A's), so both took the same takeover number, C at a later generation. B's fence, landing
    after C's, must not fence out C's records."""
    assert B < C
    s = scan([fence(0, A), record(1, b"x", b"a1", A), position(2, A),
              fence(3, C), record(4, b"x", b"c1", C), position(5, C),
              fence(6, B), record(7, b"x", b"b1", B), position(8, B),    # the zombie B, late
              record(9, b"x", b"c2", C), position(10, C)])
    assert s.latest[b"x"] == b"c2" and s.dropped == 3 and s.fence == C


def test_an_epoch_is_above_every_one_the_partition_held_even_after_the_group_started_over():
    """The group generation restarts at 1 when a group expires; the takeover number does not."""
    older_group = epoch_after(epoch_after(b"", 900), 901)
    assert epoch_after(older_group, generation=1) > older_group


def test_a_release_from_before_fences_reads_a_fenced_partition_as_before():
    """A rollback: earlier releases read every ``__partition__/`` key as the position record of
    the partition it names, and keep the one naming the partition read. A fence names -1."""
    records = [record(0, b"x", b"a1", None), fence(1, A),
               record(2, b"__partition__/0", PartitionRecord(0, 7).encode(), A), fence(3, B)]
    positions = None
    for r in records:                                   # the earlier releases' read_state, in short
        if r.key.startswith(PARTITION_KEY.encode()):
            rec = PartitionRecord.decode(r.value)
            positions = rec if rec.partition == 0 else positions
    assert positions.next_offset == 7


@pytest.mark.kafka
def test_on_the_broker_a_zombies_late_checkpoint_does_not_replace_the_new_owners_state(broker, topic_factory):
    """The same with the real write and read paths: Checkpointer writes (producer, headers,
    fence offsets from the broker's acknowledgements) and read_state reads (group-less consumer).
    Without fences, the restore at the end returned A's late record for entity "x"."""
    from kafka import KafkaConsumer, KafkaProducer

    topic = topic_factory(1, compact=True, prefix="state")
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")

    fenced_at = []

    def take_over(member: Checkpointer, generation: int):
        def fence(tops):
            fenced_at.append(member.fence(tops, generation)[0])
            return {0: fenced_at[-1]}

        reader = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None, enable_auto_commit=False)
        try:
            return read_state(reader, topic, [0], fence=fence)[0]
        finally:
            reader.close()

    def write(member: Checkpointer, entity: str, value: int) -> None:
        member._write({entity: (0, encode_state({"v": value}))}, {0: PartitionRecord(0, value).encode()}, 0.0)

    try:
        a, b = Checkpointer(producer, topic, 5.0), Checkpointer(producer, topic, 5.0)
        assert take_over(a, generation=1).entities == {}
        write(a, "x", 1)
        write(a, "y", 1)
        restored = take_over(b, generation=2)          # A was evicted; B restores A's checkpoint
        assert restored.entities == {"x": {"v": 1}, "y": {"v": 1}} and restored.dropped == 0
        write(b, "x", 2)                                # B scores on and checkpoints x
        write(a, "x", 1)                                # A wakes: the rest of its write lands
        reader = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None, enable_auto_commit=False)
        try:
            final = read_state(reader, topic, [0])[0]  # the next restore (a plain read, no takeover)
        finally:
            reader.close()
    finally:
        producer.close()
    assert final.entities == {"x": {"v": 2}, "y": {"v": 1}}
    assert final.dropped == 2                           # A's late "x" and its partition record
    assert final.positions.next_offset == 2             # B's partition record, not A's
    fences = [r.offset for r in read_all(broker.bootstrap, topic) if r.key.startswith(FENCE_PREFIX)]
    assert fences == fenced_at                          # the broker acknowledged each at its offset
