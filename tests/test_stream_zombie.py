"""A zombie made the hard way: a consumer process frozen whole (SIGSTOP) past the session timeout.

``test_stream_ops`` hangs one consumer's model thread while its heartbeat thread runs on (the
poll-interval path). Here the whole process stops, heartbeats included, as in a long pause of a
virtual machine, and the group evicts it by its session timeout. Two consumer processes share
the readings; the one that owns pump-b freezes itself just before it scores the batch that opens
pump-b's alert (``frozen_consumer.py``). The other is given its partitions, restores them from
the last checkpoint and publishes that alert. Then the frozen one is woken (SIGCONT): it must
notice the stall before it publishes, checkpoints or commits anything, drop what it held and
rejoin. The alert events must equal an uninterrupted run's, none twice, every window scored once.
"""

from __future__ import annotations

import signal
import uuid
from pathlib import Path

import pytest

from stream_ae.stream import codec
from stream_service import wait_for
from test_stream_recovery import (artifact_dir, assert_each_window_scored_once,  # noqa: F401, F811 - a fixture
                                  assert_same_events_once, crash_settings, partition_ends, plant_arrays, readings,
                                  restores, run_to_the_end, runner_command, start_runner, uninterrupted_alerts)
from test_stream_runner import produce, read_all, stream_topics

pytestmark = pytest.mark.kafka

LOST = "lost to a rebalance this member missed"
QUIET_STEPS = 250


def assignments(log_path: Path) -> int:
    return len(restores(log_path))


def losses(log_path: Path) -> int:
    return log_path.read_text().count(LOST)


def stopped(pid: int) -> bool:
    """Whether the process is stopped by a signal (state T in /proc)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"


def first_open(art, args: dict, entity_name: str) -> int:
    """The reading (ts in ns, as the stream decodes it) at which an uninterrupted detector opens the
    entity's first alert."""
    from stream_ae.scoring import Scorer
    from stream_ae.stream.detector import build_detector
    from stream_ae.stream.detector_io import ReadingBatch
    from stream_ae.stream.settings import load_settings

    entity, ts, values = plant_arrays()
    settings = load_settings(env={}, overrides=[f"{k}={v}" for k, v in args.items()])
    out = build_detector(settings, Scorer(art, device="cpu")).process(
        ReadingBatch.from_arrays(entity, ts // 1_000_000 * 1_000_000, values))
    return next(e.at for e in out.events if e.entity == entity_name and e.state == "open")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_a_process_frozen_past_the_session_timeout_publishes_nothing_twice(
        broker, topic_factory, kafka_config, artifact_dir, tmp_path, monkeypatch):
    art, art_path = artifact_dir
    messages = readings()
    topics = stream_topics(topic_factory)
    readings_topic, alerts_topic = topics["readings_topic"], topics["alerts_topic"]
    group = f"zombie-{uuid.uuid4().hex[:8]}"
    args = crash_settings(broker, group, topics)
    marker = tmp_path / "frozen.pid"
    monkeypatch.setenv("STREAM_AE_TEST_FREEZE", f"pump-b,{first_open(art, args, 'pump-b')},{marker}")
    cmd = runner_command(art_path, args, checkpoint_interval_s=1)
    cmd[1:3] = [str(Path(__file__).with_name("frozen_consumer.py"))]
    quiet = QUIET_STEPS * 4  # steps 0-249 of the four entities: no alert
    metas = produce(broker.bootstrap, readings_topic, messages[:quiet])
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [start_runner(cmd, logs[0])]
    try:
        procs.append(start_runner(cmd, logs[1]))
        wait_for(lambda: assignments(logs[0]) >= 2, 30, "the first consumer to hand a partition to the second")
        metas += produce(broker.bootstrap, readings_topic, messages[quiet:])  # both alerts, and the rest

        pid = int(wait_for(lambda: marker.exists() and marker.read_text(), 60, "pump-b's owner to freeze"))
        frozen = next(i for i, p in enumerate(procs) if p.pid == pid)
        other = 1 - frozen
        try:
            wait_for(lambda: stopped(pid), 10, "the process to stop")
            before = assignments(logs[other])
            wait_for(lambda: any(codec.decode_alert(r.value).entity == "pump-b"
                                 for r in read_all(broker.bootstrap, alerts_topic)), 60,
                     "the other consumer to take pump-b over and publish its alert")
            took_over = assignments(logs[other])
            assert took_over > before and stopped(pid)
        finally:
            procs[frozen].send_signal(signal.SIGCONT)
        wait_for(lambda: losses(logs[frozen]) == 1 and assignments(logs[frozen]) >= 2, 30,
                 "the woken consumer to find its partitions lost and rejoin")
        wait_for(lambda: assignments(logs[other]) > took_over, 30, "the group to settle after the rejoin")
        settled = assignments(logs[1])
        run_to_the_end(procs[0], logs[0], broker.bootstrap, group, readings_topic, partition_ends(metas))
        wait_for(lambda: assignments(logs[1]) > settled, 30, "the second to take the first's partitions as it leaves")
        run_to_the_end(procs[1], logs[1], broker.bootstrap, group, readings_topic, partition_ends(metas))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait()

    reference, ref_topics, runner = uninterrupted_alerts(broker, topic_factory, kafka_config, art, readings_topic,
                                                        len(messages))
    zombie = [codec.decode_alert(r.value) for r in read_all(broker.bootstrap, alerts_topic)]
    print(f"\n{len(zombie)} events with a freeze; {len(reference)} uninterrupted; "
          f"partitions lost: {[losses(p) for p in logs]}, assignments: {[assignments(p) for p in logs]}")
    assert losses(logs[frozen]) == 1 and losses(logs[other]) == 0
    assert_same_events_once(zombie, reference)
    assert_each_window_scored_once(broker.bootstrap, topics, ref_topics, runner)
