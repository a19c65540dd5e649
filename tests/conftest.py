"""Shared fixtures: one Kafka-compatible broker per test session, uuid-named topics.

The broker is ``KAFKA_BOOTSTRAP_SERVERS`` if set, else testcontainers' Kafka if Docker
answers, else the embedded Tansu binary (see stream_ae/stream/broker.py). Tests that use
it are marked ``kafka``; they skip, saying why, when no broker can be had.
"""
from __future__ import annotations

import uuid

import pytest

from stream_ae.stream.broker import BrokerUnavailable, create_topics, delete_topics, running_broker

# Tansu joins a group in about half the session timeout: keep it short there. Apache Kafka
# refuses less than group.min.session.timeout.ms (6000 by default).
SESSION_TIMEOUT_MS = {"embedded": 3000, "testcontainers": 6000, "external": 6000}


@pytest.fixture(scope="session")
def broker():
    """A running broker (``.bootstrap``, ``.kind``) shared by the whole session."""
    try:
        with running_broker() as b:
            yield b
    except BrokerUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture
def topic_factory(broker):
    """``make(partitions=1, compact=False) -> name``: a fresh topic, deleted at teardown."""
    made: list[str] = []

    def make(partitions: int = 1, compact: bool = False, prefix: str = "t") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        create_topics(broker.bootstrap, {name: partitions}, compact={name} if compact else ())
        made.append(name)
        return name

    yield make
    delete_topics(broker.bootstrap, made)


@pytest.fixture
def kafka_config(broker):
    """Consumer settings for tests: fresh group id, ``earliest``, short session timeout."""
    session_ms = SESSION_TIMEOUT_MS[broker.kind]
    return {
        "bootstrap_servers": broker.bootstrap,
        "group_id": f"g-{uuid.uuid4().hex[:12]}",
        "auto_offset_reset": "earliest",
        "session_timeout_ms": session_ms,
        "heartbeat_interval_ms": session_ms // 3,
        "enable_auto_commit": False,
    }


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny test models gain nothing from a second thread; on shared, busy cores they wait
    10-1000x longer for it. Modules opt in with ``pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

