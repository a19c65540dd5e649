"""A revoke that takes longer than the session timeout keeps the member in the group.

kafka-python 3 sends heartbeats from the event loop its rebalance listener runs on. The runner's
and the archiver's revoke does real work (finish the batches, write a checkpoint or files), and
a plain listener blocked the heartbeats for as long as that took: past
``kafka.session_timeout_ms`` the group evicted the member and gave its partitions to another
while it was still publishing for them. The listener now waits for the work off the loop
(``stream_ae/stream/rebalance.py``).
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from stream_ae.stream.rebalance import rebalance_listener

SESSION_MS, SLOW_S = 3000, 10.0


class _Owner:
    """What the runner and the archiver give the listener; the first revoke takes ``SLOW_S``."""

    def __init__(self, name: str, events: list, t0: float):
        self.name, self.events, self.t0, self.slow = name, events, t0, True

    def note(self, what: str, partitions=()) -> None:
        self.events.append((time.monotonic() - self.t0, self.name, what, sorted(tp.partition for tp in partitions)))

    def on_revoked(self, revoked):
        if revoked and self.slow:
            self.slow = False
            self.note("revoke begins", revoked)
            time.sleep(SLOW_S)
            self.note("revoke ends", revoked)

    def on_assigned(self, assigned):
        self.note("assigned", assigned)

    def on_lost(self, lost):
        self.note("lost", lost)


def test_the_listener_waits_for_the_owner_off_the_client_event_loop():
    from kafka import AsyncConsumerRebalanceListener

    assert isinstance(rebalance_listener(_Owner("a", [], 0.0)), AsyncConsumerRebalanceListener)


@pytest.mark.kafka
def test_a_revoke_past_the_session_timeout_hands_nothing_on_before_it_ends(broker, topic_factory):
    """Member A owns both partitions; B joins, and A's revoke takes twice the session timeout.
    With the blocking listener B was assigned both partitions while A's revoke still ran."""
    from kafka import KafkaConsumer

    topic = topic_factory(2)
    group = f"slow-revoke-{uuid.uuid4().hex[:8]}"
    events: list = []
    t0 = time.monotonic()
    stop = threading.Event()
    errors: list = []

    def member(name: str, start: threading.Event | None):
        try:
            if start is not None:
                start.wait(60)
            consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=group, enable_auto_commit=False,
                                     session_timeout_ms=SESSION_MS, heartbeat_interval_ms=1000,
                                     max_poll_interval_ms=60_000)
            consumer.subscribe([topic], listener=rebalance_listener(_Owner(name, events, t0)))
            while not stop.is_set():
                consumer.poll(timeout_ms=100)
            consumer.close(autocommit=False)
        except Exception as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    a_assigned = threading.Event()
    threads = [threading.Thread(target=member, args=("A", None)),
               threading.Thread(target=member, args=("B", a_assigned))]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 90
        while not any(e[1:3] == ("A", "assigned") and e[3] == [0, 1] for e in events):
            assert time.monotonic() < deadline, events
            time.sleep(0.05)
        a_assigned.set()   # now B joins, and A's revoke is the slow one
        while not ({e[1] for e in events if e[2] == "assigned" and e[3] and e[0] > _ends(events, "A")} >= {"A", "B"}):
            assert time.monotonic() < deadline and not errors, (events, errors)
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors
    revoke_ends = _ends(events, "A")
    b_first = min(e[0] for e in events if e[1:3] == ("B", "assigned") and e[3])
    begun = next(e[0] for e in events if e[1:3] == ("A", "revoke begins"))
    assert revoke_ends - begun >= SLOW_S and b_first > revoke_ends, events
    assert not [e for e in events if e[2] == "lost"], events   # A was never evicted


def _ends(events: list, name: str) -> float:
    return next((e[0] for e in events if e[1:3] == (name, "revoke ends")), float("inf"))
