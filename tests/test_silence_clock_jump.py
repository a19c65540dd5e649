"""A sensor whose clock jumps ahead moves its partition's time no further than its record's
Kafka timestamp.

Before, one reading stamped a day early (the codec accepts up to ``input.max_future_s``)
moved the partition's time a day on at once: every alert open on the partition resolved
although its entity still sent (and opened again under a new id), and every silence after it
stalled until the real time caught up with the bad stamp.
"""

from __future__ import annotations

import numpy as np
import pytest

from stream_ae.stream.detector_io import ReadingBatch
from test_stream_detector import STEP_NS, artifact, make_detector, plant, scorer  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_torch_thread")
DAY_NS = 86_400 * 10**9


def readings():
    """pump-a is in an alert from step 200 and goes silent for good at step 500; pump-c sends
    one reading at step 320 stamped a day early. Each record is stamped when its reading was
    taken (a live producer), so the bad one's record has the true time."""
    entity, ts, values = plant(n_rows=700, entities=("pump-a", "pump-b", "pump-c"), anomaly=None)
    step = (ts - ts.min()) // STEP_NS
    values[(entity == "pump-a") & (step >= 200), 1] += 25.0
    record_ts = ts.copy()
    bad = (entity == "pump-c") & (step == 320)
    ts = np.where(bad, ts + DAY_NS, ts)
    keep = ~((entity == "pump-a") & (step >= 500))
    return entity[keep], ts[keep], values[keep], record_ts[keep]


def run(detector, entity, ts, values, record_ts, chunk: int = 64):
    events = []
    for lo in range(0, len(ts), chunk):
        s = slice(lo, lo + chunk)
        n = len(ts[s])
        events += detector.process(ReadingBatch.from_arrays(entity[s], ts[s], values[s], np.zeros(n),
                                                            np.arange(lo, lo + n), record_ts[s])).events
    return events


@pytest.mark.parametrize("chunk", [1, 64])
def test_a_reading_stamped_a_day_early_neither_resolves_open_alerts_nor_stalls_silences(scorer, chunk):  # noqa: F811
    entity, ts, values, record_ts = readings()
    events = run(make_detector(scorer), entity, ts, values, record_ts, chunk)
    a = [e for e in events if e.entity == "pump-a"]
    assert len({e.alert_id for e in a}) == 1, [(e.state, e.at) for e in a]   # not resolved at the jump
    assert a[0].state == "open" and a[-1].state == "resolved"                # its silence still completes
    assert a[-1].at == ts[entity == "pump-a"].max()


def test_without_record_timestamps_the_jump_moves_the_time_as_before(scorer):  # noqa: F811
    """A record with no timestamp (<= 0) bounds nothing: the partition's time is the latest end."""
    entity, ts, values, record_ts = readings()
    events = run(make_detector(scorer), entity, ts, values, np.full_like(record_ts, -1_000_000))
    a = [e for e in events if e.entity == "pump-a"]
    assert len({e.alert_id for e in a}) == 2   # resolved at the jump, opened again, never resolved
    assert a[-1].state != "resolved"
