"""Operating the stream service: HTTP endpoints, logs, `stream-ae serve` and SIGTERM, hot reload
through the registry, a rebalance between two consumers of one group."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from stream_ae.errors import ConfigError
from stream_ae.stream import codec
from test_stream_detector import STEP_NS, T, make_artifact, plant
from stream_service import (
    Producer, REPO, Running, free_port, http_get, messages, read_alerts, settings_for,
    stream_topics, wait_for)


@pytest.fixture(scope="module")
def models():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield make_artifact(seed=0), make_artifact(seed=1)
    torch.set_num_threads(before)


# ---- no broker -----------------------------------------------------------------------------

def test_endpoints_report_liveness_readiness_and_metrics():
    from stream_ae.stream.metrics import StreamMetrics
    from stream_ae.stream.ops import OpsServer

    metrics = StreamMetrics()
    port, other = free_port(), free_port()
    with OpsServer(metrics, metrics_port=port, health_port=port, host="127.0.0.1", stale_after_s=30) as ops:
        base = f"http://127.0.0.1:{port}"
        status, body = http_get(base + "/readyz")
        assert status == 503 and json.loads(body)["status"] == "not ready"
        assert http_get(base + "/healthz")[0] == 200       # just started: alive while it loads
        metrics.set_model("v1")
        metrics.running, metrics.assigned = True, [0, 1]
        metrics.polled()
        metrics.consumed.inc(7)
        status, body = http_get(base + "/readyz")
        assert status == 200 and json.loads(body)["assigned_partitions"] == [0, 1]
        status, text = http_get(base + "/metrics")
        assert status == 200 and "stream_ae_messages_consumed_total 7.0" in text
        assert 'stream_ae_model_info{version="v1"} 1.0' in text
        rss = [float(ln.split()[1]) for ln in text.splitlines() if ln.startswith("process_resident_memory_bytes ")]
        assert not sys.platform.startswith("linux") or rss[0] > 10 * 2**20  # the process collector reads /proc
        assert http_get(base + "/nope")[0] == 404
        metrics.last_poll = time.time() - 31                # the loop is wedged
        status, body = http_get(base + "/healthz")
        assert status == 503 and json.loads(body)["status"] == "stalled"
        assert ops.ports == [port]
    with pytest.raises(OSError):                            # stopped: the port is closed
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    with OpsServer(metrics, metrics_port=port, health_port=other, host="127.0.0.1") as ops:
        assert http_get(f"http://127.0.0.1:{port}/healthz")[0] == 404   # separate ports, separate paths
        assert http_get(f"http://127.0.0.1:{other}/healthz")[0] == 200
    with OpsServer(metrics, metrics_port=0, health_port=0) as ops:
        assert ops.ports == []


def test_logs_are_json_lines_without_secrets():
    from stream_ae.stream.logs import configure_logging
    from stream_ae.stream.settings import load_settings

    settings = load_settings(env={"STREAM_AE_KAFKA__CLIENT__SASL_PLAIN_PASSWORD": "hunter2"},
                             overrides=["kafka.client.sasl_plain_username=det"])
    out = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        configure_logging(settings.ops, stream=out)
        logging.getLogger("stream_ae.test").info("start", extra={"fields": {"settings": settings.redacted(),
                                                                           "token": "abc"}})
    finally:
        root.handlers[:], root.level = saved
    line = json.loads(out.getvalue().strip().splitlines()[-1])
    assert line["msg"] == "start" and line["level"] == "INFO"
    assert line["settings"]["kafka"]["client"]["sasl_plain_username"] == "det"
    assert "hunter2" not in out.getvalue() and "abc" not in out.getvalue()


def test_serve_needs_a_model_and_a_broker(tmp_path):
    from stream_ae.stream.serve import ModelWatcher, check_broker, serve
    from stream_ae.stream.settings import load_settings

    with pytest.raises(ConfigError, match="model.deployment .* or model.artifact"):
        serve(None, ["ops.metrics_port=0", "ops.health_port=0"])
    empty = load_settings(env={}, overrides=[f"model.registry={tmp_path}", "model.deployment=prod"])
    with pytest.raises(ConfigError, match="deployment 'prod' has no version"):
        ModelWatcher(empty).initial()
    with pytest.raises(ConfigError, match="no Kafka broker answers"):
        check_broker(load_settings(env={}, overrides=[f"kafka.bootstrap_servers=127.0.0.1:{free_port()}"]),
                     timeout_s=1.0)


# ---- against a broker ----------------------------------------------------------------------

def write_config(path: Path, kafka_config: dict, topics: dict, registry: Path, metrics_port: int,
                 health_port: int) -> Path:
    k = kafka_config
    path.write_text(f"""
