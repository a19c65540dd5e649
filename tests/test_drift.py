"""Drift of the score stream: the level over a day of event time against the model's starting
level; a step and a creep once each, a strong daily rhythm never; exact resume."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stream_ae.drift import REFERENCE_METRIC, DriftEvent, DriftMonitor, artifact_reference, reference_level
from stream_ae.drift_marker import drift_marker_path, report_drift
from stream_ae.errors import ConfigError

HOUR = 3600 * 10**9
EVERY = HOUR // 20  # a score every 3 minutes


def plant(days: float, seed: int = 0, rhythm: float = 0.3, step: float = 0.0, step_day: float = 4.0,
          creep: float = 0.0):
    """(scores, ts): log-normal scores whose log level swings ``rhythm`` over each day (a plant
    whose model fits some hours better than others), plus a ``step`` at ``step_day`` and a
    linear ``creep`` (total over the run)."""
    n = int(days * 24 * 20)
    ts = np.arange(n, dtype=np.int64) * EVERY
    day = ts / (24 * HOUR)
    level = rhythm * np.sin(2 * np.pi * day) + np.where(day >= step_day, step, 0.0) + creep * day / days
    return np.exp(level) * np.random.default_rng(seed).lognormal(0.0, 0.3, n), ts


def feed(monitor, scores, ts, flags=None, batch: int = 256):
    """Feed in stream-sized batches, as the watch does."""
    return [e for i in range(0, len(scores), batch)
            for e in monitor.update_many(scores[i:i + batch], ts=ts[i:i + batch],
                                         flags=None if flags is None else flags[i:i + batch])]


@pytest.mark.parametrize("seed", range(3))
def test_a_strong_daily_rhythm_is_not_drift(seed):
    """The scores swing +/-0.3 in log every day (more than min_shift): over a month, no event;
    the level over a day stays near the reference."""
    monitor = DriftMonitor(reference=0.0)
    assert feed(monitor, *plant(30, seed)) == []
    assert abs(monitor.shift()) < 0.05
    # judged over two hours, the same rhythm is an excursion up and one down every day
    assert len(feed(DriftMonitor(reference=0.0, horizon_s=2 * 3600, min_values=20), *plant(30, seed))) == 60


@pytest.mark.parametrize("seed", range(3))
def test_a_step_is_reported_once_when_enough_of_the_day_holds_it(seed):
    """+0.3 on day 4 under the same rhythm: one "up" event, once 2/3 of a day (0.2 / 0.3) holds the
    new level, give or take the rhythm's share of those hours; the event names both levels."""
    scores, ts = plant(10, seed, step=0.3)
    events = feed(DriftMonitor(reference=0.0), scores, ts)
    assert [e.direction for e in events] == ["up"]
    e = events[0]
    hours_after = (e.ts - 4 * 24 * HOUR) / HOUR
    assert 11 <= hours_after <= 21, hours_after
    assert e.mean_before == e.reference == 0.0 and 0.2 <= e.mean_after < 0.3
    assert e.index == int(np.sum(ts < e.ts))          # every score before the judged moment was seen


def test_a_creep_is_reported_once_when_it_has_added_up():
    """+0.5 over 20 days: one event, when the day's mean has crept ~0.2 (day 8 plus half a
    day of lag), and none for the rest of the creep."""
    events = feed(DriftMonitor(reference=0.0), *plant(20, 1, creep=0.5))
    assert [e.direction for e in events] == ["up"]
    assert 8.0 <= events[0].ts / (24 * HOUR) <= 9.5


def test_without_a_reference_the_first_full_day_is_the_starting_level():
    """No event before a whole horizon has been seen; the first day's level is the reference, so
    a model whose scores simply sit at 1.0 (log) is not drifting; a step from there is."""
    scores, ts = plant(8, 2, step=0.4, step_day=3.0)
    monitor = DriftMonitor()
    first_day = ts < 24 * HOUR
    assert feed(monitor, 2.7 * scores[first_day], ts[first_day]) == [] and np.isnan(monitor.shift())
    events = feed(monitor, 2.7 * scores[~first_day], ts[~first_day])
    assert [e.direction for e in events] == ["up"]
    assert abs(events[0].reference - 1.0) < 0.05 and events[0].ts > 3 * 24 * HOUR
    # with a reference, nothing is judged either before a whole horizon
    assert feed(DriftMonitor(reference=-5.0), scores[first_day], ts[first_day]) == []


