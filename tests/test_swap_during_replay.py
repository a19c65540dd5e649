"""A hot reload meets a takeover's replay, or a rebalance (session 36's review of the recovery).

1. A model offered while a restored partition still replays its previous owner's readings waits
   until the replay has passed that owner: the model that published an alert must derive it
   again on the replay, or the alert it opened may never be updated or resolved.
2. A revoke while a model waits to be swapped in finishes the held readings with the old model
   and does not swap: the swap's checkpoint would commit with a blocking call, which kafka-python
   refuses on its IO thread, where it runs the listener, and the service would stop.
"""
from __future__ import annotations

import threading
from collections import namedtuple
from types import SimpleNamespace

import pytest

from test_stream_bounds import runner_with_fakes
from test_stream_detector import make_artifact, plant
from test_stream_runner import reading_bytes

pytestmark = pytest.mark.usefixtures("one_torch_thread")

Rec = namedtuple("Rec", "topic partition offset key value timestamp")


def other_model():
    from stream_ae.scoring import Scorer

    return Scorer(make_artifact(seed=1), device="cpu")


def test_a_model_offered_during_a_replay_is_swapped_in_once_the_replay_has_passed_the_previous_owner():
    from stream_ae.stream.checkpoint import PartitionRecord

    runner = runner_with_fakes()   # partition 0 read up to offset 100
    runner._consumer = SimpleNamespace(highwater=lambda tp: 150)
    runner._checkpointer.hold(0, PartitionRecord(0, 100, {0: 12}))   # as a restore leaves it
    old, new = runner.detector.model_version, other_model()
    try:
        runner.swap_scorer(new)
        runner._maybe_reload()
        assert runner.detector.model_version == old   # the replay is at 100 of the owner's 150
        runner.checkpoint()
        runner._maybe_reload()
        assert runner.detector.model_version == old   # still short of it: the hold stays
        runner._next_offsets[0] = 150
        runner.checkpoint()                           # passed: this checkpoint lets the hold go
        runner._maybe_reload()
        assert runner.detector.model_version == new.version
    finally:
        runner._checkpointer.close()


def test_a_partition_never_read_from_does_not_hold_a_swap_back():
    from stream_ae.stream.checkpoint import PartitionRecord

    runner = runner_with_fakes()
    runner._consumer = SimpleNamespace(highwater=lambda tp: 150)
    runner._checkpointer.hold(3, PartitionRecord(3, 100, {0: 12}))   # restored, no position known yet
    new = other_model()
    try:
        runner.swap_scorer(new)
        runner._maybe_reload()
        assert runner.detector.model_version == new.version
    finally:
        runner._checkpointer.close()


@pytest.mark.parametrize("waiting", [False, True], ids=["no model waiting", "a model waiting"])
def test_a_revoke_with_a_model_waiting_neither_blocks_the_io_thread_nor_swaps(waiting):
    """The listener runs on the consumer's own IO thread, as kafka-python runs it in a rebalance."""
    from kafka import KafkaConsumer, TopicPartition

    from stream_ae.stream.membership import GroupMembership

    consumer = KafkaConsumer(bootstrap_servers="127.0.0.1:9", group_id="g-revoke", api_version=(2, 8, 0),
                             enable_auto_commit=False)   # nothing listens there: the commit fails or blocks
    runner = runner_with_fakes()
    runner._consumer, runner.membership = consumer, GroupMembership(consumer, "readings")
    sent = []
    runner._publisher = SimpleNamespace(failed=False, forget=lambda parts: None,
                                        alert=lambda e, i: sent.append(e.event_id), dead_letter=lambda letter: None)
    ent, ts, vals = plant(n_rows=20, entities=("pump-a",))
    runner.batcher.add(0, [Rec("readings", 0, 100 + i, b"pump-a", reading_bytes(*r), 0)
                           for i, r in enumerate(zip(ent, ts, vals))])
    old = runner.detector.model_version
    if waiting:
        runner.swap_scorer(other_model())
    done, raised = threading.Event(), []

    def listener():
        try:
            runner.on_revoked({TopicPartition("readings", 0)})
        except BaseException as exc:  # noqa: BLE001 (kafka-python would log it and go on)
            raised.append(exc)
        done.set()

    try:
        consumer._manager.call_soon(listener)
        assert done.wait(60)
        assert raised == [] and runner._revoke_error is None
        assert runner.detector.model_version == old and runner._assigned == set()
        windows = runner.metrics.sample("stream_ae_windows_scored_total")
        assert windows == 20 - runner.detector.scorer.length + 1   # the held readings finished
    finally:
        runner._checkpointer.close()
        consumer.close(autocommit=False)
