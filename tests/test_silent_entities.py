"""An alert whose entity goes silent resolves once its partition's event time has moved on.

Before, such an alert stayed open for good: only a window of its own entity could end its
quiet period. The rule must not depend on how the readings fall into micro-batches, nor on
a restart in between, or a replay would publish other events than the run it replaces.
"""

from __future__ import annotations

import numpy as np
import pytest

from stream_ae.stream.checkpoint import decode_state
from test_stream_detector import STEP_NS, artifact, make_detector, plant, run, scorer  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SILENCE_NS = 5 * 20 * STEP_NS  # the default: 5 x quiet_s (20 s in make_detector's policy)


def readings():
    """pump-b's anomaly opens an alert, then pump-b goes silent for good; pump-a goes silent
    for 250 s in an alert of its own and comes back; pump-c's clock runs 150 s behind the
    others (more than the silence) through an anomaly of its own."""
    entity, ts, values = plant(n_rows=700, entities=("pump-a", "pump-b", "pump-c"), anomaly=("pump-b", 250, 300))
    step = (ts - ts.min()) // STEP_NS
    values[(entity == "pump-a") & (step >= 100) & (step < 160), 1] += 25.0
    values[(entity == "pump-c") & (step >= 400) & (step < 440), 1] += 25.0
    ts = np.where(entity == "pump-c", ts - 150 * STEP_NS, ts)
    keep = ~((entity == "pump-b") & (step >= 290)) & ~((entity == "pump-a") & (step >= 150) & (step < 400))
    return entity[keep], ts[keep], values[keep]


def key(events):
    """Each entity's events in order (what the alerts topic, keyed by entity, keeps in order; a
    silence is noticed at the end of a batch, so entities' events may interleave differently)."""
    out: dict[str, list] = {}
    for e in events:
        out.setdefault(e.entity, []).append((e.event_id, e.state, e.at, float(e.score)))
    return out


def test_the_alert_of_an_entity_that_went_silent_resolves_when_the_silence_is_complete(scorer):  # noqa: F811
    entity, ts, values = readings()
    events, _, _ = run(make_detector(scorer), entity, ts, values, chunk=64, partition=0)
    b = [e for e in events if e.entity == "pump-b"]
    assert b[0].state == "open" and b[-1].state == "resolved" and len({e.alert_id for e in b}) == 1
    assert b[-1].at == ts[entity == "pump-b"].max()  # its last window's end: the last it showed
    a = [(e.state, e.at) for e in events if e.entity == "pump-a"]
    back = ts[(entity == "pump-a") & (ts > ts.min() + 300 * STEP_NS)].min()
    assert ("resolved", int(ts[entity == "pump-a"][ts[entity == "pump-a"] < back].max())) in a
    c = [e.state for e in events if e.entity == "pump-c"]  # lagging, not silent: one alert, no flapping
    assert c[0] == "open" and c.count("open") == 1 and c[-1] == "resolved"


@pytest.mark.parametrize("chunk", [1, 37, 500])
def test_silence_resolves_the_same_events_however_the_readings_are_batched(scorer, chunk):  # noqa: F811
    entity, ts, values = readings()
    reference, _, _ = run(make_detector(scorer), entity, ts, values, chunk=64, partition=0)
    events, _, _ = run(make_detector(scorer), entity, ts, values, chunk=chunk, partition=0)
    assert key(events) == key(reference)


def test_silence_resolves_the_same_events_across_a_restart(scorer):  # noqa: F811
    entity, ts, values = readings()
    reference, _, _ = run(make_detector(scorer), entity, ts, values, chunk=64, partition=0)
    cut = int(np.flatnonzero(entity == "pump-b").max()) + 40  # after pump-b's last reading, before its resolve
    first = make_detector(scorer)
    head, _, _ = run(first, entity[:cut], ts[:cut], values[:cut], chunk=64, partition=0)
    second = make_detector(scorer)  # a new owner: the checkpointed entities and the partition's time
    for name, (_, record) in first.table.take_dirty().items():
        second.restore(name, decode_state(record))
    second.clocks.resume(0, first.clocks.now[0])
    tail, _, _ = run(second, entity[cut:], ts[cut:], values[cut:], chunk=64, partition=0, offset0=cut)
    assert key(head + tail) == key(reference)
    assert "resolved" in [e.state for e in tail if e.entity == "pump-b"]
