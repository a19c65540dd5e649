"""What the consumer holds stays bounded over a long run: the states evicted by an entity flood
between two checkpoints, and the event ids a restore found published."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from test_state_codec import _GatedProducer
from test_stream_detector import make_artifact

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def table(max_entities: int, max_parked: int):
    from stream_ae.alerts import AlertTracker
    from stream_ae.data.windows import SeriesWindower, WindowSpec
    from stream_ae.stream.entities import EntityState, EntityTable

    class Threshold:
        def state_dict(self):
            return {}

        def load_state_dict(self, d):
            pass

    return EntityTable(lambda e: EntityState(e, SeriesWindower(WindowSpec(length=3), 1), Threshold(), AlertTracker()),
                       max_entities=max_entities, max_parked=max_parked)


def test_a_flood_of_new_ids_calls_for_a_checkpoint_once_more_evicted_states_wait_than_the_parked_cap():
    t = table(max_entities=4, max_parked=3)
    for i in range(7):
        t.get(f"id-{i}")
        t.mark_dirty(f"id-{i}")
        t.trim()
    assert not t.overflowing()  # 3 evicted, dirty: at the cap
    t.get("id-7")
    t.mark_dirty("id-7")
    t.trim()
    assert t.overflowing()
    assert len(t.take_dirty()) == 4 + 4 and not t.overflowing()  # the checkpoint writes them


def runner_with_fakes():
    from stream_ae.stream.checkpoint import Checkpointer
    from stream_ae.stream.runner import StreamRunner
    from stream_ae.stream.settings import load_settings

    runner = StreamRunner(load_settings(env={}, overrides=["model.device=cpu"]), make_artifact())
    producer = _GatedProducer()
    producer.gate.set()
    runner._checkpointer = Checkpointer(producer, "state", 5.0)
    runner._publisher = SimpleNamespace(failed=False)
    runner.membership = SimpleNamespace(fresh=lambda: True, confirm=lambda: True, commit=lambda *a, **k: None)
    runner._assigned, runner._next_offsets = {0}, {0: 100}
    return runner


def test_a_flood_checkpoints_before_the_interval(monkeypatch):
    runner = runner_with_fakes()
    runner._consumer = SimpleNamespace(poll=lambda **kw: {})
    runner.metrics.update_lag = lambda consumer: None
    calls = []
    monkeypatch.setattr(runner, "checkpoint", lambda **kw: calls.append(kw))
    runner.step()
    assert calls == []  # the interval is not over
    monkeypatch.setattr(runner.detector.table, "overflowing", lambda: True)
    runner.step()
    assert calls == [{"wait": False}]
    runner._checkpointer.close()


def test_the_ids_a_restore_found_published_go_once_every_replay_has_passed_its_previous_owner():
    from stream_ae.stream.checkpoint import PartitionRecord

    runner = runner_with_fakes()
    highwater = {"now": 150}
    runner._consumer = SimpleNamespace(highwater=lambda tp: highwater["now"])
    runner.detector.suppress({"a1-3", "other-partition-7"})  # as a restore of partition 0 leaves them
    runner._checkpointer.hold(0, PartitionRecord(0, 80, {0: 12}))
    try:
        runner.checkpoint()  # the replay is at 100 of 150: still held
        assert runner.detector._published.ids == {"a1-3", "other-partition-7"}
        runner._next_offsets[0] = 150
        runner.checkpoint()  # passed: no replay derives any of them now
        assert runner.detector._published.ids == set() and not runner._checkpointer.holding()
    finally:
        runner._checkpointer.close()