def test_entities_are_watched_separately_and_flagged_windows_are_not_learned():
    sa, ts = plant(6, 3, rhythm=0.0)
    sb, _ = plant(6, 4, rhythm=0.0, step=-0.8, step_day=3.0)
    keys = np.array(["a", "b"] * len(ts), dtype=object)
    events = DriftMonitor(reference=0.0).update_many(np.column_stack([sa, sb]).ravel(), keys=keys,
                                                     ts=np.repeat(ts, 2))
    assert [(e.key, e.direction) for e in events] == [("b", "down")]
    # a burst of anomalies, flagged by the threshold, is not drift; NaN scores are skipped
    burst, ts = plant(4, 5, rhythm=0.0)
    hours = (ts >= 2 * 24 * HOUR) & (ts < 2 * 24 * HOUR + 8 * HOUR)
    burst[hours] *= 50.0
    burst[5] = np.nan
    assert feed(DriftMonitor(reference=0.0), burst, ts, flags=hours) == []
    assert feed(DriftMonitor(reference=0.0), burst, ts), "the same burst, unflagged, moves the day's level"


def test_state_round_trips_through_json_exactly():
    scores, ts = plant(10, 6, step=0.3)
    whole = DriftMonitor(reference=0.0)
    expected = feed(whole, scores, ts)
    cut = 4 * 24 * 20 + 137  # a few hours after the step, mid-bucket
    part = DriftMonitor(reference=0.0)
    got = feed(part, scores[:cut], ts[:cut])
    resumed = DriftMonitor(reference=0.0)
    resumed.load_state_dict(json.loads(json.dumps(part.state_dict())))
    got += feed(resumed, scores[cut:], ts[cut:])
    assert got == expected and got                                  # same events, same indices
    assert resumed.counts() == whole.counts() and resumed.state_dict() == whole.state_dict()
    assert len(json.dumps(whole.state_dict())) < 2000               # 25 buckets, whatever the run length


def test_a_state_of_another_format_or_other_parameters_is_refused_with_a_reason():
    monitor = DriftMonitor(reference=0.0)
    feed(monitor, *plant(2, 7))
    with pytest.raises(ConfigError, match="saved with"):
        DriftMonitor(reference=0.1).load_state_dict(monitor.state_dict())
    with pytest.raises(ConfigError, match="saved with"):
        DriftMonitor(reference=0.0, horizon_s=3600.0).load_state_dict(monitor.state_dict())
    with pytest.raises(ConfigError, match="format 1 was river's ADWIN"):
        DriftMonitor().load_state_dict({"format": 1, "river": "0.22", "params": {}, "keys": {}})
    for bad in ({"min_shift": 0.0}, {"horizon_s": 0.0}, {"reference": float("nan")}):
        with pytest.raises(ConfigError):
            DriftMonitor(**bad)
    with pytest.raises(ConfigError, match="event time"):
        DriftMonitor().update_many([1.0, 2.0])


def test_scores_older_than_the_horizon_change_nothing():
    scores, ts = plant(3, 8)
    monitor = DriftMonitor(reference=0.0)
    feed(monitor, scores, ts)
    before = monitor.state_dict()
    assert monitor.update_many([1e6], ts=[0]) == [] and monitor.state_dict() == before


def test_a_reading_stamped_in_2099_does_not_blind_the_watch_and_an_outage_does_not_either():
    """One source's clock fault is skipped: the step after it is still reported, at the same
    moment; a stream that resumes after three days of silence is judged from then on."""
    scores, ts = plant(10, 9, step=0.3)
    expected = feed(DriftMonitor(reference=0.0), scores, ts)
    faulty = ts.copy()
    faulty[3 * 24 * 20 + 7] = np.datetime64("2099-01-01", "ns").astype(np.int64)  # on day 3
    got = feed(DriftMonitor(reference=0.0), scores, faulty)
    assert [e.direction for e in got] == ["up"] and got[0].ts == expected[0].ts
    gap = np.where(ts >= 2 * 24 * HOUR, ts + 3 * 24 * HOUR, ts)       # nothing from day 2 to day 5
    resumed = feed(DriftMonitor(reference=0.0), scores, gap)
    assert [e.direction for e in resumed] == ["up"] and resumed[0].ts > 7 * 24 * HOUR


