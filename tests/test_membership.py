"""The zombie guard (``stream_ae.stream.membership``) with a stand-in consumer: when it probes the
group, what it commits, and what a refusal does."""
from __future__ import annotations

import pytest
from kafka.errors import CommitFailedError, KafkaTimeoutError

from stream_ae.stream.membership import GroupMembership


class FakeConsumer:
    """Records commits; ``refuse`` makes the next synchronous commit fail like an evicted member's."""

    def __init__(self, session_ms=10_000, heartbeat_ms=3_000, max_poll_ms=300_000):
        self.config = {"session_timeout_ms": session_ms, "heartbeat_interval_ms": heartbeat_ms,
                       "max_poll_interval_ms": max_poll_ms}
        self.commits, self.async_commits, self.refuse = [], [], None

    def commit(self, offsets, timeout_ms=None):
        self.commits.append({tp.partition: om.offset for tp, om in offsets.items()})
        if self.refuse is not None:
            raise self.refuse

    def commit_async(self, offsets, callback):
        self.async_commits.append((offsets, callback))


@pytest.fixture
def clock():
    now = [100.0]
    return now


def member(consumer, clock):
    return GroupMembership(consumer, "readings", clock=lambda: clock[0])


def test_the_stall_limit_is_half_the_time_in_which_the_group_can_evict():
    assert member(FakeConsumer(), [0.0]).stall_s == 3.5      # (10 s session - 3 s heartbeat) / 2
    assert member(FakeConsumer(max_poll_ms=4_000), [0.0]).stall_s == 2.0


def test_a_loop_that_polls_on_time_never_probes(clock):
    consumer = FakeConsumer()
    m = member(consumer, clock)
    m.assigned([0, 1], {0: 10, 1: 20})
    for _ in range(100):
        clock[0] += 3.0                                      # under the 3.5 s limit each time
        assert m.confirm() and m.fresh()
    assert consumer.commits == [] and m.probes == 0


def test_after_a_stall_nothing_is_fresh_until_a_probe_commits_the_known_positions(clock):
    consumer = FakeConsumer()
    m = member(consumer, clock)
    m.assigned([0, 1, 2], {0: 10, 1: 20})                   # partition 2: no known position
    clock[0] += 4.0
    assert not m.fresh()
    assert m.confirm() and m.fresh()
    assert consumer.commits == [{0: 10, 1: 20}]              # the offsets already committed: a no-op


def test_a_refused_probe_keeps_the_member_from_publishing(clock):
    consumer = FakeConsumer()
    m = member(consumer, clock)
    m.assigned([0], {0: 10})
    clock[0] += 60.0
    consumer.refuse = CommitFailedError("UnknownMemberIdError")
    assert not m.confirm() and not m.fresh() and m.refused == 1
    consumer.refuse = KafkaTimeoutError("coordinator unreachable")   # not a refusal: still unconfirmed
    assert not m.confirm() and not m.fresh() and m.refused == 1
    m.forget([0])                                            # on_partitions_lost: nothing left to guard
    assert m.confirm() and m.fresh() and len(consumer.commits) == 2


def test_commits_update_the_probe_positions_only_for_partitions_still_owned(clock):
    consumer = FakeConsumer()
    m = member(consumer, clock)
    m.assigned([0, 1], {})
    m.commit({0: 50, 1: 60}, blocking=False)                 # in a listener: asynchronous
    offsets, callback = consumer.async_commits[0]
    m.forget([1])                                            # revoked before the answer came
    callback(offsets, object())
    assert m.positions == {0: 50}
    m.commit({0: 70}, blocking=True)
    assert consumer.commits[-1] == {0: 70} and m.positions == {0: 70}
    consumer.refuse = CommitFailedError("rebalancing")
    m.commit({0: 80}, blocking=True)                         # logged, not raised; the position stays
    assert m.positions == {0: 70}
