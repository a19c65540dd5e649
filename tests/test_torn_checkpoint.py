"""A crash inside a checkpoint's write: its entity records landed, its position records did not.

A checkpoint writes each state partition's changed entities first and the partition's position
record (``__partition__/<p>``: where the replay starts, the outputs' offsets, the event-time
clock) last. Before session 40 a restore took every entity record as the last value of its key,
so after such a crash the entities were newer than the position the replay started from: their
readings were skipped and moved no clock, and a silence-based resolve on the partition could
come at another time than in a run that never stopped. Now the position record commits the
records before it (``recovery.StateScan``): what follows the last one is set aside where the key
has a committed value, and those entities resume from the checkpoint before and replay.
"""

from __future__ import annotations

import logging
import signal
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from stream_ae.stream import codec
from stream_ae.stream.checkpoint import FENCE_PREFIX, PARTITION_KEY, Checkpointer, PartitionRecord, encode_state
from stream_ae.stream.recovery import read_state
from stream_service import wait_for
from test_stream_fence import A, B, fence, position, record, scan
from test_stream_recovery import (ENTITIES, artifact_dir, assert_each_window_scored_once,  # noqa: F401, F811
                                  assert_same_events_once, checkpointed_positions, crash_settings, partition_ends,
                                  readings, restores, run_to_the_end, runner_command, start_runner,
                                  uninterrupted_alerts)
from test_stream_runner import produce, read_all, stream_topics
from torn_checkpoint_consumer import TORN_EXIT


def entities(s) -> dict[bytes, bytes]:
    return {k: v for k, v in s.latest.items() if not k.startswith(PARTITION_KEY.encode())}


def next_offset(s) -> int:
    return PartitionRecord.decode(s.latest[f"{PARTITION_KEY}0".encode()]).next_offset


def test_entity_records_after_the_last_position_record_are_set_aside_for_the_committed_ones():
    s = scan([record(0, b"x", b"x1", A), record(1, b"y", b"y1", A), position(2, A),
              record(3, b"x", b"x2", A), record(4, b"y", b"y2", A)])          # torn: no position record
    assert entities(s) == {b"x": b"x1", b"y": b"y1"} and next_offset(s) == 2
    assert len(s.aside) == 2 and s.dropped == 0


def test_only_part_of_a_torn_checkpoint_landed_and_the_entities_stay_consistent_with_its_position():
    s = scan([record(0, b"x", b"x1", A), record(1, b"y", b"y1", A), position(2, A),
              record(3, b"x", b"x2", A)])                                      # y2 and the position never sent
    assert entities(s) == {b"x": b"x1", b"y": b"y1"} and len(s.aside) == 1


def test_an_entity_first_written_in_the_torn_checkpoint_is_kept():
    """No committed value to fall back on: an entity new since the checkpoint before, or one whose
    older record compaction removed. Its newest state is the only one there is."""
    s = scan([record(0, b"x", b"x1", A), position(1, A), record(2, b"x", b"x2", A), record(3, b"z", b"z1", A)])
    assert entities(s) == {b"x": b"x1", b"z": b"z1"} and len(s.aside) == 1


def test_the_next_owners_fence_settles_the_torn_checkpoint_so_its_own_checkpoint_does_not_commit_it():
    """B restored x1 and y1 (it read up to its fence). B's checkpoint rewrites x only; its position
    record must not make A's unfinished y2 the value every later restore gets."""
    s = scan([record(0, b"x", b"x1", A), record(1, b"y", b"y1", A), position(2, A),
              record(3, b"x", b"x2", A), record(4, b"y", b"y2", A),            # A dies here
              fence(5, B), record(6, b"x", b"x3", B), position(7, B)])
    assert entities(s) == {b"x": b"x3", b"y": b"y1"} and next_offset(s) == 7
    assert s.aside == {b"y": b"y2"}   # x2 is superseded by B's x3


def test_a_checkpoint_written_whole_commits_every_record_as_before():
    s = scan([record(0, b"x", b"x1", A), position(1, A), record(2, b"x", b"x2", A), record(3, b"y", b"y1", A),
              position(4, A)])
    assert entities(s) == {b"x": b"x2", b"y": b"y1"} and next_offset(s) == 4 and len(s.aside) == 0


