"""The drift level is judged only over a horizon that holds scores about as widely as usual, and
in the stream a window's time is bounded by its record's Kafka timestamp.

Before: an outage shorter than the horizon, or one just over it (24 h 2 min with a day's
horizon: the bucket before it stayed in), left a horizon of some hours of the daily rhythm,
which was judged and reported as drift ("up" writes the retrain marker). And a micro-batch of a
single window stamped a day ahead (the codec accepts up to ``input.max_future_s``, a day) passed
the batch-median clock-fault filter: its bucket closed the day at once, judged on an hour.
"""

from __future__ import annotations

import numpy as np
import pytest

from stream_ae.drift import MODEL_KEY, DriftMonitor
from stream_ae.stream.detector_io import ReadingBatch
from test_drift import HOUR, feed
from test_stream_detector import artifact, make_detector, plant, scorer  # noqa: F401

MIN = HOUR // 60


def rhythm(days: float, seed: int = 0, every: int = MIN // 4, step: float = 0.0, step_day: float = 99.0):
    """Scores whose log level swings +/-0.3 over each day, 4 a minute, plus a ``step`` from ``step_day``."""
    ts = np.arange(int(days * 24 * HOUR // every), dtype=np.int64) * every
    day = ts / (24 * HOUR)
    level = 0.3 * np.sin(2 * np.pi * day) + np.where(day >= step_day, step, 0.0)
    return np.exp(level) * np.random.default_rng(seed).lognormal(0.0, 0.3, len(ts)), ts


@pytest.mark.parametrize("outage_h", [12.0, 18.0, 22.0, 23.5, 24 + 2 / 60])
@pytest.mark.parametrize("start_h", [0, 4, 6, 9, 14, 20])
def test_an_outage_inside_the_horizon_is_not_judged_as_drift(outage_h, start_h):
    scores, ts = rhythm(6)
    last = 2 * 24 * HOUR + start_h * HOUR + 55 * MIN
    keep = (ts < last) | (ts >= last + int(outage_h * HOUR))
    assert feed(DriftMonitor(reference=0.0), scores[keep], ts[keep]) == []


def test_a_step_after_an_outage_is_still_reported():
    scores, ts = rhythm(8, step=0.5, step_day=5.0)
    last = 2 * 24 * HOUR + 6 * HOUR
    keep = (ts < last) | (ts >= last + 20 * HOUR)
    events = feed(DriftMonitor(reference=0.0), scores[keep], ts[keep])
    assert [e.direction for e in events] == ["up"]
    assert 5 * 24 * HOUR < events[0].ts < 6 * 24 * HOUR


def test_a_stream_that_stops_every_night_is_judged_again_after_two_days_of_it():
    """Idle 8 hours a night from day 3 on: the new usual after two horizons; a step on day 7 is seen."""
    scores, ts = rhythm(10, step=0.5, step_day=7.0)
    hour_of_day = (ts // HOUR) % 24
    keep = (ts < 3 * 24 * HOUR) | (hour_of_day >= 8)
    monitor = DriftMonitor(reference=0.0)
    events = feed(monitor, scores[keep], ts[keep])
    assert [e.direction for e in events] == ["up"] and 7 * 24 * HOUR < events[0].ts < 8 * 24 * HOUR
    assert monitor._keys[MODEL_KEY].usual == 16


def test_the_coverage_it_judges_by_restores_exactly():
    scores, ts = rhythm(4)
    last = 2 * 24 * HOUR
    keep = (ts < last) | (ts >= last + 10 * HOUR)
    s, t = scores[keep], ts[keep]
    cut = int(np.searchsorted(t, last + 14 * HOUR))
    whole, first = DriftMonitor(reference=0.0), DriftMonitor(reference=0.0)
    feed(whole, s, t)
    feed(first, s[:cut], t[:cut])
    second = DriftMonitor(reference=0.0)
    second.load_state_dict(first.state_dict())
    assert second._keys[MODEL_KEY].short > 0
    feed(second, s[cut:], t[cut:])
    assert second.state_dict() == whole.state_dict()


def test_a_window_stamped_a_day_ahead_gives_the_drift_watch_its_record_time(scorer):  # noqa: F811
    entity, ts, values = plant(n_rows=300, entities=("pump-a", "pump-b"), anomaly=None)
    record_ts = ts.copy()
    ahead = ts.copy()
    ahead[-1] += 23 * HOUR   # the last reading's sensor clock is 23 h ahead; its record is stamped now
    detector = make_detector(scorer)
    n = len(ts)
    detector.process(ReadingBatch.from_arrays(entity[:-1], ahead[:-1], values[:-1], np.zeros(n - 1),
                                              np.arange(n - 1), record_ts[:-1]))
    out = detector.process(ReadingBatch.from_arrays(entity[-1:], ahead[-1:], values[-1:], np.zeros(1),
                                                    np.array([n - 1]), record_ts[-1:]))
    assert out.windows_scored == 1
    assert out.end_ts[0] == record_ts[-1] < ahead[-1]
