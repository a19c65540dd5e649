"""What a restore keeps live: the state topic holds a record for every entity ever checkpointed
(a past flood's ids too, and a moved entity's old record in its old partition)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from test_stream_bounds import runner_with_fakes

from stream_ae.stream import runner as runner_module
from stream_ae.stream.checkpoint import decode_state, encode_state
from stream_ae.stream.recovery import Restored

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _snapshot(runner, entity: str, last_ts: int, windows: int) -> dict:
    state = runner.detector.table.get(entity)
    state.windower._last_ts, state.windows = last_ts, windows
    snap = decode_state(encode_state(state.state_dict()))
    runner.detector.table.restore(entity, snap)   # then gone: the restart starts from an empty table
    runner.detector.table._live.pop(entity)
    return snap


def _restart(monkeypatch, held: dict[int, dict[str, dict]], runner):
    restored = {p: Restored(entities=dict(entities)) for p, entities in held.items()}
    def take_over(settings, parts, fence, progress):
        progress()   # a poll of the topics that brought records
        return restored, set(), {}, set(), {}
    monkeypatch.setattr(runner_module, "take_over", take_over)
    runner._consumer = SimpleNamespace(seek=lambda tp, o: None, position=lambda tp, timeout_ms: 0,
                                       group_metadata=lambda: SimpleNamespace(generation_id=1))
    runner.membership = SimpleNamespace(assigned=lambda parts, resume: None, commit=lambda *a, **k: None)
    runner._checkpointer.restored = lambda ends, letter_ends: None
    runner._publisher.already_sent = set()
    runner._to_restore = set(held)
    runner._restore({})
    return runner.detector.table


def test_after_a_past_flood_a_restart_keeps_the_long_lived_entities(monkeypatch):
    """The flood's ids, written after the pumps' first records, were restored after them and
    pushed them out of a table of 8: both pumps came back empty, and the next checkpoint wrote
    that over their records for good."""
    runner = runner_with_fakes()
    runner.detector.table.max_entities = runner.detector.table.max_parked = 8
    held = {"pump-a": _snapshot(runner, "pump-a", last_ts=10_000, windows=110)}
    held.update({f"junk-{i}": _snapshot(runner, f"junk-{i}", last_ts=500 + i, windows=1) for i in range(40)})
    held["pump-b"] = _snapshot(runner, "pump-b", last_ts=10_001, windows=110)
    held = {"pump-a": held["pump-a"], **held}   # first written first, as the topic holds them
    table = _restart(monkeypatch, {0: held}, runner)
    assert table.holds("pump-a") and table.holds("pump-b")
    assert {table.get(e).windows for e in ("pump-a", "pump-b")} == {110}


def test_an_entity_that_moved_partition_is_restored_from_its_newest_record(monkeypatch):
    """Partitions were added: the entity's readings went from partition 1 to 0, and its old
    record stayed in state partition 1, restored after partition 0's and over it."""
    runner = runner_with_fakes()
    now = _snapshot(runner, "pump-b", last_ts=28_000, windows=265)
    before = _snapshot(runner, "pump-b", last_ts=9_900, windows=85)
    table = _restart(monkeypatch, {0: {"pump-b": now}, 1: {"pump-b": before}}, runner)
    assert table.get("pump-b").windows == 265