def test_a_tombstone_counts_at_once_it_is_an_operators_reset_never_part_of_a_checkpoint():
    s = scan([record(0, b"x", b"x1", A), record(1, b"y", b"y1", A), position(2, A), record(3, b"x", None, None)])
    assert entities(s) == {b"x": None, b"y": b"y1"} and s.aside == {}


def test_an_entity_reset_by_a_tombstone_keeps_the_state_a_cut_checkpoint_wrote_after_it():
    s = scan([record(0, b"x", b"x1", A), position(1, A), record(2, b"x", None, None), record(3, b"x", b"x2", A)])
    assert entities(s) == {b"x": b"x2"} and s.aside == {}


def _read_state(monkeypatch, logs: dict[int, list]) -> dict:
    """``read_state`` of the state partitions ``logs`` holds (partition -> records), no broker."""
    from stream_ae.stream import recovery

    def read_to_end(consumer, starts, *args, **kwargs):
        for tp in starts:
            for r in logs[tp.partition]:
                yield SimpleNamespace(**vars(r), partition=tp.partition)

    monkeypatch.setattr(recovery, "read_to_end", read_to_end)
    return read_state(None, "state", sorted(logs))


def snap(**offsets) -> bytes:
    return encode_state({"offsets": {k[1:]: v for k, v in offsets.items()}})


def positions(p: int, offset: int, next_offset: int, epoch: bytes = A):
    return record(offset, f"{PARTITION_KEY}{p}".encode(), PartitionRecord(p, next_offset).encode(), epoch)


def test_a_moved_entitys_cut_record_is_restored_when_its_old_partition_committed_past_it(monkeypatch):
    """The topic grew and ``e`` moved from partition 0 to 1 while its backlog on 0 was still read.
    The checkpoint cut short wrote ``e`` (to state partition 1) and partition 0's position (110),
    not partition 1's. The committed ``e`` lacks readings 100-109 of partition 0, which resumes
    at 110: set aside, they were lost. The newer one skips some of partition 1 instead."""
    restored = _read_state(monkeypatch, {
        0: [positions(0, 0, 100), positions(0, 1, 110)],
        1: [record(0, b"e", snap(p0=100, p1=5), A), positions(1, 1, 5),
            record(2, b"e", snap(p0=110, p1=8), A), record(3, b"f", snap(p1=9), A)]})   # torn here
    assert restored[1].entities["e"]["offsets"] == {"0": 110, "1": 8}
    assert restored[1].entities["f"]["offsets"] == {"1": 9} and restored[1].set_aside == 0


def test_an_entity_of_one_partition_is_set_aside_through_read_state(monkeypatch):
    restored = _read_state(monkeypatch, {
        1: [record(0, b"e", snap(p1=4), A), positions(1, 1, 5), record(2, b"e", snap(p1=8), A)]})
    assert restored[1].entities["e"]["offsets"] == {"1": 4} and restored[1].set_aside == 1


class _Crash(Exception):
    pass


class _DiesAtThePositions:
    """The producer, but the first position record handed to it raises (the process dies there)."""

    def __init__(self, producer):
        self._producer = producer

    def __getattr__(self, name):
        return getattr(self._producer, name)

    def send(self, topic, key=None, **kwargs):
        if key.startswith(PARTITION_KEY.encode()) and not key.startswith(FENCE_PREFIX):
            raise _Crash
        return self._producer.send(topic, key=key, **kwargs)


