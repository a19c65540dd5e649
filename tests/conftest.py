"""Shared fixtures: one Kafka-compatible broker per test session (per xdist worker under
``make test``), uuid-named topics.

The broker is ``KAFKA_BOOTSTRAP_SERVERS`` if set, else testcontainers' Kafka if Docker
answers, else the embedded Tansu binary (see stream_ae/stream/broker.py). Tests that use
it are marked ``kafka``; they skip, saying why, when no broker can be had.
"""
from __future__ import annotations

import logging
import os
import uuid

import pytest

from stream_ae.stream.broker import BrokerUnavailable, create_topics, delete_topics, running_broker

# Tansu joins a group in about half the session timeout: keep it short there. Apache Kafka
# refuses less than group.min.session.timeout.ms (6000 by default).
SESSION_TIMEOUT_MS = {"embedded": 3000, "testcontainers": 6000, "external": 6000}


def pytest_configure(config):
    """An xdist worker shares the cores with the other: one torch thread each, or their thread
    pools spin against each other (a 2 s test took 21 s with two threads per worker on 2 cores)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _no_stray_log_handler():
    """A test that runs the CLI in-process leaves its ``basicConfig`` handler on the root logger,
    writing to that test's captured stderr; a later test that logs then prints "--- Logging
    error ---" into its own. Which test comes later depends on the order (``-n 2`` changes it):
    take such handlers off after each test, and put the root's level back."""
    root = logging.getLogger()
    before, level = set(root.handlers), root.level
    yield
    for h in [h for h in root.handlers if h not in before and type(h) is logging.StreamHandler]:
        root.removeHandler(h)
    root.setLevel(level)


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

