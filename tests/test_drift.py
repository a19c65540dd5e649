"""Drift of the score stream: ADWIN per entity finds a level shift, not stationary noise; exact resume."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stream_ae.drift import MODEL_KEY, DriftEvent, DriftMonitor, drift_marker_path, report_drift
from stream_ae.errors import ConfigError


def scores(n: int, level: float = 0.0, seed: int = 0) -> np.ndarray:
    """Reconstruction-error-like scores: log-normal around exp(level)."""
    return np.random.default_rng(seed).lognormal(level, 0.3, n)


def test_a_level_shift_is_found_soon_after_it_happens():
    monitor = DriftMonitor()
    before, after = scores(4000, 0.0, seed=1), scores(2000, 0.7, seed=2)
    ts = np.arange(6000, dtype=np.int64) * 10**9
    events = monitor.update_many(np.concatenate([before, after]), keys="pump-a", ts=ts)
    assert events, "a doubling of the scores went unnoticed"
    first = events[0]
    assert first.key == "pump-a" and first.direction == "up" and first.mean_after > first.mean_before
    assert 4000 < first.index <= 4300                       # within a few hundred scores of the shift
    assert first.ts == ts[first.index - 1]
    assert monitor.counts() == {"pump-a": len(events)}


@pytest.mark.parametrize("seed", range(5))
def test_stationary_noise_raises_nothing(seed):
    assert DriftMonitor().update_many(scores(20_000, 0.0, seed=seed)) == []


def test_entities_are_watched_separately_and_flagged_windows_are_not_learned():
    monitor = DriftMonitor()
    n = 3000
    a, b = scores(2 * n, 0.0, seed=3), np.concatenate([scores(n, 0.0, seed=4), scores(n, -0.8, seed=5)])
    keys = np.array(["a", "b"] * 2 * n, dtype=object)
    events = monitor.update_many(np.column_stack([a, b]).ravel(), keys=keys)
    assert {e.key for e in events} == {"b"} and events[0].direction == "down"
    # a burst of anomalies, flagged by the threshold, is not drift; NaN scores are skipped
    burst = scores(n, 0.0, seed=6)
    burst[1000:1600] *= 50.0
    flags = np.zeros(n, dtype=bool)
    flags[1000:1600] = True
    burst[5] = np.nan
    quiet = DriftMonitor()
    assert quiet.update_many(burst, flags=flags) == []
    assert DriftMonitor().update_many(burst), "the same burst, unflagged, should look like a change"


def test_state_round_trips_through_json_exactly():
    stream = np.concatenate([scores(3000, 0.0, seed=7), scores(3000, 0.6, seed=8)])
    whole = DriftMonitor()
    expected = whole.update_many(stream, keys="k")
    part = DriftMonitor()
    got = part.update_many(stream[:3500], keys="k")
    resumed = DriftMonitor()
    resumed.load_state_dict(json.loads(json.dumps(part.state_dict())))
    assert resumed.restored_exactly
    got += resumed.update_many(stream[3500:], keys="k")
    assert got == expected and got                                  # same events, same indices
    assert resumed.counts() == whole.counts()


def test_state_from_another_river_version_restarts_and_says_so():
    monitor = DriftMonitor()
    monitor.update_many(scores(500))
    state = monitor.state_dict()
    state["river"] = "0.0.0"
    other = DriftMonitor()
    other.load_state_dict(state)
    assert not other.restored_exactly
    assert other.state_dict()["keys"][MODEL_KEY]["seen"] == 500     # counters kept, detector fresh
    with pytest.raises(ConfigError, match="saved with"):
        DriftMonitor(delta=0.01).load_state_dict(monitor.state_dict())
    with pytest.raises(ConfigError, match="delta"):
        DriftMonitor(delta=2.0)


def test_min_shift_reports_a_step_and_a_creep_once_each_and_a_small_daily_cycle_never():
    """ADWIN alone reports every swing of a 10 % daily cycle in the scores; with ``min_shift`` an
    event is the level leaving the model's starting level by that much: a +0.3 step within a few
    hundred scores, a creep once it has added up to ~0.2, each once; and the reference and the
    excursion survive a restore, so a restarted watch does not report the same creep again."""
    n = 200_000
    i = np.arange(n)
    noise = np.random.default_rng(0).lognormal(0.0, 0.3, n)
    cycle = np.exp(0.1 * np.sin(2 * np.pi * i / 40_000)) * noise
    assert len(DriftMonitor().update_many(cycle)) > 5
    assert DriftMonitor(min_shift=0.2).update_many(cycle) == []
    assert DriftMonitor(min_shift=0.2).update_many(noise) == []
    step = DriftMonitor(min_shift=0.2).update_many(np.where(i >= n // 2, np.exp(0.3), 1.0) * noise)
    assert [e.direction for e in step] == ["up"] and n // 2 < step[0].index < n // 2 + 1000
    assert step[0].mean_before == step[0].reference and step[0].mean_after - step[0].reference >= 0.2
    creep = np.exp(0.5 * i / n) * noise      # +0.5 in log score over the run
    whole = DriftMonitor(min_shift=0.2).update_many(creep)
    assert [e.direction for e in whole] == ["up"]
    assert 0.3 * n < whole[0].index < 0.6 * n  # when the creep had added up to ~0.2 (0.4 n)
    part = DriftMonitor(min_shift=0.2)
    got = part.update_many(creep[: n * 3 // 4])
    resumed = DriftMonitor(min_shift=0.2)
    resumed.load_state_dict(json.loads(json.dumps(part.state_dict())))
    assert got == whole and resumed.update_many(creep[n * 3 // 4:]) == []
    with pytest.raises(ConfigError, match="min_shift"):
        DriftMonitor(min_shift=-1.0)


def test_report_drift_writes_the_marker_the_retrain_job_reads(tmp_path):
    event = DriftEvent("pump-a", 4100, 10**18, -0.01, 0.6, "up")
    record = report_drift(tmp_path / "models", "prod", event)
    saved = json.loads((tmp_path / "models" / drift_marker_path("prod")).read_text())
    assert saved == record and DriftEvent.from_dict(saved["event"]) == event
    with pytest.raises(ConfigError, match="deployment name"):
        report_drift(tmp_path / "models", "../etc", event)


def test_stream_drift_watch_counts_drift_and_writes_the_retrain_marker(tmp_path):
    """The runner's watch: normal scores that shift up raise the metric and write the marker the
    retrain job reads; flagged windows are never fed; a new model version starts afresh."""
    import numpy as np

    from stream_ae.drift import drift_marker_path
    from stream_ae.stream.detector_io import DetectorOutput
    from stream_ae.stream.drift_watch import DriftWatch
    from stream_ae.stream.metrics import StreamMetrics
    from stream_ae.stream.settings import load_settings

    settings = load_settings(env={}, overrides=[f"model.registry={tmp_path}", "model.deployment=prod"])
    metrics = StreamMetrics()
    watch = DriftWatch(settings, metrics)
    rng = np.random.default_rng(0)

    def batch(level, flagged=False):
        scores = rng.lognormal(level, 0.2, 256).astype(np.float32)
        return DetectorOutput(scores=scores, flags=np.full(256, flagged), end_ts=np.arange(256, dtype=np.int64))

    shift = lambda: metrics.sample("stream_ae_drift_shift")  # noqa: E731
    assert watch.observe(batch(0.0), "v1") == [] and np.isnan(shift())  # starting level not known yet
    for _ in range(59):
        assert watch.observe(batch(0.0), "v1") == []
    assert abs(shift()) < 0.05
    for _ in range(60):  # anomalies (flagged) at a much higher level are not drift
        assert watch.observe(batch(3.0, flagged=True), "v1") == []
    found = [e for _ in range(60) for e in watch.observe(batch(1.0), "v1")]
    assert found and found[0].direction == "up"
    assert 0.9 < shift() < 1.1  # the gauge shows how far the level has moved
    assert metrics.sample("stream_ae_drift_events_total", {"direction": "up"}) >= 1
    assert (tmp_path / drift_marker_path("prod")).exists()
    # a new model's scores have other units: its detector starts from nothing
    assert watch.observe(batch(5.0), "v2") == []


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

        def update_many(self, scores, ts=None):
            self.n += 1
            return [DriftEvent("__model__", self.n, None, 0.0, 1.0, "down")]

        def shift(self):
            return 1.0

    metrics = StreamMetrics()
    watch = DriftWatch(load_settings(env={}), metrics, monitor_factory=EveryBatchDrifts)
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
    from stream_ae.stream.detector_io import DetectorOutput
    from stream_ae.stream.drift_watch import DriftWatch
    from stream_ae.stream.metrics import StreamMetrics
    from stream_ae.stream.settings import load_settings

    settings = load_settings(env={}, overrides=[])
    rng = np.random.default_rng(3)
    batches = [rng.lognormal(0.4 * i / 120, 0.2, 256).astype(np.float32) for i in range(120)]  # a slow creep

    def feed(watch, part):
        return [e for s in part for e in watch.observe(
            DetectorOutput(scores=s, flags=np.zeros(256, bool), end_ts=np.arange(256, dtype=np.int64)), "v1")]

    whole = feed(DriftWatch(settings, StreamMetrics()), batches)
    before = DriftWatch(settings, StreamMetrics())
    events = feed(before, batches[:60])
    # what the restarted consumer reads back: an older record, one of another model, the newest
    old_state = DriftWatch(settings, StreamMetrics())
    feed(old_state, batches[:10])
    records = [PartitionRecord(0, 10, {}, 100.0, old_state.state()),
               PartitionRecord(1, 10, {}, 300.0, {**before.state(), "model_version": "v0"}),
               PartitionRecord(2, 60, {}, 200.0, before.state()),
               PartitionRecord(3, 0, {}, 50.0, None)]  # a record written before the watch was kept
    saved = [(r.written_at, r.drift) for r in map(PartitionRecord.decode, (r.encode() for r in records))]
    after = DriftWatch(settings, StreamMetrics())
    assert after.resume(saved, "v1")
    assert after.state() == before.state()
    events += feed(after, batches[60:])
    assert events and events == whole                     # same drift, same windows
    # a fresh watch (the old behaviour) reports the creep differently or not at all
    assert feed(DriftWatch(settings, StreamMetrics()), batches[60:]) != whole
    # a watch already running (a rebalance added partitions) keeps its own state
    assert not before.resume(saved, "v1")
    # nothing saved with the running model: a fresh start
    assert not DriftWatch(settings, StreamMetrics()).resume(saved, "v2")