def test_the_reference_is_the_level_of_the_normal_validation_windows_stored_in_the_artifact():
    val = np.random.default_rng(9).lognormal(-2.0, 0.3, 5000)
    threshold = float(np.quantile(val, 0.99))
    level = reference_level(np.concatenate([val, [1e9, np.nan]]), threshold)
    assert abs(level - np.mean(np.log(val[val <= threshold]))) < 1e-12 and abs(level + 2.0) < 0.02
    assert reference_level(val, float("nan")) == pytest.approx(np.mean(np.log(val)))

    class Trained:
        training = {"metrics": {REFERENCE_METRIC: level}}

    class Older:  # trained before the level was stored
        training = {"metrics": {"val_loss": 0.1}}

    assert artifact_reference(Trained()) == level and artifact_reference(Older()) is None


def test_report_drift_writes_the_marker_the_retrain_job_reads(tmp_path):
    event = DriftEvent("pump-a", 4100, 10**18, -0.01, 0.6, "up")
    record = report_drift(tmp_path / "models", "prod", event)
    saved = json.loads((tmp_path / "models" / drift_marker_path("prod")).read_text())
    assert saved == record and DriftEvent.from_dict(saved["event"]) == event
    with pytest.raises(ConfigError, match="deployment name"):
        report_drift(tmp_path / "models", "../etc", event)



