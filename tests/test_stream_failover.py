"""Failover twice, and partitions that never see a reading.

A double failover: member A publishes alerts after its last checkpoint and is killed; member B
restores from that checkpoint and checkpoints (here: shuts down) before its replay has derived
those alerts again; member C restores from B's checkpoint. C must still find A's alerts on the
alerts topic, or it publishes them a second time: B's checkpoint has to keep the output offsets
it restored until its replay passes what A can have read (``checkpoint.Checkpointer.hold``).

An idle readings partition: it gets a replay-position record like any other, so a restore that
includes it reads the alerts and dead-letter topics from the checkpoint, not from offset 0.
"""

from __future__ import annotations

import threading
import uuid

import pytest

from stream_ae.stream import codec
from test_stream_recovery import (ENTITIES, artifact_dir, assert_same_events_once, crash_settings,  # noqa: F401
                                  kill_after_a_checkpoint_and_an_alert, last_records, partition_ends, readings,
                                  restores, run_to_the_end, runner_command, start_runner, uninterrupted_alerts)
from test_stream_runner import make_settings, plant_messages, produce, read_all, run_until, stream_topics

pytestmark = pytest.mark.kafka


def checkpoint_right_after_the_restore(settings, art, timeout: float = 60.0) -> None:
    """Member B: join, restore, and shut down at once (a graceful shutdown checkpoints), before
    any reading of its partitions is replayed."""
    from stream_ae.stream.runner import StreamRunner

    runner, stop, errors = StreamRunner(settings, art), threading.Event(), []
    restore = runner._restore

    def restore_then_stop(records):
        out = restore(records)
        stop.set()  # the loop ends after this step: _drain and the shutdown checkpoint follow
        return out

    runner._restore = restore_then_stop

    def target():
        try:
            runner.run(stop)
        except BaseException as exc:  # re-raised below
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if errors:
        raise errors[0]
    assert not thread.is_alive() and stop.is_set(), "member B never got its partitions"
    assert runner.metrics.sample("stream_ae_windows_scored_total") == 0  # nothing replayed yet


def test_a_second_failover_before_the_replay_caught_up_publishes_no_event_twice(broker, topic_factory, kafka_config,
                                                                                artifact_dir, tmp_path):
    from stream_ae.stream.settings import load_settings

    art, art_path = artifact_dir
    messages = readings()
    a, b = 250 * len(ENTITIES), 500 * len(ENTITIES)  # time-interleaved, one reading per entity a step
    quiet, anomalous, rest = messages[:a], messages[a:b], messages[b:]
    topics = stream_topics(topic_factory)
    readings_topic, alerts_topic = topics["readings_topic"], topics["alerts_topic"]
    args = crash_settings(broker, f"failover-{uuid.uuid4().hex[:8]}", topics)
    interval_s = 8.0  # A's second checkpoint, an interval after its first, must not come before the kill
    cmd = runner_command(art_path, args, checkpoint_interval_s=interval_s)

    # member A: a checkpoint over the quiet readings, then pump-b's alerts, then kill -9
    metas, a_checkpoint = kill_after_a_checkpoint_and_an_alert(broker, cmd, args, topics, quiet, anomalous,
                                                               tmp_path / "a.log", interval_s)
    by_a = len(read_all(broker.bootstrap, alerts_topic))

    # member B: restores A's checkpoint, suppresses A's events in memory, checkpoints before replaying
    settings = load_settings(env={}, overrides=[f"{k}={v}" for k, v in args.items()])
    checkpoint_right_after_the_restore(settings, art)
    b_records = last_records(broker.bootstrap, topics["state_topic"])
    assert {p: r.next_offset for p, r in b_records.items()} == a_checkpoint  # B wrote at A's positions
    assert len(read_all(broker.bootstrap, alerts_topic)) == by_a  # and published nothing

    # member C: from B's checkpoint to the end
    log_c = tmp_path / "c.log"
    proc = start_runner(cmd, log_c)
    try:
        metas += produce(broker.bootstrap, readings_topic, rest)
        run_to_the_end(proc, log_c, broker.bootstrap, args["kafka.group_id"], readings_topic, partition_ends(metas))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert restores(log_c) == [(len(ENTITIES), by_a)], log_c.read_text()[-3000:]  # C found A's events

    reference, _, _ = uninterrupted_alerts(broker, topic_factory, kafka_config, art, readings_topic, len(messages))
    crashed = [codec.decode_alert(r.value) for r in read_all(broker.bootstrap, alerts_topic)]
    print(f"\n{by_a} events by A before the kill, {len(crashed)} in all; {len(reference)} uninterrupted")
    assert_same_events_once(crashed, reference)


def test_an_idle_partition_gets_a_position_record_at_the_outputs_end(broker, topic_factory, kafka_config,
                                                                    artifact_dir):
    from kafka import KafkaProducer

    from stream_ae.stream.runner import StreamRunner

    art, _ = artifact_dir
    topics = stream_topics(topic_factory, partitions=3)
    messages = plant_messages()  # pump-b's anomaly: alerts
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=5)
    try:  # every reading on partition 0: partitions 1 and 2 never see one
        for k, v in messages:
            producer.send(topics["readings_topic"], key=k, value=v, partition=0)
        producer.flush()
    finally:
        producer.close()
    runner = StreamRunner(make_settings(kafka_config, topics), art)
    run_until(runner, lambda: runner.metrics.sample("stream_ae_messages_consumed_total") >= len(messages))

    n_alerts = len(read_all(broker.bootstrap, topics["alerts_topic"]))
    assert n_alerts > 0
    records = last_records(broker.bootstrap, topics["state_topic"])
    assert sorted(records) == [0, 1, 2]
    assert {p: r.next_offset for p, r in records.items()} == {0: len(messages), 1: 0, 2: 0}
    # a restore that includes an idle partition reads the alerts topic from here, not from 0
    assert all(r.alerts_offsets == {0: n_alerts} for r in records.values()), records
