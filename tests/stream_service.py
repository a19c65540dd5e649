"""Running the stream service in tests: ports, HTTP, topics, settings, a paced producer, the
alerts topic read back, a StreamRunner in a thread (shared by the stream, scale-out and loop tests)."""
from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from stream_ae.stream import codec
from test_stream_detector import CHANNELS

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_for(cond, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def stream_topics(topic_factory, partitions: int) -> dict[str, str]:
    return {"readings_topic": topic_factory(partitions, prefix="readings"),
            "alerts_topic": topic_factory(1, prefix="alerts"),
            "dead_letter_topic": topic_factory(1, prefix="dlq"),
            "state_topic": topic_factory(partitions, compact=True, prefix="state")}


def overrides_for(kafka_config: dict, topics: dict, **extra) -> list[str]:
    out = [f"kafka.bootstrap_servers={kafka_config['bootstrap_servers']}",
           f"kafka.group_id={kafka_config['group_id']}",
           f"kafka.session_timeout_ms={kafka_config['session_timeout_ms']}",
           "batch.max_size=200", "batch.max_wait_ms=20", "model.device=cpu", "alerts.k=2", "alerts.n=4",
           "alerts.update_interval_s=1000", "alerts.quiet_s=20", "ops.metrics_port=0", "ops.health_port=0"]
    out += [f"kafka.{k}={v}" for k, v in topics.items()]
    return out + [f"{k}={v}" for k, v in extra.items()]


def settings_for(kafka_config: dict, topics: dict, **extra):
    from stream_ae.stream.settings import load_settings

    return load_settings(env={}, overrides=overrides_for(kafka_config, topics, **extra))


def messages(entity, ts, values) -> list[tuple[bytes, bytes]]:
    return [(str(e).encode(), codec.encode_reading(codec.Reading(
        entity=str(e), ts=int(t) // 1_000_000, values={c: float(v) for c, v in zip(CHANNELS, row)})))
        for e, t, row in zip(entity, ts, values)]


class Producer:
    """Sends (key, value) pairs, all at once or paced in a background thread."""

    def __init__(self, bootstrap: str, topic: str):
        from kafka import KafkaProducer

        self.topic, self.sent = topic, 0
        self._producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
        self._thread = None

    def send(self, msgs) -> None:
        for k, v in msgs:
            self._producer.send(self.topic, key=k, value=v)
            self.sent += 1
        self._producer.flush()

    def start_paced(self, msgs, per_s: float) -> None:
        def run():
            for i in range(0, len(msgs), 20):
                self.send(msgs[i:i + 20])
                time.sleep(20 / per_s)

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self._thread.join(60)
        self._producer.close()


def read_alerts(bootstrap: str, topic: str) -> list:
    from kafka import KafkaConsumer, TopicPartition

    from stream_ae.stream.recovery import read_to_end

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        records = read_to_end(consumer, {TopicPartition(topic, p): None for p in sorted(parts)})
        return [codec.decode_alert(r.value) for r in records]
    finally:
        consumer.close()


class Running:
    """A StreamRunner in a thread; ``stop()`` is graceful and re-raises the runner's error."""

    def __init__(self, runner):
        self.runner, self.stop_event, self.errors = runner, threading.Event(), []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            self.runner.run(self.stop_event)
        except BaseException as exc:  # re-raised in the test thread by stop()
            self.errors.append(exc)

    def sample(self, name: str) -> float:
        return self.runner.metrics.sample(name) or 0.0

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(30)
        if self.errors:
            raise self.errors[0]
        assert not self.thread.is_alive(), "the runner did not stop on the stop flag"
