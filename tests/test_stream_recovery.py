"""The crash proof: kill -9 the consumer mid-stream, restart it, and compare with an uninterrupted run.

Same readings, two consumer groups: a reference runner that is never interrupted, and a
subprocess (``python -m stream_ae.stream.runner``) killed with SIGKILL at random points
while the readings arrive, then restarted. The alert events must be the same set, with no
event published twice, and every window of every entity must be scored exactly once.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from stream_ae.stream import codec
from stream_ae.stream.checkpoint import decode_state
from test_stream_detector import STEP_NS, T, T0_NS, make_artifact, plant
from test_stream_runner import make_settings, produce, read_all, reading_bytes, run_until, stream_topics

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parents[1]
N_ROWS, ENTITIES = 1200, ("pump-a", "pump-b", "pump-c", "pump-d")


@pytest.fixture(scope="module")
def artifact_dir(tmp_path_factory):
    import torch

    from stream_ae.artifact import save_artifact

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        art = make_artifact(seed=1)
    finally:
        torch.set_num_threads(before)
    return art, save_artifact(art, tmp_path_factory.mktemp("models"))


def readings() -> list[tuple[bytes, bytes]]:
    entity, ts, values = plant(n_rows=N_ROWS, entities=ENTITIES, anomaly=("pump-b", 300, 360), seed=3)
    step = (ts - T0_NS) // STEP_NS
    values[(entity == "pump-d") & (step >= 800) & (step < 870), 0] += 25.0  # a second alert elsewhere
    return [(e.encode(), reading_bytes(e, t, v)) for e, t, v in zip(entity, ts, values)]


def overrides(settings_args: dict) -> list[str]:
    out = []
    for k, v in settings_args.items():
        out += ["--set", f"{k}={v}"]
    return out


def committed_ends(bootstrap: str, group: str, topic: str, ends: dict[int, int]) -> bool:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return all((consumer.committed(TopicPartition(topic, p)) or 0) >= o for p, o in ends.items())
    finally:
        consumer.close()


def published(log_path: Path) -> int:
    """Events a restarted consumer found already published (from its 'assigned' log line)."""
    text = log_path.read_text()
    return sum(int(line.split(" entities, ")[1].split()[0]) for line in text.splitlines() if "assigned [" in line)


def final_windows(bootstrap: str, state_topic: str) -> dict[str, int]:
    """Windows scored per entity, from the last snapshot of each entity on the state topic."""
    last = {}
    for r in read_all(bootstrap, state_topic):
        if r.value is not None and not r.key.startswith(b"__partition__/"):
            last[r.key.decode()] = decode_state(r.value)["windows"]
    return last


def test_kill_9_mid_stream_publishes_every_alert_once(broker, topic_factory, kafka_config, artifact_dir, tmp_path):
    from stream_ae.stream.runner import StreamRunner

    art, art_path = artifact_dir
    messages = readings()
    topics = stream_topics(topic_factory)
    readings_topic = topics["readings_topic"]
    group = f"crash-{uuid.uuid4().hex[:8]}"
    args = {"kafka.bootstrap_servers": broker.bootstrap, "kafka.group_id": group,
            "kafka.session_timeout_ms": 3000, "batch.max_size": 100, "batch.max_wait_ms": 20,
            "model.device": "cpu", "alerts.k": 2, "alerts.n": 4, "alerts.update_interval_s": 10,
            "alerts.quiet_s": 20, **{f"kafka.{k}": v for k, v in topics.items()}}

    # readings arrive over ~10 s while the consumer is killed and restarted
    metas: list = []

    def feed():
        for lo in range(0, len(messages), 200):
            metas.extend(produce(broker.bootstrap, readings_topic, messages[lo:lo + 200]))
            time.sleep(0.4)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "stream_ae.stream.runner", "--artifact", str(art_path),
           "--checkpoint-interval", "3", *overrides(args)]
    rng = random.Random(7)
    logs = []
    # "random" comes before the run's first checkpoint (an interval after its restore), so the
    # restart replays what the run scored and must recognise the events it already published;
    # "alert": kill as soon as a new alert is on the topic, most likely after the last checkpoint
    kills = ["random", "alert", "random"]
    for run in itertools.count():  # len(kills) kills, then one run to the end; kills may grow
        if run > len(kills):
            break
        log_path = tmp_path / f"run-{run}.log"
        logs.append(log_path)
        # counted before the start: a restart can publish its first alerts while its
        # assignment is still being noticed, and those are the ones to kill right after
        seen = len(read_all(broker.bootstrap, topics["alerts_topic"]))
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while b"assigned [" not in log_path.read_bytes():
                assert proc.poll() is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, "the consumer never got its partitions"
                time.sleep(0.05)
            if run < len(kills):
                if kills[run] == "alert":
                    deadline = time.monotonic() + 20
                    while len(read_all(broker.bootstrap, topics["alerts_topic"])) == seen \
                            and time.monotonic() < deadline:
                        time.sleep(0.05)
                else:
                    time.sleep(rng.uniform(0.3, 2.0))  # a random point mid-stream
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                # Restart once the broker has dropped the dead member (its session timeout), so
                # the restart joins a group with no rebalance still to come. A kill that lands
                # in a pending JoinGroup blocks the group id on Tansu until the broker restarts
                # (../shared/KAFKA.md). One run in about a dozen failed here this way, we
                # believe: 70 s over, the length of a run that never gets its partitions.
                time.sleep(args["kafka.session_timeout_ms"] / 1000 + 1)
                if run == len(kills) - 1 and not any(published(p) for p in logs) and len(kills) < 5:
                    kills.append("alert")  # not proven yet: once more, on the next alert
                continue
            feeder.join(60)
            ends = {}
            for md in metas:
                ends[md.partition] = max(ends.get(md.partition, 0), md.offset + 1)
            deadline = time.monotonic() + 60
            while not committed_ends(broker.bootstrap, group, readings_topic, ends):
                assert proc.poll() is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, "the restarted consumer did not catch up"
                time.sleep(0.3)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0, log_path.read_text()[-3000:]  # graceful shutdown
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    restarts = [line for p in logs for line in p.read_text().splitlines() if "assigned [" in line]

    # the uninterrupted reference over the same readings
    ref_topics = {k: v for k, v in stream_topics(topic_factory).items() if k != "readings_topic"}
    ref_config = {**kafka_config, "group_id": f"ref-{uuid.uuid4().hex[:8]}"}
    settings = make_settings(ref_config, {"readings_topic": readings_topic, **ref_topics},
                             **{"batch.max_size": 100})
    runner = StreamRunner(settings, art)
    run_until(runner, lambda: runner.metrics.sample("stream_ae_messages_consumed_total") >= len(messages))

    crashed = [codec.decode_alert(r.value) for r in read_all(broker.bootstrap, topics["alerts_topic"])]
    reference = [codec.decode_alert(r.value) for r in read_all(broker.bootstrap, ref_topics["alerts_topic"])]
    duplicates = [e for e, n in Counter(a.event_id for a in crashed).items() if n > 1]
    print(f"\n{len(crashed)} events after {len(kills)} kills; {len(reference)} uninterrupted; restarts: "
          + " | ".join(line.split("assigned ")[-1] for line in restarts))
    assert not duplicates, f"events published twice: {duplicates}"
    assert {a.entity for a in reference} == {"pump-b", "pump-d"}
    assert {(a.event_id, a.state, a.entity, a.score) for a in crashed} == \
        {(a.event_id, a.state, a.entity, a.score) for a in reference}
    want = {e: N_ROWS - T + 1 for e in ENTITIES}
    assert final_windows(broker.bootstrap, topics["state_topic"]) == want  # each window scored once
    assert final_windows(broker.bootstrap, ref_topics["state_topic"]) == want
    assert runner.metrics.sample("stream_ae_windows_scored_total") == sum(want.values())
    assert len(restarts) == len(kills) + 1 >= 4
    assert any(published(p) for p in logs[1:]), "no restart had to skip an already published event"
