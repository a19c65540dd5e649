"""The retrain report says what of the holdout span the archive covered, beside each model's
rates: the entities scored and the first and last window. Before session 38 it gave only the
window count, so an archive that lagged by days, or an entity missing from it, showed in the
report only as a smaller count."""
from __future__ import annotations

import numpy as np

from stream_ae.retraining.compare import holdout_metrics

DAY = 86_400 * 10**9


def test_the_metrics_name_the_entities_and_the_first_and_last_window():
    entity = np.array(["pump-1", "pump-1", "pump-2"], dtype=object)
    start = np.array([20_000 * DAY, 20_000 * DAY + 60 * 10**9, 20_001 * DAY], dtype=np.int64)
    end = start + 60 * 10**9
    metrics, _ = holdout_metrics("v1", entity, start, end, np.array([0.1, 0.2, 0.3]), np.zeros(3, bool),
                                 np.ones(3, bool), np.full(3, 1.0))
    assert (metrics.entities, metrics.first_window, metrics.last_window) == (
        2, "2024-10-04T00:00:00+00:00", "2024-10-05T00:01:00+00:00")   # as the report's holdout_span
    assert metrics.to_dict()["first_window"] == "2024-10-04T00:00:00+00:00"   # in the report's JSON


def test_no_window_means_no_coverage():
    empty = np.zeros(0)
    metrics, _ = holdout_metrics("v1", empty.astype(object), empty.astype(np.int64), empty.astype(np.int64), empty,
                                 empty.astype(bool), empty.astype(bool), empty)
    assert (metrics.windows, metrics.entities, metrics.first_window, metrics.last_window) == (0, 0, None, None)
