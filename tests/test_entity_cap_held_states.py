"""An evicted entity whose record aged out of the parked set, but is still held for the next
checkpoint, comes back with its state; states that leave memory are counted on /metrics."""
from __future__ import annotations

from stream_ae.stream.metrics import StreamMetrics


def _table():
    from stream_ae.alerts import AlertTracker
    from stream_ae.data.windows import SeriesWindower, WindowSpec
    from stream_ae.stream.entities import EntityState, EntityTable
    from stream_ae.thresholds import ThresholdSpec, build_threshold

    return EntityTable(lambda e: EntityState(e, SeriesWindower(WindowSpec(length=3), 1),
                                             build_threshold(ThresholdSpec(warmup=20)), AlertTracker()),
                       max_entities=2, max_parked=1)


def _flood(table):
    for i, name in enumerate("abcd"):
        state = table.get(name)
        state.windows, state.offsets = 5 + i, {0: 10 + i}
        table.mark_dirty(name)
        table.trim()


def test_an_entity_held_for_the_checkpoint_comes_back_with_its_state():
    from stream_ae.stream.checkpoint import decode_state

    table = _table()
    _flood(table)
    assert table.live() == ["c", "d"] and table.dropped == 1     # a's record aged out of the parked set
    assert table.holds("a")                                      # but waits, dirty, for the checkpoint
    state = table.get("a")
    assert (state.windows, state.offsets) == (5, {0: 10})        # not a fresh state
    table.mark_dirty("a")
    assert decode_state(table.take_dirty()["a"][1])["windows"] == 5


def test_a_change_reaches_a_state_held_for_the_checkpoint():
    from stream_ae.stream.checkpoint import decode_state

    table = _table()
    _flood(table)

    def bump(state):
        state.windows += 100
        return True
    assert table.change("a", bump) is True
    assert decode_state(table.take_dirty()["a"][1])["windows"] == 105


def test_dropped_states_are_counted_on_metrics():
    m, table = StreamMetrics(), _table()
    _flood(table)
    m.set_entities(table)
    assert m.sample("stream_ae_entity_evictions_total") == 2.0
    assert m.sample("stream_ae_entity_states_dropped_total") == 1.0
    m.set_entities(table)                                        # counted once
    assert m.sample("stream_ae_entity_states_dropped_total") == 1.0