def _batch(i: int, level: float, flagged: bool = False, seed: int = 0):
    """The i-th micro-batch of a stream: 256 normal (or flagged) scores over 30 minutes of event time."""
    from stream_ae.stream.detector_io import DetectorOutput

    scores = np.random.default_rng((seed, i)).lognormal(level, 0.2, 256).astype(np.float32)
    end_ts = i * 10 * EVERY + np.arange(256, dtype=np.int64) * (10 * EVERY // 256)
    return DetectorOutput(scores=scores, flags=np.full(256, flagged), end_ts=end_ts)


def test_stream_drift_watch_counts_drift_and_writes_the_retrain_marker(tmp_path):
    """The runner's watch: normal scores whose level moves up from the model's reference raise
    the metric and write the marker the retrain job reads; flagged windows are not in the level; a new
    model version starts afresh from its own reference."""
    from stream_ae.stream.drift_watch import DriftWatch
    from stream_ae.stream.metrics import StreamMetrics
    from stream_ae.stream.settings import load_settings

    settings = load_settings(env={}, overrides=[f"model.registry={tmp_path}", "model.deployment=prod"])
    metrics = StreamMetrics()
    watch = DriftWatch(settings, metrics)
    shift = lambda: metrics.sample("stream_ae_drift_shift")  # noqa: E731
    assert watch.observe(_batch(0, 0.0), "v1", reference=0.0) == [] and np.isnan(shift())  # no hour closed yet
    for i in range(1, 60):  # 30 hours at the reference
        assert watch.observe(_batch(i, 0.0), "v1", reference=0.0) == []
    assert abs(shift()) < 0.05
    for i in range(60, 76):  # 8 hours of anomalies (flagged) at a much higher level are not drift
        assert watch.observe(_batch(i, 3.0, flagged=True), "v1", reference=0.0) == []
    found = [e for i in range(76, 180) for e in watch.observe(_batch(i, 1.0), "v1", reference=0.0)]
    assert [e.direction for e in found] == ["up"]
    assert 0.9 < shift() < 1.1  # the gauge shows how far the day's level has moved
    assert metrics.sample("stream_ae_drift_events_total", {"direction": "up"}) == 1
    assert (tmp_path / drift_marker_path("prod")).exists()
    # a new model's scores have other units: its monitor starts from nothing, at its own reference
    assert watch.observe(_batch(180, 5.0), "v2", reference=5.0) == []
    assert watch.state()["model_version"] == "v2" and watch.state()["monitor"]["params"]["reference"] == 5.0


def test_the_stream_watch_remembers_only_its_latest_drift_events_and_counts_all():
    """A service runs for months: the watch keeps the latest EVENTS_KEPT events; the metric counts every one."""
    import numpy as np

    from stream_ae.drift import DriftEvent
    from stream_ae.stream.detector_io import DetectorOutput
    from stream_ae.stream.drift_watch import EVENTS_KEPT, DriftWatch
    from stream_ae.stream.metrics import StreamMetrics
    from stream_ae.stream.settings import load_settings

    class EveryBatchDrifts:  # a monitor that reports a drift on every update
        n = 0

        def update_many(self, scores, ts=None, flags=None):
            self.n += 1
            return [DriftEvent("__model__", self.n, None, 0.0, 1.0, "down")]

        def shift(self):
            return 1.0

        def starved(self):
            return False

    metrics = StreamMetrics()
    watch = DriftWatch(load_settings(env={}), metrics, monitor_factory=lambda reference: EveryBatchDrifts())
    out = DetectorOutput(scores=np.ones(4, np.float32), flags=np.zeros(4, bool), end_ts=np.arange(4, dtype=np.int64))
    for _ in range(EVENTS_KEPT + 50):
        watch.observe(out, "v1")
    assert len(watch.events) == EVENTS_KEPT and watch.events[-1].index == EVENTS_KEPT + 50
    assert metrics.sample("stream_ae_drift_events_total", {"direction": "down"}) == EVENTS_KEPT + 50




def test_the_stream_watch_resumes_from_a_checkpoint_as_if_never_stopped(tmp_path):
    """A consumer restarted in the middle of a creep reports the same drift, at the same window,
    as one that never stopped: its watch comes back from the partition records of a checkpoint
    (MessagePack, as on the state topic), the newest one written with the model it runs."""
    from stream_ae.stream.checkpoint import PartitionRecord
    from stream_ae.stream.drift_watch import DriftWatch
    from stream_ae.stream.metrics import StreamMetrics
    from stream_ae.stream.settings import load_settings

    settings = load_settings(env={}, overrides=[])
    batches = [_batch(i, 0.4 * i / 240, seed=3) for i in range(240)]  # +0.4 over 5 days

    def feed_watch(watch, part):
        return [e for out in part for e in watch.observe(out, "v1", reference=0.0)]

    whole = feed_watch(DriftWatch(settings, StreamMetrics()), batches)
    before = DriftWatch(settings, StreamMetrics())
    events = feed_watch(before, batches[:120])
    # what the restarted consumer reads back: an older record, one of another model, the newest
    old_state = DriftWatch(settings, StreamMetrics())
    feed_watch(old_state, batches[:10])
    records = [PartitionRecord(0, 10, {}, 100.0, old_state.state()),
               PartitionRecord(1, 10, {}, 300.0, {**before.state(), "model_version": "v0"}),
               PartitionRecord(2, 60, {}, 200.0, before.state()),
               PartitionRecord(3, 0, {}, 50.0, None)]  # a record written before the watch was kept
    saved = [(r.written_at, r.drift) for r in map(PartitionRecord.decode, (r.encode() for r in records))]
    after = DriftWatch(settings, StreamMetrics())
    assert after.resume(saved, "v1", reference=0.0)
    assert after.state() == before.state()
    events += feed_watch(after, batches[120:])
    assert events and events == whole                     # same drift, same windows
    # a fresh watch judges only after a whole day of its own: the creep is reported later
    assert feed_watch(DriftWatch(settings, StreamMetrics()), batches[120:]) != whole
    # a watch already running (a rebalance added partitions) keeps its own state
    assert not before.resume(saved, "v1", reference=0.0)
    # nothing saved with the running model, or saved with another reference: a fresh start
    assert not DriftWatch(settings, StreamMetrics()).resume(saved, "v2", reference=0.0)
    assert not DriftWatch(settings, StreamMetrics()).resume(saved, "v1", reference=0.5)