@pytest.mark.kafka
def test_on_the_broker_a_write_cut_before_its_position_record_restores_the_checkpoint_before(
        broker, topic_factory, caplog):
    """The real write (``Checkpointer._write``) and read (``read_state``). Before, the restore
    returned x2 and y2 beside the first checkpoint's position record."""
    from kafka import KafkaConsumer, KafkaProducer

    topic = topic_factory(1, compact=True, prefix="state")
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    try:
        member = Checkpointer(producer, topic, 5.0)
        states = lambda v: {e: (0, encode_state({"v": v})) for e in ("x", "y")}  # noqa: E731
        member._write(states(1), {0: PartitionRecord(0, 100).encode()}, 0.0)
        member.producer = _DiesAtThePositions(producer)
        with pytest.raises(_Crash):
            member._write(states(2), {0: PartitionRecord(0, 200).encode()}, 0.0)
        producer.flush()  # the entity records were handed over: they land
    finally:
        producer.close()
    assert [r.key for r in read_all(broker.bootstrap, topic)][-2:] == [b"x", b"y"]  # torn where meant
    reader = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None, enable_auto_commit=False)
    try:
        with caplog.at_level(logging.WARNING, logger="stream_ae.stream.recovery"):
            restored = read_state(reader, topic, [0])[0]
    finally:
        reader.close()
    assert restored.entities == {"x": {"v": 1}, "y": {"v": 1}} and restored.positions.next_offset == 100
    assert restored.set_aside == 2
    assert "2 entity records of a checkpoint cut short" in caplog.text


@pytest.mark.kafka
def test_a_consumer_dead_inside_a_checkpoint_write_publishes_every_alert_once(
        broker, topic_factory, kafka_config, artifact_dir, tmp_path, monkeypatch):  # noqa: F811
    """The process ends (``os._exit``) on its second checkpoint with entity records, once they
    landed and before any position record is sent; a restart must give what an uninterrupted run
    gives. The readings after the first checkpoint hold pump-b's anomaly, so the torn checkpoint
    holds changed entities, and the restart must recognise the alerts already published."""
    art, art_path = artifact_dir
    messages = readings()
    quiet, anomalous = 250 * len(ENTITIES), 500 * len(ENTITIES)
    topics = stream_topics(topic_factory)
    readings_topic, state_topic = topics["readings_topic"], topics["state_topic"]
    group = f"torn-{uuid.uuid4().hex[:8]}"
    args = crash_settings(broker, group, topics)
    marker = tmp_path / "torn.pid"
    monkeypatch.setenv("STREAM_AE_TEST_TEAR", f"2,{marker}")
    cmd = runner_command(art_path, args, checkpoint_interval_s=2)
    torn_cmd = [cmd[0], str(Path(__file__).with_name("torn_checkpoint_consumer.py")), *cmd[3:]]

    metas = produce(broker.bootstrap, readings_topic, messages[:quiet])
    first = tmp_path / "run-0.log"
    proc = start_runner(torn_cmd, first)
    try:
        ends = partition_ends(metas)
        wait_for(lambda: all(checkpointed_positions(broker.bootstrap, state_topic).get(p, 0) >= o
                             for p, o in ends.items()), 40, "a checkpoint of the quiet readings")
        committed = checkpointed_positions(broker.bootstrap, state_topic)
        metas += produce(broker.bootstrap, readings_topic, messages[quiet:anomalous])
        assert proc.wait(40) == TORN_EXIT, first.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert marker.exists()
    state = read_all(broker.bootstrap, state_topic)
    last = {r.partition: r.key for r in state}
    assert not any(k.startswith(PARTITION_KEY.encode()) for k in last.values()), "not torn after entity records"
    assert checkpointed_positions(broker.bootstrap, state_topic) == committed
    time.sleep(args["kafka.session_timeout_ms"] / 1000 + 1)  # the dead member leaves the group

    monkeypatch.delenv("STREAM_AE_TEST_TEAR")
    second = tmp_path / "run-1.log"
    proc = start_runner(cmd, second)
    try:
        metas += produce(broker.bootstrap, readings_topic, messages[anomalous:])
        run_to_the_end(proc, second, broker.bootstrap, group, readings_topic, partition_ends(metas))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    log = second.read_text()
    assert "of a checkpoint cut short" in log and "set aside" in log, log[-3000:]
    assert restores(second)[0][0] == len(ENTITIES)

    reference, ref_topics, runner = uninterrupted_alerts(broker, topic_factory, kafka_config, art, readings_topic,
                                                        len(messages))
    crashed = [codec.decode_alert(r.value) for r in read_all(broker.bootstrap, topics["alerts_topic"])]
    print(f"\n{len(crashed)} events after the torn checkpoint's crash; {len(reference)} uninterrupted")
    assert_same_events_once(crashed, reference)
    assert_each_window_scored_once(broker.bootstrap, topics, ref_topics, runner)