[kafka]
bootstrap_servers = "{k['bootstrap_servers']}"
group_id = "{k['group_id']}"
session_timeout_ms = {k['session_timeout_ms']}
readings_topic = "{topics['readings_topic']}"
alerts_topic = "{topics['alerts_topic']}"
dead_letter_topic = "{topics['dead_letter_topic']}"
state_topic = "{topics['state_topic']}"
[kafka.client]
sasl_plain_password = "not-logged-anywhere"
[model]
registry = "{registry}"
deployment = "prod"
device = "cpu"
[batch]
max_size = 200
max_wait_ms = 20
[alerts]
k = 2
n = 4
update_interval_s = 1000
quiet_s = 20
[ops]
metrics_port = {metrics_port}
health_port = {health_port}
log_format = "json"
""")
    return path


@pytest.mark.kafka
def test_serve_subprocess_endpoints_and_graceful_sigterm(broker, topic_factory, kafka_config, models, tmp_path):
    """`stream-ae serve` becomes ready after assignment, serves metrics, exits 0 on SIGTERM
    mid-stream with everything it consumed committed; a restarted consumer resumes exactly
    there and publishes no alert twice."""
    from kafka import KafkaConsumer, TopicPartition

    from stream_ae.registry import Registry
    from stream_ae.stream.runner import StreamRunner

    topics = stream_topics(topic_factory, 2)
    reg = Registry(tmp_path / "models")
    reg.promote("prod", reg.publish(models[0]))
    mport, hport = free_port(), free_port()
    config = write_config(tmp_path / "serve.toml", kafka_config, topics, tmp_path / "models", mport, hport)
    msgs = messages(*plant(n_rows=600))
    producer = Producer(broker.bootstrap, topics["readings_topic"])
    producer.send(msgs[:600])
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_AE_")}
    proc = subprocess.Popen([sys.executable, "-m", "stream_ae.cli", "serve", "--config", str(config)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        health, metrics_url = f"http://127.0.0.1:{hport}", f"http://127.0.0.1:{mport}/metrics"

        def ready_status():
            if proc.poll() is not None:
                raise AssertionError(f"serve exited early: {proc.communicate()[1][-3000:]}")
            try:
                return http_get(health + "/readyz")[0]
            except (urllib.error.URLError, ConnectionError):
                return None

        first = wait_for(ready_status, 60, "the health endpoint")
        assert first == 503, "ready before any partition was assigned"
        wait_for(lambda: ready_status() == 200, 30, "readiness after the partitions are assigned")
        assert http_get(health + "/healthz")[0] == 200

        def consumed() -> float:
            text = http_get(metrics_url)[1]
            line = next(ln for ln in text.splitlines() if ln.startswith("stream_ae_messages_consumed_total"))
            return float(line.split()[-1])

        wait_for(lambda: consumed() >= 600, 30, "the first readings to be consumed")
        text = http_get(metrics_url)[1]
        assert f'stream_ae_model_info{{version="{models[0].version}"}} 1.0' in text
        assert "stream_ae_windows_scored_total" in text and "stream_ae_ingest_to_alert_seconds_bucket" in text
        producer.start_paced(msgs[600:], per_s=400)                  # still streaming when SIGTERM comes
        wait_for(lambda: consumed() >= 900, 30, "more readings")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        producer.close()
    assert proc.returncode == 0, err[-3000:]
    lines = [json.loads(ln) for ln in err.splitlines() if ln.startswith("{")]
    assert lines and "not-logged-anywhere" not in err
    done = next(ln for ln in lines if ln["msg"] == "stream-ae serve stopped gracefully")
    consumed_by_serve = int(done["consumed"])
    assert 900 <= consumed_by_serve < len(msgs)                  # it stopped mid-stream

    check = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=kafka_config["group_id"],
                          enable_auto_commit=False)
    try:
        committed = sum(check.committed(TopicPartition(topics["readings_topic"], p)) or 0 for p in (0, 1))
    finally:
        check.close()
    assert committed == consumed_by_serve                       # its last offsets are committed

    restarted = Running(StreamRunner(settings_for(kafka_config, topics), models[0], checkpoint_interval_s=1.0))
    try:
        wait_for(lambda: restarted.sample("stream_ae_messages_consumed_total") >= len(msgs) - committed, 60,
                 "the restarted consumer to read the rest")
        time.sleep(0.5)
    finally:
        restarted.stop()
    assert restarted.sample("stream_ae_messages_consumed_total") == len(msgs) - committed   # resumed exactly
    alerts = read_alerts(broker.bootstrap, topics["alerts_topic"])
    ids = [a.event_id for a in alerts]
    assert len(ids) == len(set(ids)), "an alert event was published twice"
    assert [a.state for a in alerts if a.entity == "pump-b"][:1] == ["open"]
    assert sum(a.state == "open" and a.entity == "pump-b" for a in alerts) == 1


def two_anomaly_plant():
    """800 rows per entity; pump-b shifts at rows 250-300 and again at 600-650."""
    entity, ts, values = plant(n_rows=800)
    row = (ts - ts.min()) // STEP_NS
    values[(entity == "pump-b") & (row >= 600) & (row < 650), 1] += 25.0
    return entity, ts, values, row


@pytest.mark.kafka
def test_hot_reload_follows_the_deployment_pointer(broker, topic_factory, kafka_config, models, tmp_path):
    from stream_ae.registry import Registry
    from stream_ae.stream.runner import StreamRunner
    from stream_ae.stream.serve import ModelWatcher

    topics = stream_topics(topic_factory, 2)
    reg = Registry(tmp_path / "models")
    v1, v2 = reg.publish(models[0]), reg.publish(models[1])
    reg.promote("prod", v1)
    settings = settings_for(kafka_config, topics, **{"model.registry": str(tmp_path / "models"),
                                                    "model.deployment": "prod", "model.reload_interval_s": 0.2})
    watcher = ModelWatcher(settings)
    runner = StreamRunner(settings, watcher.initial(), reload=watcher, checkpoint_interval_s=1.0)
    entity, ts, values, row = two_anomaly_plant()
    first = row < 400
    producer = Producer(broker.bootstrap, topics["readings_topic"])
    running = Running(runner)
    try:
        producer.send(messages(entity[first], ts[first], values[first]))
        wait_for(lambda: running.sample("stream_ae_messages_consumed_total") >= first.sum(), 60, "part one")
        reg.promote("prod", v2, reason="test", expect=v1)
        wait_for(lambda: runner.metrics.model_version == v2, 10, "the runner to swap in the promoted model")
        producer.send(messages(entity[~first], ts[~first], values[~first]))
        wait_for(lambda: running.sample("stream_ae_messages_consumed_total") >= len(ts), 60, "part two")
        time.sleep(0.3)
    finally:
        producer.close()
        running.stop()
    alerts = read_alerts(broker.bootstrap, topics["alerts_topic"])
    t400 = ts.min() + 400 * STEP_NS
    before = {a.model_version for a in alerts if codec.datetime_to_ns(a.at) < t400}
    after = {a.model_version for a in alerts if codec.datetime_to_ns(a.started_at) >= t400}
    assert before == {v1} and after == {v2}, [(a.state, a.at, a.model_version) for a in alerts]
    assert running.sample("stream_ae_checkpoints_total") >= 1       # one runner throughout: no restart


@pytest.mark.kafka
def test_rebalance_between_two_consumers_scores_every_reading_once(broker, topic_factory, kafka_config, models):
    from stream_ae.stream.runner import StreamRunner

    topics = stream_topics(topic_factory, 4)
    names = tuple(f"pump-{c}" for c in "abcdefgh")
    entity, ts, values = plant(n_rows=300, entities=names, anomaly=("pump-b", 150, 200))
    settings = settings_for(kafka_config, topics)
    a = Running(StreamRunner(settings, models[0], checkpoint_interval_s=1.0))
    b = None
    producer = Producer(broker.bootstrap, topics["readings_topic"])
    try:
        wait_for(lambda: len(a.runner.metrics.assigned) == 4, 30, "the first consumer to own all partitions")
        producer.start_paced(messages(entity, ts, values), per_s=300)
        time.sleep(1.0)
        b = Running(StreamRunner(settings, models[0], checkpoint_interval_s=1.0))
        wait_for(lambda: a.runner.metrics.assigned and b.runner.metrics.assigned
                 and sorted(a.runner.metrics.assigned + b.runner.metrics.assigned) == [0, 1, 2, 3],
                 30, "the partitions to split between the two")
        time.sleep(1.0)
        b.stop()                                                # leaves the group: a takes over
        wait_for(lambda: len(a.runner.metrics.assigned) == 4, 30, "the survivor to take every partition")
        expected = len(names) * (300 - T + 1)
        total = lambda: a.sample("stream_ae_windows_scored_total") + b.sample("stream_ae_windows_scored_total")  # noqa: E731
        wait_for(lambda: producer.sent == len(ts) and total() >= expected, 60, "every window to be scored")
        time.sleep(0.5)
    finally:
        producer.close()
        a.stop()
        if b is not None and b.thread.is_alive():
            b.stop()
    assert b.sample("stream_ae_windows_scored_total") > 0        # b did take a share
    assert total() == expected                                   # every reading scored once
    dead = a.runner.metrics.registry.get_sample_value
    assert not any((dead("stream_ae_dead_letters_total", {"reason": r}) or 0) for r in codec.REASONS)
    alerts = read_alerts(broker.bootstrap, topics["alerts_topic"])
    ids = [x.event_id for x in alerts]
    assert len(ids) == len(set(ids)), "an alert event was published twice"
    assert [x.state for x in alerts if x.entity == "pump-b"] == ["open", "resolved"]


@pytest.mark.kafka
def test_a_member_evicted_during_a_stall_publishes_nothing_for_the_partitions_it_lost(
        broker, topic_factory, kafka_config, models):
    """A zombie member: the consumer owning pump-b stalls (its model thread hangs on the batch
    that opens pump-b's alert, and the poll loop waits for it) past ``max_poll_interval_ms``, so the group
    gives its partitions to the other consumer, which replays them from the checkpoint and
    publishes pump-b's alert. When the stall ends, the stalled one must not publish that batch's
    alerts, checkpoint or commit: its membership probe is refused and kafka-python's
    ``on_partitions_lost`` drops what it held. Each event is on the topic once."""
    import threading

    import numpy as np

    from stream_ae.scoring import Scorer
    from stream_ae.stream.detector import build_detector
    from stream_ae.stream.detector_io import ReadingBatch
    from stream_ae.stream.runner import StreamRunner

    topics = stream_topics(topic_factory, 4)
    names = tuple(f"pump-{c}" for c in "abcdefgh")
    entity, ts, values = plant(n_rows=300, entities=names, anomaly=("pump-b", 150, 200))
    msgs = messages(entity, ts, values)
    quiet = int((ts < ts.min() + 150 * STEP_NS).sum())            # rows 0-149 of every entity
    settings = settings_for(kafka_config, topics, **{"batch.max_size": 50, "kafka.client.max_poll_interval_ms": 3000})
    reference = build_detector(settings, Scorer(models[0], device="cpu")).process(ReadingBatch.from_arrays(entity, ts, values))
    opens = [e.at for e in reference.events if e.entity == "pump-b" and e.state == "open"]
    assert len(opens) == 1
    runners = [Running(StreamRunner(settings, models[0], checkpoint_interval_s=0.5))]
    producer = Producer(broker.bootstrap, topics["readings_topic"])
    release, hung = threading.Event(), []
    events = lambda r, states=("open", "update", "resolved"): sum(  # noqa: E731
        r.runner.metrics.sample("stream_ae_alerts_total", {"state": s}) or 0 for s in states)
    try:
        wait_for(lambda: len(runners[0].runner.metrics.assigned) == 4, 30, "the first consumer to own all partitions")
        runners.append(Running(StreamRunner(settings, models[0], checkpoint_interval_s=0.5)))
        wait_for(lambda: all(r.runner.metrics.assigned for r in runners)
                 and sorted(sum((r.runner.metrics.assigned for r in runners), [])) == [0, 1, 2, 3],
                 30, "the partitions to split between the two")
        producer.send(msgs[:quiet])
        total = lambda: sum(r.sample("stream_ae_windows_scored_total") for r in runners)  # noqa: E731
        wait_for(lambda: total() >= len(names) * (150 - T + 1), 60, "the quiet rows to be scored")
        owner, other = sorted(runners, key=lambda r: "pump-b" not in r.runner.detector.table)
        assert "pump-b" in owner.runner.detector.table
        checkpoints = owner.sample("stream_ae_checkpoints_total")
        wait_for(lambda: owner.sample("stream_ae_checkpoints_total") > checkpoints + 1, 30, "a checkpoint")

        prepare = owner.runner.detector.prepare

        def prepare_then_hang(batch):             # the owner's model hangs on the batch that opens the alert
            prep = prepare(batch)
            if not hung and np.any((batch.entity == "pump-b") & (batch.ts == opens[0])):
                hung.append(prep)
                score = prep.score
                prep.score = lambda: (release.wait(60), score())[1]
            return prep

        owner.runner.detector.prepare = prepare_then_hang
        owned = list(owner.runner.metrics.assigned)
        producer.send(msgs[quiet:])
        wait_for(lambda: len(other.runner.metrics.assigned) == 4, 60, "the group to give the stalled one's partitions away")
        wait_for(lambda: events(other) > 0, 60, "the survivor to publish pump-b's alert")
        published_by_owner = events(owner)
        release.set()                                          # the stall ends
        wait_for(lambda: owner.runner.metrics.assigned
                 and sorted(owner.runner.metrics.assigned + other.runner.metrics.assigned) == [0, 1, 2, 3],
                 60, "the stalled one to rejoin the group")
        published_after_the_stall = events(owner) - published_by_owner
        wait_for(lambda: sum(events(r, ("resolved",)) for r in runners) >= 1, 90, "pump-b's alert to resolve")
        time.sleep(1.0)
    finally:
        release.set()
        producer.close()
        for r in runners:
            if r.thread.is_alive():
                r.stop()
    alerts = read_alerts(broker.bootstrap, topics["alerts_topic"])
    ids = [x.event_id for x in alerts]
    assert len(ids) == len(set(ids)), "an alert event was published twice"
    assert [x.state for x in alerts if x.entity == "pump-b"] == ["open", "resolved"]
    assert published_after_the_stall == 0
    assert owner.runner.membership.refused >= 1                 # its probe after the stall was refused
    assert owner.sample("stream_ae_partitions_lost_total") == len(owned)   # what it held when it stalled
