"""The drift watch counts flagged windows: a threshold that learns no flagged window stays stuck
under a new operating point, and the level of the windows it still calls normal never moves.

At least ``max_flagged`` of a horizon's windows flagged is an event of direction ``"flagged"``.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from stream_ae.drift import DriftMonitor, reference_level
from stream_ae.drift_marker import drift_marker_path
from stream_ae.errors import ConfigError
from stream_ae.thresholds import EvtThreshold, ThresholdSpec
from tests.test_drift import HOUR, _batch

MINUTE = 60 * 10**9
DAY = 1440  # scores a day, one a minute


def _feed(monitor, scores, flags, ts, batch: int = 64) -> list:
    found = []
    for i in range(0, len(scores), batch):
        found += monitor.update_many(scores[i:i + batch], ts=ts[i:i + batch], flags=flags[i:i + batch])
    return found


def _step_stream(days: int = 8, step_day: int = 3, seed: int = 0):
    """A calibrated SPOT threshold (as training leaves it) over scores a minute, +0.5 (ten times
    their mean) from ``step_day``: a sensor swapped, a new operating point."""
    rng = np.random.default_rng(seed)
    calibration = 0.05 * rng.exponential(size=5000)
    threshold = EvtThreshold(ThresholdSpec())
    threshold.fit(calibration)
    n = days * DAY
    scores = 0.05 * rng.exponential(size=n) + np.where(np.arange(n) >= step_day * DAY, 0.5, 0.0)
    flags, _ = threshold.step_many(scores)
    return scores, np.asarray(flags, dtype=bool), np.arange(n, dtype=np.int64) * MINUTE, \
        reference_level(calibration, threshold.value)


def test_a_step_the_threshold_flags_for_ever_is_reported_once_within_a_day():
    scores, flags, ts, reference = _step_stream()
    assert flags[3 * DAY:].mean() == 1.0 and flags[:3 * DAY].mean() < 0.01  # the lock-in the watch must see
    found = _feed(DriftMonitor(reference=reference), scores, flags, ts)
    assert [e.direction for e in found] == ["flagged"]
    event = found[0]
    hours_after = (event.ts - 3 * DAY * MINUTE) / HOUR
    assert 11 <= hours_after <= 13  # half of a day's windows flagged
    assert 0.5 <= event.flagged_share < 0.6
    # its level is of every window: the step (log 0.55 - log 0.05 ~ +2.4) shows in it
    assert event.mean_after - event.mean_before > 1.0
    assert json.loads(json.dumps(event.to_dict()))["direction"] == "flagged"


def test_the_same_stream_without_its_flags_is_an_up_step():
    """Fed every window as normal, the level moves: what the watch reported before it counted flags."""
    scores, flags, ts, reference = _step_stream()
    found = _feed(DriftMonitor(reference=reference), scores, np.zeros_like(flags), ts)
    assert [e.direction for e in found] == ["up"]


def test_anomalies_under_the_share_are_no_event():
    """A week with 30 % of the windows flagged, in bursts of two hours: faults, not a stuck threshold."""
    rng = np.random.default_rng(1)
    n = 7 * DAY
    ts = np.arange(n, dtype=np.int64) * MINUTE
    flags = (np.arange(n) // 120) % 10 < 3
    scores = rng.lognormal(0.0, 0.2, n) * np.where(flags, 20.0, 1.0)
    assert _feed(DriftMonitor(reference=0.0), scores, flags, ts) == []
    assert _feed(DriftMonitor(reference=0.0, max_flagged=0.25), scores, flags, ts)[0].direction == "flagged"


def test_one_event_per_excursion_and_another_after_the_share_falls_back():
    """Two days flagged, four days normal, two days flagged: two events, none while the first lasts."""
    rng = np.random.default_rng(2)
    n = 10 * DAY
    day = np.arange(n) // DAY
    flags = ((day >= 2) & (day < 4)) | (day >= 8)
    ts = np.arange(n, dtype=np.int64) * MINUTE
    found = _feed(DriftMonitor(reference=0.0), rng.lognormal(0.0, 0.2, n), flags, ts)
    assert [e.direction for e in found] == ["flagged", "flagged"]
    assert [int(e.ts // (DAY * MINUTE)) for e in found] == [2, 8]


def test_a_restore_mid_excursion_reports_nothing_twice_and_an_old_state_loads():
    scores, flags, ts, reference = _step_stream()
    whole = DriftMonitor(reference=reference)
    expected = _feed(whole, scores, flags, ts)
    cut = 3 * DAY + 16 * 60  # 16 hours into the step: the event is out
    part = DriftMonitor(reference=reference)
    first = _feed(part, scores[:cut], flags[:cut], ts[:cut])
    resumed = DriftMonitor(reference=reference)
    resumed.load_state_dict(json.loads(json.dumps(part.state_dict())))
    assert first + _feed(resumed, scores[cut:], flags[cut:], ts[cut:]) == expected
    assert resumed.state_dict() == whole.state_dict()
    # a state saved before flagged windows were counted: buckets of three, no max_flagged, no standing
    old = part.state_dict()
    del old["params"]["max_flagged"]
    for key in old["keys"].values():
        key["buckets"] = [cell[:3] for cell in key["buckets"]]
        del key["flagged"]
    again = DriftMonitor(reference=reference)
    again.load_state_dict(old)
    assert again.state_dict()["keys"]["__model__"]["seen"] == old["keys"]["__model__"]["seen"]
    with pytest.raises(ConfigError, match="saved with"):
        DriftMonitor(reference=reference, max_flagged=0.9).load_state_dict(part.state_dict())


@pytest.mark.parametrize("share", [0.0, -0.1, 1.5, float("nan")])
def test_max_flagged_is_a_share(share):
    with pytest.raises(ConfigError, match="max_flagged"):
        DriftMonitor(max_flagged=share)


def test_the_stream_watch_reports_a_stuck_fleet_and_writes_the_retrain_marker(tmp_path):
    """Every window flagged after a day at the reference: the metric, the marker; no batch is
    left out of the time (a stream of flagged windows still closes the horizon's hours)."""
    from stream_ae.stream.drift_watch import DriftWatch
    from stream_ae.stream.metrics import StreamMetrics
    from stream_ae.stream.settings import load_settings

    settings = load_settings(env={}, overrides=[f"model.registry={tmp_path}", "model.deployment=prod"])
    metrics = StreamMetrics()
    watch = DriftWatch(settings, metrics)
    for i in range(60):  # 30 hours at the reference
        assert watch.observe(_batch(i, 0.0), "v1", reference=0.0) == []
    found = [e for i in range(60, 120) for e in watch.observe(_batch(i, 3.0, flagged=True), "v1", reference=0.0)]
    assert [e.direction for e in found] == ["flagged"]
    assert metrics.sample("stream_ae_drift_events_total", {"direction": "flagged"}) == 1
    marker = json.loads((tmp_path / drift_marker_path("prod")).read_text())
    assert marker["event"]["direction"] == "flagged"


def test_the_share_is_a_setting_checked_at_start(tmp_path):
    from stream_ae.stream.drift_watch import DriftWatch
    from stream_ae.stream.metrics import StreamMetrics
    from stream_ae.stream.settings import load_settings

    watch = DriftWatch(load_settings(env={}, overrides=["drift.max_flagged=0.9"]), StreamMetrics())
    for i in range(60):
        watch.observe(_batch(i, 0.0), "v1", reference=0.0)
    # 60 % of the windows flagged: under 0.9
    found = [e for i in range(60, 160) for e in watch.observe(_batch(i, 3.0, flagged=i % 5 < 3), "v1", reference=0.0)]
    assert [e.direction for e in found if e.direction == "flagged"] == []
    with pytest.raises(ConfigError, match="max_flagged"):
        load_settings(env={}, overrides=["drift.max_flagged=1.5"])


def test_a_horizon_too_short_for_the_rate_of_scores_is_told_once(caplog):
    """drift.horizon = "30s" with a score sampled every half minute: no horizon ever holds the 200
    scores a level is judged over; the watch says so once, where before it stayed silent."""
    from stream_ae.stream.drift_watch import DriftWatch
    from stream_ae.stream.metrics import StreamMetrics
    from stream_ae.stream.settings import load_settings

    with caplog.at_level("WARNING", logger="stream_ae.stream.drift_watch"):
        for horizon, told in (("30s", 1), ("1d", 0)):
            caplog.clear()
            watch = DriftWatch(load_settings(env={}, overrides=[f"drift.horizon={horizon}"]), StreamMetrics())
            for i in range(120):   # 60 hours
                watch.observe(_batch(i, 0.0), "v1", reference=0.0)
            starved = [r.getMessage() for r in caplog.records if "judges nothing" in r.getMessage()]
            assert len(starved) == told
            assert all("lengthen drift.horizon" in m and "of 30s" in m for m in starved)
    monitor = DriftMonitor(horizon_s=60.0, reference=0.0)
    monitor.update_many(np.ones(600), ts=np.arange(600, dtype=np.int64) * MINUTE)
    assert monitor.starved() and not DriftMonitor().starved()
