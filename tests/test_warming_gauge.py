"""Entities whose threshold is still warming up are counted on /metrics and /health: their
windows are scored but never flagged, and an idle machine's EVT warm-up goes on until its
scores have a tail."""

from __future__ import annotations

import numpy as np

from stream_ae.stream.metrics import StreamMetrics
from stream_ae.thresholds import ThresholdSpec, build_threshold


def _table():
    from stream_ae.alerts import AlertTracker
    from stream_ae.data.windows import SeriesWindower, WindowSpec
    from stream_ae.stream.entities import EntityState, EntityTable

    spec = ThresholdSpec(warmup=20)
    return EntityTable(lambda e: EntityState(e, SeriesWindower(WindowSpec(length=3), 1), build_threshold(spec),
                                             AlertTracker()), max_entities=10, max_parked=10)


def test_the_gauge_counts_the_entities_still_warming_up():
    m = StreamMetrics()
    assert m.sample("stream_ae_thresholds_warming_up") == 0.0   # no table yet
    table = _table()
    busy, idle, new = (table.get(e) for e in ("busy", "idle", "new"))
    busy.threshold.step_many(np.random.default_rng(0).gamma(2.0, 1.0, 50))
    idle.threshold.step_many(np.full(200, 0.5))   # one repeated score: no tail, no fit
    assert busy.threshold.ready and not idle.threshold.ready and not new.threshold.ready
    m.set_entities(table)
    assert m.sample("stream_ae_thresholds_warming_up") == 2.0
    assert m.health()["thresholds_warming_up"] == 2
    idle.threshold.step_many(np.random.default_rng(1).gamma(2.0, 1.0, 50))   # it works again
    assert m.sample("stream_ae_thresholds_warming_up") == 1.0   # read at the scrape, not at set_entities
